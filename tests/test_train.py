"""Tests for the training core: the step, fit, checkpoints, truncated BPTT, the model."""

import json

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


def test_donated_step_invalidates_its_input():
  step = rnnjax.make_train_step(LOSS, OPT)
  state = _fresh_state()
  new_state, _ = step(state, DATA(0))
  assert int(new_state.step) == 1
  leaf = jax.tree_util.tree_leaves(state.params)[0]
  assert leaf.is_deleted() or jax.default_backend() == "cpu"  # CPU may ignore donation.


def test_fit_learns_far_below_the_baseline(tmp_path):
  baseline = float(jnp.mean(DATA(10_000)["ys"] ** 2))  # predicting zero
  eval_fn = jax.jit(lambda p: {"mse": LOSS(p, DATA(10_000), None)})
  result = rnnjax.fit(_fresh_state(), STEP5, DATA, num_steps=300, steps_per_call=5,
                      eval_fn=eval_fn, eval_every=100, out_dir=tmp_path, log_every=50,
                      progress=False)
  assert result.status == "completed"
  assert int(result.state.step) == 300
  assert result.evals[-1]["mse"] < baseline / 20
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == [50, 100, 150, 200, 250, 300]
  assert [r["step"] for r in records if "eval" in r] == [100, 200, 300]


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
  assert "at step 24" in result.message and "step 20" in result.message
  assert int(result.state.step) == 20
  assert rnnjax.Checkpointer(tmp_path / "checkpoint").all_steps() == [10, 20]
  expected = rnnjax.fit(_fresh_state(), STEP1, DATA, num_steps=20, progress=False).state
  _tree_assert_equal(result.state, expected)


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
  with pytest.raises(TypeError, match=r"engine='parallel' needs a linear core .*cell without"):
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
