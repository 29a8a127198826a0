#!/usr/bin/env bash
# Issue 5 follow-up: `rnnjax train --engine sequential` vs `parallel` for the parameter-matched
# minGRU/minLSTM adding models (T=200), on a GPU machine with jax[cuda], flax and optax:
# the engine tests at full float32 precision, then 600 training steps per engine, two
# interleaved rounds, median steps/s over the log intervals after the first two (compile).
set -u
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python -m pytest -q -p no:cacheprovider \
  tests/test_parallel.py tests/test_train.py -k "stack or engine or equal_sequential" 2>&1 | tail -2
for rep in 1 2; do for eng in sequential parallel; do
  for cell in mingru:2496 minlstm:1747; do c=${cell%%:*}; h=${cell##*:}
  timeout 60 python -m rnnjax.cli train --task adding --length 200 --cell $c --hidden $h \
    --steps 600 --batch-size 64 --lr 0.002 --engine $eng --eval-every 0 --checkpoint-every 0 \
    --no-plots --quiet --overwrite --out /tmp/r/$c-$eng > /tmp/r.log 2>&1 || tail -3 /tmp/r.log
  python - $c $eng $rep <<'P'
import json, statistics, sys
c, e, r = sys.argv[1:]
rows = [json.loads(l) for l in open(f"/tmp/r/{c}-{e}/metrics.jsonl")]
sps = [x["steps_per_s"] for x in rows if "steps_per_s" in x][2:]
s = json.load(open(f"/tmp/r/{c}-{e}/summary.json"))
print(f"rep {r} {c:8s} {e:10s} engine={s['engine']:10s} median steps/s {statistics.median(sps):7.1f}  test_mse {s['test_mse']:.4f}")
P
done; done; done
