"""Memory that `unroll(..., remat=...)` saves, from XLA's own buffer assignment.

Compiles the gradient of a one-layer LSTM's loss for each remat setting and
reads `compiled.memory_analysis()`: the temporary buffers XLA allocates (the
saved activations live there), the arguments and outputs. Nothing is run, so
the numbers do not depend on how busy the machine is.

  python benchmarks/remat_memory.py                 # T=1000 and T=10000, B=8, I=32, H=256
  python benchmarks/remat_memory.py --steps 2000 --hidden 128

Prints one JSON line per setting, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform

import jax
import jax.numpy as jnp

import rnnjax


def measure(num_steps: int, batch: int, inputs: int, hidden: int, remat) -> dict:
  cell = rnnjax.lstm(hidden)
  params = jax.eval_shape(lambda: cell.init(jax.random.key(0), inputs))
  xs = jax.ShapeDtypeStruct((num_steps, batch, inputs), jnp.float32)

  def loss(p, x):
    ys, _ = rnnjax.unroll(cell, p, x, remat=remat)
    return jnp.mean(ys ** 2)

  compiled = jax.jit(jax.grad(loss)).lower(params, xs).compile()
  mem = compiled.memory_analysis()
  return {
      "T": num_steps, "B": batch, "I": inputs, "H": hidden, "remat": remat,
      "temp_MiB": round(mem.temp_size_in_bytes / 2**20, 2),
      "args_MiB": round(mem.argument_size_in_bytes / 2**20, 2),
      "out_MiB": round(mem.output_size_in_bytes / 2**20, 2),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10000])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=32)
  parser.add_argument("--hidden", type=int, default=256)
  args = parser.parse_args()
  rows = []
  for t in args.steps:
    k = max(1, round(math.sqrt(t)))
    for remat in (False, True, k):
      row = measure(t, args.batch, args.inputs, args.hidden, remat)
      print(json.dumps(row), flush=True)
      rows.append(row)
  machine = platform.processor() or platform.machine()
  print(f"\njax {jax.__version__}, backend {jax.default_backend()}, {machine}\n")
  print("| T | remat | temporaries (MiB) | vs no remat |")
  print("|---|---|---|---|")
  for row in rows:
    base = next(r for r in rows if r["T"] == row["T"] and r["remat"] is False)
    ratio = row["temp_MiB"] / base["temp_MiB"] if base["temp_MiB"] else float("nan")
    print(f"| {row['T']} | {row['remat']} | {row['temp_MiB']} | {ratio:.2f}x |")


if __name__ == "__main__":
  main()
