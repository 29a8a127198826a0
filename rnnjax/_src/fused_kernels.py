"""The kernels of the LSTM and GRU fast paths, fitted to their loops.

Two backends implement the same four whole-sequence functions (`lstm_forward`,
`lstm_adjoint`, `gru_forward`, `gru_adjoint`, float32): `pallas_rnn.py`, persistent
Pallas kernels for GPUs, and `cpu_kernels.py`, an optional C++ kernel called through
XLA's FFI (built at install; absent, the pure-JAX loops run). Each function here is a
`loop_call` kernel: it takes a loop's config and arguments (those of the references in
`fused_lstm.py` and `fused_gru.py`), returns None where the backend does not apply (not
float32, an empty sequence, a size its `fits` refuses, or no compiled library), and
otherwise computes the input projection as one product, flips reverse sequences into
processing order, runs the backend and hands back the reference's outputs.

`kernels(backend)` gives `{loop kind: kernel}`: the Pallas ones are registered for
`"cuda"`, the C++ ones for `"cpu"`. The tests also run the Pallas kernels on CPU, in
Pallas's interpret mode, with `loop_call.kernels_on("cpu", kernels("pallas", interpret=True))`.
The tangent loops (forward mode) have no kernel: only the forward and reverse-mode
loops run on every training step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax._src import fused_ops as ops
from rnnjax._src import loop_call

_F32 = jnp.dtype(jnp.float32)


def _backend(name: str) -> Any:
  """The backend module (imported on first use: Pallas is not needed on CPU)."""
  if name == "pallas":
    from rnnjax._src import pallas_rnn
    return pallas_rnn
  from rnnjax._src import cpu_kernels
  return cpu_kernels


def _applies(backend: Any, config: Any, gates: int, w_h: jax.Array, *arrays: jax.Array) -> bool:
  num_steps, rows = arrays[0].shape[:2]
  return (getattr(backend, "available", lambda: True)()  # Pallas ships with JAX
          and jnp.dtype(config.accum) == _F32 and num_steps > 0
          and all(jnp.dtype(a.dtype) == _F32 for a in (w_h, *arrays))
          and backend.fits(w_h.shape[0], gates, rows))


def _order(config: Any, *arrays: jax.Array) -> list[jax.Array]:
  """`[T, ...]` arrays in processing order (flipped for a reverse loop), and back."""
  return [jnp.flip(a, 0) if config.reverse else a for a in arrays]


def _float_masks(config: Any, ms: tuple, shape: tuple[int, int]) -> list[jax.Array]:
  """The kernels' `[T, R]` float masks (ones where the loop has none)."""
  valid, keep = ops.unpack_masks(config, ms)
  return [jnp.ones(shape, _F32) if m is None else m[..., 0].astype(_F32) for m in (valid, keep)]


def lstm_forward(config, w_i, w_h, b, xs, h0, c0, *ms, save: bool, backend: str,
                 **options: Any):
  """The `forward` (or, with `save`, `forward_save`) loop of `fused_lstm`."""
  kernel = _backend(backend)
  if not _applies(kernel, config, 4, w_h, xs, w_i, b, h0, c0):
    return None
  xw = ops.matmul_rows(xs, w_i, _F32) + b
  xw, valid, keep = _order(config, xw, *_float_masks(config, ms, xs.shape[:2]))
  out = kernel.lstm_forward(xw, w_h, h0, c0, valid, keep, save=save, **options)
  if not save:  # (ys, h_last, c_last); the C++ kernel then writes nothing else
    return (*_order(config, out[0]), *out[1:])
  ys, hs, cs, gates = _order(config, *out)
  last = 0 if config.reverse else -1
  return (ys, hs[last], cs[last], gates, cs) + ((hs,) if config.valid else ())


def lstm_adjoint(config, w_h, gates, cs, c0, *args, backend: str, **options: Any):
  """The `adjoint` loop of `fused_lstm`."""
  *ms, dys, dh_last, dc_last = args
  kernel = _backend(backend)
  if not _applies(kernel, config, 4, w_h, gates, cs, c0, dys, dh_last, dc_last):
    return None
  gates, cs, dys, valid, keep = _order(config, gates, cs, dys,
                                       *_float_masks(config, ms, dys.shape[:2]))
  dz, dh0, dc0 = kernel.lstm_adjoint(w_h, gates, cs, c0, valid, keep, dys, dh_last, dc_last,
                                     **options)
  return (*_order(config, dz), dh0, dc0)


def gru_forward(config, w_i, w_h, b_i, b_h, xs, h0, *ms, save: bool, backend: str,
                **options: Any):
  """The `forward` (or `forward_save`) loop of `fused_gru`."""
  kernel = _backend(backend)
  if not _applies(kernel, config, 3, w_h, xs, w_i, b_i, b_h, h0):
    return None
  size = w_h.shape[0]
  xw = ops.matmul_rows(xs, w_i, _F32) + b_i + jnp.concatenate(
      [b_h[:2 * size], jnp.zeros((size,), _F32)])
  xw, valid, keep = _order(config, xw, *_float_masks(config, ms, xs.shape[:2]))
  out = kernel.gru_forward(xw, w_h, b_h[2 * size:], h0, valid, keep,
                           reset_after=config.reset_after, save=save, **options)
  if not save:  # (ys, h_last)
    return (*_order(config, out[0]), out[1])
  ys, hs, gates, hn = _order(config, *out)
  return ((ys, hs[0 if config.reverse else -1], gates) + ((hn,) if config.reset_after else ())
          + ((hs,) if config.valid else ()))


def gru_adjoint(config, w_h, gates, *args, backend: str, **options: Any):
  """The `adjoint` loop of `fused_gru`."""
  hn = (args[0],) if config.reset_after else ()
  hseq, h0, *ms, dys, dh_last = args[len(hn):]
  kernel = _backend(backend)
  if not _applies(kernel, config, 3, w_h, gates, *hn, hseq, h0, dys, dh_last):
    return None
  size = w_h.shape[0]
  hn = hn[0] if hn else gates[..., :size]  # Unused without `reset_after`.
  gates, hn, hseq, dys, valid, keep = _order(config, gates, hn, hseq, dys,
                                             *_float_masks(config, ms, dys.shape[:2]))
  da, dhh, dh0 = kernel.gru_adjoint(w_h, gates, hn, hseq, h0, valid, keep, dys, dh_last,
                                    reset_after=config.reset_after, **options)
  return (*_order(config, da, dhh), dh0)


def kernels(backend: str, **options: Any) -> dict[str, Callable]:
  """`{loop kind: kernel}` for `loop_call`, of `backend` (`"pallas"` or `"cpu"`).

  `options` go to the backend's functions (`interpret=True` for Pallas on CPU).
  """
  p = functools.partial
  kw = dict(backend=backend, **options)
  return {"lstm.forward": p(lstm_forward, save=False, **kw),
          "lstm.forward_save": p(lstm_forward, save=True, **kw),
          "lstm.adjoint": p(lstm_adjoint, **kw),
          "gru.forward": p(gru_forward, save=False, **kw),
          "gru.forward_save": p(gru_forward, save=True, **kw),
          "gru.adjoint": p(gru_adjoint, **kw)}


for _platform, _name in (("cuda", "pallas"), ("cpu", "cpu")):
  for _kind, _kernel in kernels(_name).items():
    loop_call.register_kernel(_platform, _kind, _kernel)
