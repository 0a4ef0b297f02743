#!/usr/bin/env bash
# The GPU checks in one go, on a machine with an NVIDIA GPU and no package registry, in at most
# 8 minutes (every step has a timeout cut to what is left of that budget):
#   bench/gpu_check.sh [OUTDIR] [WHEELDIR] [DATA]
# OUTDIR defaults to $OUT. Runs from the repository root. Writes to OUTDIR: nvidia-smi.txt, the
# GPU test log (gpu-tests.txt), the Fourier-crop op benchmark (op-cuda.json: batch 256, 224 ->
# 96 and 160, with the device's copy bandwidth) and the loader benchmark with the mixed decoder
# (loader-cuda.json: B = 96 and 160, each loader alone in its own process; the reference and
# timm loaders decode on the CPU, as their users run them).
#
# DALI: when `import nvidia.dali` fails, DALI and the packages it needs are installed together
# from the wheels in WHEELDIR (pip install --no-index --no-deps --target /tmp/site, put first on
# PYTHONPATH); nothing else is installed (torch, timm, numpy, click, PyYAML, pytest must be there).
# The check stops at once, with the reason, when WHEELDIR is missing or lacks one of them, or
# when `import nvidia.dali` still fails after the install. Fill WHEELDIR (Python 3.12, x86-64
# Linux) on any machine with a registry with exactly:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d WHEELDIR \
#     nvidia-dali-cuda120==2.4.0 'nvidia-nvimgcodec-cu12>=0.9.0,<0.10.0' nvidia-nvjpeg-cu12 \
#     nvidia-nvjpeg2k-cu12 'nvidia-nvtiff-cu12>=0.8.0' nvidia-libnvcomp-cu12==5.3.0.16 optree \
#     'gast>=0.3.3,<=0.7.0' 'astunparse>=1.6.0,<=1.6.3' 'libcst~=1.8' makefun nvtx 'packaging<=26.3' \
#     'six>=1.16,<=1.17'
# (nvjpeg2k and nvtiff are optional: JPEG 2000 and TIFF decoding on the GPU.)
# DATA defaults to a generated set of 640 JPEGs (320 px) under /tmp.
set -uo pipefail
out=${1:-${OUT:-}}
wheels=${2:-}
data=${3:-}
if [ -z "$out" ]; then echo "gpu_check: give OUTDIR (or set OUT): bench/gpu_check.sh OUTDIR [WHEELDIR] [DATA]" >&2; exit 2; fi
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
deadline=$((SECONDS + 470))  # 8 minutes less a margin for the last step's clean-up

# seconds a step may take: its own limit, cut to what is left of the budget (at least 1)
budget() { local left=$((deadline - SECONDS)); [ "$left" -lt "$1" ] && echo $((left > 1 ? left : 1)) || echo "$1"; }
fail() { echo "gpu_check: $*" >&2; exit 2; }

REQUIRED="nvidia_dali_cuda120 nvidia_nvimgcodec_cu12 nvidia_nvjpeg_cu12 nvidia_libnvcomp_cu12 optree gast
astunparse libcst makefun nvtx packaging six"
OPTIONAL="nvidia_nvjpeg2k_cu12 nvidia_nvtiff_cu12"

# The wheel of each package in $wheels (one per name), or the list of what is missing.
pick_wheels() {
    local missing="" name found
    picked=()
    for name in $REQUIRED $OPTIONAL; do
        found=("$wheels"/"$name"-[0-9]*.whl)
        if [ ! -e "${found[0]}" ]; then
            case " $OPTIONAL " in *" $name "*) continue ;; esac
            missing="$missing ${name//_/-}"
        elif [ "${#found[@]}" -gt 1 ]; then
            fail "$wheels holds ${#found[@]} wheels of ${name//_/-}; keep one (cp312, manylinux)"
        else
            picked+=("${found[0]}")
        fi
    done
    [ -z "$missing" ] || fail "$wheels lacks the wheel(s) of:$missing; fill it with the pip download line in the header of $0"
}

install_dali() {
    [ -n "$wheels" ] || fail "DALI is not installed and no WHEELDIR was given; fill one with the pip download line in the header of $0"
    [ -d "$wheels" ] || fail "WHEELDIR $wheels is not a folder; fill one with the pip download line in the header of $0"
    pick_wheels
    rm -rf /tmp/site
    timeout "$(budget 120)" python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${picked[@]}" \
        || fail "pip could not install the ${#picked[@]} wheels of $wheels into /tmp/site (see above)"
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
    local err
    err=$(timeout "$(budget 60)" python3 -c "import nvidia.dali, nvidia.dali.fn; from nvidia.dali.plugin.pytorch import DALIGenericIterator" 2>&1) \
        || fail "DALI was installed from $wheels into /tmp/site but does not import: $(echo "$err" | tail -n 1)"
}

python3 -c "import nvidia.dali" 2>/dev/null || install_dali
timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/nvidia-smi.txt" \
    || fail "nvidia-smi failed: no NVIDIA GPU or driver here"
cat "$out/nvidia-smi.txt"
timeout "$(budget 60)" python3 -c "import nvidia.dali, torch; assert torch.cuda.is_available(), 'torch sees no GPU'; \
print('DALI', nvidia.dali.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" \
    | tee -a "$out/nvidia-smi.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "DALI or torch cannot use the GPU (see above)"
if [ -z "$data" ]; then
    data=/tmp/etpp-gpu-data
    [ -d "$data/train" ] || timeout "$(budget 60)" python3 -m etpp_dali demo-data "$data" --classes 10 \
        --train-per-class 64 --val-per-class 4 --size 320 || fail "could not write the generated data set to $data"
fi
status=0
timeout "$(budget 150)" python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$out/gpu-tests.txt" 2>&1 || status=1
tail -n 3 "$out/gpu-tests.txt"
timeout "$(budget 60)" python3 -m etpp_dali bench op --device cuda --batch-size 256 --bands 96,160 \
    --backends matmul,fft --json "$out/op-cuda.json" || status=1
limit=$(( $(budget 240) - 15 ))  # the loader benchmark stops starting windows then, and writes what it has
timeout "$((limit + 15))" python3 -m etpp_dali bench loader --device cuda --data "$data" --bands 96,160 \
    --batch-size 128 --threads 8 --rounds 2 --min-batches 8 --min-seconds 2 --files 640 \
    --time-limit "$((limit > 30 ? limit : 30))" --json "$out/loader-cuda.json" || status=1
echo "gpu_check: done in ${SECONDS} s, status $status; results in $out"
exit $status
