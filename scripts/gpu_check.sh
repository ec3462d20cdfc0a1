#!/usr/bin/env bash
# GPU check, one prepared script (run on a machine with an NVIDIA GPU and jax[cuda]):
#   bash scripts/gpu_check.sh OUTDIR
# Each step has its own time limit (STEP_SECONDS), so one slow step cannot use up the others' time:
# 1. runs vmapped against one run (scripts/benchmark_runs.py): the MLP on Fashion-MNIST-sized data,
#    GoogLeNet at 128x128 with mini-batches of 64 (synthetic images: the shapes are what matters);
# 2. CifarNet with 10 runs vmapped, float32 and bfloat16 (compute_dtype);
# 3. the default job (split digits), float32 then bfloat16 on three strategies, for its wall time
#    and the accuracies of both precisions side by side.
set -u
out=${1:-/tmp/gpu_check}
step_seconds=${STEP_SECONDS:-200}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD CLJAX_CACHE_DIR=/tmp/cljax_xla
log="$out/log.txt"
nvidia-smi -L | tee "$out/device.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$out/device.txt"
step() {
  echo "+ $*" | tee -a "$log"
  local start=$SECONDS
  timeout "$step_seconds" "$@" 2>&1 | grep -v -E '^(I|W)[0-9]{4} ' | tail -12 | tee -a "$log"
  echo "  ($((SECONDS - start)) s)" | tee -a "$log"
}
bench="python3 scripts/benchmark_runs.py"
step $bench --synthetic=28,28,1:6000 --runs=10 --modes=vmapped,one
step $bench --synthetic=128,128,3:200 --model=googlenet --batch_size=64 --epochs=1 --runs=10 --modes=vmapped,one
step $bench --synthetic=32,32,3:1000 --model=cifarnet --runs=10 --modes=vmapped
step $bench --synthetic=32,32,3:1000 --model=cifarnet --runs=10 --modes=vmapped --compute_dtype=bfloat16
step python3 -m cljax.main --workdir="$out/default_job" --config.compilation_cache=False
step python3 -m cljax.main --workdir="$out/default_job_bf16" --config.compilation_cache=False \
  --config.compute_dtype=bfloat16 --config.strategies=naive,ewc,ar1
