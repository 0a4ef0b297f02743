#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with an NVIDIA GPU and no network:
#   bench/gpu_check.sh OUTDIR [WHEELDIR] [DATA]
# - installs DALI from the wheels in WHEELDIR (pip --no-index --no-deps into /tmp/site) when
#   `import nvidia.dali` fails; installs nothing else (torch, timm, numpy, click must be there);
# - runs the GPU-marked tests, the Fourier-crop op benchmark (batch 256, 224 -> 96 and 160, with
#   the device's copy bandwidth) and the loader benchmark with the mixed decoder;
# - writes every figure, the test log and the nvidia-smi line to OUTDIR.
# DATA defaults to a generated set of 640 JPEGs (320 px) under /tmp; runs from the repo root.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR [WHEELDIR] [DATA]}
wheels=${2:-}
data=${3:-}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/nvidia-smi.txt"
if ! python3 -c "import nvidia.dali" 2>/dev/null; then
    if [ -z "$wheels" ]; then echo "gpu_check: DALI is not installed and no WHEELDIR was given" >&2; exit 2; fi
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheels"/*.whl || exit 2
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 -c "import nvidia.dali, torch; print('DALI', nvidia.dali.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" \
    | tee -a "$out/nvidia-smi.txt"
if [ -z "$data" ]; then
    data=/tmp/etpp-gpu-data
    [ -d "$data/train" ] || python3 -m etpp_dali demo-data "$data" --classes 10 --train-per-class 64 --val-per-class 4 --size 320
fi
status=0
timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu-tests.txt" || status=1
timeout 90 python3 -m etpp_dali bench op --device cuda --batch-size 256 --bands 96,160 --backends matmul,fft \
    --json "$out/op-cuda.json" || status=1
timeout 150 python3 -m etpp_dali bench loader --device cuda --data "$data" --bands 96,160,224 --batch-size 256 \
    --threads 8 --rounds 3 --steps 4 --json "$out/loader-cuda.json" || status=1
exit $status
