#!/usr/bin/env bash
# GPU check, one prepared script (run on a machine with an NVIDIA GPU and jax[cuda]):
#   bash scripts/gpu_check.sh OUTDIR
# Each step has its own time limit (about 7 minutes in all):
# 1. runs vmapped against one run (scripts/benchmark_runs.py): the MLP on Fashion-MNIST-sized data,
#    GoogLeNet at 128x128 with mini-batches of 64 (synthetic images: the shapes are what matters);
# 2. CifarNet with 10 runs vmapped, float32 and bfloat16 (compute_dtype);
# 3. the default job's eight paper strategies (split digits), float32 then bfloat16 on three, for its wall time
#    and the accuracies of both precisions side by side.
set -u
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD CLJAX_CACHE_DIR=/tmp/cljax_xla
log="$out/log.txt"
nvidia-smi -L | tee "$out/device.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$out/device.txt"
step() {  # step SECONDS COMMAND...: each step has its own limit, so one slow step cannot starve the rest
  local limit=$1
  shift
  echo "+ $*" | tee -a "$log"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -E '^(I|W)[0-9]{4} ' | tail -12 | tee -a "$log"
  echo "  ($((SECONDS - start)) s)" | tee -a "$log"
}
bench="python3 scripts/benchmark_runs.py"
step 60 $bench --synthetic=28,28,1:6000 --runs=10 --modes=vmapped,one
step 100 $bench --synthetic=128,128,3:200 --model=googlenet --batch_size=64 --epochs=1 --runs=10 --modes=vmapped,one
step 50 $bench --synthetic=32,32,3:1000 --model=cifarnet --runs=10 --modes=vmapped
step 50 $bench --synthetic=32,32,3:1000 --model=cifarnet --runs=10 --modes=vmapped --compute_dtype=bfloat16
# The paper's eight, as the speed issue's "default job (8 strategies x 3 runs)" and earlier GPU
# checks (since 2026-12-01 the default job also runs rehe, gem and icarl).
step 90 python3 -m cljax.main --workdir="$out/default_job" --config.compilation_cache=False \
  --config.strategies=naive,cumulative,lwf,ewc,si,cwr,cwr_plus,ar1
step 60 python3 -m cljax.main --workdir="$out/default_job_bf16" --config.compilation_cache=False \
  --config.compute_dtype=bfloat16 --config.strategies=naive,ewc,ar1
