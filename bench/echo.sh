#!/usr/bin/env bash
# The echo benchmark: images/sec of our loader (CPU, 2 threads, hymenoptera photos, batch 96,
# R = 224, m = 9, B = 96) with echo before augmentation at r = 1, 2, 4, and the reference's
# identical-tensor replay at r = 4, timed side by side: each loader alone in its own process,
# rounds in alternating order, windows of >= 10 batches and >= 3 s after a warm-up past the
# prefetch depth; median and range per loader. Target: ours_echo4 >= 2.5x ours_echo1. --breakdown
# times our graph cut after each stage, so the report also gives the bound that echo cannot beat:
# it saves only the decode, t / (t - decode (1 - 1/r)).
# Run it on an idle machine (about 3 minutes on 2 idle cores).
# Usage: bench/echo.sh [PHOTOS] [OUTDIR] [ROUNDS]
set -uo pipefail
cd "$(dirname "$0")/.."
photos=${1:-../shared/data/hymenoptera}
out=${2:-bench/results}
rounds=${3:-3}
mkdir -p "$out"
python3 -m etpp_dali bench loader --data "$photos" --bands 96 --magnitude 9 --batch-size 96 --threads 2 \
    --loaders ours_echo1,ours_echo2,ours_echo4,ours_tensor4 --breakdown --rounds "$rounds" --min-batches 10 --min-seconds 3 \
    --json "$out/echo-cpu-$(date +%Y%m%d).json"
