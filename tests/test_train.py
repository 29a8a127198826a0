"""Tests for the training core: the step, fit, checkpoints, truncated BPTT, the model."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax
from tests import reference as ref

T, B, I, H = 12, 3, 2, 4


@pytest.fixture(autouse=True)
def _standard_promotion():
  """Optax's own code mixes Python floats and int32 counts, which strict promotion refuses."""
  with jax.numpy_dtype_promotion("standard"):
    yield


def _tree_assert_equal(a, b):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x),
                                                                    np.asarray(y)), a, b)


def _regression_problem():
  """A linear target any recurrent model can fit: y_t = x_t . w*, plus its batches."""
  w_star = jnp.array([0.7, -0.3])
  model = rnnjax.sequence_model(rnnjax.gru(H), input_size=I, output_size=1)

  def data(step):
    xs = jax.random.normal(jax.random.fold_in(jax.random.key(7), step), (T, B, I))
    return {"xs": xs, "ys": xs @ w_star}

  def loss_fn(params, batch, key):
    del key
    preds, _ = model.apply(params, batch["xs"])
    return jnp.mean((preds[..., 0] - batch["ys"]) ** 2)

  return model, jax.jit(data), loss_fn


MODEL, DATA, LOSS = _regression_problem()
OPT = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
STEP1 = rnnjax.make_train_step(LOSS, OPT, donate=False)
STEP5 = rnnjax.make_train_step(LOSS, OPT, steps_per_call=5, donate=False)


def _fresh_state(seed=0):
  return rnnjax.train_state(MODEL.init(jax.random.key(seed)), OPT, jax.random.key(seed + 1))


def test_train_step_equals_manual_optax_update():
  state = _fresh_state()
  batch = DATA(0)
  new_state, metrics = STEP1(state, batch)
  loss, grads = jax.value_and_grad(LOSS)(state.params, batch, None)
  updates, opt_state = OPT.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         (new_state.params, new_state.opt_state), (params, opt_state))
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-6)
  assert int(new_state.step) == 1
  assert not np.array_equal(np.asarray(new_state.key), np.asarray(state.key))


def test_several_steps_per_call_equal_single_steps():
  state_a = state_b = _fresh_state()
  for s in range(5):
    state_a, _ = STEP1(state_a, DATA(s))
  batches = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[DATA(s) for s in range(5)])
  state_b, metrics = STEP5(state_b, batches)
  assert metrics["loss"].shape == (5,)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         state_a, state_b)


def test_fit_learns_far_below_the_baseline(tmp_path):
  baseline = float(jnp.mean(DATA(10_000)["ys"] ** 2))  # predicting zero
  eval_fn = jax.jit(lambda p: {"mse": LOSS(p, DATA(10_000), None)})
  result = rnnjax.fit(_fresh_state(), STEP5, DATA, num_steps=300, steps_per_call=5,
                      eval_fn=eval_fn, eval_every=100, out_dir=tmp_path, log_every=50,
                      progress=False)
  assert result.status == "completed"
  assert int(result.state.step) == 300
  assert result.evals[-1]["val/mse"] < baseline / 20
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "train/loss" in r] == [50, 100, 150, 200, 250, 300]
  assert [r["step"] for r in records if "val/mse" in r] == [100, 200, 300]
  assert [r for r in records if "val/mse" in r] == result.evals
  assert all(set(r) <= {"step", "train/loss", "train/grad_norm", "train/steps_per_s"}
             for r in records if "train/loss" in r)


