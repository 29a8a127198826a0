"""The persistent Pallas LSTM/GRU kernels (`pallas_rnn.py`) in interpret mode, on any backend.

Forward kernels against plain NumPy float64 loops of their equations; adjoint kernels
against `jax.vjp` of a plain `lax.scan` of the same equations. Masks are random (steps
that are not valid, resets) or all ones, and `xw` holds NaN at the steps that are not
valid: no NaN may reach a valid result. The rows (3) are padded by the kernels' wrappers
to one block of 16. One compiled program per kernel: the tests vary values, not shapes.
Without a GPU, each kernel is also lowered for CUDA, which runs Pallas's Triton lowering.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax._src import pallas_rnn

T, R, H = 5, 3, 16
TOL = dict(rtol=1e-5, atol=1e-5)
HIGHEST = jax.lax.Precision.HIGHEST

lstm_forward = jax.jit(functools.partial(pallas_rnn.lstm_forward, interpret=True))
lstm_adjoint = jax.jit(functools.partial(pallas_rnn.lstm_adjoint, interpret=True))
gru_forward = {ra: jax.jit(functools.partial(pallas_rnn.gru_forward, reset_after=ra,
                                             interpret=True)) for ra in (True, False)}
gru_adjoint = {ra: jax.jit(functools.partial(pallas_rnn.gru_adjoint, reset_after=ra,
                                             interpret=True)) for ra in (True, False)}


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _data(seed: int, masks: str, gates: int, *, steps: int = T, rows: int = R,
          hidden: int = H, w_scale: float = 0.3):
  """Random float32 inputs; `xw` is NaN where not valid. Returns a dict of NumPy arrays.

  (`test_cpu_kernels.py` draws its own sizes and weight scale from it too.)
  """
  rng = np.random.default_rng(seed)
  f32 = lambda *s, scale=1.0: (scale * rng.normal(size=s)).astype(np.float32)
  if masks == "ones":
    valid = keep = np.ones((steps, rows), np.float32)
  else:
    valid = (rng.random((steps, rows)) < 0.7).astype(np.float32)
    keep = (rng.random((steps, rows)) < 0.7).astype(np.float32)
  xw = f32(steps, rows, gates * hidden)
  xw_nan = np.where(valid[..., None] > 0.5, xw, np.nan).astype(np.float32)
  return dict(xw=xw, xw_nan=xw_nan, w_h=f32(hidden, gates * hidden, scale=w_scale),
              h0=f32(rows, hidden), c0=f32(rows, hidden), b_hn=f32(hidden), valid=valid,
              keep=keep, dys=f32(steps, rows, hidden), dh_last=f32(rows, hidden),
              dc_last=f32(rows, hidden))


def _check_forward(got, want, valid, gated):
  """Every output finite; outputs and carries equal everywhere; `gated` ones where valid."""
  v = valid > 0.5
  for i, (g, w) in enumerate(zip(got, want, strict=True)):
    g = np.asarray(g)
    if i in gated:
      g, w = g[v], w[v]
    assert np.all(np.isfinite(g)), f"output {i} has NaN"
    np.testing.assert_allclose(g, w, **TOL, err_msg=f"output {i}")


# ------------------------------------------------------------------ LSTM


def _numpy_lstm(xw, w_h, h0, c0, valid, keep):
  h, c = h0.astype(np.float64), c0.astype(np.float64)
  ys, hs, cs, gs = [], [], [], []
  for t in range(xw.shape[0]):
    v, k = valid[t][:, None] > 0.5, keep[t][:, None] > 0.5
    hp, cp = np.where(k, h, 0.0), np.where(k, c, 0.0)
    z = xw[t].astype(np.float64) + hp @ w_h.astype(np.float64)
    zi, zf, zg, zo = np.split(z, 4, axis=-1)
    i, f, g, o = _sigmoid(zi), _sigmoid(zf), np.tanh(zg), _sigmoid(zo)
    c1 = f * cp + i * g
    h1 = o * np.tanh(c1)
    ys.append(np.where(v, h1, 0.0))
    h, c = np.where(v, h1, h), np.where(v, c1, c)
    hs.append(h), cs.append(c), gs.append(np.concatenate([i, f, g, o], -1))
  return tuple(map(np.stack, (ys, hs, cs, gs)))


def _scan_lstm(xw, h0, c0, w_h, valid, keep):
  def step(carry, inp):
    (h, c), (x, v, k) = carry, inp
    v, k = v[:, None] > 0.5, k[:, None] > 0.5
    hp, cp = jnp.where(k, h, 0.0), jnp.where(k, c, 0.0)
    i, f, g, o = jnp.split(x + jnp.dot(hp, w_h, precision=HIGHEST), 4, axis=-1)
    c1 = jax.nn.sigmoid(f) * cp + jax.nn.sigmoid(i) * jnp.tanh(g)
    h1 = jax.nn.sigmoid(o) * jnp.tanh(c1)
    return (jnp.where(v, h1, h), jnp.where(v, c1, c)), jnp.where(v, h1, 0.0)

  (h, c), ys = jax.lax.scan(step, (h0, c0), (xw, valid, keep))
  return ys, h, c


@pytest.mark.parametrize("masks", ["random", "ones"])
@pytest.mark.parametrize("seed", [0, 1])
def test_lstm_forward(seed, masks):
  d = _data(seed, masks, 4)
  got = lstm_forward(d["xw_nan"], d["w_h"], d["h0"], d["c0"], d["valid"], d["keep"])
  want = _numpy_lstm(d["xw_nan"], d["w_h"], d["h0"], d["c0"], d["valid"], d["keep"])
  _check_forward(got, want, d["valid"], gated=(3,))


@pytest.mark.parametrize("masks", ["random", "ones"])
@pytest.mark.parametrize("seed", [0, 1])
def test_lstm_adjoint(seed, masks):
  d = _data(seed, masks, 4)
  _, _, cs, gates = lstm_forward(d["xw_nan"], d["w_h"], d["h0"], d["c0"], d["valid"], d["keep"])
  got = lstm_adjoint(d["w_h"], gates, cs, d["c0"], d["valid"], d["keep"], d["dys"],
                     d["dh_last"], d["dc_last"])
  fn = functools.partial(_scan_lstm, w_h=d["w_h"], valid=d["valid"], keep=d["keep"])
  _, vjp = jax.vjp(fn, d["xw"], d["h0"], d["c0"])
  want = vjp((d["dys"], d["dh_last"], d["dc_last"]))
  for name, g, w in zip(("dz", "dh0", "dc0"), got, want, strict=True):
    assert np.all(np.isfinite(g)), f"{name} has NaN"
    np.testing.assert_allclose(g, w, **TOL, err_msg=name)


# ------------------------------------------------------------------ GRU


def _numpy_gru(xw, w_h, b_hn, h0, valid, keep, reset_after):
  h = h0.astype(np.float64)
  w_r, w_z, w_n = np.split(w_h.astype(np.float64), 3, axis=-1)
  ys, hs, gs, hns = [], [], [], []
  for t in range(xw.shape[0]):
    v, k = valid[t][:, None] > 0.5, keep[t][:, None] > 0.5
    hp = np.where(k, h, 0.0)
    x_r, x_z, x_n = np.split(xw[t].astype(np.float64), 3, axis=-1)
    r, z = _sigmoid(x_r + hp @ w_r), _sigmoid(x_z + hp @ w_z)
    if reset_after:
      hn = hp @ w_n + b_hn
      n = np.tanh(x_n + r * hn)
    else:
      hn = (r * hp) @ w_n + b_hn
      n = np.tanh(x_n + hn)
    h1 = (1.0 - z) * n + z * hp
    ys.append(np.where(v, h1, 0.0))
    h = np.where(v, h1, h)
    hs.append(h), gs.append(np.concatenate([r, z, n], -1)), hns.append(hn)
  return tuple(map(np.stack, (ys, hs, gs, hns)))


def _scan_gru(xw, eps, h0, w_h, b_hn, valid, keep, reset_after):
  """The GRU with `eps` added to the recurrent pre-activations `(hp @ w_hr, hp @ w_hz, hn)`."""
  w_r, w_z, w_n = jnp.split(w_h, 3, axis=-1)
  dot = functools.partial(jnp.dot, precision=HIGHEST)

  def step(h, inp):
    x, e, v, k = inp
    v, k = v[:, None] > 0.5, k[:, None] > 0.5
    hp = jnp.where(k, h, 0.0)
    (x_r, x_z, x_n), (e_r, e_z, e_n) = jnp.split(x, 3, -1), jnp.split(e, 3, -1)
    r, z = jax.nn.sigmoid(x_r + dot(hp, w_r) + e_r), jax.nn.sigmoid(x_z + dot(hp, w_z) + e_z)
    if reset_after:
      n = jnp.tanh(x_n + r * (dot(hp, w_n) + b_hn + e_n))
    else:
      n = jnp.tanh(x_n + dot(r * hp, w_n) + b_hn + e_n)
    h1 = (1.0 - z) * n + z * hp
    return jnp.where(v, h1, h), jnp.where(v, h1, 0.0)

  h, ys = jax.lax.scan(step, h0, (xw, eps, valid, keep))
  return ys, h


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("masks", ["random", "ones"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gru_forward(seed, masks, reset_after):
  d = _data(seed, masks, 3)
  args = (d["xw_nan"], d["w_h"], d["b_hn"], d["h0"], d["valid"], d["keep"])
  got = gru_forward[reset_after](*args)
  want = _numpy_gru(*args, reset_after)
  _check_forward(got, want, d["valid"], gated=(2, 3))


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("masks", ["random", "ones"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gru_adjoint(seed, masks, reset_after):
  d = _data(seed, masks, 3)
  _, hs, gates, hn = gru_forward[reset_after](d["xw_nan"], d["w_h"], d["b_hn"], d["h0"],
                                              d["valid"], d["keep"])
  got = gru_adjoint[reset_after](d["w_h"], gates, hn, hs, d["h0"], d["valid"], d["keep"],
                                 d["dys"], d["dh_last"])
  fn = functools.partial(_scan_gru, w_h=d["w_h"], b_hn=d["b_hn"], valid=d["valid"],
                         keep=d["keep"], reset_after=reset_after)
  _, vjp = jax.vjp(fn, d["xw"], np.zeros_like(d["xw"]), d["h0"])
  want = vjp((d["dys"], d["dh_last"]))
  for name, g, w in zip(("da", "dhh", "dh0"), got, want, strict=True):
    assert np.all(np.isfinite(g)), f"{name} has NaN"
    np.testing.assert_allclose(g, w, **TOL, err_msg=name)


def test_blocks_of_rows():
  """Several programs (blocks of 2 rows, the last one padded) give the rows' results."""
  d = _data(2, "random", 4)
  args = (d["xw_nan"], d["w_h"], d["h0"], d["c0"], d["valid"], d["keep"])
  blocked = functools.partial(pallas_rnn.lstm_forward, block_rows=2, interpret=True)
  for name, g, w in zip(("ys", "hs", "cs"), jax.jit(blocked)(*args)[:3],
                        lstm_forward(*args)[:3], strict=True):
    np.testing.assert_allclose(g, w, **TOL, err_msg=name)


