"""`rnnjax/_src/engines.py`: one place names the engines, applies the rule of `auto`, and
keeps a cell's fast paths (`Cell.paths`) bound to the `apply` they reproduce.

References: `rnnjax.unroll(..., fused=False)` (plain `lax.scan` over `cell.apply`) for
every engine's answers, and hand-written expectations for the rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax._src import engines

T, B, I, H = 9, 3, 4, 5
XS = jax.random.normal(jax.random.key(0), (T, B, I))
LENGTHS = jnp.array([9, 4, 0], jnp.int32)


def _params(cell, seed=1):
  return cell.init(jax.random.key(seed), input_size=I)


@pytest.mark.parametrize(("cell", "options", "expected"), [
    (rnnjax.lstm(H), {}, ("sequential", True)),
    (rnnjax.gru(H, reset_after=False), {}, ("sequential", True)),
    (rnnjax.lstm(H), {"remat": True}, ("sequential", False)),
    (rnnjax.lstm(H), {"fused": False}, ("sequential", False)),
    (rnnjax.lstm(H), {"tbptt": 4}, ("sequential", False)),
    (rnnjax.elman(H), {}, ("sequential", False)),
    (rnnjax.stack([rnnjax.lstm(H), rnnjax.gru(H)]), {}, ("sequential", True)),
    (rnnjax.stack([rnnjax.lstm(H), rnnjax.elman(H)]), {}, ("sequential", False)),
    (rnnjax.stack([rnnjax.lstm(H), rnnjax.lstm(H)], dropout=0.5), {"key": jax.random.key(0)},
     ("sequential", False)),
    (rnnjax.mingru(H), {"backend": "cpu", "num_steps": 4096}, ("sequential", False)),
    (rnnjax.mingru(H), {"backend": "gpu", "num_steps": 4096}, ("parallel", False)),
    (rnnjax.stack([rnnjax.lru(H), rnnjax.rglru(H)]), {"backend": "tpu"}, ("parallel", False)),
    (rnnjax.mingru(H), {"backend": "gpu", "remat": 2}, ("sequential", False)),
    (rnnjax.mingru(H), {"backend": "gpu", "tbptt": 3}, ("sequential", False)),
])
def test_the_auto_rule(cell, options, expected):
  plan = rnnjax.engine_plan(cell, **options)
  assert (plan.engine, plan.kernel) == expected and plan.reason.startswith("auto: ")


def test_a_kernel_that_declines_its_inputs_is_reported_given_params_and_xs():
  proj = rnnjax.lstm(H, proj_size=2)
  assert rnnjax.engine_plan(proj).kernel  # It has one ...
  assert not rnnjax.engine_plan(proj, params=_params(proj), xs=XS).kernel  # ... which declines.
  cell = rnnjax.lstm(H)
  assert rnnjax.engine_plan(cell, params=_params(cell), xs=XS).kernel
  mixed = _params(cell)._replace(w_h=_params(cell).w_h.astype(jnp.bfloat16))
  assert not rnnjax.engine_plan(cell, params=mixed, xs=XS).kernel  # params of two dtypes


def _doubled(cell):
  """`cell` with a replaced `apply` that doubles the outputs: another function."""
  def apply(params, carry, x, *, key=None):
    carry, y = cell.apply(params, carry, x, key=key)
    return carry, 2.0 * y
  return cell._replace(apply=apply)


@pytest.mark.parametrize("make", [lambda: rnnjax.lstm(H), lambda: rnnjax.gru(H),
                                  lambda: rnnjax.mingru(H)])
def test_a_replaced_apply_keeps_the_record_but_never_runs_it(make):
  cell = make()
  doubled = _doubled(cell)
  assert doubled.paths is cell.paths and engines.paths_of(doubled) is None
  assert not rnnjax.engine_plan(doubled).kernel and not rnnjax.is_linear(doubled)
  params = _params(cell)
  ys, _ = rnnjax.unroll(doubled, params, XS, lengths=LENGTHS, engine="auto")
  want, _ = rnnjax.unroll(cell, params, XS, lengths=LENGTHS, fused=False)
  np.testing.assert_allclose(ys, 2.0 * want, rtol=1e-6, atol=1e-6)
  with pytest.raises(TypeError, match=r"`cell` must be a linear cell .*engine='parallel'"):
    rnnjax.unroll(doubled, params, XS, engine="parallel")


@pytest.mark.parametrize("engine", ["parallel", "chunked", "auto"])
@pytest.mark.parametrize("reverse", [False, True])
def test_unroll_runs_every_engine_with_the_same_answers(engine, reverse):
  cell = rnnjax.stack([rnnjax.mingru(H), rnnjax.lru(H)])
  params = _params(cell, seed=2)
  resets = jax.random.bernoulli(jax.random.key(3), 0.2, (T, B))
  opts = dict(lengths=LENGTHS, resets=resets, reverse=reverse)
  ys, carry = rnnjax.unroll(cell, params, XS, engine=engine, **opts)
  want_ys, want_carry = rnnjax.unroll(cell, params, XS, fused=False, **opts)
  np.testing.assert_allclose(ys, want_ys, rtol=1e-5, atol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         carry, want_carry)
  batch_major, _ = rnnjax.unroll(cell, params, jnp.moveaxis(XS, 0, 1), engine=engine,
                                 lengths=LENGTHS, resets=resets.T, reverse=reverse,
                                 time_major=False)
  np.testing.assert_allclose(jnp.moveaxis(batch_major, 1, 0), want_ys, rtol=1e-5, atol=1e-5)


def test_options_that_need_steps_are_refused_on_whole_sequence_engines():
  cell = rnnjax.mingru(H)
  params = _params(cell)
  with pytest.raises(ValueError, match=r"rnnjax\.unroll: remat=2 runs step by step, but "
                     r"engine='chunked' runs whole sequences"):
    rnnjax.unroll(cell, params, XS, engine="chunked", remat=2)
  with pytest.raises(ValueError, match=r"rnnjax\.unroll: `engine` must be one of \('auto', "
                     r"'sequential', 'parallel', 'chunked'.*got 'fast'"):
    rnnjax.unroll(cell, params, XS, engine="fast")
  with pytest.raises(ValueError, match=r"engine_plan: truncated BPTT \(`tbptt`\) runs step"):
    rnnjax.engine_plan(cell, "parallel", tbptt=4)
  # "auto" with `unroll > 1` is the sequential engine's loop unrolling: it runs sequentially.
  ys, _ = rnnjax.unroll(cell, params, XS, engine="auto", unroll=3)
  np.testing.assert_allclose(ys, rnnjax.unroll(cell, params, XS)[0], rtol=1e-6, atol=1e-6)


def _toy_run(cell, params, xs, carry, *, lengths, resets, reverse, scale):
  ys, carry = rnnjax.unroll(cell, params, xs, carry, lengths=lengths, resets=resets,
                            reverse=reverse)
  return scale * ys, carry


def test_an_engine_is_one_entry_of_the_table(monkeypatch):
  """Registering an engine in `engines._ENGINES` is all `unroll` and `engine_plan` need."""
  monkeypatch.setitem(engines._ENGINES, "toy", engines._Engine(
      ("tests.test_engines", "_toy_run", {"scale": 3.0}), linear_only=False,
      whole_sequence=True))
  monkeypatch.setattr(engines, "ENGINES", (*engines.ENGINES, "toy"))
  cell = rnnjax.elman(H)
  params = _params(cell)
  assert rnnjax.engine_plan(cell, "toy").engine == "toy"
  ys, _ = rnnjax.unroll(cell, params, XS, engine="toy")
  np.testing.assert_allclose(ys, 3.0 * rnnjax.unroll(cell, params, XS)[0], rtol=1e-6)
  with pytest.raises(ValueError, match=r"truncated BPTT .*engine='toy' runs whole sequences"):
    rnnjax.engine_plan(cell, "toy", tbptt=2)


def test_newton_runs_through_unroll_and_sequence_model_with_its_options():
  cell = rnnjax.gru(H)
  params = _params(cell, seed=4)
  want, want_carry = rnnjax.unroll(cell, params, XS, lengths=LENGTHS, reverse=True, fused=False)
  for engine in ("newton", rnnjax.Newton(jacobian="diagonal", damping=1e-3)):
    assert rnnjax.engine_plan(cell, engine).engine == "newton"
    ys, carry = rnnjax.unroll(cell, params, XS, lengths=LENGTHS, reverse=True, engine=engine)
    np.testing.assert_allclose(ys, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(carry.h, want_carry.h, rtol=1e-4, atol=1e-5)
  model = rnnjax.sequence_model(cell, input_size=I, output_size=2,
                                engine=rnnjax.Newton(jacobian="full"))
  m_params = model.init(jax.random.key(5))
  preds, _ = model.apply(m_params, XS, lengths=LENGTHS)
  hs, _ = rnnjax.unroll(cell, m_params.core, XS, lengths=LENGTHS, fused=False)
  np.testing.assert_allclose(preds, jnp.where(jnp.arange(T)[:, None, None] < LENGTHS[:, None],
                                              hs @ m_params.w_out + m_params.b_out, 0.0),
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match=r"truncated BPTT .*engine='newton' runs whole"):
    model.apply(m_params, XS, tbptt=3)
  with pytest.raises(ValueError, match=r"`engine` must be one of .*or an engine's options"):
    rnnjax.unroll(cell, params, XS, engine=object())


BUILT_IN = {
    "elman": lambda: rnnjax.elman(H), "lstm": lambda: rnnjax.lstm(H),
    "lstm_proj": lambda: rnnjax.lstm(H, proj_size=2), "gru": lambda: rnnjax.gru(H),
    "mgu": lambda: rnnjax.mgu(H), "mingru": lambda: rnnjax.mingru(H),
    "minlstm_log": lambda: rnnjax.minlstm(H, log_space=True),
    "lru": lambda: rnnjax.lru(H), "rglru": lambda: rnnjax.rglru(H),
    "diagonal_gru": lambda: rnnjax.diagonal_gru(H),
    "diagonal_lstm": lambda: rnnjax.diagonal_lstm(H), "slstm": lambda: rnnjax.slstm(4, heads=2),
    "stack": lambda: rnnjax.stack([rnnjax.gru(H), rnnjax.mingru(H)]),
}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_newton_runs_every_built_in_cell(name):
  cell = BUILT_IN[name]()
  params = _params(cell, seed=6)
  ys, carry, info = rnnjax.newton_unroll(cell, params, XS, lengths=LENGTHS, return_info=True)
  want, want_carry = rnnjax.unroll(cell, params, XS, lengths=LENGTHS, fused=False)
  assert bool(info.converged) and not bool(info.fell_back)
  np.testing.assert_allclose(ys, want, rtol=1e-4, atol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         carry, want_carry)


def test_a_stacks_dropout_with_a_key_is_refused_by_whole_sequence_engines_in_unroll():
  cell = rnnjax.stack([rnnjax.mingru(H), rnnjax.mingru(H)], dropout=0.5)
  params = _params(cell)
  for engine in ("parallel", "newton"):
    with pytest.raises(ValueError, match=r"^rnnjax\.unroll: the stack's dropout \(a `key`\) "
                       rf"runs step by step, but engine='{engine}'"):
      rnnjax.unroll(cell, params, XS, key=jax.random.key(0), engine=engine)
  ys, _ = rnnjax.unroll(cell, params, XS, key=jax.random.key(0), engine="auto")  # steps
  want, _ = rnnjax.unroll(cell, params, XS, key=jax.random.key(0))
  np.testing.assert_allclose(ys, want, rtol=1e-6, atol=1e-6)