def test_fit_resume_is_exact(tmp_path):
  full = rnnjax.fit(_fresh_state(), STEP5, DATA, num_steps=60, steps_per_call=5,
                    out_dir=tmp_path / "full", checkpoint_every=20, progress=False)
  part = rnnjax.fit(_fresh_state(), STEP5, DATA, num_steps=40, steps_per_call=5,
                    out_dir=tmp_path / "part", checkpoint_every=20, progress=False)
  assert int(part.state.step) == 40
  # A different starting state proves the resumed run really reads the checkpoint.
  resumed = rnnjax.fit(_fresh_state(seed=5), STEP5, DATA, num_steps=60, steps_per_call=5,
                       out_dir=tmp_path / "part", checkpoint_every=20, resume=True,
                       progress=False)
  _tree_assert_equal(full.state, resumed.state)
  steps = [json.loads(line)["step"] for line in
           (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_fit_stops_on_nan_and_keeps_the_last_good_checkpoint(tmp_path):
  def data(step):
    batch = DATA(step)
    return {**batch, "ys": jnp.where(step >= 23, jnp.nan, 1.0) * batch["ys"]}

  result = rnnjax.fit(_fresh_state(), STEP1, data, num_steps=50, out_dir=tmp_path,
                      checkpoint_every=10, progress=False)
  assert result.status == "diverged"
  assert "loss became nan at step 24" in result.message
  assert "last good checkpoint (step 23)" in result.message
  # The state before the rejected step is returned, and saved for `resume`.
  assert int(result.state.step) == 23
  assert rnnjax.Checkpointer(tmp_path / "checkpoint").all_steps() == [10, 20, 23]
  expected = rnnjax.fit(_fresh_state(), STEP1, DATA, num_steps=23, progress=False).state
  _tree_assert_equal(result.state, expected)
  _tree_assert_equal(rnnjax.Checkpointer(tmp_path / "checkpoint").restore(expected), expected)


def test_fit_argument_errors():
  with pytest.raises(ValueError, match=r"rnnjax\.fit: `checkpoint_every` \(7\).*multiple"):
    rnnjax.fit(_fresh_state(), STEP5, DATA, num_steps=10, steps_per_call=5,
               checkpoint_every=7, progress=False)
  with pytest.raises(ValueError, match=r"rnnjax\.fit: `num_steps` must be a positive"):
    rnnjax.fit(_fresh_state(), STEP1, DATA, num_steps=0, progress=False)


def test_checkpointer_keeps_the_newest_and_ignores_unfinished_saves(tmp_path):
  ckpt = rnnjax.Checkpointer(tmp_path, keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, {"w": jnp.full((3,), float(step))})
  assert ckpt.all_steps() == [2, 3]
  # A save killed half-way leaves orbax's temporary directory, never a step directory.
  (tmp_path / "4.orbax-checkpoint-tmp-123").mkdir()
  assert ckpt.latest_step() == 3
  np.testing.assert_array_equal(ckpt.restore({"w": jnp.zeros(3)})["w"], [3.0, 3.0, 3.0])
  ckpt.close()
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    rnnjax.Checkpointer(tmp_path / "empty").restore({"w": jnp.zeros(3)})


# ---- Rejected steps, steps per call, the metrics log: a tiny problem that compiles at once ----

TINY_OPT = optax.sgd(1e30, momentum=0.5)  # With the usual scale 1e-31 of the loss: rate 0.1.


def _tiny_loss(params, batch, key):
  """A loss that stays finite while its gradient or the update does not, on demand.

  `jnp.where` keeps `sqrt(z e^w0)` out of the forward pass where `z < 0`, but
  the gradient there is `0 x NaN = NaN`; a scale `s = 1e12` instead of `1e-31`
  leaves the loss (~1e12) and the gradient norm finite, and the update
  (`1e30 x ~1e12`) overflows to inf.
  """
  del key
  w = params["w"]
  z = batch["z"] * jnp.exp(w[0])
  err = (batch["x"] * w - 1.0) ** 2 + jnp.where(z > 0, jnp.sqrt(z), 0.0)
  return jnp.mean(batch["s"] * err)  # x: [2, 3], s and z: [2, 1]


def _tiny_data(poison=None, at=-1):
  """`data(step)` on the host; at step index `at`, `poison` makes the loss, the gradient
  or the new params non-finite."""
  def data(step):
    x = np.random.default_rng(step).normal(size=(2, 3)).astype(np.float32)
    s, z = np.full((2, 1), 1e-31, np.float32), np.ones((2, 1), np.float32)
    if step == at:
      if poison == "loss":
        x[0, 0] = np.inf
      elif poison == "gradient":
        z[1, 0] = -1.0
      else:
        x[:], s[:] = 1.0, 1e12
    return {"x": x, "s": s, "z": z}
  return data


def _tiny_state():
  return rnnjax.train_state({"w": jnp.array([0.5, -0.3, 0.2])}, TINY_OPT, jax.random.key(3))


TINY1 = rnnjax.make_train_step(_tiny_loss, TINY_OPT)  # Both donate their input state.
TINY3 = rnnjax.make_train_step(_tiny_loss, TINY_OPT, steps_per_call=3)


@functools.lru_cache(maxsize=1)
def _tiny_reference():
  """The states after 0, 1, ..., 9 clean steps: a plain loop of the one-step function."""
  state, data, states = _tiny_state(), _tiny_data(), []
  for step in range(10):
    states.append(jax.tree_util.tree_map(np.asarray, state))
    if step < 9:
      state, _ = TINY1(state, data(step))
  return states


def _assert_states_close(a, b):
  """Integers (step, key) equal, floats to rounding (a `lax.scan` may round otherwise)."""
  def check(x, y):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    if np.issubdtype(x.dtype, np.inexact):
      assert np.all(np.isfinite(x))
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    else:
      np.testing.assert_array_equal(x, y)
  jax.tree_util.tree_map(check, a, b)


def _deleted(state):
  return any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))


