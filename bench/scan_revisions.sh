#!/usr/bin/env bash
# The first scan of two revisions side by side: `python -m etpp_dali.bench.scale case` (the
# cases "first": full validation, and "trust": --trust-data) of one scale tree, each revision in a
# worktree of its own, each run alone in a fresh process with an empty cache folder, the order of
# the revisions reversed every round, so a drift in this machine's speed shows up as a spread
# and not as a difference between the revisions. The trees are bench/scale.sh's (page cache warm:
# build them with it first).
# Usage: bench/scan_revisions.sh OLD_REV [NEW_REV=HEAD] [TREE=/tmp/etpp-scale/n1280000] [ROUNDS=3] [OUTDIR=bench/results]
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(git rev-parse --short "$1"); new=$(git rev-parse --short "${2:-HEAD}")
tree=${3:-/tmp/etpp-scale/n1280000}
rounds=${4:-3}
out=${5:-bench/results}
[ -d "$tree/train" ] || { echo "bench/scan_revisions.sh: $tree has no train/ folder; build it with bench/scale.sh" >&2; exit 1; }
stamp=$(date +%Y%m%d)
. bench/worktrees.sh  # $work: a worktree of each revision
mkdir -p "$out"
python - "$work" "$old" "$new" "$tree" "$rounds" "$out/scan-revisions-$old-$new-cpu-$stamp" <<'PY'
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from etpp_dali.bench.record import markdown_table, write_results

work, old, new, tree, rounds, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
rows = []
for rnd in range(rounds):
    for case in ("trust", "first"):
        for rev in (old, new) if rnd % 2 == 0 else (new, old):
            cache = work / f"cache-{rev}"
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir()
            env = dict(os.environ, ETPP_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=str(work / rev))
            load = os.getloadavg()[0]
            done = subprocess.run([sys.executable, "-m", "etpp_dali.bench.scale", "case", "--data", tree, "--case", case],
                                  env=env, capture_output=True, text=True, cwd=work)
            lines = [line for line in done.stdout.splitlines() if line.startswith("SCALE ")]
            if done.returncode or not lines:
                sys.exit(f"bench/scan_revisions.sh: {rev} {case} failed:\n{done.stderr[-3000:]}")
            row = json.loads(lines[-1][6:])[0]
            rows.append({"round": rnd + 1, "case": case, "revision": rev, "open_s": row["open_s"],
                         "cpu_s": row["cpu_s_delta"], "images": row["images"], "bad": row["bad"],
                         "load_before": round(load, 2)})
            print(json.dumps(rows[-1]), flush=True)
table = []
for case in ("first", "trust"):
    for key, unit in (("open_s", "s"), ("cpu_s", "CPU-s")):
        vals = {rev: [r[key] for r in rows if r["case"] == case and r["revision"] == rev] for rev in (old, new)}
        ratios = [n / o for o, n in zip(vals[old], vals[new])]
        table.append({"case": case, "what": key, "unit": unit, old: "/".join(f"{v:g}" for v in vals[old]),
                      new: "/".join(f"{v:g}" for v in vals[new]),
                      "new/old per round (min-max)": f"{min(ratios):.2f}-{max(ratios):.2f}",
                      "new/old of the sums": round(sum(vals[new]) / sum(vals[old]), 3)})
doc = {"benchmark": "scan revisions", "tree": tree, "old": old, "new": new, "rounds": rounds, "rows": rows,
       "table": table}
write_results(doc, f"{name}.json")
md = markdown_table(table, ["case", "what", "unit", old, new, "new/old per round (min-max)", "new/old of the sums"])
Path(f"{name}.md").write_text(f"The first scan of two revisions side by side (bench/scan_revisions.sh; {tree}, "
                              f"{rounds} rounds, the order reversed every round; values per round)\n\n{md}\n")
print(md)
PY