_S = jax.ShapeDtypeStruct
_TRITON_CASES = {  # the largest H within the budget, rows not a multiple of the block
    "lstm_forward": (pallas_rnn.lstm_forward, {}, ((7, 20, 256), (64, 256), (20, 64), (20, 64),
                                                   (7, 20), (7, 20))),
    "lstm_adjoint": (pallas_rnn.lstm_adjoint, {}, ((64, 256), (7, 20, 256), (7, 20, 64),
                                                   (20, 64), (7, 20), (7, 20), (7, 20, 64),
                                                   (20, 64), (20, 64))),
    **{f"gru_forward_{ra}": (pallas_rnn.gru_forward, dict(reset_after=ra), (
        (7, 20, 192), (64, 192), (64,), (20, 64), (7, 20), (7, 20))) for ra in (True, False)},
    **{f"gru_adjoint_{ra}": (pallas_rnn.gru_adjoint, dict(reset_after=ra), (
        (64, 192), (7, 20, 192), (7, 20, 64), (7, 20, 64), (20, 64), (7, 20), (7, 20),
        (7, 20, 64), (20, 64))) for ra in (True, False)},
}


@pytest.mark.parametrize("case", list(_TRITON_CASES))
def test_lowers_to_triton(case):
  """Each kernel lowers to a Triton call for a CUDA GPU (no GPU needed to lower)."""
  fn, kw, shapes = _TRITON_CASES[case]
  traced = jax.jit(functools.partial(fn, **kw)).trace(*[_S(s, jnp.float32) for s in shapes])
  text = traced.lower(lowering_platforms=("cuda",)).as_text()
  assert "__gpu$xla.gpu.triton" in text and "grid_x = 2" in text


def test_fits():
  assert pallas_rnn.fits(16, 4, 3) and pallas_rnn.fits(16, 3, 3)
  assert pallas_rnn.fits(64, 4, 1) and pallas_rnn.fits(64, 3, 1000)
  assert not pallas_rnn.fits(128, 4, 3)  # 256 KiB of weight
  assert not pallas_rnn.fits(128, 3, 3)
  assert not pallas_rnn.fits(24, 4, 3)  # not a power of two
  assert not pallas_rnn.fits(8, 4, 3)  # under Triton's 16
  assert not pallas_rnn.fits(16, 4, 0)
