"""Memory that `unroll(..., remat=...)` saves, from XLA's buffer assignment and from a real step.

Default mode: compiles the gradient of a one-layer LSTM's loss for each remat
setting and reads `compiled.memory_analysis()`: the temporary buffers XLA
allocates (the saved activations live there), the arguments and outputs.
Nothing is run, so the numbers do not depend on how busy the machine is.

`--measure-peak`: runs one real training step (value_and_grad of `mean(ys**2)`
and an optax Adam update) per setting, each in a fresh subprocess, and reports
the process's peak resident memory (`ru_maxrss`) above its baseline after the
imports and the backend's start, beside XLA's prediction. A setting whose
prediction exceeds `--max-fraction` of the machine's available memory is not
run; its row gives the prediction only. The peak is host memory: on a GPU it
misses the device's buffers, so this mode is meant for the CPU.

  python benchmarks/remat_memory.py                 # T=1000 and T=10000, B=8, I=32, H=256
  python benchmarks/remat_memory.py --steps 2000 --hidden 128
  python benchmarks/remat_memory.py --measure-peak  # T=100,000: remat=316 and no remat
  python benchmarks/remat_memory.py --measure-peak --steps 10000 --remat 100 False --no-fused

`remat` disables the fused fast path, so `remat=False` rows time the fused path
unless `--no-fused` is given. Prints one JSON line per setting, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

import rnnjax

MiB = 2**20


def _remat(text: str) -> bool | int:
  if text in ("False", "True"):
    return text == "True"
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"a remat setting is False, True or a positive integer, "
                                     f"got {text!r}")
  return value


def _loss_fn(cell, remat, fused):
  def loss(p, x):
    ys, _ = rnnjax.unroll(cell, p, x, remat=remat, fused=fused)
    return jnp.mean(ys ** 2)
  return loss


def _memory(compiled) -> dict:
  mem = compiled.memory_analysis()
  return {"temp_MiB": round(mem.temp_size_in_bytes / MiB, 2),
          "args_MiB": round(mem.argument_size_in_bytes / MiB, 2),
          "out_MiB": round(mem.output_size_in_bytes / MiB, 2),
          "alias_MiB": round(mem.alias_size_in_bytes / MiB, 2)}


def measure(num_steps: int, batch: int, inputs: int, hidden: int, remat, fused=True) -> dict:
  """XLA's buffer assignment for the gradient of `mean(ys**2)` w.r.t. the params."""
  cell = rnnjax.lstm(hidden)
  params = jax.eval_shape(lambda: cell.init(jax.random.key(0), inputs))
  xs = jax.ShapeDtypeStruct((num_steps, batch, inputs), jnp.float32)
  compiled = jax.jit(jax.grad(_loss_fn(cell, remat, fused))).lower(params, xs).compile()
  return {"T": num_steps, "B": batch, "I": inputs, "H": hidden, "remat": remat, "fused": fused,
          **_memory(compiled)}


# --- --measure-peak ---------------------------------------------------------------------------

def _max_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def _available_mib() -> float:
  with open("/proc/meminfo") as f:
    info = dict(line.split(":", 1) for line in f)
  return int(info["MemAvailable"].split()[0]) / 1024


def peak_child(setting: dict) -> dict:
  """One training step in this (fresh) process; returns its peak memory above the baseline."""
  jax.devices()  # Starts the backend, part of the baseline.
  baseline = _max_rss_mib()
  num_steps, batch, inputs, hidden = (setting[k] for k in ("T", "B", "I", "H"))
  remat, fused = setting["remat"], setting["fused"]
  cell = rnnjax.lstm(hidden)
  k_params, k_xs = jax.random.split(jax.random.key(0))
  params = cell.init(k_params, inputs)
  xs = jax.random.normal(k_xs, (num_steps, batch, inputs), jnp.float32)
  opt = optax.adam(1e-3)
  state = opt.init(params)
  loss_fn = _loss_fn(cell, remat, fused)

  def train_step(p, s, x):
    loss, grads = jax.value_and_grad(loss_fn)(p, x)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  t0 = time.perf_counter()
  compiled = jax.jit(train_step).lower(params, state, xs).compile()
  compile_s = time.perf_counter() - t0
  mem = _memory(compiled)
  predicted = mem["temp_MiB"] + mem["args_MiB"] + mem["out_MiB"] - mem["alias_MiB"]
  row = {**setting, "xla_temp_MiB": mem["temp_MiB"], "xla_total_MiB": round(predicted, 1),
         "baseline_MiB": round(baseline, 1), "compile_s": round(compile_s, 2)}
  available = _available_mib()
  if predicted > setting["max_fraction"] * available:
    return {**row, "ran": False, "available_MiB": round(available)}
  after_compile = _max_rss_mib()
  t0 = time.perf_counter()
  _, _, loss = jax.block_until_ready(compiled(params, state, xs))
  step_s = time.perf_counter() - t0
  peak = _max_rss_mib()
  return {**row, "ran": True, "peak_MiB": round(peak - baseline, 1),
          "peak_through_compile_MiB": round(after_compile - baseline, 1),
          "peak_process_MiB": round(peak, 1), "step_s": round(step_s, 2),
          "loss": float(loss)}