def test_the_donating_step_aliases_its_state_and_computes_what_the_plain_one_does():
  plain = rnnjax.make_train_step(_tiny_loss, TINY_OPT, donate=False)
  batch = _tiny_data()(0)
  n = len(jax.tree_util.tree_leaves(_tiny_state()))
  assert TINY1.lower(_tiny_state(), batch).as_text().count("tf.aliasing_output") == n
  assert plain.lower(_tiny_state(), batch).as_text().count("tf.aliasing_output") == 0
  expected = plain(_tiny_state(), batch)
  state = _tiny_state()
  got = TINY1(state, batch)
  assert _deleted(state)  # The buffers went to the output.
  _tree_assert_equal(got, expected)
  _assert_states_close(got[0], _tiny_reference()[1])


@pytest.mark.parametrize("poison", ["loss", "gradient", "params"])
def test_a_rejected_step_returns_its_input_state_and_so_do_the_later_steps_of_its_call(poison):
  data, ref = _tiny_data(poison, at=1), _tiny_reference()
  state, metrics = TINY1(TINY1(_tiny_state(), data(0))[0], data(1))
  assert not metrics["accepted"]
  _assert_states_close(state, ref[1])
  batches = jax.tree_util.tree_map(lambda *x: np.stack(x), *[data(s) for s in range(3)])
  state, metrics = TINY3(_tiny_state(), batches)
  assert metrics["accepted"].tolist() == [True, False, False]
  _assert_states_close(state, ref[1])


def test_a_nan_gradient_is_rejected_even_where_the_optimizer_would_hide_it():
  step = rnnjax.make_train_step(_tiny_loss, optax.chain(optax.zero_nans(), TINY_OPT))
  data = _tiny_data("gradient", at=0)
  state = rnnjax.train_state(_tiny_state().params, optax.chain(optax.zero_nans(), TINY_OPT),
                             jax.random.key(3))
  expected = jax.tree_util.tree_map(np.asarray, state)
  new_state, metrics = step(state, data(0))
  assert not metrics["accepted"] and np.isnan(metrics["grad_norm"])
  _tree_assert_equal(new_state, expected)


@pytest.mark.parametrize(("spc", "bad"), [(1, 6), (3, 5)])
@pytest.mark.parametrize(("poison", "what"), [
    ("loss", "the loss became inf"), ("gradient", "the gradient norm became nan"),
    ("params", "the new params became non-finite")])
def test_fit_stops_at_a_non_finite_step_and_keeps_and_saves_the_state_before_it(
    tmp_path, spc, bad, poison, what):
  # Checkpoints every 3 steps: the call holding step `bad` reaches the boundary 6, where a
  # non-finite state was saved as the last good one.
  result = rnnjax.fit(_tiny_state(), TINY1 if spc == 1 else TINY3, _tiny_data(poison, bad - 1),
                      num_steps=9, steps_per_call=spc, out_dir=tmp_path, checkpoint_every=3,
                      progress=False)
  assert result.status == "diverged"
  assert f"{what} at step {bad}" in result.message, result.message
  assert f"last good checkpoint (step {bad - 1})" in result.message
  ref = _tiny_reference()
  assert int(result.state.step) == bad - 1
  _assert_states_close(result.state, ref[bad - 1])
  ckpt = rnnjax.Checkpointer(tmp_path / "checkpoint")
  assert ckpt.all_steps() == [3, bad - 1]
  for step in ckpt.all_steps():
    _assert_states_close(ckpt.restore(ref[0], step=step), ref[step])
  ckpt.close()


def test_fit_refuses_a_step_made_for_another_steps_per_call_before_training():
  state = _tiny_state()
  with pytest.raises(ValueError, match=(
      r"rnnjax\.fit: `train_step` returned a loss of shape \(\) for a batch of 3 steps "
      r"stacked .*\(steps_per_call=3\).* seems made with steps_per_call=1, .*Make it with "
      r"steps_per_call=3, or pass fit steps_per_call=1")):
    rnnjax.fit(state, TINY1, _tiny_data(), num_steps=6, steps_per_call=3, progress=False)
  with pytest.raises(ValueError, match=(
      r"rnnjax\.fit: `train_step` returned a loss of shape \(2,\) for one step's batch, as a "
      r"step made with make_train_step\(\.\.\., steps_per_call > 1\) does .*fit was given "
      r"steps_per_call=1")):
    rnnjax.fit(state, TINY3, _tiny_data(), num_steps=6, progress=False)
  assert not _deleted(state)  # Refused before the first step: nothing was donated.
  # A plain Python step function is not traced ahead: its first call's loss gives it away.
  with pytest.raises(ValueError, match=r"loss of shape \(\) for a batch of 3 steps"):
    rnnjax.fit(state, lambda s, b: TINY1(s, b), _tiny_data(), num_steps=6, steps_per_call=3,
               progress=False)


