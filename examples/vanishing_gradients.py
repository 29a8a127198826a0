"""Vanishing gradients, measured: an Elman RNN against an LSTM on the adding problem.

Each cell's `sequence_model` (hidden 64, the `rnnjax train --task adding` model)
is trained with Adam for `--steps` steps on the adding problem (T=200: the target
is the sum of two marked inputs anywhere in the sequence). Before and after
training, `rnnjax.diagnostics.gradient_norms` gives `||dL/dh_t||` for every step of
one batch in one backward pass, and `jacobian_spectrum` the step Jacobians'
singular values and Lyapunov exponents. The curves go to one PNG and the numbers
to JSON.

  python examples/vanishing_gradients.py                      # -> docs/vanishing_gradients.png
  python examples/vanishing_gradients.py --length 100 --out /tmp/vg
"""

import argparse
import json
import pathlib

import jax
import optax

import rnnjax
from rnnjax import tasks
from rnnjax._src.files import write_json_atomic
from rnnjax.tools import report


def train(model, task, params, steps: int, batch_size: int, seed: int):
  """Adam, the `rnnjax train --task adding` learning rate, `steps` steps."""
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(2e-3))
  state = rnnjax.train_state(params, optimizer, jax.random.key(seed + 2))
  per_call = 50 if steps % 50 == 0 else 1
  step = rnnjax.make_train_step(lambda p, b, k: task.loss(model.apply(p, b["xs"])[0], b),
                                optimizer, steps_per_call=per_call, donate=False)
  data_key = jax.random.key(seed + 3)
  batches = jax.jit(lambda s: task.train_batch(jax.random.fold_in(data_key, s), batch_size))
  for s in range(0, steps, per_call):
    batch = (batches(s) if per_call == 1 else
             jax.tree_util.tree_map(lambda *b: jax.numpy.stack(b),
                                    *[batches(s + i) for i in range(per_call)]))
    state, _ = step(state, batch)
  return state.params


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=200)
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--cells", default="elman,lstm")
  parser.add_argument("--out", default="docs", help="directory for the PNG and JSON")
  parser.add_argument("--steps", type=int, default=1500, help="training steps per cell")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  task = tasks.get_task("adding", length=args.length)
  batch = task.train_batch(jax.random.key(args.seed + 1), args.batch_size)
  reports = {}
  for name in args.cells.split(","):
    core = getattr(rnnjax, name)(args.hidden)
    model = rnnjax.sequence_model(core, input_size=task.input_size,
                                  output_size=task.output_size)
    params = model.init(jax.random.key(args.seed))
    trained = train(model, task, params, args.steps, args.batch_size, args.seed)
    for label, p in ((f"{name}, init", params), (f"{name}, {args.steps} steps", trained)):
      reports[label] = report.model_diagnostics(core, p, task, batch)
      s = reports[label]["summary"]
      print(f"{label}: ||dL/dh_t|| {s['first']:.3g} at t=0, {s['last']:.3g} near the end "
            f"({s['log10_first_over_last']:+.1f} decades); top Lyapunov exponent "
            f"{max(reports[label]['lyapunov']):+.4f} per step; loss {reports[label]['loss']:.4f}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  write_json_atomic(out / "vanishing_gradients.json", reports)
  png = report.plot(out / "vanishing_gradients.png", reports,
                    title=f"adding problem, T={args.length}")
  print(f"wrote {png} and {out / 'vanishing_gradients.json'}")
  print(json.dumps({k: v["summary"] for k, v in reports.items()}))
  return reports


if __name__ == "__main__":
  main()
