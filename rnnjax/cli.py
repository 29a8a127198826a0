"""The `rnnjax` command line: `rnnjax train`, `rnnjax sample` and `rnnjax bench`.

`rnnjax train` with no arguments trains the embedded default, an LSTM
forecaster of the monthly CO2 series shipped with the package, and prints its
held-out RMSE beside the baseline's. `rnnjax bench` times a training step of
rnnjax against Flax and the other installed peers (a quick run by default).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnnjax
from rnnjax._src import bench
from rnnjax._src import model as model_lib
from rnnjax._src.checkpoint import Checkpointer, write_json_atomic


def _lru(hidden: int) -> rnnjax.Cell:
  """The LRU with `hidden` complex states and `hidden` outputs (its default is the input size)."""
  return rnnjax.lru(hidden, output_size=hidden)


def _rglru(hidden: int) -> rnnjax.Cell:
  return rnnjax.rglru(hidden)


# `--cell` choices: each builds a cell of hidden (output) size H from H. The gated cells and
# minGRU/minLSTM have H-wide outputs; the LRU has H complex states read out to H real outputs.
CELLS = {"lstm": rnnjax.lstm, "gru": rnnjax.gru, "elman": rnnjax.elman, "mgu": rnnjax.mgu,
         "mingru": rnnjax.mingru, "minlstm": rnnjax.minlstm, "lru": _lru, "rglru": _rglru}

# Per-task defaults, chosen so each finishes in about a minute on 2 CPU cores.
TASK_DEFAULTS = {
    "co2": dict(hidden=32, steps=1500, batch_size=32, lr=3e-3),
    "sunspots": dict(hidden=32, steps=1500, batch_size=32, lr=3e-3),
    "adding": dict(hidden=64, steps=3000, batch_size=64, lr=2e-3),
    "copy": dict(hidden=64, steps=3000, batch_size=64, lr=2e-3),
    "text": dict(hidden=256, steps=2000, batch_size=32, lr=3e-3),
}
# Options that may differ between a run and its resumption.
# The engines give the same answers, so a run may resume on another (a CPU run on a GPU).
RUN_ONLY = {"out", "resume", "overwrite", "steps", "quiet", "no_plots", "eval_every",
            "checkpoint_every", "keep", "diagnostics", "engine"}
OUTPUTS = ("checkpoint", "metrics.jsonl", "summary.json", "config.json", "loss.png",
           "diagnostics.json", "diagnostics.png",
           "forecast.png", "samples.png", "samples.txt", "vocab.json")


class UsageError(Exception):
  """A bad argument, reported before any compute."""


def _positive(kind):
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
    if not value > 0:
      raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
  parse.__name__ = f"positive {kind.__name__}"
  return parse


def _parsed_by(parse):
  """An argparse `type` from a parser that raises ValueError with a full message."""
  def wrapped(text: str):
    try:
      return parse(text)
    except ValueError as err:
      raise argparse.ArgumentTypeError(str(err)) from None
  wrapped.__name__ = parse.__name__
  return wrapped


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rnnjax", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command")
  t = sub.add_parser("train", help="train a model on a task (default: LSTM on CO2)")
  t.add_argument("--task", choices=sorted(TASK_DEFAULTS), default="co2")
  t.add_argument("--cell", choices=sorted(CELLS), default="lstm")
  t.add_argument("--hidden", type=_positive(int), help="hidden size (task default)")
  t.add_argument("--layers", type=_positive(int), default=1)
  t.add_argument("--dropout", type=float, default=0.0, help="between layers, in [0, 1)")
  t.add_argument("--steps", type=_positive(int), help="training steps (task default)")
  t.add_argument("--batch-size", type=_positive(int), help="sequences per batch (task default)")
  t.add_argument("--lr", type=_positive(float), help="peak Adam learning rate (task default)")
  t.add_argument("--clip", type=_positive(float), default=1.0, help="global gradient-norm clip")
  t.add_argument("--seed", type=int, default=0)
  t.add_argument("--out", default=None, help="run directory (default: runs/TASK-CELL)")
  t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
  t.add_argument("--overwrite", action="store_true",
                 help="replace a run with another configuration in --out")
  t.add_argument("--text", default=None, help="text file for --task text (default: the "
                 "Python standard library's sources on this machine)")
  t.add_argument("--length", type=_positive(int), default=None,
                 help="sequence length T of the adding problem (default 100)")
  t.add_argument("--delay", type=_positive(int), default=None, help="copy-memory delay")
  t.add_argument("--window", type=_positive(int), default=None, help="training window length")
  t.add_argument("--tbptt", type=_positive(int), default=None,
                 help="truncated BPTT: stop gradients every this many steps")
  t.add_argument("--engine", choices=("auto", "sequential", "parallel", "chunked"),
                 default="auto", help="how a linear cell (mingru, minlstm, lru, rglru) runs "
                 "over time: auto picks per backend and length (sequential on CPU, a parallel "
                 "scan on GPU/TPU); parallel and chunked need a linear cell and no --tbptt "
                 "or --dropout")
  t.add_argument("--steps-per-call", type=_positive(int), default=10,
                 help="training steps per jitted call")
  t.add_argument("--eval-every", type=int, default=500)
  t.add_argument("--checkpoint-every", type=int, default=500)
  t.add_argument("--keep", type=_positive(int), default=3, help="checkpoints to keep")
  t.add_argument("--no-plots", action="store_true")
  t.add_argument("--diagnostics", action="store_true",
                 help="measure gradient norms over time and step-Jacobian spectra on one "
                 "training batch, at initialisation and after training: diagnostics.json/png")
  t.add_argument("--quiet", action="store_true", help="no progress line")
  s = sub.add_parser("sample", help="generate text from a trained text model")
  s.add_argument("--out", required=True, help="the run directory of `rnnjax train --task text`")
  s.add_argument("--length", type=_positive(int), default=400)
  s.add_argument("--prompt", default="def ")
  s.add_argument("--temperature", type=_positive(float), default=0.8)
  s.add_argument("--seed", type=int, default=0)
  b = sub.add_parser(
      "bench", help="time rnnjax against Flax and the other installed peers (quick by default)",
      description="Times a one-layer LSTM/GRU (forward, forward+backward, one Adam step) in "
      "rnnjax, rnnjax without its fast path (rnnjax_generic), Flax, and Equinox, Haiku and "
      "PyTorch where installed (pip install -e '.[bench]'), after checking that all compute "
      "the same function. Prints a Markdown table; 'rnnjax / peer' below 1 means rnnjax is "
      "faster.")
  b.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
  b.add_argument("--sizes", nargs="+", type=_parsed_by(bench.parse_size), metavar="B,T,I,H",
                 help=f"batch, steps, input and hidden size (default {bench.CLI_SIZE}; "
                 "with --full, the five benchmark sizes)")
  b.add_argument("--repeats", type=_positive(int),
                 help="timed calls per contender and mode (default 5; 20 with --full)")
  b.add_argument("--full", action="store_true",
                 help=f"all five sizes ({' '.join(bench.SIZES)}), 20 repeats")
  b.add_argument("--contenders", type=_parsed_by(bench.parse_contenders), metavar="NAME,...",
                 help=f"a subset of {','.join(bench.CONTENDERS)} (default: all installed; "
                 "rnnjax, the reference, always runs)")
  b.add_argument("--threads", type=_positive(int),
                 help="PyTorch's threads (default: the cores this process may use)")
  b.add_argument("--seed", type=int, default=0)
  b.add_argument("--json-out", metavar="PATH", help="also write one JSON line per measurement "
                 "(for benchmarks/plot_results.py)")
  return parser


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
  config = {k: v for k, v in vars(args).items() if k != "command"}
  for name, value in TASK_DEFAULTS[args.task].items():
    if config.get(name) is None:
      config[name] = value
  if config["out"] is None:
    config["out"] = str(pathlib.Path("runs") / f"{args.task}-{args.cell}")
  if not 0.0 <= config["dropout"] < 1.0:
    raise UsageError(f"--dropout must be in [0, 1), got {config['dropout']}")
  if config["text"] is not None and args.task != "text":
    raise UsageError(f"--text is only used with --task text, got --task {args.task}")
  engine = config.get("engine", "auto")
  if engine in ("parallel", "chunked"):
    if not rnnjax.is_linear(CELLS[args.cell](1)):
      raise UsageError(f"--engine {engine} needs a linear cell (mingru, minlstm, lru, rglru), "
                       f"got --cell {args.cell}")
    for flag, value in (("--tbptt", config["tbptt"]), ("--dropout", config["dropout"] or None)):
      if value is not None:
        raise UsageError(f"--engine {engine} runs whole sequences as a scan; {flag} needs "
                         f"--engine sequential or auto, got {flag} {value}")
  if config["eval_every"] < 0 or config["checkpoint_every"] < 0:
    raise UsageError("--eval-every and --checkpoint-every must be >= 0")
  spc = config["steps_per_call"]
  if config["checkpoint_every"] % spc:
    config["checkpoint_every"] = max(spc, config["checkpoint_every"] // spc * spc)
  if config["text"] is not None:
    config["text"] = str(pathlib.Path(config["text"]).absolute())
  return config


def make_task(config: dict[str, Any]):
  from rnnjax import tasks  # Imported here: only the CLI reads the data files.
  kwargs = {}
  if config["task"] == "text":
    kwargs["path"] = config["text"]
  if config["task"] == "adding" and config["length"] is not None:
    kwargs["length"] = config["length"]
  if config["task"] == "copy" and config["delay"] is not None:
    kwargs["delay"] = config["delay"]
  if config["window"] is not None and config["task"] in ("co2", "sunspots", "text"):
    kwargs["window"] = config["window"]
  return tasks.get_task(config["task"], **kwargs)


def model_core(config: dict[str, Any]) -> rnnjax.Cell:
  """The recurrent core of `make_model`'s model (also given to the diagnostics)."""
  cells = [CELLS[config["cell"]](config["hidden"]) for _ in range(config["layers"])]
  return cells[0] if len(cells) == 1 else rnnjax.stack(cells, dropout=config["dropout"])