def test_fit_runs_the_last_partial_call():
  result = rnnjax.fit(_tiny_state(), TINY3, _tiny_data(), num_steps=7, steps_per_call=3,
                      progress=False)
  assert result.status == "completed"
  assert int(result.state.step) == 7
  _assert_states_close(result.state, _tiny_reference()[7])


def _log(path):
  """`metrics.jsonl`'s records, without the timing, which differs between runs."""
  records = [json.loads(line) for line in path.read_text().splitlines()]
  return [{k: v for k, v in r.items() if k != "train/steps_per_s"} for r in records]


def test_resume_moves_a_damaged_metrics_log_aside_and_keeps_its_intact_records(tmp_path):
  kw = {"log_every": 1, "checkpoint_every": 2, "progress": False}
  full = rnnjax.fit(_tiny_state(), TINY1, _tiny_data(), num_steps=6, out_dir=tmp_path / "full",
                    **kw)
  rnnjax.fit(_tiny_state(), TINY1, _tiny_data(), num_steps=4, out_dir=tmp_path / "part", **kw)
  log = tmp_path / "part" / "metrics.jsonl"
  lines = log.read_bytes().splitlines(keepends=True)
  assert len(lines) == 4
  # Binary garbage for step 2's record, and a record cut short by a kill.
  damaged = lines[0] + b"\xff\xfe\x00garbage\n" + b"".join(lines[2:]) + b'{"step": 5, "lo'
  log.write_bytes(damaged)
  (tmp_path / "part" / "metrics.jsonl.damaged-1").write_bytes(b"an older one")
  with pytest.warns(UserWarning, match=(
      r"rnnjax\.fit: .*metrics\.jsonl has 2 damaged line\(s\) \(line 2 first: .*\); moved it "
      r"to .*metrics\.jsonl\.damaged-2 and kept its 3 intact records up to step 4\.")):
    resumed = rnnjax.fit(_tiny_state(), TINY1, _tiny_data(), num_steps=6,
                         out_dir=tmp_path / "part", resume=True, **kw)
  assert (tmp_path / "part" / "metrics.jsonl.damaged-2").read_bytes() == damaged
  assert (tmp_path / "part" / "metrics.jsonl.damaged-1").read_bytes() == b"an older one"
  expected = _log(tmp_path / "full" / "metrics.jsonl")
  assert _log(log) == expected[:1] + expected[2:]
  _tree_assert_equal(resumed.state, full.state)


def test_resume_without_a_checkpoint_writes_the_log_again_instead_of_twice(tmp_path):
  kw = {"out_dir": tmp_path, "log_every": 1, "progress": False}
  rnnjax.fit(_tiny_state(), TINY1, _tiny_data(), num_steps=2, **kw)
  shutil.rmtree(tmp_path / "checkpoint")  # As if killed before its first checkpoint.
  rnnjax.fit(_tiny_state(), TINY1, _tiny_data(), num_steps=3, resume=True, **kw)
  assert [r["step"] for r in _log(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_fit_without_resume_refuses_an_out_dir_holding_a_run_and_removes_nothing(tmp_path):
  def fit(out):
    rnnjax.fit(_tiny_state(), TINY1, _tiny_data(), num_steps=2, out_dir=out, progress=False)

  (tmp_path / "metrics.jsonl").write_text("my notes\n")
  with pytest.raises(ValueError, match=(
      r"rnnjax\.fit: `out_dir` .* already holds metrics\.jsonl of an earlier run, which fit "
      r"never removes or overwrites\. Pass resume=True to continue that run, or use another")):
    fit(tmp_path)
  assert (tmp_path / "metrics.jsonl").read_text() == "my notes\n"
  assert not (tmp_path / "checkpoint").exists()
  (tmp_path / "other" / "checkpoint" / "5").mkdir(parents=True)
  with pytest.raises(ValueError, match=r"already holds checkpoint of an earlier run"):
    fit(tmp_path / "other")
  assert (tmp_path / "other" / "checkpoint" / "5").is_dir()
  with pytest.raises(ValueError, match=r"rnnjax\.fit: `out_dir` must be a directory, but .* "
                     r"is a file"):
    fit(tmp_path / "metrics.jsonl")
  with pytest.raises(ValueError, match=r"rnnjax\.fit: cannot make `out_dir` .*/run: "):
    fit(tmp_path / "metrics.jsonl" / "run")
  assert (tmp_path / "metrics.jsonl").read_text() == "my notes\n"


def test_the_cli_clip_is_a_global_norm_clip():
  """`--clip c` scales the whole gradient by `min(1, c / ||g||)` (NumPy) before Adam."""
  from rnnjax import cli

  config = {"lr": 0.1, "steps": 100, "clip": 1.0}
  grads = [{"a": [3.0, 0.5], "b": [-0.2, 0.1]}, {"a": [0.1, -0.2], "b": [0.3, 0.05]},
           {"a": [-2.0, 0.4], "b": [0.9, 1.5]}, {"a": [0.2, 0.1], "b": [-0.1, 0.3]}]
  grads = [{k: np.asarray(v, np.float32) for k, v in g.items()} for g in grads]

  def clipped(g):
    norm = np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in g.values()))
    return {k: (x * min(1.0, config["clip"] / norm)).astype(np.float32) for k, x in g.items()}

  def updates(config, grads):
    opt = cli.make_optimizer(config)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    opt_state, out, update = opt.init(params), [], jax.jit(opt.update)
    for g in grads:
      u, opt_state = update(g, opt_state, params)
      out.append(np.concatenate([u["a"], u["b"]]))
    return np.stack(out)

  got = updates(config, grads)
  unclipped = {**config, "clip": 1e30}
  np.testing.assert_allclose(got, updates(unclipped, [clipped(g) for g in grads]),
                             rtol=1e-5, atol=1e-8)
  assert not np.allclose(got, updates(unclipped, grads), rtol=1e-3)  # The clip matters here.


