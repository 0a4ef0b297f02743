#!/usr/bin/env bash
# The Fourier crop alone on this machine's CPU: both backends, the bands the rule is set by.
# Usage: bench/op.sh [OUTDIR]   (default bench/results); writes op-cpu-<date>.json
set -euo pipefail
out=${1:-bench/results}
stamp=$(date +%Y%m%d)
etpp bench op --device cpu --bands 64,96,128,160,192 --threads 2 --json "$out/op-cpu-nchw-f32-$stamp.json"
etpp bench op --device cpu --bands 64,96,128,160,192 --threads 1 --layout NHWC --dtype uint8 \
    --json "$out/op-cpu-nhwc-u8-1thread-$stamp.json"
