"""Selection by several metrics: later ones break the ties of earlier ones (`best_metric`
as a sequence), in `fit`, in its best checkpoint and in `Checkpointer`.

The reference is the plain rule on the recorded evaluations: the earliest evaluation
whose (first metric, second metric) is best in lexicographic order.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from tests import test_train


def _graded(params):
  """A coarse metric that ties over many evaluations (higher is better), and the MSE."""
  mse = test_train._val(params)["mse"]
  return {"grade": -round(mse, 2), "mse": mse}


def _evals(out):
  return [(r["step"], r["val/grade"], r["val/mse"]) for r in test_train._records(out)
          if "val/mse" in r]


def _first_best(evals, key):
  return min(evals, key=lambda e: (key(e), e[0]))[0]


def test_ties_in_the_first_metric_are_broken_by_the_second(tmp_path):
  result = test_train._fit(eval_fn=_graded, best_metric=("grade", "mse"),
                           best_mode=("max", "min"), out_dir=tmp_path)
  evals = _evals(tmp_path)
  expected = _first_best(evals, lambda e: (-e[1], e[2]))
  by_grade_alone = _first_best(evals, lambda e: -e[1])
  assert expected != by_grade_alone  # The grade ties, so the tie-break decides.
  assert result.best_step == expected
  assert result.best_metrics == {"val/grade": evals[[e[0] for e in evals].index(expected)][1],
                                 "val/mse": min(e[2] for e in evals if e[1] == max(
                                     g for _, g, _ in evals))}
  assert rnnjax.Checkpointer(tmp_path / "best").all_steps() == [expected]
  assert int(rnnjax.restore_best(tmp_path, test_train._fit_state()).step) == expected


def test_patience_counts_improvements_in_the_same_order(tmp_path):
  full = _evals(tmp_path / "full") if test_train._fit(
      eval_fn=_graded, out_dir=tmp_path / "full") else None
  best, since, stop = None, 0, None
  for step, grade, mse in full:
    if best is None or (-grade, mse) < best:
      best, since = (-grade, mse), 0
    else:
      since += 1
    if since == 4:
      stop = step
      break
  result = test_train._fit(eval_fn=_graded, best_metric=["grade", "mse"],
                           best_mode=["max", "min"], patience=4, out_dir=tmp_path / "run")
  assert result.status == "early_stopped" and int(result.state.step) == stop
  assert (f"stopped early at step {stop}: val/grade, ties broken by val/mse has not improved "
          "for 4 evaluations") in result.message


def test_a_checkpointer_keeps_the_best_by_several_metrics(tmp_path):
  metrics = {1: {"acc": 0.5, "loss": 0.9}, 2: {"acc": 0.75, "loss": 0.8},
             3: {"acc": 0.75, "loss": 0.6}, 4: {"acc": 0.75, "loss": 0.7},
             5: {"acc": 0.5, "loss": 0.1}}
  ckpt = rnnjax.Checkpointer(tmp_path, keep=2, best_metric=("acc", "loss"),
                             best_mode=("max", "min"))
  for step, m in metrics.items():
    ckpt.save(step, {"w": jnp.full(2, float(step))}, metrics=m)
  assert ckpt.all_steps() == [3, 4]
  assert ckpt.best_step() == 3
  assert ckpt.restore({"w": jnp.zeros(2)})["w"].tolist() == [3.0, 3.0]
  with pytest.raises(ValueError, match=r"must hold best_metric='loss'"):
    ckpt.save(6, {"w": jnp.zeros(2)}, metrics={"acc": 1.0})
  ckpt.close()


def test_a_non_finite_tie_break_ranks_last_but_a_finite_first_metric_still_counts(tmp_path):
  ckpt = rnnjax.Checkpointer(tmp_path, keep=1, best_metric=("acc", "loss"),
                             best_mode=("max", "min"))
  ckpt.save(1, {"w": jnp.ones(1)}, metrics={"acc": 0.5, "loss": 0.2})
  ckpt.save(2, {"w": jnp.ones(1)}, metrics={"acc": 0.5, "loss": float("nan")})
  ckpt.save(3, {"w": jnp.ones(1)}, metrics={"acc": 0.9, "loss": float("nan")})
  assert ckpt.all_steps() == [3]
  ckpt.close()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"best_metric": ("mse", "score"), "best_mode": ("min",)},
     r"`best_mode` must be 'min' or 'max', or a sequence of them, one per metric of "
     r"best_metric=\('mse', 'score'\); got \('min',\)"),
    ({"best_metric": ("mse", "score"), "best_mode": ("min", "up")}, r".*one per metric"),
    ({"best_metric": (), "best_mode": "min"},
     r"`best_metric` must be a metric name \(a str\) or a non-empty sequence of them, got \(\)"),
    ({"best_metric": ("mse", 3)}, r".*non-empty sequence of them, got \('mse', 3\)"),
])
def test_bad_rankings_are_refused_by_name(kwargs, match):
  with pytest.raises(ValueError, match=r"rnnjax\.fit: " + match):
    test_train._fit(num_steps=3, **kwargs)
  with pytest.raises(ValueError, match=r"rnnjax\.Checkpointer: " + match):
    rnnjax.Checkpointer("/nonexistent/never-made", **kwargs)


def test_a_single_metric_ranks_as_before():
  ranking = rnnjax._src.ranking.Ranking("f", "mse", "min", prefix="val/")
  assert ranking.names == ("val/mse",)
  values = np.array([0.3, np.nan, 0.1, np.inf, 0.2])
  order = sorted(range(5), key=lambda i: ranking.key({"val/mse": values[i]}))
  assert order[:3] == [2, 4, 0]