def make_model(config: dict[str, Any], task) -> rnnjax.SequenceModel:
  return rnnjax.sequence_model(model_core(config), input_size=task.input_size,
                               output_size=task.output_size, vocab_size=task.vocab_size,
                               engine=config.get("engine", "auto"))


def engine_used(config: dict[str, Any], num_steps: int) -> str:
  """The engine a training step of `make_model`'s model runs, for windows of `num_steps`."""
  engine = model_lib.model_engine(model_core(config), config.get("engine", "auto"),
                                  tbptt=config["tbptt"], key_given=config["dropout"] > 0.0)
  return rnnjax.auto_engine(num_steps) if engine == "auto" else engine


def make_optimizer(config: dict[str, Any]) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config["lr"], warmup_steps=min(100, config["steps"] // 10 + 1),
      decay_steps=config["steps"], end_value=config["lr"] * 0.05)
  return optax.chain(optax.clip_by_global_norm(config["clip"]), optax.adam(schedule))


def _prepare_out(config: dict[str, Any]) -> pathlib.Path:
  out = pathlib.Path(config["out"])
  saved = out / "config.json"
  if saved.exists():
    old = json.loads(saved.read_text())
    differs = sorted(k for k in set(old) | set(config)
                     if k not in RUN_ONLY and old.get(k) != config.get(k))
    if config["overwrite"]:
      for name in OUTPUTS:
        path = out / name
        if path.is_dir():
          shutil.rmtree(path)
        elif path.exists():
          path.unlink()
    elif differs:
      listed = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in differs)
      raise UsageError(
          f"{out} holds a run with a different configuration ({listed}). Use another --out, "
          "or --overwrite to replace it.")
    elif not config["resume"] and (out / "checkpoint").exists():
      raise UsageError(
          f"{out} already holds a run of this configuration. Pass --resume to continue it, "
          "or --overwrite to start again.")
  out.mkdir(parents=True, exist_ok=True)
  write_json_atomic(saved, {k: v for k, v in config.items() if k not in ("resume", "overwrite")})
  return out


