"""Training with the Newton engine against the sequential one, step for step, beside the LSTM.

For each task (the adding problem, the character task `text`) and each cell (the diagonal
GRU, the sLSTM), trains `rnnjax train --task TASK --cell CELL --engine E` (one subprocess
each) with E = sequential and E = newton and everything else equal (seed, hidden size,
steps, batch, learning rate, window), then an LSTM with the sequential engine at the same
hidden size and budget. From each run's `metrics.jsonl` and `summary.json` it reports, per
(task, cell), the largest relative difference between the two engines of the training loss
(`rnnjax train` records the mean loss of every 50 steps and the gradient norm of the last
one; both are compared) over all records, the validation and test metric of the checkpoint
that validation picked, the training rate (steps/s after compiling) and the wall time.

A Newton run that fails to converge falls back to the sequential engine silently (training
records no `NewtonInfo`), so after each Newton run the script reloads its final params
(`rnnjax.load_run`) and runs `rnnjax.newton_unroll(..., return_info=True)` on one training
batch: the iterations, the final residual, whether it fell back, and the largest difference
of its outputs from `rnnjax.unroll`'s.

Prints one JSON line per run, then a Markdown table.

  python benchmarks/newton_learning.py                          # both tasks, both cells
  python benchmarks/newton_learning.py --tasks adding --cells diagonal_gru --steps 500
  python benchmarks/newton_learning.py --hidden slstm=8 --steps text=300 --json-out n.jsonl
  python benchmarks/newton_learning.py --table n.jsonl          # the table of earlier runs

On a CPU the Newton engine is much slower than the sequential one and its cost grows with
the carry size S (S Jacobian-vector products per iteration, and full S x S Jacobians up to
S = 64; S = H for the diagonal GRU, 4H for the sLSTM), hence the small default sizes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import _runs  # benchmarks/_runs.py, beside this script

TASKS = ("adding", "text")
CELLS = ("diagonal_gru", "slstm")
ENGINES = ("sequential", "newton")
REFERENCE = "lstm"
# Sizes that keep every run to a few minutes on a 2-core CPU (measured there: an sLSTM of
# H = 4 takes ~0.6 s per Newton training step on the adding problem, H = 8 ~3 s).
HIDDEN = {"diagonal_gru": 16, "slstm": 4}
STEPS = {"adding": 200, "text": 200}
TEXT_WINDOW = 32


def _overrides(flag: str, values: list[str] | None, keys: tuple[str, ...]) -> dict:
  """`--flag N` (every key) and `--flag KEY=N`, as {key or None: N}."""
  out: dict[str | None, int] = {}
  for value in values or ():
    key, _, number = value.rpartition("=")
    if key and key not in keys:
      raise SystemExit(f"newton_learning: {flag} {value}: unknown {key!r}; choose from "
                       f"{', '.join(keys)}")
    try:
      out[key or None] = int(number)
    except ValueError:
      raise SystemExit(f"newton_learning: {flag} {value}: expected N or KEY=N") from None
    if out[key or None] <= 0:
      raise SystemExit(f"newton_learning: {flag} {value}: must be positive")
  return out


def _records(path: pathlib.Path) -> tuple[list[dict], float | None]:
  """The training records of a `metrics.jsonl` ({step, loss, grad_norm}), and the last rate."""
  records, rate = [], None
  for line in path.read_text().splitlines():
    record = json.loads(line)
    if "train/loss" in record:
      records.append({"step": record["step"], "loss": record["train/loss"],
                      "grad_norm": record.get("train/grad_norm")})
      rate = record.get("train/steps_per_s", rate)
  return records, rate


def train(task: str, cell: str, engine: str, hidden: int, steps: int,
          out: pathlib.Path) -> dict:
  """Runs `rnnjax train` in a subprocess; returns one JSON row (or the failure)."""
  flags = ["--task", task, "--cell", cell, "--engine", engine, "--seed", "0",
           "--hidden", str(hidden), "--steps", str(steps), "--eval-every", "0"]
  if task == "text":
    flags += ["--window", str(TEXT_WINDOW)]
  run, summary = _runs.rnnjax_train(flags, out)
  row = {"task": task, "cell": cell, "engine": engine, "hidden": hidden, "steps": steps,
         **run, "out": str(out)}
  if summary is None:
    return row
  records, rate = _records(out / "metrics.jsonl")
  best, metric = summary["best"], summary["metric"]
  row.update(status="ok", metric=metric, val=best["val"][metric], test=best["test"][metric],
             best_step=best["step"], baseline=summary["baselines"]["test"],
             engine_ran=summary["engine"], wall_s=summary["wall_s"], steps_per_s=rate,
             records=records, backend=summary["backend"])
  return row


def probe(out: pathlib.Path) -> dict:
  """`NewtonInfo` of the run's final params on one training batch, and the outputs' distance.

  Runs the run's core alone (`params.core`, after the embedding of a text model) with
  `rnnjax.newton_unroll(..., return_info=True)` and with `rnnjax.unroll`.
  """
  import jax
  import jax.numpy as jnp

  import rnnjax
  from rnnjax import runs

  run = rnnjax.load_run(out, "newest")
  core = runs.model_core(run.config)
  params = run.params
  xs = run.task.train_batch(jax.random.PRNGKey(1), run.config["batch_size"])["xs"]
  if params.embed is not None:
    xs = jnp.take(params.embed, xs, axis=0)
  ys_seq, _ = jax.jit(lambda p, x: rnnjax.unroll(core, p, x, engine="sequential"))(
      params.core, xs)
  ys, _, info = jax.jit(lambda p, x: rnnjax.newton_unroll(core, p, x, return_info=True))(
      params.core, xs)
  return {"iterations": int(info.iterations), "residual": float(info.residual),
          "converged": bool(info.converged), "fell_back": bool(info.fell_back),
          "max_abs_diff_outputs": float(jnp.max(jnp.abs(ys - ys_seq)))}


def _relative(a: float | None, b: float | None) -> float | None:
  if a is None or b is None:
    return None
  return abs(a - b) / max(abs(b), 1e-30)


def compare(newton: dict, sequential: dict) -> dict:
  """The largest relative differences of `newton`'s records from `sequential`'s."""
  if newton["status"] != "ok" or sequential["status"] != "ok":
    return {}
  if len(newton["records"]) != len(sequential["records"]):
    return {"records_match": False}
  pairs = list(zip(newton["records"], sequential["records"], strict=True))
  if any(a["step"] != b["step"] for a, b in pairs):
    return {"records_match": False}
  def largest(key):
    values = [_relative(a[key], b[key]) for a, b in pairs]
    return max((v for v in values if v is not None), default=None)
  return {"records_match": True, "records_compared": len(pairs),
          "max_rel_diff_loss": largest("loss"), "max_rel_diff_grad_norm": largest("grad_norm"),
          "rel_diff_val": _relative(newton["val"], sequential["val"]),
          "rel_diff_test": _relative(newton["test"], sequential["test"]),
          "slowdown": (sequential["steps_per_s"] / newton["steps_per_s"]
                       if newton["steps_per_s"] and sequential["steps_per_s"] else None)}


def _fmt(value: float | None, spec: str = ".4g") -> str:
  return "—" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
  """The Markdown table of `rows`: one line per run, the Newton runs against their partner."""
  lines = ["| task | cell | H | engine | steps | last train loss | max rel. diff loss "
           "(grad norm) vs sequential | val | test | metric | steps/s | wall s | "
           "Newton probe: iters, residual, fell back |",
           "|---|---|---:|---|---:|---:|---|---:|---:|---|---:|---:|---|"]
  for r in rows:
    head = f"| {r['task']} | {r['cell']} | {r['hidden']} | {r['engine']} | {r['steps']} |"
    if r["status"] != "ok":
      lines.append(f"{head} {r['status']} (exit {r['exit_code']}) | — | — | — | — | — | "
                   f"{r['process_s']:.0f} | — |")
      continue
    diff = r.get("compare", {})
    if diff.get("records_match") is False:
      versus = "records differ in steps"
    elif diff:
      versus = (f"{_fmt(diff['max_rel_diff_loss'], '.1e')} "
                f"({_fmt(diff['max_rel_diff_grad_norm'], '.1e')})")
    else:
      versus = "—"
    info = r.get("probe")
    probe_cell = ("—" if info is None else info.get("error") or
                  f"{info['iterations']}, {info['residual']:.1e}, {info['fell_back']}")
    lines.append(f"{head} {_fmt(r['records'][-1]['loss'])} | {versus} | {_fmt(r['val'])} | "
                 f"{_fmt(r['test'])} | {r['metric']} (baseline {_fmt(r['baseline'])}) | "
                 f"{_fmt(r['steps_per_s'], '.1f')} | {r['wall_s']:.0f} | {probe_cell} |")
  return "\n".join(lines)


def _plan(args: argparse.Namespace) -> list[tuple[str, str, str, int, int]]:
  """The runs, in order: per task, each cell on each engine, then the LSTM per hidden size."""
  hidden = {**HIDDEN, **_overrides("--hidden", args.hidden, CELLS)}
  steps = {**STEPS, **_overrides("--steps", args.steps, TASKS)}
  runs = []
  for task in args.tasks:
    n = steps.get(None, steps[task])
    sizes = [hidden.get(None, hidden[cell]) for cell in args.cells]
    runs += [(task, cell, engine, size, n) for cell, size in zip(args.cells, sizes, strict=True)
             for engine in ENGINES]
    runs += [(task, REFERENCE, "sequential", size, n) for size in dict.fromkeys(sizes)]
  return runs


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
  parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
  parser.add_argument("--hidden", nargs="+", metavar="[CELL=]H",
                      help=f"hidden sizes (default: {HIDDEN}); the LSTM takes each cell's")
  parser.add_argument("--steps", nargs="+", metavar="[TASK=]N",
                      help=f"training steps (default: {STEPS})")
  parser.add_argument("--no-probe", action="store_true",
                      help="skip the NewtonInfo probe of each Newton run's final params")
  parser.add_argument("--out", default="runs/newton_learning",
                      help="directory of the runs (one subdirectory per run)")
  _runs.add_row_flags(parser)
  args = parser.parse_args(argv)
  if _runs.print_table(args, table):
    return 0
  if args.json_out:
    pathlib.Path(args.json_out).write_text("")
  rows: list[dict] = []
  for task, cell, engine, hidden, steps in _plan(args):
    out = pathlib.Path(args.out) / f"{task}-{cell}-h{hidden}-{engine}"
    row = train(task, cell, engine, hidden, steps, out)
    if engine == "newton":
      partner = next(r for r in rows if r["task"] == task and r["cell"] == cell
                     and r["engine"] == "sequential" and r["hidden"] == hidden)
      row["compare"] = compare(row, partner)
      if row["status"] == "ok" and not args.no_probe:
        try:
          row["probe"] = probe(out)
        except Exception as err:  # The table is still worth printing.
          row["probe"] = {"error": f"{type(err).__name__}: {err}"[:200]}
    rows.append(row)
    _runs.emit(row, args.json_out)
  print()
  print(table(rows))
  return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
