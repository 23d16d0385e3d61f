#!/usr/bin/env bash
# Everything the GPU issues wait for, as one command on a lent device machine (docs: the device tool's README).
#
#   here, once:  .venv/bin/python benchmarks/device_kit.py pack      # .device-kit/, git-ignored, ~58 MiB
#   here:        bash benchmarks/gpu_session.sh --rehearse encode train tests   # the same plumbing on the CPU
#   device call: bash benchmarks/gpu_session.sh encode train tests   carry [".device-kit"], timeout_s 600
#
# A lease has 15 minutes of device time, the machine's start included, so all of it is one call: the stages
# share LSR_GPU_BUDGET seconds (default 570, the setup included), each under its own limit or what is left of
# the budget, whichever is less, each leaving its log (and tables) in $OUT as it ends; the benchmarks rewrite
# their tables after each piece, so a stage cut off keeps what it measured. In order of what the issues need:
#   encode  benchmarks/encode_gpu.py, issue 18's table and `lsr index`     (limit 300 s)
#   train   benchmarks/train_gpu.py, issue 16's table                      (limit 240 s)
#   tests   the CUDA kernel, launch table, pooling and pipeline tests      (what is left: pytest-xdist, 8 workers
#           sharing the GPU, compiles Triton kernels in parallel)
# LSR_ENCODE_PIECES (encode_gpu.py --pieces) and LSR_GPU_TESTS (test files) narrow a rerun to what failed.
# The setup (install lsr, unpack the kit, print versions) takes about half a minute and is skipped when a
# warm machine already has it. --rehearse runs the same code here, on the CPU at toy sizes, without the
# device's wheels (LSR_BENCH_REHEARSE=1).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/lsr-gpu-out}"
PY="${PYTHON:-python3}"
ROOT=/tmp/lsr-kit
WHEELS=""
BUDGET="${LSR_GPU_BUDGET:-570}"
if [ "${1:-}" = "--rehearse" ]; then WHEELS="--no-wheels"; ROOT=/tmp/lsr-kit-rehearsal; export LSR_BENCH_REHEARSE=1; shift; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ ! -f "$ROOT/ready" ]; then
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
    { "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . ||
        "$PY" -m pip install -q --no-deps --no-build-isolation --no-index . ; } &&
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

stage() {  # NAME LIMIT COMMAND...: run it under LIMIT or what is left of BUDGET, log to $OUT/NAME.log, print the verdict
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped, ${limit} s of the budget left"; return; fi
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "== $name: rc $rc in $((SECONDS - start)) s (limit $limit s)"
  tail -n 25 "$OUT/$name.log"
}
limit() {  # WANTED: WANTED seconds, or what is left of the budget (less a margin for the next stage's start)
  local left=$((BUDGET - SECONDS - 10))
  echo $((left < $1 ? left : $1))
}

for name in "$@"; do
  case "$name" in
    encode) stage encode "$(limit 300)" "$PY" benchmarks/encode_gpu.py --results-dir "$OUT" \
              --pieces "${LSR_ENCODE_PIECES:-splade-tiny,bert-base-random,index}" ;;
    train) t=$(limit 240); stage train "$t" "$PY" benchmarks/train_gpu.py --results-dir "$OUT" --budget-seconds $((t - 15)) ;;
    tests) # shellcheck disable=SC2086
           stage tests "$(limit 300)" "$PY" -m pytest -v -n 8 -p no:cacheprovider -o addopts="" \
             ${LSR_GPU_TESTS:-tests/test_pool_triton.py tests/test_pool.py tests/test_launch.py tests/test_batching.py} ;;
    *) echo "gpu_session.sh: error: unknown stage '$name' (encode, train, tests)"; exit 2 ;;
  esac
done