def train(config: dict[str, Any]) -> int:
  try:  # Validates the data and sizes before any compute.
    task = make_task(config)
  except (ValueError, TypeError, FileNotFoundError) as err:
    raise UsageError(str(err)) from err
  out = _prepare_out(config)
  if task.vocab_size is not None and "vocab" in task.info:
    write_json_atomic(out / "vocab.json", list(task.info["vocab"]))
  model = make_model(config, task)
  optimizer = make_optimizer(config)
  root = jax.random.PRNGKey(config["seed"])
  k_init, k_data, k_train = jax.random.split(root, 3)
  state = rnnjax.train_state(model.init(k_init), optimizer, k_train)
  tbptt = config["tbptt"]

  def loss_fn(params, batch, key):
    preds, _ = model.apply(params, batch["xs"], key=key if config["dropout"] else None,
                           tbptt=tbptt)
    return task.loss(preds, batch)

  step_fn = rnnjax.make_train_step(loss_fn, optimizer, steps_per_call=config["steps_per_call"])
  batch_fn = jax.jit(lambda s: task.train_batch(jax.random.fold_in(k_data, s),
                                                config["batch_size"]))
  predict_fn = jax.jit(lambda p, xs: model.apply(p, xs)[0])

  def evaluate(params):
    return task.evaluate(lambda xs: predict_fn(params, xs))[0]

  num_steps = jax.eval_shape(batch_fn, 0)["xs"].shape[0]
  engine = engine_used(config, num_steps)
  print(f"rnnjax train: {config['cell']} x{config['layers']} (hidden {config['hidden']}) on "
        f"{task.name}, {config['steps']} steps, batch {config['batch_size']}, {engine} engine "
        f"on {jax.default_backend()} -> {out}", flush=True)
  start = time.perf_counter()
  diag = {}
  if config.get("diagnostics"):
    from rnnjax._src import report
    diag_batch = task.train_batch(jax.random.fold_in(k_data, 2**31 - 1), config["batch_size"])
    core = model_core(config)
    diag["init"] = report.model_diagnostics(core, state.params, task, diag_batch)
  result = rnnjax.fit(
      state, step_fn, batch_fn, num_steps=config["steps"],
      steps_per_call=config["steps_per_call"], eval_fn=evaluate,
      eval_every=config["eval_every"], out_dir=out,
      checkpoint_every=config["checkpoint_every"], keep=config["keep"],
      resume=config["resume"], progress=not config["quiet"])
  wall = time.perf_counter() - start
  if result.status == "diverged":
    print(f"rnnjax train: {result.message}", file=sys.stderr)
    return 3
  if result.status == "interrupted":
    print(f"rnnjax train: {result.message}. Continue with the same command and --resume.",
          file=sys.stderr)
    return 130
  metrics, details = task.evaluate(lambda xs: predict_fn(result.state.params, xs))
  value = metrics[task.metric]
  beat = value < task.baseline
  summary = {
      "task": task.name, "cell": config["cell"], "config": config,
      "metric": task.metric, task.metric: value, "metrics": metrics,
      "baseline": task.baseline, "baseline_name": task.baseline_name,
      "beats_baseline": bool(beat), "steps": int(result.state.step), "wall_s": round(wall, 2),
      "engine": engine,
      "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(result.state.params))),
      "jax": jax.__version__, "backend": jax.default_backend(), "task_info": _jsonable(task.info),
  }
  write_json_atomic(out / "summary.json", summary)
  if diag:
    diag[f"after {int(result.state.step)} steps"] = report.model_diagnostics(
        core, result.state.params, task, diag_batch)
    for name, path in zip(("JSON", "plot"), report.write(out, "diagnostics", diag,
                                                         plots=not config["no_plots"]),
                          strict=False):
      print(f"diagnostics {name}: {path}", flush=True)
  if not config["no_plots"]:
    _plots(out, task, details, config)
  verdict = "beats" if beat else "does NOT beat"
  print(f"{task.metric} {value:.4g}  vs  {task.baseline_name} baseline {task.baseline:.4g}  "
        f"({verdict} the baseline; {wall:.0f} s)", flush=True)
  return 0