# ---- Validation, the best checkpoint, early stopping, writers, callbacks ----
# A problem that overfits: 8 cosine features (the higher frequencies scaled down, so that
# gradient descent fits them last) fitted to 8 noisy points of cos(x); validation on 40
# clean points elsewhere. The validation error falls, then rises (minimum near step 36).

def _cos_features(x):
  k = np.arange(8)
  return (np.cos(np.outer(x, k)) / (1 + k)).astype(np.float32)


_RNG = np.random.default_rng(0)
_X_TRAIN = _RNG.uniform(0, 3, 8)
FIT_BATCH = {"p": _cos_features(_X_TRAIN),
             "y": (np.cos(_X_TRAIN) + 0.3 * _RNG.normal(size=8)).astype(np.float32)}
VAL_P = _cos_features(np.linspace(0, 3, 40))
VAL_Y = np.cos(np.linspace(0, 3, 40)).astype(np.float32)
FIT_OPT = optax.sgd(0.6)
FIT_STEP = rnnjax.make_train_step(
    lambda p, batch, key: jnp.mean((batch["p"] @ p["w"] - batch["y"]) ** 2), FIT_OPT,
    donate=False)
_VAL_MSE = jax.jit(lambda w: jnp.mean((VAL_P @ w - VAL_Y) ** 2))


def _val(params):
  mse = float(_VAL_MSE(params["w"]))
  return {"mse": mse, "score": -mse}


def _fit_state():
  return rnnjax.train_state({"w": jnp.zeros(8, jnp.float32)}, FIT_OPT, jax.random.key(0))


def _fit(**kw):
  kw = {"num_steps": 60, "eval_fn": _val, "eval_every": 3, "log_every": 3, "progress": False,
        **kw}
  return rnnjax.fit(_fit_state(), FIT_STEP, lambda step: FIT_BATCH, **kw)


def _records(out):
  return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _remember(seen):
  def callback(step, state, metrics):
    seen[step] = (np.array(state.params["w"]), metrics)
  return callback


def test_the_best_checkpoint_is_the_validation_minimum_and_restore_best_returns_it(tmp_path):
  seen = {}
  result = _fit(best_metric="mse", out_dir=tmp_path, callbacks=[_remember(seen)])
  evals = [(r["step"], r["val/mse"]) for r in _records(tmp_path) if "val/mse" in r]
  assert [step for step, _ in evals] == list(range(3, 61, 3))
  best_step, best = min(evals, key=lambda e: e[1])
  assert 9 < best_step < 51 and evals[-1][1] > best * 1.01  # It overfits: not the last.
  # The recorded value is the validation error of the params of that step (NumPy).
  w = seen[best_step][0]
  np.testing.assert_allclose(best, np.mean((VAL_P @ w - VAL_Y) ** 2), rtol=1e-5)
  assert result.status == "completed" and int(result.state.step) == 60
  assert result.best_step == best_step
  assert result.best_metrics == {"val/mse": best, "val/score": -best}
  assert seen[best_step][1]["val/mse"] == best
  restored = rnnjax.restore_best(tmp_path, _fit_state())
  assert int(restored.step) == best_step
  np.testing.assert_array_equal(restored.params["w"], w)
  assert not np.array_equal(restored.params["w"], result.state.params["w"])
  assert rnnjax.Checkpointer(tmp_path / "best").all_steps() == [best_step]
  assert f"best checkpoint (step {best_step})" in result.message
  # Only the newest, not the best, is what `resume` reads.
  assert rnnjax.Checkpointer(tmp_path / "checkpoint").all_steps() == [60]


