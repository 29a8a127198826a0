#!/usr/bin/env bash
# The GPU numbers in RESULTS.md: fast-path tests at full float32 precision, then the
# LSTM and GRU benchmarks at the two sizes of issue 4 (PyTorch cuDNN and
# jax.experimental.rnn join as peers). Run from the repository root on a GPU machine
# with jax[cuda], flax, optax, equinox and torch installed; OUT is where results go.
set -u
OUT=${OUT:-/tmp/rnnjax_gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$OUT/gpu.txt"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 200 python -m pytest -q -p no:cacheprovider \
  tests/test_fused.py 2>&1 | tail -3 | tee "$OUT/tests.txt"
for cell in lstm gru; do
  timeout 240 python benchmarks/bench_rnn.py --cell "$cell" --repeats 20 \
    --sizes 32,128,256,256 8,512,64,128 --json-out "$OUT/gpu_$cell.jsonl" \
    > "$OUT/gpu_$cell.txt" 2>&1
  tail -40 "$OUT/gpu_$cell.txt"
done
