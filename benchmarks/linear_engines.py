"""Sequential vs parallel vs chunked engines for a linear cell, over sequence length.

Times `rnnjax.parallel_unroll(cell, params, xs, engine=...)` for a linear cell
(minGRU by default) at T from 256 to 65,536: the forward pass and forward+backward
(the gradient of `sum(ys**2)` w.r.t. params and xs). The engines are interleaved,
with 3 warm-up calls and medians over `--repeats`, and compile time is excluded.
Every engine is checked against the sequential one (outputs to 1e-4) before any
timing.

`floor` is the memory-bandwidth floor: one fused elementwise pass
`a * h + b -> out` over arrays of the recurrence's size `[T, B, S]`. That is the
time to read the coefficients and write the states once, and no engine can beat it.

For each T the script prints the fastest engine, and for each backend the
crossover length: the shortest T from which a parallel engine beats `lax.scan`.

  python benchmarks/linear_engines.py                      # mingru, B=2, H=128
  python benchmarks/linear_engines.py --cell lru --steps 256 4096 --json-out lin.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax

ENGINES = ("sequential", "parallel", "chunked")


def _cell(name: str, hidden: int):
  if name == "mingru_log":
    return rnnjax.mingru(hidden, log_space=True)
  return getattr(rnnjax, name)(hidden)


def _timed(fns: dict, args: dict, repeats: int) -> dict[str, float]:
  for name, fn in fns.items():
    for _ in range(3):
      jax.block_until_ready(fn(*args[name]))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args[name]))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(ts)) * 1e3 for name, ts in times.items()}


def measure(cell_name: str, num_steps: int, batch: int, hidden: int, inputs: int, chunk: int,
            repeats: int) -> list[dict]:
  cell = _cell(cell_name, hidden)
  params = cell.init(jax.random.key(0), inputs)
  xs = jax.random.normal(jax.random.key(1), (num_steps, batch, inputs))

  def run(engine):
    return lambda p, x: rnnjax.parallel_unroll(cell, p, x, engine=engine, chunk=chunk)[0]

  fwd = {e: jax.jit(run(e)) for e in ENGINES}
  fwd_bwd = {e: jax.jit(jax.grad(lambda p, x, e=e: jnp.sum(jnp.real(run(e)(p, x)) ** 2),
                                 argnums=(0, 1))) for e in ENGINES}
  ref = fwd["sequential"](params, xs)
  for e in ENGINES[1:]:
    got = fwd[e](params, xs)
    err = float(jnp.abs(got - ref).max() / jnp.maximum(jnp.abs(ref).max(), 1e-12))
    if err > 1e-4:
      raise SystemExit(f"linear_engines: engine {e} differs from sequential by {err:.2e}")
  carry = cell.initial_carry(params, (batch,))
  state = jnp.zeros((num_steps, *carry.h.shape), carry.h.dtype)
  floor = jax.jit(lambda a, h, b: a * h + b)
  rows = []
  for mode, fns in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
    calls = dict(fns)
    args = {e: (params, xs) for e in fns}
    calls["floor"] = floor
    args["floor"] = (state + 0.5, state + 1.0, state + 2.0)
    medians = _timed(calls, args, repeats)
    for name, ms in medians.items():
      rows.append(dict(cell=cell_name, T=num_steps, B=batch, H=hidden, mode=mode, engine=name,
                       median_ms=round(ms, 3), backend=jax.default_backend()))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cell", default="mingru",
                      choices=("mingru", "mingru_log", "minlstm", "lru", "rglru"))
  parser.add_argument("--steps", type=int, nargs="+",
                      default=[256, 1024, 4096, 16384, 65536])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--inputs", type=int, default=16)
  parser.add_argument("--chunk", type=int, default=rnnjax.parallel_unroll.__kwdefaults__["chunk"])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--json-out", default=None)
  args = parser.parse_args()
  print(f"# jax {jax.__version__}, backend {jax.default_backend()}, "
        f"device {jax.devices()[0].device_kind}; cell {args.cell}, B={args.batch}, "
        f"H={args.hidden}, I={args.inputs}, chunk={args.chunk}")
  rows = []
  for num_steps in args.steps:
    new = measure(args.cell, num_steps, args.batch, args.hidden, args.inputs, args.chunk,
                  args.repeats)
    for row in new:
      print(json.dumps(row), flush=True)
    rows += new
  if args.json_out:
    with open(args.json_out, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  for mode in ("fwd", "fwd_bwd"):
    print(f"\n### {args.cell}, {mode} (median ms; B={args.batch}, H={args.hidden})\n")
    print("| T | sequential | parallel | chunked | floor | fastest |")
    print("|---|---|---|---|---|---|")
    crossover = None
    for num_steps in args.steps:
      ms = {r["engine"]: r["median_ms"] for r in rows if r["T"] == num_steps and r["mode"] == mode}
      best = min(ENGINES, key=ms.get)
      if crossover is None and best != "sequential":
        crossover = num_steps
      print(f"| {num_steps} | {ms['sequential']} | {ms['parallel']} | {ms['chunked']} | "
            f"{ms['floor']} | {best} |")
    print(f"\ncrossover ({mode}): "
          + (f"a parallel engine is fastest from T={crossover}" if crossover
             else "sequential is fastest at every T measured"))


if __name__ == "__main__":
  main()
