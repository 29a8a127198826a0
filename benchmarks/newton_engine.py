"""The Newton engine against the sequential one: iterations to tolerance and time, over T and S.

For a cell (a GRU by default, as DEER's table) at every (T, S) asked for, runs
`rnnjax.newton_unroll(cell, params, xs, options=Newton(jacobian=J), return_info=True)`
and records the iterations to the tolerance, the final residual, whether it converged
(or fell back), the largest error against `rnnjax.unroll` (the sequential engine), and
the time of both (forward, and forward+backward: the gradient of `sum(ys**2)` w.r.t.
params and xs), as medians of interleaved calls after 3 warm-ups, compile time
excluded. Params are the cell's default init (a contractive cell: the largest Lyapunov
exponent is printed beside, from `rnnjax.diagnostics.jacobian_spectrum` on the first
sequence, where T * S is small enough).

DEER's published speedups (Lim et al., ICLR 2024, a GRU on a V100, as quoted in issue 17):
about 100x at S=1 and T=10k, about 7x at S=16, 1.2-1.5x at S=64. The `--gpu` preset runs
their grid: T from 1k to 100k, S from 1 to 256.

  python benchmarks/newton_engine.py                                  # CPU grid, small
  python benchmarks/newton_engine.py --steps 256 1024 --sizes 1 8 32 --jacobian full diagonal
  python benchmarks/newton_engine.py --gpu --json-out newton_gpu.jsonl
"""

from __future__ import annotations

import argparse
import time

import _runs  # benchmarks/_runs.py, beside this script
import jax
import jax.numpy as jnp
import numpy as np

import rnnjax
from rnnjax import Newton, newton_unroll


def _timed(fns: dict, repeats: int) -> dict[str, float]:
  for fn in fns.values():
    for _ in range(3):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(ts)) * 1e3 for name, ts in times.items()}


def _lyapunov(cell, params, xs) -> float | None:
  if xs.shape[0] * xs.shape[-1] > 64 * 1024:
    return None
  spectrum = rnnjax.diagnostics.jacobian_spectrum(cell, params, xs[:, 0])
  return float(spectrum.lyapunov[0])


def measure(cell_name: str, num_steps: int, size: int, batch: int, inputs: int,
            jacobian: str, repeats: int, modes: tuple[str, ...]) -> dict:
  cell = getattr(rnnjax, cell_name)(size)
  params = cell.init(jax.random.key(0), inputs)
  xs = jax.random.normal(jax.random.key(1), (num_steps, batch, inputs))
  options = Newton(jacobian=jacobian)
  newton = jax.jit(lambda p, x: newton_unroll(cell, p, x, options=options, return_info=True))
  sequential = jax.jit(lambda p, x: rnnjax.unroll(cell, p, x))
  ys, _, info = newton(params, xs)
  ys_seq, _ = sequential(params, xs)
  row = {"cell": cell_name, "T": num_steps, "S": size, "B": batch, "I": inputs,
         "jacobian": jacobian, "iterations": int(info.iterations),
         "residual": float(info.residual), "converged": bool(info.converged),
         "fell_back": bool(info.fell_back),
         "max_abs_error": float(jnp.max(jnp.abs(ys - ys_seq))),
         "lyapunov": _lyapunov(cell, params, xs), "backend": jax.default_backend()}
  fns = {}
  if "fwd" in modes:
    fns["newton_fwd"] = lambda: newton(params, xs)[0]
    fns["sequential_fwd"] = lambda: sequential(params, xs)[0]
  if "train" in modes:
    def grad_of(run):
      return jax.jit(jax.grad(lambda p, x: jnp.sum(run(p, x)[0] ** 2), argnums=(0, 1)))
    g_newton = grad_of(lambda p, x: newton_unroll(cell, p, x, options=options))
    g_seq = grad_of(lambda p, x: rnnjax.unroll(cell, p, x))
    fns["newton_train"] = lambda: g_newton(params, xs)
    fns["sequential_train"] = lambda: g_seq(params, xs)
  times = _timed(fns, repeats)
  row.update({f"{k}_ms": round(v, 3) for k, v in times.items()})
  for mode in modes:
    row[f"{mode}_speedup"] = round(times[f"sequential_{mode}"] / times[f"newton_{mode}"], 3)
  return row


def table(rows: list[dict]) -> str:
  modes = [m for m in ("fwd", "train") if any(f"{m}_speedup" in r for r in rows)]
  head = ["cell", "T", "S", "jacobian", "iterations", "converged", "fell back", "max |err|",
          "Lyapunov"] + [f"{m}: sequential / newton" for m in modes]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    lyap = "" if r["lyapunov"] is None else f"{r['lyapunov']:.3f}"
    cells = [r["cell"], str(r["T"]), str(r["S"]), r["jacobian"], str(r["iterations"]),
             str(r["converged"]), str(r["fell_back"]), f"{r['max_abs_error']:.1e}", lyap]
    cells += [f"{r[f'{m}_speedup']:.3g}x" for m in modes]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cell", default="gru")
  parser.add_argument("--steps", type=int, nargs="+", default=[256, 1024, 4096])
  parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--inputs", type=int, default=1)
  parser.add_argument("--jacobian", nargs="+", default=["auto"],
                      choices=["auto", "full", "diagonal"])
  parser.add_argument("--modes", nargs="+", default=["fwd", "train"], choices=["fwd", "train"])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--gpu", action="store_true",
                      help="DEER's grid: T 1k..100k, S 1..256")
  parser.add_argument("--json-out", default=None)
  args = parser.parse_args(argv)
  steps, sizes = args.steps, args.sizes
  if args.gpu:
    steps, sizes = [1_000, 10_000, 100_000], [1, 2, 4, 8, 16, 32, 64, 128, 256]
  rows = []
  for num_steps in steps:
    for size in sizes:
      for jacobian in args.jacobian:
        row = measure(args.cell, num_steps, size, args.batch, args.inputs, jacobian,
                      args.repeats, tuple(args.modes))
        rows.append(row)
        _runs.emit(row, args.json_out)
  print()
  print(table(rows))


if __name__ == "__main__":
  main()
