"""Training-workload speed of a one-layer LSTM/GRU: rnnjax against Flax, Equinox, Haiku, PyTorch.

Every contender is loaded with the same weights and checked against rnnjax's
outputs (to 1e-4) before anything is timed. Three modes per contender: `fwd`
(outputs), `fwd_bwd` (gradient of `mean(ys**2)` w.r.t. params and xs) and `train`
(one Adam step; torch.optim.Adam for PyTorch). JAX functions are jitted, warmed
up and timed after `block_until_ready`; contenders are interleaved round-robin
within each repeat. `matmul_floor` is the same matrix products with nothing else.

  python benchmarks/bench_rnn.py --quick                       # smoke run, one small size
  python benchmarks/bench_rnn.py --cell gru --sizes 8,512,64,128 --repeats 20
  python benchmarks/bench_rnn.py --json-out bench.jsonl         # all sizes, rows also to a file

Sizes are `B,T,I,H`; `16,150,256,256` is DeepBench's H256/B16/T150. On CPU, XLA
uses every core; `--threads` (default: the cores this process may use) sets
PyTorch's. On a GPU, JAX runs at `highest` matmul precision and PyTorch with TF32
off, so that all contenders compute in full float32; `jax.experimental.rnn`'s
cuDNN LSTM joins as `jax_cudnn`. Prints one JSON line per measurement, then a
Markdown table per size and mode; `ratio` is rnnjax's time over the peer's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable

import _peers
import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnnjax

SIZES = ("32,128,256,256", "8,512,64,128", "64,100,128,256", "32,100,512,512",
         "16,150,256,256")
QUICK_SIZE = "4,20,8,16"
MODES = ("fwd", "fwd_bwd", "train")
TOLERANCE = 1e-4
WARMUP = 3


def _version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "absent"


def _loss(ys):
  return jnp.mean(ys ** 2)


def jax_calls(c: _peers.JaxContender, xs: jax.Array) -> dict[str, tuple[Callable, tuple]]:
  """`mode -> (jitted function, args)` for one JAX contender."""
  opt = optax.adam(1e-3)
  if c.batch_major:  # Transposed outside the timed function: `ys` only enters the loss.
    xs = jnp.swapaxes(xs, 0, 1)

  def fwd_bwd(p, x):
    return jax.grad(lambda p, x: _loss(c.forward(p, x)), argnums=(0, 1))(p, x)

  def train(p, state, x):
    loss, grads = jax.value_and_grad(lambda p: _loss(c.forward(p, x)))(p)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  def fwd(p, x):  # A new function, so that `build`'s check leaves no compiled copy to reuse.
    return c.forward(p, x)

  return {"fwd": (jax.jit(fwd), (c.params, xs)),
          "fwd_bwd": (jax.jit(fwd_bwd), (c.params, xs)),
          "train": (jax.jit(train), (c.params, opt.init(c.params), xs))}


def torch_calls(c: _peers.TorchContender, xs: np.ndarray) -> dict[str, Callable[[], None]]:
  """`mode -> call` for PyTorch; each call waits for the device before returning."""
  import torch

  module, dev = c.module, c.device
  x = torch.from_numpy(xs).to(dev)
  x_grad = x.clone().requires_grad_(True)
  opt = torch.optim.Adam(module.parameters(), lr=1e-3)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

  def fwd():
    with torch.no_grad():
      module(x)
    sync()

  def fwd_bwd():
    for p in module.parameters():
      p.grad = None
    x_grad.grad = None
    (module(x_grad)[0] ** 2).mean().backward()
    sync()

  def train():
    opt.zero_grad(set_to_none=True)
    (module(x)[0] ** 2).mean().backward()
    opt.step()
    sync()

  return {"fwd": fwd, "fwd_bwd": fwd_bwd, "train": train}


def build(cell_name: str, size: tuple[int, ...], threads: int, seed: int):
  """Contenders for one size, checked against rnnjax; returns (jax list, torch or None, xs)."""
  batch, steps, in_size, hidden = size
  k_params, k_xs = jax.random.split(jax.random.key(seed))
  cell = rnnjax.lstm(hidden) if cell_name == "lstm" else rnnjax.gru(hidden)
  params = cell.init(k_params, in_size)
  xs = jax.random.normal(k_xs, (steps, batch, in_size), jnp.float32)

  builders = [lambda: _peers.rnnjax_contender(cell_name, hidden, params)]
  if cell_name == "gru":
    builders.append(lambda: _peers.rnnjax_contender(cell_name, hidden, params,
                                                    reset_after=False))
  builders += [lambda f=f: f(cell_name, hidden, params) for f in (
      _peers.flax_contender, _peers.equinox_contender, _peers.haiku_contender,
      _peers.cudnn_contender, _peers.matmul_floor)]
  contenders = []
  for make in builders:
    try:
      contenders.append(make())
    except _peers.Skip as e:
      print(f"# skip: {e}", flush=True)
  try:
    torch_c = _peers.torch_contender(cell_name, hidden, params, threads)
  except _peers.Skip as e:
    print(f"# skip torch: {e}", flush=True)
    torch_c = None

  refs = {c.name: np.asarray(jax.jit(c.forward)(c.params, xs)) for c in contenders
          if c.name.startswith("rnnjax")}
  outputs = {}
  for c in contenders:
    if c.name == "matmul_floor":
      continue
    if c.batch_major:
      ys = jnp.swapaxes(jax.jit(c.forward)(c.params, jnp.swapaxes(xs, 0, 1)), 0, 1)
    else:
      ys = jax.jit(c.forward)(c.params, xs)
    outputs[c.name] = (c.baseline, np.asarray(ys))
  if torch_c is not None:
    import torch

    with torch.no_grad():
      ys = torch_c.module(torch.from_numpy(np.array(xs)).to(torch_c.device))[0]
    outputs["torch"] = ("rnnjax", ys.cpu().numpy())
  for name, (baseline, ys) in outputs.items():
    err = float(np.max(np.abs(ys - refs[baseline])))
    if not err <= TOLERANCE:
      raise SystemExit(
          f"bench_rnn: {name}'s outputs differ from {baseline}'s by {err:.2e} (> {TOLERANCE}) "
          f"at size B,T,I,H={size}, cell={cell_name}; the weight mapping in benchmarks/_peers.py "
          "is wrong for this version of the peer library, so its timings would not compare the "
          "same function.")
  return contenders, torch_c, xs


def measure(cell_name: str, size: tuple[int, ...], repeats: int, threads: int,
            seed: int) -> list[dict]:
  contenders, torch_c, xs = build(cell_name, size, threads, seed)
  rows = []
  for mode in MODES:
    calls, jitted, compile_s, temp_mib, baselines = {}, {}, {}, {}, {}
    for c in contenders:
      fn, args = jitted[c.name] = jax_calls(c, xs)[mode]
      calls[c.name] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
      baselines[c.name] = c.baseline
    if torch_c is not None:
      calls["torch"] = torch_calls(torch_c, np.array(xs))[mode]
      temp_mib["torch"], baselines["torch"] = None, "rnnjax"
    first = {}
    for name, call in calls.items():
      t0 = time.perf_counter()
      call()  # Traces and compiles the JAX contenders.
      first[name] = time.perf_counter() - t0
      for _ in range(WARMUP):
        call()
    for name, (fn, args) in jitted.items():  # After the first call, so it is cached.
      mem = fn.lower(*args).compile().memory_analysis()
      temp_mib[name] = round(mem.temp_size_in_bytes / 2**20, 2) if mem else None
    times = {name: [] for name in calls}
    for _ in range(repeats):  # Round-robin, so drifts in machine load hit everyone alike.
      for name, call in calls.items():
        t0 = time.perf_counter()
        call()
        times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
      p25, med, p75 = np.percentile(np.array(ts) * 1e3, [25, 50, 75])
      is_jax = name != "torch"
      compile_s[name] = round(first[name] - med / 1e3, 3) if is_jax else None
      row = {"size": ",".join(map(str, size)), "cell": cell_name, "contender": name,
             "mode": mode, "median_ms": round(float(med), 3), "p25": round(float(p25), 3),
             "p75": round(float(p75), 3), "repeats": repeats, "compile_s": compile_s[name],
             "temp_MiB": temp_mib[name], "baseline": baselines[name]}
      print(json.dumps(row), flush=True)
      rows.append(row)
  return rows


def table(rows: list[dict]) -> None:
  keys = list(dict.fromkeys((r["size"], r["mode"]) for r in rows))
  for size, mode in keys:
    group = [r for r in rows if r["size"] == size and r["mode"] == mode]
    by_name = {r["contender"]: r for r in group}
    print(f"\n### {group[0]['cell']} B,T,I,H={size}, {mode}\n")
    print("| contender | median ms | p25-p75 ms | compile s | temp MiB | rnnjax / peer |")
    print("|---|---|---|---|---|---|")
    for r in group:
      base = by_name.get(r["baseline"])
      ratio = f"{base['median_ms'] / r['median_ms']:.2f}" if base else "n/a"
      if r["contender"] == r["baseline"]:
        ratio = "1.00 (ref)"
      elif r["baseline"] != "rnnjax":
        ratio += f" (vs {r['baseline']})"
      na = lambda v: "n/a" if v is None else v
      print(f"| {r['contender']} | {r['median_ms']:.3f} | {r['p25']:.3f}-{r['p75']:.3f} | "
            f"{na(r['compile_s'])} | {na(r['temp_MiB'])} | {ratio} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
  parser.add_argument("--sizes", nargs="+", default=list(SIZES), metavar="B,T,I,H")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--threads", type=int, default=None,
                      help="PyTorch threads (default: the cores this process may use)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true",
                      help=f"smoke run: size {QUICK_SIZE}, 5 repeats")
  parser.add_argument("--json-out", default=None, metavar="PATH")
  args = parser.parse_args()
  sizes, repeats = (([QUICK_SIZE], 5) if args.quick else (args.sizes, args.repeats))
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  threads = args.threads or cpus
  if jax.default_backend() == "gpu":
    jax.config.update("jax_default_matmul_precision", "highest")

  versions = {d: _version(d) for d in ("jax", "jaxlib", "flax", "dm-haiku", "equinox", "torch",
                                       "optax")}
  device = jax.devices()[0].device_kind
  header = (", ".join(f"{k} {v}" for k, v in versions.items())
            + f"; backend {jax.default_backend()}, device {device}, {cpus} CPUs "
            + f"({platform.processor() or platform.machine()}), torch threads {threads}")
  print(f"# {header}", flush=True)
  rows = []
  for size in sizes:
    dims = tuple(int(v) for v in size.split(","))
    if len(dims) != 4:
      parser.error(f"--sizes takes B,T,I,H (four integers), got {size!r}")
    rows += measure(args.cell, dims, repeats, threads, args.seed)
  if args.json_out:
    with open(args.json_out, "w") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  print(f"\n{header}")
  table(rows)


if __name__ == "__main__":
  main()