def _jsonable(obj: Any) -> Any:
  try:
    json.dumps(obj)
    return obj
  except TypeError:
    if isinstance(obj, dict):
      return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
      return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
      return obj.tolist()
    return repr(obj)


def _plots(out: pathlib.Path, task, details: dict[str, Any], config: dict[str, Any]) -> None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("rnnjax train: matplotlib is not installed, so no plots were written "
          "(pip install 'rnnjax[plots]').", file=sys.stderr)
    return
  records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  train_rec = [r for r in records if "loss" in r]
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot([r["step"] for r in train_rec], [r["loss"] for r in train_rec], label="training loss")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(f"{config['cell']} on {task.name}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "loss.png", dpi=100)
  plt.close(fig)
  if "truth" in details and "forecast" in details:
    fig, ax = plt.subplots(figsize=(9, 4))
    time_axis = np.asarray(details.get("time", np.arange(len(details["truth"]))))
    start = int(details.get("test_start", 0))
    ax.plot(time_axis, details["truth"], color="black", lw=1, label="truth")
    ax.plot(time_axis[start:], np.asarray(details["forecast"])[start:], color="tab:red", lw=1.2,
            label=f"{config['cell']} one-step forecast (test)")
    ax.axvline(time_axis[start], color="gray", ls="--", lw=0.8)
    ax.set_title(f"{task.name}: held-out tail")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=100)
    plt.close(fig)
  if task.vocab_size is not None and task.name == "text":
    held_out = details.get("held_out") or [""]
    prompt = "def " if all(c in task.info["vocab"] for c in "def ") else held_out[0][:4]
    text = sample_text(out, length=300, prompt=prompt or task.info["vocab"][0], temperature=0.8,
                       seed=0)
    (out / "samples.txt").write_text(text + "\n")
    fig = plt.figure(figsize=(9, 5))
    fig.text(0.01, 0.99, text, family="monospace", fontsize=8, va="top", wrap=True)
    fig.savefig(out / "samples.png", dpi=100)
    plt.close(fig)


