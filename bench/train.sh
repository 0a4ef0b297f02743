#!/usr/bin/env bash
# EfficientTrain++ against the full-resolution baseline on the embedded demo set (the demo
# recipe: resnet10t at R = 64, E = 12 against an 18-epoch baseline), same trainer and seed.
# Usage: bench/train.sh [OUTDIR]
set -euo pipefail
out=${1:-bench/results}
stamp=$(date +%Y%m%d)
runs=$(mktemp -d)
etpp bench train --recipe demo --output "$runs" --json "$out/train-demo-cpu-$stamp.json" \
    --plot "$out/train-demo-cpu-$stamp.png"
