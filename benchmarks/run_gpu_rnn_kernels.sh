#!/usr/bin/env bash
# Issue 18: the Pallas persistent kernels against the fast path's pure-JAX loops and cuDNN on
# a GPU, and what XLA's command buffers (CUDA graphs, including the while loop) give.
#  1. the kernel tests (compiled Triton kernels on this GPU, not the interpreter);
#  2. LSTM and GRU (and the GRU's reset-before form), all three modes: rnnjax (kernels where
#     they fit: H <= 64, a power of two), rnnjax_scan (the same fast path, kernels off),
#     rnnjax_generic, jax_cudnn (jax.experimental.rnn's cuDNN LSTM) and torch where a CUDA
#     build is installed, at the sizes, T=1024 with B=1, 4, 64, and at H=64, where the
#     kernels apply;
#  3. the LSTM at B8/T512 (H 64 and 128) with command buffers off, at XLA's default, and with
#     WHILE and CONDITIONAL added.
# Run from the repository root on a GPU machine with jax[cuda], flax and optax installed; OUT is
# where results go. Under 9 minutes: each step has a timeout (150 + 2 x 150 + 90 + 3 x 40 s).
# A smoke run on a CPU, small sizes and short timeouts:
#   SIZES="4,20,8,16" CB_SIZES="4,20,8,16" REPEATS=2 OUT=/tmp/k bash benchmarks/run_gpu_rnn_kernels.sh
set -u
OUT=${OUT:-/tmp/rnnjax_gpu}
SIZES=${SIZES:-"8,512,64,128 32,128,256,256 16,200,96,192 1,1024,64,128 4,1024,64,128 64,1024,64,128 8,512,64,64 1,1024,64,64 64,1024,64,64"}
CB_SIZES=${CB_SIZES:-"8,512,64,128 8,512,64,64"}
REPEATS=${REPEATS:-20}
TEST_TIMEOUT=${TEST_TIMEOUT:-150}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-150}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
{ nvidia-smi --query-gpu=name,driver_version --format=csv 2>/dev/null || echo "no GPU"; } \
  | tee "$OUT/gpu_kernels_device.txt"
# One process (-n 0): several pytest-xdist workers would each claim most of the GPU's memory.
JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$TEST_TIMEOUT" python -m pytest -n 0 \
  -p no:cacheprovider tests/test_pallas_rnn.py tests/test_fused_kernels.py tests/test_loop_call.py \
  2>&1 | tail -5 | tee "$OUT/gpu_kernels_tests.txt"
CONTENDERS=rnnjax,rnnjax_scan,rnnjax_generic,jax_cudnn,torch
for cell in lstm gru; do
  # shellcheck disable=SC2086  # SIZES is a list of sizes.
  timeout "$BENCH_TIMEOUT" python benchmarks/bench_rnn.py --cell "$cell" --repeats "$REPEATS" \
    --contenders "$CONTENDERS" --sizes $SIZES --json-out "$OUT/gpu_kernels_$cell.jsonl" \
    > "$OUT/gpu_kernels_$cell.txt" 2>&1
  grep -v "^{" "$OUT/gpu_kernels_$cell.txt"
done
# The GRU's reset-before form, which cuDNN does not have: its kernel against its scan loops.
timeout 90 python benchmarks/bench_rnn.py --cell gru --repeats "$REPEATS" \
  --contenders rnnjax_reset_before,torch --sizes $CB_SIZES --json-out "$OUT/gpu_kernels_gru_rb.jsonl" \
  > "$OUT/gpu_kernels_gru_rb.txt" 2>&1
grep -v "^{" "$OUT/gpu_kernels_gru_rb.txt"
# XLA's command buffers: off, the default, and with the while loop and conditionals captured.
for cb in off default while; do
  case $cb in
    off) flags="--xla_gpu_enable_command_buffer=" ;;
    default) flags="" ;;
    while) flags="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" ;;
  esac
  # shellcheck disable=SC2086
  XLA_FLAGS="$flags" timeout 40 python benchmarks/bench_rnn.py --cell lstm --repeats "$REPEATS" \
    --contenders rnnjax,rnnjax_scan --modes fwd train --sizes $CB_SIZES \
    --json-out "$OUT/gpu_kernels_cb_$cb.jsonl" > "$OUT/gpu_kernels_cb_$cb.txt" 2>&1
  echo "## command buffers: $cb ($flags)"; grep -v "^{" "$OUT/gpu_kernels_cb_$cb.txt" | grep "^|" 
done
