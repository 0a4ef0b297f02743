#!/usr/bin/env bash
# The loader benchmark as the README records it: images/sec of our loader (exact crop, resize
# approximation, no RandAugment) and of the loaders a user would pick instead (the ET++
# reference loader, timm's create_loader, a plain DALI pipeline with DALI's rand_augment, DALI
# decoding alone), batch 64, 2 threads / 2 workers, m = 9, B = 96, 160, 224. Each loader is
# timed alone in its own process (2 rounds in alternating order, windows of >= 10 batches and
# >= 3 s after a warm-up past its prefetch depth); median and range per loader and band.
#   1. the photos (hymenoptera: ImageNet-sized JPEGs, ~110 KB), with the per-stage breakdown
#      of our loader (decode, resize, warp, colour ops, crop, hand-off to torch);
#   2. small JPEGs (2,000 generated 224-px JPEGs, quality 75, ~13 KB each), where per-image
#      overhead rather than decoding sets the pace.
# Run it on an idle machine: about 11-12 minutes on 2 idle cores (45 windows of 6-11 s per round,
# 2 rounds), plus ~1 minute to generate the small JPEGs the first time.
# Usage: bench/loader.sh [PHOTOS] [OUTDIR] [SMALL_JPEG_DIR]
# Exit status 1 if any loader failed (the other figures are written) or a window was not alone.
set -uo pipefail
cd "$(dirname "$0")/.."
photos=${1:-../shared/data/hymenoptera}
out=${2:-bench/results}
small=${3:-/tmp/etpp-small-jpegs-224-q75}
stamp=$(date +%Y%m%d)
mkdir -p "$out"
if [ ! -d "$small/train" ]; then
    python3 -c "import sys; from etpp_dali.data.demo import DemoSpec, write_demo_dataset as w; \
w(sys.argv[1], DemoSpec(classes=10, train_per_class=200, val_per_class=0, size=224, quality=75))" "$small" || exit 2
fi
status=0
common=(--bands 96,160,224 --magnitude 9 --batch-size 64 --threads 2 --rounds 2 --min-batches 10 --min-seconds 3)
etpp bench loader --data "$photos" "${common[@]}" --breakdown \
    --json "$out/loader-cpu-$stamp.json" --plot "$out/loader-cpu-$stamp.png" || status=1
etpp bench loader --data "$small" "${common[@]}" \
    --json "$out/loader-small-jpeg-cpu-$stamp.json" --plot "$out/loader-small-jpeg-cpu-$stamp.png" || status=1
exit $status