def sample_text(out: str | pathlib.Path, *, length: int, prompt: str, temperature: float,
                seed: int) -> str:
  """Generates `length` characters from the text model trained in `out`."""
  out = pathlib.Path(out)
  if not (out / "config.json").exists():
    raise UsageError(f"{out} holds no run (no config.json); train one with --task text first.")
  config = json.loads((out / "config.json").read_text())
  if config["task"] != "text":
    raise UsageError(f"{out} holds a {config['task']!r} run; sampling needs --task text.")
  summary_vocab = out / "vocab.json"
  vocab = json.loads(summary_vocab.read_text())
  task_like = argparse.Namespace(input_size=len(vocab), output_size=len(vocab),
                                 vocab_size=len(vocab))
  model = make_model(config, task_like)
  optimizer = make_optimizer(config)
  template = rnnjax.train_state(model.init(jax.random.PRNGKey(0)), optimizer,
                                jax.random.PRNGKey(0))
  ckpt = Checkpointer(out / "checkpoint")
  params = ckpt.restore(template).params
  ckpt.close()
  index = {c: i for i, c in enumerate(vocab)}
  unknown = sorted(set(prompt) - set(index))
  if unknown or not prompt:
    raise UsageError(f"--prompt must be non-empty and use only characters of the training "
                     f"text; these are not in its vocabulary: {unknown}")
  ids = [index[c] for c in prompt]

  @jax.jit
  def step(carry, token, key):
    logits, carry = model.apply(params, token.reshape(1, 1), carry)
    nxt = jax.random.categorical(key, logits[0, 0] / temperature)
    return carry, nxt

  carry = model.initial_carry(params, (1,))
  for token in ids[:-1]:
    carry, _ = step(carry, jnp.asarray(token, jnp.int32), jax.random.PRNGKey(0))
  token = jnp.asarray(ids[-1], jnp.int32)
  generated = []
  key = jax.random.PRNGKey(seed)
  for _ in range(length):
    key, sub = jax.random.split(key)
    carry, token = step(carry, token, sub)
    generated.append(int(token))
  return prompt + "".join(vocab[i] for i in generated)


def run_bench(args: argparse.Namespace) -> int:
  """`rnnjax bench`: prints a header line and a Markdown table per size and mode."""
  sizes = args.sizes or [bench.parse_size(s) for s in (bench.SIZES if args.full
                                                       else (bench.CLI_SIZE,))]
  repeats = args.repeats or (20 if args.full else 5)
  threads = args.threads or bench.default_threads()
  header = bench.header(threads)
  print(f"# {header}", flush=True)
  names = ("all installed contenders" if args.contenders is None
           else ", ".join(dict.fromkeys(("rnnjax", *args.contenders))))
  print(f"rnnjax bench: {args.cell} at B,T,I,H={' '.join(','.join(map(str, s)) for s in sizes)}"
        f", {repeats} repeats, {names}", file=sys.stderr, flush=True)
  progress = lambda row: print(f"  {row['size']} {row['mode']} {row['contender']}: "
                               f"{row['median_ms']:.3f} ms", file=sys.stderr, flush=True)
  if args.json_out:  # Refused before any compute; `bench.run` writes it row by row.
    try:
      pathlib.Path(args.json_out).write_text("")
    except OSError as err:
      raise UsageError(f"--json-out {args.json_out!r} cannot be written: {err}") from err
  try:
    rows = bench.run(args.cell, sizes, repeats=repeats, threads=threads, seed=args.seed,
                     names=args.contenders, json_out=args.json_out,
                     note=lambda line: print(line, file=sys.stderr, flush=True), on_row=progress)
  except bench.MismatchError as err:
    print(f"rnnjax bench: error: {err}", file=sys.stderr)
    return 1
  print(bench.table(rows))
  if args.json_out:
    print(f"\nrnnjax bench: {len(rows)} rows written to {args.json_out}", file=sys.stderr)
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] not in ("train", "sample", "bench", "-h", "--help"):
    argv = ["train", *argv]  # `rnnjax --task adding` means `rnnjax train --task adding`.
  args = parser.parse_args(argv)
  try:
    if args.command == "train":
      return train(resolve_config(args))
    if args.command == "bench":
      return run_bench(args)
    print(sample_text(args.out, length=args.length, prompt=args.prompt,
                      temperature=args.temperature, seed=args.seed))
    return 0
  except (UsageError, FileNotFoundError) as err:
    print(f"rnnjax {args.command}: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
