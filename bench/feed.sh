#!/usr/bin/env bash
# The training feed alone (etpp_dali/bench/feed.py): one rank of 8 over an ImageFolder of N hard
# links to real JPEGs (the tree bench/scale.sh builds; made here when missing), batch 96, an epoch
# of the last stage (RandAugment at its highest magnitude). Each variant alone in a fresh
# process, 4 rounds in alternating order: the feed before batch reads (per-file), the feed
# reading bytes (tar shards) on 0-2 threads, the feed handing paths (files: the graph reads
# them) on 0-1 threads, those paths with DALI reading the files, and the reads and the draws
# alone. The same batches are checked by hash across variants; the reads bound the rest.
# Usage: bench/feed.sh [PHOTOS] [WORK] [N] [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
photos=${1:-../shared/data/hymenoptera}
work=${2:-/tmp/etpp-scale}
n=${3:-1280000}
out=${4:-bench/results}
stamp=$(date +%Y%m%d)
mkdir -p "$work/photos" "$out"
find "$photos" -type f -name '*.jpg' -exec cp -n {} "$work/photos/" \;
python -m etpp_dali.bench.scale tree --data "$work/n$n" --n "$n" --photos "$work/photos"
export ETPP_CACHE="$work/cache-$n"
python -c "from etpp_dali.data.sources import open_source; open_source('$work/n$n', 'train')"
echo "before: $(uptime)"
python -m etpp_dali.bench.feed run --data "$work/n$n" --json "$out/feed-cpu-$stamp.json" | tee "$out/feed-cpu-$stamp.txt"
echo "after: $(uptime)"