def measure_peak(setting: dict, timeout: float) -> dict:
  """`peak_child(setting)` in a fresh Python process, so that each peak is its own."""
  cmd = [sys.executable, __file__, "--child", json.dumps(setting)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode != 0 or not lines:
    return {**setting, "ran": False, "error": f"exit code {proc.returncode}: "
            f"{proc.stderr.strip().splitlines()[-1:] or 'no output'}"}
  return json.loads(lines[-1])


def _settings(args, peak: bool) -> list[dict]:
  steps = args.steps or ([100_000] if peak else [1000, 10_000])
  out = []
  for t in steps:
    k = max(1, round(math.sqrt(t)))
    for remat in args.remat or ((k, False) if peak else (False, True, k)):
      out.append({"T": t, "B": args.batch, "I": args.inputs, "H": args.hidden, "remat": remat,
                  "fused": not args.no_fused})
  return out


def _peak_table(rows: list[dict], budget_mib: float) -> None:
  print("| T | remat | path | peak RSS above baseline (MiB) | of it through compile | "
        f"XLA temp (MiB) | XLA total (MiB) | step s | within {budget_mib / 1024:g} GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    path = "fused" if r["fused"] and r["remat"] is False else "generic"
    if r.get("error"):
      print(f"| {r['T']} | {r['remat']} | {path} | failed: {r['error']} | | | | | |")
      continue
    if r["ran"]:
      peak, through, step = r["peak_MiB"], r["peak_through_compile_MiB"], r["step_s"]
      fits = "yes" if r["peak_MiB"] <= budget_mib else "NO"
    else:
      peak = f"not run (needs ~{r['xla_total_MiB']:.0f}, {r['available_MiB']} available)"
      through, step = "", ""
      fits = "yes (predicted)" if r["xla_total_MiB"] <= budget_mib else "no (predicted)"
    print(f"| {r['T']} | {r['remat']} | {path} | {peak} | {through} | {r['xla_temp_MiB']} | "
          f"{r['xla_total_MiB']} | {step} | {fits} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, nargs="+", default=None,
                      help="sequence lengths T (default 1000 10000; 100000 with --measure-peak)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=32)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--remat", type=_remat, nargs="+", default=None, metavar="SETTING",
                      help="False, True or k (default: False True sqrt(T); sqrt(T) False "
                      "with --measure-peak)")
  parser.add_argument("--no-fused", action="store_true",
                      help="unroll(..., fused=False): the generic path also without remat")
  parser.add_argument("--measure-peak", action="store_true",
                      help="run one training step per setting in a fresh process and report "
                      "its peak resident memory")
  parser.add_argument("--budget-gib", type=float, default=2.0,
                      help="the peak to check against (default 2)")
  parser.add_argument("--max-fraction", type=float, default=0.7,
                      help="run a setting only if XLA predicts at most this fraction of the "
                      "available memory (default 0.7)")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per setting")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child is not None:
    print(json.dumps(peak_child(json.loads(args.child))), flush=True)
    return
  machine = platform.processor() or platform.machine()
  rows = []
  if args.measure_peak:
    for setting in _settings(args, peak=True):
      row = measure_peak({**setting, "max_fraction": args.max_fraction}, args.timeout)
      print(json.dumps(row), flush=True)
      rows.append(row)
    print(f"\njax {jax.__version__}, backend {jax.default_backend()}, {machine}; "
          f"B={args.batch}, I={args.inputs}, H={args.hidden}; one Adam step\n")
    _peak_table(rows, args.budget_gib * 1024)
    return
  for setting in _settings(args, peak=False):
    row = measure(setting["T"], args.batch, args.inputs, args.hidden, setting["remat"],
                  setting["fused"])
    print(json.dumps(row), flush=True)
    rows.append(row)
  print(f"\njax {jax.__version__}, backend {jax.default_backend()}, {machine}\n")
  print("| T | remat | path | temporaries (MiB) | vs no remat |")
  print("|---|---|---|---|---|")
  for row in rows:
    base = next((r for r in rows if r["T"] == row["T"] and r["remat"] is False), None)
    ratio = f"{row['temp_MiB'] / base['temp_MiB']:.2f}x" if base and base["temp_MiB"] else "n/a"
    path = "fused" if row["fused"] and row["remat"] is False else "generic"
    print(f"| {row['T']} | {row['remat']} | {path} | {row['temp_MiB']} | {ratio} |")


if __name__ == "__main__":
  main()
