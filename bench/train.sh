#!/usr/bin/env bash
# Time to accuracy: EfficientTrain++ against the full-resolution baseline on the embedded demo
# set (the demo recipe: resnet10t at R = 64, E = 12 against an 18-epoch baseline), the same
# trainer, seed and evaluation schedule (every epoch), one run after the other. Records top-1
# against training wall-clock for both, the wall-clock speed-up to the baseline's final top-1,
# the compute ratio, per stage the images/sec and the loader's share of the step time, and
# evaluation apart from training; before that, the wall-clock `etpp schedule --measure` predicts
# for the same recipe (measure-*.json). About 4 minutes on 2 idle cores.
# Usage: bench/train.sh [OUTDIR] [DATA]   (DATA: any ImageFolder with train/ and val/; default the demo set)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
data=${2:-}
stamp=$(date +%Y%m%d)
runs=$(mktemp -d)
mkdir -p "$out"
name=train-demo-cpu-$stamp
[ -z "$data" ] || name=train-$(basename "$data")-cpu-$stamp
# first the prediction of `etpp schedule --measure` for the same recipe (and its model-only bound)
etpp schedule --budget 12 --resolution 64 --batch-size 64 --global-batch 128 --stage-batch auto \
    --baseline-budget 18 --measure --model resnet10t ${data:+--data "$data"} --json > "$out/${name/train-/measure-}.json"
etpp bench train --recipe demo ${data:+--data "$data"} --val-every 1 --output "$runs" \
    --json "$out/$name.json" --plot "$out/$name.png"