def test_patience_stops_after_that_many_evaluations_without_improvement(tmp_path):
  full = [(r["step"], r["val/mse"]) for r in _records_of_a_full_run(tmp_path / "full")]
  # The plain rule on the full run's evaluations: the first one 4 after the running best.
  best, since, stop = np.inf, 0, None
  for step, value in full:
    best, since = (value, 0) if value < best else (best, since + 1)
    if since == 4:
      stop = step
      break
  result = _fit(best_metric="score", best_mode="max", patience=4, out_dir=tmp_path / "run")
  assert result.status == "early_stopped"
  assert int(result.state.step) == stop < 60
  assert result.best_step == stop - 4 * 3
  assert f"stopped early at step {stop}: val/score has not improved for 4 evaluations" in (
      result.message)
  assert [(r["step"], r["val/mse"]) for r in _records(tmp_path / "run") if "val/mse" in r] == [
      e for e in full if e[0] <= stop]
  assert rnnjax.Checkpointer(tmp_path / "run" / "checkpoint").all_steps() == [stop]
  assert int(rnnjax.restore_best(tmp_path / "run", _fit_state()).step) == result.best_step


def _records_of_a_full_run(out):
  _fit(out_dir=out)
  return [r for r in _records(out) if "val/mse" in r]


def test_a_resumed_run_records_selects_and_stops_as_an_uninterrupted_one(tmp_path):
  kw = {"best_metric": "mse", "patience": 4, "checkpoint_every": 6, "log_every": 4}
  full = _fit(out_dir=tmp_path / "full", **kw)
  assert full.status == "early_stopped"
  part = _fit(out_dir=tmp_path / "part", callbacks=[lambda step, s, m: step == 27], **kw)
  assert part.status == "stopped" and "stopped by callbacks[0] at step 27" in part.message
  assert rnnjax.Checkpointer(tmp_path / "part" / "checkpoint").all_steps()[-1] == 27
  resumed = _fit(out_dir=tmp_path / "part", resume=True, **kw)
  assert resumed.status == "early_stopped"
  assert (resumed.best_step, resumed.best_metrics) == (full.best_step, full.best_metrics)
  _tree_assert_equal(resumed.state, full.state)
  assert _log(tmp_path / "part" / "metrics.jsonl") == _log(tmp_path / "full" / "metrics.jsonl")
  _tree_assert_equal(rnnjax.restore_best(tmp_path / "part", _fit_state()),
                     rnnjax.restore_best(tmp_path / "full", _fit_state()))


class _ListWriter:
  """A writer with CLU's four methods that remembers every call."""

  def __init__(self):
    self.scalars, self.hparams, self.flushed, self.closed = [], [], 0, False

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))

  def write_hparams(self, hparams):
    self.hparams.append(dict(hparams))

  def flush(self):
    self.flushed += 1

  def close(self):
    self.closed = True


def test_writers_receive_exactly_the_records_of_metrics_jsonl(tmp_path):
  writer = _ListWriter()
  _fit(num_steps=20, log_every=4, eval_every=5, out_dir=tmp_path, writers=[writer],
       hparams={"lr": 0.6, "features": 8})
  records = _records(tmp_path)
  assert writer.scalars == [(r["step"], {k: v for k, v in r.items() if k != "step"})
                            for r in records]
  assert [r["step"] for r in records] == [4, 5, 8, 10, 12, 15, 16, 20, 20]
  assert set(records[-2]) == {"step", "train/loss", "train/grad_norm", "train/steps_per_s"}
  assert set(records[-1]) == {"step", "val/mse", "val/score"}
  assert writer.hparams == [{"lr": 0.6, "features": 8}]
  assert writer.flushed >= 1 and not writer.closed


