#!/usr/bin/env bash
# GPU check, one prepared script (run on a machine with an NVIDIA GPU and jax[cuda]):
#   bash scripts/gpu_check.sh OUTDIR
# 1. the engine/strategy tests on the GPU backend, 2. throughput of one incremental
# batch per model (scripts/benchmark.py), 3. the default job's wall time.
set -u
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi -L | tee "$out/device.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$out/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_baselines.py tests/test_transforms.py \
  tests/test_architectural.py tests/test_regularization_stream.py 2>&1 | tail -15 | tee "$out/tests.txt"
bench() { python3 scripts/benchmark.py "$@" 2>/dev/null | tail -1 | tee -a "$out/bench.jsonl"; }
bench --model=mlp --input_shape=28,28,1 --examples=12000 --batch_size=32
bench --model=cifarnet --input_shape=32,32,3 --examples=5000 --batch_size=128 --epochs=2
# CORe50-sized models (128x128): pass --paper_models to include them (GoogLeNet's compile is slow).
if [ "${2:-}" = "--paper_models" ]; then
  bench --model=caffenet --input_shape=128,128,3 --examples=2400 --batch_size=256 --classes=50
  bench --model=googlenet --input_shape=128,128,3 --examples=2400 --batch_size=64 --classes=50
  bench --model=nin --input_shape=128,128,3 --examples=2400 --batch_size=256 --classes=50
fi
start=$(date +%s.%N)
python3 -m cljax.main --workdir=/tmp/gpu_default > "$out/default_job.txt" 2>&1
python3 -c "import sys, time; print(f'default job wall seconds: {time.time() - float(sys.argv[1]):.1f}')" "$start" \
  | tee -a "$out/default_job.txt"
