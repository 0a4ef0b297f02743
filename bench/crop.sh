#!/usr/bin/env bash
# The exact crop against the resize approximation inside a DALI CPU pipeline (decode, random
# crop to 224, flip, normalise, crop to B), side by side in one run on the hymenoptera photos.
# Usage: bench/crop.sh [DATA] [OUTDIR]
set -euo pipefail
data=${1:-../shared/data/hymenoptera}
out=${2:-bench/results}
etpp bench crop --data "$data" --bands 96,160 --threads 2 --rounds 5 --json "$out/crop-cpu-$(date +%Y%m%d).json"
