"""Steps/s of data-parallel `rnnjax.fit` on 1, 2 and 4 SIMULATED CPU devices.

Each device count runs in its own fresh subprocess started with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` and `JAX_PLATFORMS=cpu`.
XLA then splits the one CPU into N devices that share its cores. The numbers
measure the overhead of sharding: placing each batch, the all-reduce of the
gradients, N smaller programs instead of one. They do NOT measure real scaling,
since the simulated devices add no compute. Real speed-ups need real devices
(several GPUs, or hosts).

Every row trains the same problem with the same global batch: an LSTM on the
adding problem, `fit(..., mesh=jax.make_mesh((N,), ("batch",)))`, fed host
(NumPy) batches from a pool, as a data loader gives them. `fit` places each
batch on the mesh. The `no mesh` row is `fit` without a mesh, for comparison
with N = 1.

All subprocesses start together and compile (an untimed 2-step `fit`). Then the
timing runs in rounds: in each round every subprocess in turn times one `fit`
of `--steps` steps from a fresh state, while the others wait. So a change in the
machine's load hits every row alike. The table gives the median steps/s over
`--repeats` rounds.

  python benchmarks/data_parallel.py                       # H=128, T=100, B=64
  python benchmarks/data_parallel.py --hidden 256 --batch 128 --devices 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import _runs  # benchmarks/_runs.py, beside this script

LABEL = "simulated devices on one CPU: measures overhead, not real scaling"


def child(args: argparse.Namespace) -> None:
  """The subprocess: compiles, then times one `fit` per line `run` on stdin (`stop` ends)."""
  import jax
  import numpy as np
  import optax

  import rnnjax
  from rnnjax.tasks import base
  from rnnjax.tasks.synthetic import adding_batch

  jax.config.update("jax_numpy_dtype_promotion", "standard")
  n = args.child
  mesh = jax.make_mesh((n,), ("batch",)) if n else None
  model = rnnjax.sequence_model(rnnjax.lstm(args.hidden), input_size=2, output_size=1)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  pool = [jax.tree_util.tree_map(np.asarray, adding_batch(jax.random.key(i), args.batch,
                                                          args.length)) for i in range(8)]

  def loss_fn(params, batch, key):
    del key
    preds, _ = model.apply(params, batch["xs"])
    return base.masked_mse(preds, batch)

  step_fn = rnnjax.make_train_step(loss_fn, optimizer)

  def run(num_steps: int) -> float:
    state = rnnjax.train_state(model.init(jax.random.key(0)), optimizer, jax.random.key(1))
    jax.block_until_ready(state)
    start = time.perf_counter()
    result = rnnjax.fit(state, step_fn, lambda step: pool[step % len(pool)],
                        num_steps=num_steps, progress=False, mesh=mesh)
    jax.block_until_ready(result.state)
    assert result.status == "completed", result.message
    return time.perf_counter() - start

  first_call_s = run(2)
  print(json.dumps({"devices": max(n, 1), "simulated": True, "mesh": mesh is not None,
                    "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
                    "first_call_s": first_call_s}), flush=True)
  while sys.stdin.readline().strip() == "run":
    print(json.dumps({"steps_per_s": args.steps / run(args.steps),
                      "load_avg_1m": os.getloadavg()[0]}), flush=True)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4],
                      help="simulated CPU device counts, one subprocess each")
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--length", type=int, default=100, help="T, steps per sequence")
  parser.add_argument("--batch", type=int, default=64, help="the global batch size")
  parser.add_argument("--steps", type=int, default=30, help="training steps per timed fit")
  parser.add_argument("--repeats", type=int, default=5, help="rounds of timed fits")
  parser.add_argument("--no-baseline", action="store_true", help="skip the `no mesh` row")
  parser.add_argument("--json-out", help="append the rows as JSON lines to this file")
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child is not None:
    child(args)
    return 0

  for n in args.devices:
    if n < 1 or args.batch % n:
      parser.error(f"--batch ({args.batch}) must be divisible by every --devices count, "
                   f"got {n}")
  counts = ([] if args.no_baseline else [0]) + list(args.devices)
  forwarded = ["--hidden", str(args.hidden), "--length", str(args.length), "--batch",
               str(args.batch), "--steps", str(args.steps)]
  procs = {}
  for n in counts:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={max(n, 1)}"}
    procs[n] = subprocess.Popen([sys.executable, __file__, "--child", str(n), *forwarded],
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)

  def receive(n: int) -> dict:
    line = procs[n].stdout.readline()
    if not line:
      raise SystemExit(f"data_parallel: the subprocess for {n} devices failed (see above)")
    return json.loads(line)

  try:
    rows = {n: receive(n) for n in counts}  # Each has compiled.
    rates = {n: [] for n in counts}
    loads = []
    for _ in range(args.repeats):
      for n in counts:
        procs[n].stdin.write("run\n")
        procs[n].stdin.flush()
        reply = receive(n)
        rates[n].append(reply["steps_per_s"])
        loads.append(reply["load_avg_1m"])
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.stdin.close()
        proc.wait(timeout=60)

  results = []
  for n in counts:
    row = {**rows[n], "steps_per_s": statistics.median(rates[n]), "min": min(rates[n]),
           "max": max(rates[n]), "rates": rates[n], "steps": args.steps,
           "repeats": args.repeats, "hidden": args.hidden, "length": args.length,
           "global_batch": args.batch, "per_device_batch": args.batch // max(n, 1),
           "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "load_avg_1m": [min(loads), max(loads)], "label": LABEL}
    results.append(row)
    _runs.emit(row, args.json_out)

  print(f"\n{LABEL.upper()}")
  print(f"LSTM H={args.hidden}, adding problem T={args.length}, global batch {args.batch}, "
        f"{args.steps} steps per timed fit, median of {args.repeats} interleaved rounds; "
        f"jax {results[0]['jax']} on {os.cpu_count()} CPU cores ({platform.machine()}); "
        f"load average (1 min) during timing {min(loads):.1f}-{max(loads):.1f}\n")
  ref = next((r["steps_per_s"] for r in results if r["mesh"] and r["devices"] == 1), None)
  print("| simulated CPU devices | batch per device | steps/s (median) | min-max | vs 1 device |")
  print("|---|---|---|---|---|")
  for r in results:
    name = "no mesh" if not r["mesh"] else str(r["devices"])
    rel = f"{r['steps_per_s'] / ref:.2f}x" if ref else "-"
    print(f"| {name} | {r['per_device_batch']} | {r['steps_per_s']:.1f} | "
          f"{r['min']:.1f}-{r['max']:.1f} | {rel} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
