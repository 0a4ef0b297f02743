#!/usr/bin/env bash
# MAE pre-training with EfficientTrain++ against plain MAE on the embedded demo set (the mae_demo
# recipe: timm's test_vit with 8-px patches at R = 64, pixel targets), at E = 10 full-resolution
# epochs of compute: ET++ at E, the baseline at E (equal compute) and at 1.5 x E, for seeds 0
# and 1; each encoder fine-tuned with the demo recipe at a budget of 3 (--init-from), and a
# classifier from scratch with the same settings. Records pre-training wall-clock (with the load
# average around it: the figures are only comparable on an otherwise idle machine), compute,
# the final k-NN top-1 and the fine-tuned top-1, and a plot of k-NN top-1 against wall-clock.
# Usage: bench/mae.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
stamp=$(date +%Y%m%d)
runs=$(mktemp -d)
mkdir -p "$out"
etpp bench mae --recipe mae_demo --budget 10 --ratio 1.5 --seeds 0,1 --finetune-budget 3 --output "$runs" \
     --json "$out/mae-demo-cpu-$stamp.json" --plot "$out/mae-demo-cpu-$stamp.png"
rm -rf "$runs"
