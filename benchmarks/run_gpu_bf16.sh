#!/usr/bin/env bash
# Issue 15: bfloat16 (mixed precision) against float32 on a GPU. The fast-path tests in
# bfloat16, then the operand types of the compiled bfloat16 products, then the LSTM and GRU
# benchmarks with contenders rnnjax (float32 fast path), rnnjax_bf16 (the same params,
# dtype=bfloat16) and torch (cuDNN, float32, TF32 off), all three modes. Run from the
# repository root on a GPU machine with jax[cuda], flax, optax and torch installed; OUT is
# where results go. Under 8 minutes in all: each step has a timeout (120 + 60 + 2 x 150 s).
# A smoke run on a CPU, small sizes and short timeouts:
#   SIZES="4,20,8,16" REPEATS=2 TEST_TIMEOUT=100 OUT=/tmp/bf16 bash benchmarks/run_gpu_bf16.sh
set -u
OUT=${OUT:-/tmp/rnnjax_gpu}
SIZES=${SIZES:-"32,128,256,256 8,512,64,128 64,1024,128,256"}
REPEATS=${REPEATS:-20}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-150}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
{ nvidia-smi --query-gpu=name,driver_version --format=csv 2>/dev/null || echo "no GPU"; } \
  | tee "$OUT/gpu_bf16_device.txt"
# The float32 references of the tests need full float32 products (no TF32). One process
# (-n 0): several pytest-xdist workers would each claim most of the GPU's memory.
JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$TEST_TIMEOUT" python -m pytest -n 0 \
  -p no:cacheprovider tests/test_precision.py tests/test_fused.py -k "bf16 or precision" \
  2>&1 | tail -3 | tee "$OUT/gpu_bf16_tests.txt"
# Are the products bfloat16 on this backend, or upcast? The operand types of every product
# (a dot, or a custom call to a gemm) in the compiled gradient of a bfloat16 LSTM.
timeout 60 python - 2>&1 <<'PY' | tee "$OUT/gpu_bf16_hlo.txt"
import re, jax, jax.numpy as jnp, rnnjax
jax.config.update("jax_default_matmul_precision", "highest")  # As the benchmark runs.
cell = rnnjax.lstm(256, dtype=jnp.bfloat16)
p = cell.init(jax.random.key(0), 128)
xs = jnp.ones((16, 8, 128), jnp.float32)
loss = lambda p, xs: jnp.mean(rnnjax.unroll(cell, p, xs)[0].astype(jnp.float32) ** 2)
hlo = jax.jit(jax.grad(loss)).lower(p, xs).compile().as_text()
types = dict(re.findall(r"^\s*(?:ROOT )?%(\S+) = (\S+) ", hlo, re.M))
print(jax.devices()[0].device_kind)
for line in hlo.splitlines():
  m = re.search(r"%\S+ = (\S+) (dot|custom-call)\(([^)]*)\)", line)
  if m and (m[2] == "dot" or "gemm" in line):
    ins = [types.get(a.strip().lstrip("%"), "?").split("{")[0] for a in m[3].split(",")]
    print(f"{m[2]}: {' x '.join(ins[:2])} -> {m[1].split('{')[0]}")
PY
for cell in lstm gru; do
  # shellcheck disable=SC2086  # SIZES is a list of sizes.
  timeout "$BENCH_TIMEOUT" python benchmarks/bench_rnn.py --cell "$cell" --repeats "$REPEATS" \
    --contenders rnnjax_bf16,torch --sizes $SIZES --json-out "$OUT/gpu_bf16_$cell.jsonl" \
    > "$OUT/gpu_bf16_$cell.txt" 2>&1
  grep -v "^{" "$OUT/gpu_bf16_$cell.txt"  # The skips, the header and the tables.
done
