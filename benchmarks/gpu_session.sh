#!/usr/bin/env bash
# Everything the GPU issues wait for, as one command on a lent device machine (docs: the device tool's README).
#
#   here, once:  .venv/bin/python benchmarks/device_kit.py pack      # .device-kit/, git-ignored, ~58 MiB
#   device call: bash benchmarks/gpu_session.sh encode tests         carry [".device-kit"], timeout_s 590
#   next call:   bash benchmarks/gpu_session.sh train                carry [".device-kit"], timeout_s 420
# (the tables first: a call cut off at its limit still returns what $OUT holds)
#
# Stages, each under its own time limit, each leaving its log (and tables) in $OUT as it ends:
#   tests   the CUDA kernel, launch table, pooling and pipeline tests      (limit 180 s: 79 tests, many compiles;
#           one process: no pytest-xdist there, one GPU)
#   encode  benchmarks/encode_gpu.py, issue 18's table and `lsr index`     (limit 360 s)
#   train   benchmarks/train_gpu.py, issue 16's table                      (limit 360 s)
# The setup (install lsr, unpack the kit, print versions) takes about half a minute and is skipped when a
# warm machine already has it. --rehearse runs the same plumbing here, without the device's wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/lsr-gpu-out}"
PY="${PYTHON:-python3}"
ROOT=/tmp/lsr-kit
WHEELS=""
if [ "${1:-}" = "--rehearse" ]; then WHEELS="--no-wheels"; shift; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ ! -f "$ROOT/ready" ]; then
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . &&
      "$PY" benchmarks/device_kit.py unpack .device-kit --root "$ROOT" $WHEELS &&
      touch "$ROOT/ready"
  } >"$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; echo "gpu_session.sh: setup failed"; exit 1; }
fi
# shellcheck disable=SC1091
source "$ROOT/env.sh"
"$PY" -c "import sys, torch, triton, transformers, sentence_transformers, numba, lsr
print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__,
      '| transformers', transformers.__version__, '| sentence-transformers', sentence_transformers.__version__,
      '| numba', numba.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
  2>&1 | tee -a "$OUT/setup.log"

stage() {  # NAME SECONDS COMMAND...: run it under a time limit, log to $OUT/NAME.log, print the verdict
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "== $name: rc $rc in $((SECONDS - start)) s (limit $limit s)"
  tail -n 25 "$OUT/$name.log"
}

for name in "$@"; do
  case "$name" in
    tests) stage tests 180 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_pool_triton.py tests/test_pool.py \
             tests/test_launch.py tests/test_batching.py ;;
    encode) stage encode 360 "$PY" benchmarks/encode_gpu.py --results-dir "$OUT" ;;
    train) stage train 360 "$PY" benchmarks/train_gpu.py --results-dir "$OUT" ;;
    *) echo "gpu_session.sh: error: unknown stage '$name' (tests, encode, train)"; exit 2 ;;
  esac
done
