"""Training-workload speed of a one-layer LSTM/GRU: rnnjax against Flax, Equinox, Haiku, PyTorch.

The harness behind `rnnjax bench` and `benchmarks/bench_rnn.py`. Every contender
is loaded with the same weights and checked against rnnjax's outputs (to 1e-4, or
its entry in `TOLERANCES`) before anything is timed (`check_same_function`). Three
modes per contender: `fwd` (outputs), `fwd_bwd` (gradient of `mean(ys**2)` w.r.t.
params and xs) and `train` (one Adam step; torch.optim.Adam for PyTorch). JAX
functions are jitted, warmed up and timed after `block_until_ready`; contenders are
interleaved round-robin within each repeat, so drifts in machine load hit everyone alike.

Contenders: `rnnjax` (the default, with the fused fast path), `rnnjax_scan` (the
fast path with its GPU kernels off), `rnnjax_generic`
(`fused=False`: plain autodiff through `lax.scan`), `rnnjax_bf16` (the fast path in
mixed precision, `dtype=jnp.bfloat16`: float32 params and carry, bfloat16 products
accumulated in float32, bfloat16 outputs), the peers of `bench_peers.JAX_PEERS`,
`matmul_floor` (the same matrix products with nothing else) and `torch`. Ratios are
`rnnjax`'s median over the contender's. Compile time is the first call's time minus
the median; `temp_MiB` is XLA's temporary buffer assignment (`compiled.memory_analysis()`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnnjax
from rnnjax.tools import bench_peers as peers

# Sizes are B,T,I,H; 16,150,256,256 is DeepBench's H256/B16/T150.
SIZES = ("32,128,256,256", "8,512,64,128", "64,100,128,256", "32,100,512,512",
         "16,150,256,256")
QUICK_SIZE = "4,20,8,16"  # `bench_rnn.py --quick`: a smoke run.
CLI_SIZE = "8,128,64,128"  # `rnnjax bench`: small, but long enough to show the fast path.
MODES = ("fwd", "fwd_bwd", "train")
CONTENDERS = (*peers.JAX_PEERS, "torch")
TOLERANCE = 1e-4
# Contenders computing in another precision than float32, and their own tolerance.
# rnnjax_bf16 against rnnjax (float32), max |difference| of the outputs measured at every
# size above and the GPU script's 64,1024,128,256, seed 0: 6e-3 to 1.0e-2 (LSTM) and 8e-3 to
# 1.3e-2 (GRU); rounding |y| < 1 to bfloat16 alone costs up to 2**-9 = 2e-3. 3e-2 leaves
# twice the worst measured and still refuses a wrong mapping (errors of order 0.1-1).
TOLERANCES = {"rnnjax_bf16": 3e-2}
WARMUP = 3
DISTRIBUTIONS = ("jax", "jaxlib", "flax", "dm-haiku", "equinox", "torch", "optax")


class MismatchError(ValueError):
  """A contender computes another function than its baseline, so its timings would mislead."""


def parse_size(text: str) -> tuple[int, int, int, int]:
  """Parses one size `"B,T,I,H"`.

  Args:
    text: four positive integers separated by commas.

  Returns:
    `(B, T, I, H)`.

  Raises:
    ValueError: if `text` is not four positive integers.

  >>> parse_size("8,128,64,128")
  (8, 128, 64, 128)
  """
  try:
    dims = tuple(int(v) for v in text.split(","))
  except ValueError:
    dims = ()
  if len(dims) != 4 or min(dims) < 1:
    raise ValueError(f"a size is B,T,I,H (four positive integers), got {text!r}")
  return dims


def parse_contenders(text: str) -> tuple[str, ...]:
  """Parses `"name,name,..."` into contender names, each one of `CONTENDERS`.

  >>> parse_contenders("flax,torch")
  ('flax', 'torch')
  """
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  unknown = [n for n in names if n not in CONTENDERS]
  if unknown or not names:
    raise ValueError(f"contenders are comma-separated names among {', '.join(CONTENDERS)}; "
                     f"got {text!r}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
  return names


def default_threads() -> int:
  """The CPU cores this process may use (PyTorch's default thread count here)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def full_precision_on_gpu() -> None:
  """On a GPU, makes JAX's matmuls full float32, as PyTorch's are with TF32 off."""
  if jax.default_backend() == "gpu":
    jax.config.update("jax_default_matmul_precision", "highest")


def _version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "absent"


def header(threads: int) -> str:
  """One line naming the library versions, backend, device, CPUs and PyTorch threads."""
  versions = ", ".join(f"{d} {_version(d)}" for d in DISTRIBUTIONS)
  cpu = platform.processor() or platform.machine()
  from rnnjax._src import cpu_kernels
  kernel = "built" if cpu_kernels.available() else "absent"
  return (f"{versions}; backend {jax.default_backend()}, device {jax.devices()[0].device_kind}, "
          f"{default_threads()} CPUs ({cpu}), torch threads {threads}, CPU kernel {kernel}")


def _loss(ys: jax.Array) -> jax.Array:
  return jnp.mean(ys ** 2)


def jax_calls(c: peers.JaxContender, xs: jax.Array) -> dict[str, tuple[Callable, tuple]]:
  """`mode -> (jitted function, args)` for one JAX contender; `xs: [T, B, I]`."""
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


def torch_calls(c: peers.TorchContender, xs: np.ndarray) -> dict[str, Callable[[], None]]:
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


def _wanted(cell_name: str, names: Iterable[str] | None) -> list[str]:
  """The contenders to build, in `CONTENDERS` order, with the baselines they need."""
  wanted = set(CONTENDERS if names is None else names) | {"rnnjax"}
  if cell_name == "gru" and "haiku" in wanted:
    wanted.add("rnnjax_reset_before")  # Haiku's GRU is the "reset before" form.
  if cell_name != "gru":
    wanted.discard("rnnjax_reset_before")
  return [n for n in CONTENDERS if n in wanted]


def check_same_function(outputs: dict[str, tuple[str, np.ndarray]], *, size: Sequence[int],
                        cell_name: str) -> None:
  """Checks that each contender's outputs match its baseline's to its tolerance.

  The tolerance is `TOLERANCE`, or the contender's entry in `TOLERANCES` (bfloat16).

  Args:
    outputs: `name -> (baseline name, ys[T, B, H])`; every baseline is itself a key.
    size: `(B, T, I, H)`, for the message.
    cell_name: `"lstm"` or `"gru"`, for the message.

  Raises:
    MismatchError: naming the first contender whose outputs differ (or have another
      shape), by how much, and where the mistake most likely is.
  """
  for name, (baseline, ys) in outputs.items():
    ref = outputs[baseline][1]
    tolerance = TOLERANCES.get(name, TOLERANCE)
    where = f"at B,T,I,H={','.join(map(str, size))}, cell={cell_name}"
    if name.startswith("rnnjax"):
      hint = ("rnnjax's own paths disagree, a bug in rnnjax (the fused kernels in "
              "rnnjax/_src/fused.py or the engine in rnnjax/_src/unroll.py")
      hint += (", or the mixed-precision policy in rnnjax/_src/precision.py)"
               if name in TOLERANCES else ")")
    else:
      hint = ("the weight mapping in rnnjax/tools/bench_peers.py is wrong for this version of "
              "the peer library")
    if ys.shape != ref.shape:
      raise MismatchError(f"{name}'s outputs have shape {ys.shape}, {baseline}'s {ref.shape}, "
                          f"{where}; {hint}.")
    diff = np.asarray(ys, np.float64) - np.asarray(ref, np.float64)  # bfloat16 too.
    err = float(np.max(np.abs(diff))) if ys.size else 0.0
    if not err <= tolerance:  # Also catches NaN.
      raise MismatchError(
          f"{name}'s outputs differ from {baseline}'s by {err:.2e} (> {tolerance}) {where}; "
          f"{hint}, so its timings would not compare the same function.")


def build(cell_name: str, size: Sequence[int], *, threads: int, seed: int,
          names: Iterable[str] | None = None, note: Callable[[str], Any] = print):
  """Builds the contenders for one size and checks that they compute the same function.

  Args:
    cell_name: `"lstm"` or `"gru"`.
    size: `(B, T, I, H)`.
    threads: PyTorch's thread count.
    seed: seeds the weights and inputs.
    names: the contenders to build (default: all of `CONTENDERS`); `rnnjax`, the
      reference of the ratios, is always built.
    note: receives one line per contender that cannot run here, and why.

  Returns:
    `(jax_contenders, torch_contender or None, xs[T, B, I])`.

  Raises:
    MismatchError: if a contender's outputs differ from its baseline's.
  """
  batch, steps, in_size, hidden = size
  k_params, k_xs = jax.random.split(jax.random.key(seed))
  cell = rnnjax.lstm(hidden) if cell_name == "lstm" else rnnjax.gru(hidden)
  params = cell.init(k_params, in_size)
  xs = jax.random.normal(k_xs, (steps, batch, in_size), jnp.float32)
  contenders, torch_c = [], None
  for name in _wanted(cell_name, names):
    try:
      if name == "torch":
        torch_c = peers.torch_contender(cell_name, hidden, params, threads)
      else:
        contenders.append(peers.JAX_PEERS[name](cell_name, hidden, params))
    except peers.Skip as e:
      note(f"# skip {name}: {e}")

  outputs = {}
  for c in contenders:
    if c.name == "matmul_floor":  # Not the same function.
      continue
    if c.batch_major:  # Transposed outside `jit` (see `bench_peers.cudnn_contender`).
      ys = jnp.swapaxes(jax.jit(c.forward)(c.params, jnp.swapaxes(xs, 0, 1)), 0, 1)
    else:
      ys = jax.jit(c.forward)(c.params, xs)
    outputs[c.name] = (c.baseline, np.asarray(ys))
  if torch_c is not None:
    import torch

    with torch.no_grad():
      ys = torch_c.module(torch.from_numpy(np.array(xs)).to(torch_c.device))[0]
    outputs["torch"] = (torch_c.baseline, ys.cpu().numpy())
  check_same_function(outputs, size=size, cell_name=cell_name)
  return contenders, torch_c, xs


def measure(cell_name: str, size: Sequence[int], *, repeats: int, threads: int, seed: int = 0,
            names: Iterable[str] | None = None, modes: Sequence[str] | None = None,
            note: Callable[[str], Any] = print,
            on_row: Callable[[dict], Any] | None = None) -> list[dict]:
  """Times every contender in every mode at one size; returns one row per measurement.

  Args:
    cell_name: `"lstm"` or `"gru"`.
    size: `(B, T, I, H)`.
    repeats: timed calls per contender and mode, after `WARMUP` untimed ones.
    threads: PyTorch's thread count.
    seed: seeds the weights and inputs.
    names: the contenders (default: all that are installed); `rnnjax` always runs.
    modes: the modes to time, among `MODES` (default: all of them).
    note: receives the lines about skipped contenders.
    on_row: called with each row as soon as it is measured.

  Returns:
    Rows `{size, cell, contender, mode, median_ms, p25, p75, repeats, compile_s,
    temp_MiB, baseline}` (`compile_s` and `temp_MiB` are None for PyTorch).

  Raises:
    MismatchError: if a contender's outputs differ from its baseline's.
  """
  contenders, torch_c, xs = build(cell_name, size, threads=threads, seed=seed, names=names,
                                  note=note)
  rows = []
  for mode in MODES if modes is None else modes:
    calls, jitted, temp_mib, baselines = {}, {}, {}, {}
    for c in contenders:
      fn, args = jitted[c.name] = jax_calls(c, xs)[mode]
      calls[c.name] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
      baselines[c.name] = c.baseline
    if torch_c is not None:
      calls["torch"] = torch_calls(torch_c, np.array(xs))[mode]
      temp_mib["torch"], baselines["torch"] = None, torch_c.baseline
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
      compile_s = round(first[name] - med / 1e3, 3) if name != "torch" else None
      row = {"size": ",".join(map(str, size)), "cell": cell_name, "contender": name,
             "mode": mode, "median_ms": round(float(med), 3), "p25": round(float(p25), 3),
             "p75": round(float(p75), 3), "repeats": repeats, "compile_s": compile_s,
             "temp_MiB": temp_mib[name], "baseline": baselines[name]}
      if on_row is not None:
        on_row(row)
      rows.append(row)
  return rows


def table(rows: Sequence[dict]) -> str:
  """Markdown tables of `rows`, one per size and mode; `rnnjax / peer` below 1 means rnnjax wins."""
  lines = []
  for size, mode in dict.fromkeys((r["size"], r["mode"]) for r in rows):
    group = [r for r in rows if r["size"] == size and r["mode"] == mode]
    by_name = {r["contender"]: r for r in group}
    lines += ["", f"### {group[0]['cell']} B,T,I,H={size}, {mode}", "",
              "| contender | median ms | p25-p75 ms | compile s | temp MiB | rnnjax / peer |",
              "|---|---|---|---|---|---|"]
    for r in group:
      base = by_name.get(r["baseline"])
      ratio = f"{base['median_ms'] / r['median_ms']:.2f}" if base else "n/a"
      if r["contender"] == r["baseline"]:
        ratio = "1.00 (ref)"
      elif r["baseline"] != "rnnjax":
        ratio += f" (vs {r['baseline']})"
      na = lambda v: "n/a" if v is None else v
      lines.append(f"| {r['contender']} | {r['median_ms']:.3f} | {r['p25']:.3f}-{r['p75']:.3f} | "
                   f"{na(r['compile_s'])} | {na(r['temp_MiB'])} | {ratio} |")
  return "\n".join(lines)


def run(cell_name: str, sizes: Sequence[Sequence[int]], *, repeats: int, threads: int,
        seed: int = 0, names: Iterable[str] | None = None, json_out: str | None = None,
        note: Callable[[str], Any] = print, on_row: Callable[[dict], Any] | None = None,
        modes: Sequence[str] | None = None) -> list[dict]:
  """`measure` at each size; with `json_out`, also writes each row there as a JSON line.

  The file is opened (and truncated) before anything is measured, so a bad path
  fails at once, and it holds every row measured so far if the run is stopped.
  """
  full_precision_on_gpu()
  rows = []
  with open(json_out, "w") if json_out else contextlib.nullcontext() as f:
    def record(row: dict) -> None:
      if f is not None:
        f.write(json.dumps(row) + "\n")
        f.flush()
      if on_row is not None:
        on_row(row)

    for size in sizes:
      rows += measure(cell_name, size, repeats=repeats, threads=threads, seed=seed, names=names,
                      modes=modes, note=note, on_row=record)
  return rows
