#!/usr/bin/env bash
# GPU numbers for the linear engines (issue 5): the engine property tests at full float32
# precision, then sequential vs parallel vs chunked for minGRU and the LRU. OUT: results dir.
set -u
OUT=${OUT:-/tmp/rnnjax_gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python -m pytest -q -p no:cacheprovider \
  tests/test_parallel.py 2>&1 | tail -2 | tee "$OUT/tests_linear.txt"
for cell in mingru lru; do
  timeout 150 python benchmarks/linear_engines.py --cell "$cell" \
    --json-out "$OUT/linear_gpu_$cell.jsonl" > "$OUT/linear_gpu_$cell.txt" 2>&1
  grep -v '^{' "$OUT/linear_gpu_$cell.txt"
done
