#!/usr/bin/env bash
# The scale benchmark (etpp_dali/bench/scale.py): ImageFolders of N hard links to real JPEGs
# (1,000 class folders), for N = 10k, 100k and 1.28M (ImageNet-1K) by default. Per N, each in a
# fresh process: the first scan with full validation and with --trust-data (files/sec), the
# cached open, a listing plus a stat of every file, the cached open that stats every file
# (check-data), a CurriculumLoader to its first batch (CPU, batch 2), a rescan after 5 files
# were added to one folder and 5 removed from another; and 8 ranks under torchrun (CPU, gloo)
# opening the set at once, first without an index, then cached, each to its first batch. Memory
# from /proc/self/smaps_rollup (RSS, PSS, private), bytes read from /proc/self/io, the load
# average beside every figure. Page cache warm: the trees are built first (1.28M links take a
# few minutes the first time; they are kept under WORK and reused).
# Usage: bench/scale.sh [PHOTOS] [WORK] [SIZES] [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
photos=${1:-../shared/data/hymenoptera}
work=${2:-/tmp/etpp-scale}
sizes=${3:-10000,100000,1280000}
out=${4:-bench/results}
stamp=$(date +%Y%m%d)
mkdir -p "$work/photos" "$out"
# hard links need their targets on the trees' file system: copy the photos there once
find "$photos" -type f -name '*.jpg' -exec cp -n {} "$work/photos/" \;
echo "photos: $(ls "$work/photos" | wc -l); $(uptime)"
python -m etpp_dali.bench.scale run --photos "$work/photos" --work "$work" --sizes "$sizes" \
    --json "$out/scale-cpu-$stamp.json"
echo "$(uptime)"
