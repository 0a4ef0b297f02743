# Sourced by the benchmarks that compare two revisions: checks both out, each in a worktree of its
# own under a fresh folder $work ($work/$old, $work/$new), removed again when the script exits.
# Needs $old and $new (revisions) set.
work=$(mktemp -d)
git worktree add -q --detach "$work/$old" "$old"
git worktree add -q --detach "$work/$new" "$new"
cleanup() { git worktree remove --force "$work/$old"; git worktree remove --force "$work/$new"; rm -rf "$work"; }
trap cleanup EXIT
