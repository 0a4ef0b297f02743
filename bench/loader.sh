#!/usr/bin/env bash
# Images/sec of our loader (exact crop and resize approximation), the EfficientTrain++ reference
# CPU loader (timm create_transform + Lanczos, a torch DataLoader) and decoding alone, side by
# side in one run, on the hymenoptera photos, batch 64, 2 threads / 2 workers, m = 9.
# Usage: bench/loader.sh [DATA] [OUTDIR]
set -euo pipefail
data=${1:-../shared/data/hymenoptera}
out=${2:-bench/results}
stamp=$(date +%Y%m%d)
etpp bench loader --data "$data" --bands 96,160,224 --magnitude 9 --batch-size 64 --threads 2 \
    --rounds 5 --steps 4 --json "$out/loader-cpu-$stamp.json" --plot "$out/loader-cpu-$stamp.png"