def test_callbacks_get_each_calls_metrics_and_a_true_return_stops_after_a_checkpoint(tmp_path):
  seen, ref, data = {}, _tiny_reference(), _tiny_data()
  result = rnnjax.fit(_tiny_state(), TINY3, data, num_steps=9, steps_per_call=3,
                      out_dir=tmp_path, progress=False,
                      callbacks=[_remember(seen), lambda step, state, metrics: step >= 6])
  assert result.status == "stopped" and int(result.state.step) == 6
  assert sorted(seen) == [3, 6]
  for step in (3, 6):
    _assert_states_close({"w": seen[step][0]}, ref[step].params)
    losses = [float(_tiny_loss(ref[s].params, data(s), None)) for s in range(step - 3, step)]
    np.testing.assert_allclose(seen[step][1]["train/loss"], np.mean(losses), rtol=1e-5)
    assert set(seen[step][1]) <= {"train/loss", "train/grad_norm", "train/steps_per_s"}
  ckpt = rnnjax.Checkpointer(tmp_path / "checkpoint")
  assert ckpt.all_steps() == [6]
  _assert_states_close(ckpt.restore(ref[0]), ref[6])
  ckpt.close()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"best_metric": "mse", "eval_fn": None}, ValueError,
     r"`best_metric` \('mse'\) must name a metric of `eval_fn`'s dict .*no eval_fn was given"),
    ({"patience": 2}, ValueError, r"`patience` \(2\) counts evaluations .*pass best_metric"),
    ({"best_metric": "mse", "patience": 0}, ValueError, r"`patience` must be a positive"),
    ({"best_metric": "mse", "best_mode": "lowest"}, ValueError,
     r"`best_mode` must be 'min' or 'max', got 'lowest'"),
    ({"writers": [object()]}, TypeError,
     r"writers\[0\] \(object\) has no write_scalars, write_hparams, flush, close"),
    ({"writers": _ListWriter()}, TypeError, r"`writers` must be a sequence of writers"),
    ({"callbacks": lambda *a: None}, TypeError, r"`callbacks` must be a sequence of functions"),
    ({"progress": "yes"}, TypeError, r"`progress` must be a bool or an rnnjax\.ProgressBar"),
])
def test_fit_refuses_bad_selection_writers_callbacks_and_progress(kwargs, error, match):
  with pytest.raises(error, match=r"rnnjax\.fit: " + match):
    _fit(num_steps=3, **kwargs)


def test_a_best_metric_that_eval_fn_does_not_return_is_named_with_those_it_does():
  with pytest.raises(ValueError, match=(
      r"rnnjax\.fit: best_metric='rmse' is not a metric of eval_fn, which returned "
      r"\['mse', 'score'\]\. Pass one of those")):
    _fit(num_steps=3, best_metric="rmse")


def test_restore_best_without_a_best_checkpoint_is_a_checkpoint_error(tmp_path):
  _fit(num_steps=3, out_dir=tmp_path)  # No best_metric: no best checkpoint.
  with pytest.raises(rnnjax.CheckpointError, match=r"rnnjax\.restore_best: no best checkpoint "
                     r"in .*best\. fit keeps one only with an out_dir, an eval_fn and a "
                     r"best_metric") as err:
    rnnjax.restore_best(tmp_path, _fit_state())
  assert err.value.kind == "missing"


def test_without_resume_an_out_dir_holding_a_best_checkpoint_is_refused(tmp_path):
  (tmp_path / "best" / "12").mkdir(parents=True)
  with pytest.raises(ValueError, match=r"already holds best of an earlier run"):
    _fit(num_steps=3, out_dir=tmp_path)


# ---- Truncated BPTT ----

CELL = rnnjax.lstm(H)
CELL_PARAMS = jax.tree_util.tree_map(
    lambda p: p + 0.3 * jnp.asarray(np.random.default_rng(0).normal(size=p.shape), p.dtype),
    CELL.init(jax.random.key(0), I))
XS = jnp.asarray(np.random.default_rng(1).normal(size=(T + 1, B, I)), jnp.float32)
LENGTHS = jnp.array([13, 7, 0])
RESETS = jnp.asarray(np.random.default_rng(2).random((T + 1, B)) < 0.2)


@jax.jit
def _tbptt(params, xs, lengths, resets):
  return rnnjax.truncated_unroll(CELL, params, xs, chunk=5, lengths=lengths, resets=resets)


def test_truncated_forward_equals_the_reference_full_pass():
  ys, carry = _tbptt(CELL_PARAMS, XS, LENGTHS, RESETS)
  ys_ref, carry_ref = ref.run_batch(
      lambda s, x: ref.lstm_step(CELL_PARAMS, s, x), tuple(CELL.initial_carry(CELL_PARAMS, (B,))),
      XS, lengths=np.asarray(LENGTHS), resets=np.asarray(RESETS),
      zero_state=tuple(CELL.initial_carry(CELL_PARAMS, (B,))))
  np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(carry, carry_ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_truncated_gradient_sees_only_its_own_chunk():
  """Reference: each chunk run on its own from the (constant) carry the full pass reaches."""
  def loss_tbptt(params):
    ys, _ = rnnjax.truncated_unroll(CELL, params, XS, chunk=5)
    return jnp.sum(ys ** 2)

  def loss_chunks(params):
    total, carry = 0.0, CELL.initial_carry(params, (B,))
    for start in range(0, T + 1, 5):
      carry = jax.tree_util.tree_map(jax.lax.stop_gradient, carry)
      for t in range(start, min(start + 5, T + 1)):
        carry, y = CELL.apply(params, carry, XS[t])
        total = total + jnp.sum(y ** 2)
    return total

  g = jax.jit(jax.grad(loss_tbptt))(CELL_PARAMS)
  g_ref = jax.jit(jax.grad(loss_chunks))(CELL_PARAMS)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         g, g_ref)
  g_full = jax.jit(jax.grad(lambda p: jnp.sum(rnnjax.unroll(CELL, p, XS)[0] ** 2)))(CELL_PARAMS)
  assert not np.allclose(g_full.w_h, g.w_h)  # Truncation changes the gradient.


