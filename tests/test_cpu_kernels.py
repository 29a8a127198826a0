"""The C++ CPU kernels (`cpu_kernels.py`, `cpu_kernels_*.cc`) against independent references.

Forward kernels against the plain NumPy float64 loops of `test_pallas_rnn.py`; adjoint
kernels against `jax.vjp` of its plain `lax.scan` forwards. Masks are random (steps that
are not valid, resets) or all ones, and `xw` holds NaN at the steps that are not valid: no
NaN may reach a valid result. The sizes exercise the blocks of the kernels' products: rows
in blocks of 8, 4 and 1 (R = 3, 13, 5), columns in blocks of 256, 128, 64 and a remainder
(H = 16, 24, 72). The forwards also run without saving (`save=False`: outputs and last
carry only). Each test runs with 1 thread and with 2 or 3 threads splitting the rows or
the hidden units (16+8, 48+24, 32+32+8), whatever the sizes; results must be bitwise
independent of the split. Skipped when the kernels are not built, unless
`RNNJAX_REQUIRE_CPU_KERNELS=1` (CI), where they must be.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest

from rnnjax._src import cpu_kernels
from tests.test_pallas_rnn import _data as _pallas_data
from tests.test_pallas_rnn import _numpy_gru, _numpy_lstm, _scan_gru, _scan_lstm

REQUIRED = os.environ.get("RNNJAX_REQUIRE_CPU_KERNELS") == "1"
if not cpu_kernels.available() and not REQUIRED:
  pytest.skip("the C++ CPU kernels are not built (or RNNJAX_CPU_KERNELS=0)",
              allow_module_level=True)

T = 6
SIZES = [(3, 16), (13, 24), (5, 72)]  # (R, H)
TOL = dict(rtol=1e-5, atol=1e-5)

THREADS = ["1", "2/rows", "2/units", "3/rows", "3/units"]  # count/split

lstm_forward = jax.jit(cpu_kernels.lstm_forward)
lstm_infer = jax.jit(functools.partial(cpu_kernels.lstm_forward, save=False))
lstm_adjoint = jax.jit(cpu_kernels.lstm_adjoint)
gru_forward = {ra: jax.jit(functools.partial(cpu_kernels.gru_forward, reset_after=ra))
               for ra in (True, False)}
gru_infer = {ra: jax.jit(functools.partial(cpu_kernels.gru_forward, reset_after=ra, save=False))
             for ra in (True, False)}
gru_adjoint = {ra: jax.jit(functools.partial(cpu_kernels.gru_adjoint, reset_after=ra))
               for ra in (True, False)}


def _set_threads(monkeypatch, threads: str):
  """Threads as `count/split` for the next calls, whatever the sizes (read at each call)."""
  count, _, split = threads.partition("/")
  monkeypatch.setenv("RNNJAX_CPU_THREADS", count)
  monkeypatch.setenv("RNNJAX_CPU_THREADS_MIN_WORK", "0")
  monkeypatch.setenv("RNNJAX_CPU_SPLIT", split)


@pytest.fixture(params=THREADS)
def threads(request, monkeypatch):
  """Runs the test with each thread count and split."""
  _set_threads(monkeypatch, request.param)
  return request.param


def test_built():
  assert cpu_kernels.available(), (
      "the C++ CPU kernels were not built (RNNJAX_REQUIRE_CPU_KERNELS=1): "
      "`pip install -e .` with a C++ compiler must build rnnjax/_src/_cpu_kernels*.so")


def test_switched_off(monkeypatch):
  monkeypatch.setenv("RNNJAX_CPU_KERNELS", "0")
  assert not cpu_kernels.available()


def test_fits():
  assert cpu_kernels.fits(16, 4, 3) and cpu_kernels.fits(1000, 3, 1)
  assert not cpu_kernels.fits(16, 4, 0)


def _data(seed: int, rows: int, hidden: int, gates: int, masks: str = "random"):
  """`test_pallas_rnn`'s inputs at these sizes, `w_h` scaled by 1.2/sqrt(H)."""
  return _pallas_data(seed, masks, gates, steps=T, rows=rows, hidden=hidden,
                      w_scale=1.2 / hidden**0.5)


def _check(names, got, want, valid=None, gated=()):
  """All finite and equal; the outputs named in `gated` only where `valid`."""
  for name, g, w in zip(names, got, want, strict=True):
    g, w = np.asarray(g), np.asarray(w)
    if name in gated:
      g, w = g[valid > 0.5], w[valid > 0.5]
    assert np.all(np.isfinite(g)), f"{name} has NaN"
    np.testing.assert_allclose(g, w, **TOL, err_msg=name)


