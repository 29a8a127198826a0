#!/usr/bin/env bash
# Issue 17: the Newton engine on a GPU. Its tests (one process), then
# `benchmarks/newton_engine.py` on DEER's grid (a GRU, T = 1k, 10k, 100k, S = 1..256,
# batch 1, input size 1; jacobian "auto": full up to S = 32, diagonal above), forward and
# forward+backward against the sequential engine; then the diagonal GRU (one Jacobian-vector
# product per iteration) at S = 16, 64, 256. Run from the repository root on a GPU machine
# with jax[cuda], flax and optax installed; OUT is where results go. Under 8 minutes: each
# step has a timeout (120 + 240 + 120 s).
# A smoke run on a CPU, small sizes and short timeouts:
#   STEPS="64 256" SIZES="1 8" REPEATS=2 TEST_TIMEOUT=200 OUT=/tmp/newton bash benchmarks/run_gpu_newton.sh
set -u
OUT=${OUT:-/tmp/rnnjax_gpu}
STEPS=${STEPS:-"1000 10000 100000"}
SIZES=${SIZES:-"1 4 16 64 256"}
REPEATS=${REPEATS:-5}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240}
DIAG_TIMEOUT=${DIAG_TIMEOUT:-120}
DIAG_SIZES=${DIAG_SIZES:-"16 64 256"}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
{ nvidia-smi --query-gpu=name,driver_version --format=csv 2>/dev/null || echo "no GPU"; } \
  | tee "$OUT/gpu_newton_device.txt"
# float32 references need full float32 products (no TF32).
JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$TEST_TIMEOUT" python -m pytest -n 0 \
  -p no:cacheprovider tests/test_newton.py 2>&1 | tail -3 | tee "$OUT/gpu_newton_tests.txt"
# shellcheck disable=SC2086
timeout "$BENCH_TIMEOUT" python benchmarks/newton_engine.py --steps $STEPS --sizes $SIZES \
  --repeats "$REPEATS" --json-out "$OUT/gpu_newton.jsonl" 2>&1 | tee "$OUT/gpu_newton.txt"
# shellcheck disable=SC2086
timeout "$DIAG_TIMEOUT" python benchmarks/newton_engine.py --cell diagonal_gru --steps $STEPS \
  --sizes $DIAG_SIZES --repeats "$REPEATS" --json-out "$OUT/gpu_newton_diagonal.jsonl" 2>&1 \
  | tee "$OUT/gpu_newton_diagonal.txt"