def test_truncated_unroll_errors():
  with pytest.raises(ValueError, match=r"rnnjax\.truncated_unroll: `chunk` must be a positive"):
    rnnjax.truncated_unroll(CELL, CELL_PARAMS, XS, chunk=0)


def test_sequence_model_with_tokens_and_tbptt_matches_plain_forward():
  model = rnnjax.sequence_model(rnnjax.gru(H), input_size=1, output_size=6, vocab_size=6,
                                embed_size=3)
  params = model.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (T, B), 0, 6)
  preds, _ = jax.jit(lambda p, x: model.apply(p, x))(params, tokens)
  preds_tbptt, _ = jax.jit(lambda p, x: model.apply(p, x, tbptt=4))(params, tokens)
  # Independent reference: embed by indexing, step the GRU by hand, read out.
  gru = rnnjax.gru(H)
  carry = gru.initial_carry(params.core, (B,))
  outs = []
  for t in range(T):
    carry, h = gru.apply(params.core, carry, params.embed[tokens[t]])
    outs.append(h @ params.w_out + params.b_out)
  np.testing.assert_allclose(preds, jnp.stack(outs), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(preds_tbptt, preds, rtol=1e-5, atol=1e-5)


LINEAR_CORE = rnnjax.stack([rnnjax.mingru(H), rnnjax.minlstm(H)], dropout=0.5)


@pytest.mark.parametrize("engine", ["parallel", "chunked"])
def test_sequence_model_runs_a_linear_core_on_every_engine_with_the_same_answers(engine):
  model = rnnjax.sequence_model(LINEAR_CORE, input_size=I, output_size=2, engine=engine)
  sequential = rnnjax.sequence_model(LINEAR_CORE, input_size=I, output_size=2,
                                     engine="sequential")
  params = model.init(jax.random.key(0))
  xs = jax.random.normal(jax.random.key(1), (T, B, I))
  lengths = jnp.array([T, 5, 0])
  preds, carry = jax.jit(lambda p, x: model.apply(p, x, lengths=lengths))(params, xs)
  # Independent reference: step both layers by hand, hold the carry on padding, read out.
  c = LINEAR_CORE.initial_carry(params.core, (B,))
  outs = []
  for t in range(T):
    new_c, h = LINEAR_CORE.apply(params.core, c, xs[t])
    valid = (t < lengths)[:, None]
    c = jax.tree_util.tree_map(lambda n, o, v=valid: jnp.where(v, n, o), new_c, c)
    outs.append(jnp.where(valid, h, 0.0) @ params.w_out + params.b_out)
  np.testing.assert_allclose(preds, jnp.stack(outs), rtol=1e-5, atol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         carry, c)

  def grads(m):
    return jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(m.apply(p, xs, lengths=lengths)[0]))))(
        params)

  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         grads(model), grads(sequential))


def test_sequence_model_engine_errors_and_sequential_fallbacks():
  with pytest.raises(ValueError, match=r"sequence_model: `engine` must be one of .*'fast'"):
    rnnjax.sequence_model(LINEAR_CORE, input_size=I, output_size=1, engine="fast")
  with pytest.raises(TypeError, match=r"`core` must be a linear cell .*engine='parallel', got "
                     r"a cell without"):
    rnnjax.sequence_model(rnnjax.gru(H), input_size=I, output_size=1, engine="parallel")
  parallel = rnnjax.sequence_model(LINEAR_CORE, input_size=I, output_size=1, engine="chunked")
  params = parallel.init(jax.random.key(0))
  xs = jax.random.normal(jax.random.key(1), (T, B, I))
  with pytest.raises(ValueError, match=r"truncated BPTT .*engine='chunked'"):
    parallel.apply(params, xs, tbptt=4)
  with pytest.raises(ValueError, match=r"dropout .*engine='chunked'"):
    parallel.apply(params, xs, key=jax.random.key(2))
  # "auto" runs dropout and truncated BPTT step by step, as `unroll` does.
  auto = rnnjax.sequence_model(LINEAR_CORE, input_size=I, output_size=1)
  key = jax.random.key(2)
  hs, _ = rnnjax.unroll(LINEAR_CORE, params.core, xs, key=key)
  np.testing.assert_allclose(auto.apply(params, xs, key=key)[0],
                             hs @ params.w_out + params.b_out, rtol=1e-5, atol=1e-6)