def _lstm_all(d):
  """Every LSTM kernel's results on `d`: forward, forward without saving, adjoint."""
  args = (d["xw_nan"], d["w_h"], d["h0"], d["c0"], d["valid"], d["keep"])
  got = lstm_forward(*args)
  _, _, cs, gates = got
  dz = lstm_adjoint(d["w_h"], gates, cs, d["c0"], d["valid"], d["keep"], d["dys"],
                    d["dh_last"], d["dc_last"])
  return got, lstm_infer(*args), dz


def _gru_all(d, reset_after):
  """Every GRU kernel's results on `d`: forward, forward without saving, adjoint."""
  args = (d["xw_nan"], d["w_h"], d["b_hn"], d["h0"], d["valid"], d["keep"])
  got = gru_forward[reset_after](*args)
  _, hs, gates, hn = got
  da = gru_adjoint[reset_after](d["w_h"], gates, hn, hs, d["h0"], d["valid"], d["keep"],
                                d["dys"], d["dh_last"])
  return got, gru_infer[reset_after](*args), da


@pytest.mark.parametrize("masks", ["random", "ones"])
@pytest.mark.parametrize("size", SIZES)
def test_lstm(size, masks, threads):
  d = _data(sum(size), *size, 4, masks)
  args = (d["xw_nan"], d["w_h"], d["h0"], d["c0"], d["valid"], d["keep"])
  got, infer, dz = _lstm_all(d)
  want = _numpy_lstm(*args)
  _check(("ys", "hs", "cs", "gates"), got, want, d["valid"], gated=("gates",))
  _check(("ys", "h_last", "c_last"), infer, (want[0], want[1][-1], want[2][-1]))
  saved = (got[0], got[1][-1], got[2][-1])
  for name, a, b in zip(("ys", "h_last", "c_last"), infer, saved, strict=True):
    np.testing.assert_array_equal(a, b, err_msg=name)
  fn = functools.partial(_scan_lstm, w_h=d["w_h"], valid=d["valid"], keep=d["keep"])
  _, vjp = jax.vjp(fn, d["xw"], d["h0"], d["c0"])
  _check(("dz", "dh0", "dc0"), dz, vjp((d["dys"], d["dh_last"], d["dc_last"])))


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("masks", ["random", "ones"])
@pytest.mark.parametrize("size", SIZES)
def test_gru(size, masks, reset_after, threads):
  d = _data(sum(size) + 1, *size, 3, masks)
  args = (d["xw_nan"], d["w_h"], d["b_hn"], d["h0"], d["valid"], d["keep"])
  got, infer, da = _gru_all(d, reset_after)
  want = _numpy_gru(*args, reset_after)
  _check(("ys", "hs", "gates", "hn"), got, want, d["valid"], gated=("gates", "hn"))
  _check(("ys", "h_last"), infer, (want[0], want[1][-1]))
  np.testing.assert_array_equal(infer[0], got[0])
  np.testing.assert_array_equal(infer[1], got[1][-1])
  fn = functools.partial(_scan_gru, w_h=d["w_h"], b_hn=d["b_hn"], valid=d["valid"],
                         keep=d["keep"], reset_after=reset_after)
  _, vjp = jax.vjp(fn, d["xw"], np.zeros_like(d["xw"]), d["h0"])
  _check(("da", "dhh", "dh0"), da, vjp((d["dys"], d["dh_last"])))


def test_nan_carry_free(threads):
  """A whole sequence of padding (all NaN inputs) leaves the carry and outputs exact."""
  d = _data(7, 3, 40, 4)
  zeros = np.zeros((T, 3), np.float32)
  xw = np.full_like(d["xw"], np.nan)
  args = (xw, d["w_h"], d["h0"], d["c0"], zeros, d["keep"])
  ys, hs, cs, _ = lstm_forward(*args)
  np.testing.assert_array_equal(ys, 0.0)
  np.testing.assert_array_equal(hs, np.broadcast_to(d["h0"], hs.shape))
  np.testing.assert_array_equal(cs, np.broadcast_to(d["c0"], cs.shape))
  ys, h_last, c_last = lstm_infer(*args)
  np.testing.assert_array_equal(ys, 0.0)
  np.testing.assert_array_equal(h_last, d["h0"])
  np.testing.assert_array_equal(c_last, d["c0"])


@pytest.mark.parametrize("size", [*SIZES, (9, 130)])
def test_threads_bitwise(size, monkeypatch):
  """Every result is bitwise the same with 1, 2 and 3 threads, splitting rows or units."""
  d4, d3 = _data(sum(size) + 2, *size, 4), _data(sum(size) + 3, *size, 3)
  results = {}
  for count in THREADS:
    _set_threads(monkeypatch, count)
    results[count] = jax.tree.map(np.asarray, (_lstm_all(d4), _gru_all(d3, True),
                                               _gru_all(d3, False)))
  for count in THREADS[1:]:
    for i, (a, b) in enumerate(zip(jax.tree.leaves(results["1"]),
                                   jax.tree.leaves(results[count]), strict=True)):
      np.testing.assert_array_equal(a, b, err_msg=f"result {i} with {count} threads")
