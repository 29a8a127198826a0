"""Optional C++ kernels (XLA FFI) for the LSTM and GRU sequence on XLA's CPU backend.

XLA's CPU runtime runs each step of a `lax.scan` as a dozen small thunks (a few
microseconds each) around the recurrent product. The kernels of `cpu_kernels_lstm.cc` and
`cpu_kernels_gru.cc` (sharing `cpu_kernels.h`) run the whole time loop inside one custom call:
per step, one register-blocked product `[R, H] @ [H, G*H]` and one fused pass over the rows for
the gate arithmetic. The input projection `x @ w_i + b` is not part of them: the caller
computes it beforehand as one large product and passes `xw` (and the weight gradients
afterwards).

The four functions have the signatures, equations and results of `pallas_rnn`'s
(without its block and interpreter keywords): `lstm_forward`, `lstm_adjoint`,
`gru_forward`, `gru_adjoint`. They run forward in time (the caller flips arrays for
reverse sequences), take float32 arrays and `[T, R]` 0/1 float32 masks, and select
(never blend) with the masks, so that NaN inputs at steps that are not valid never
reach a valid result. They run on the CPU only. The forwards take `save=False` for
inference: then they return only the outputs and the last carry, and write nothing else.

When the steps are large (at least 2^17 multiply-adds each, 2^27 per call) and the batch
has two rows or more, a call is split over a few threads started for it, by rows (the
batch's sequences are independent; results do not depend on the split). The environment
variables, read at each call: `RNNJAX_CPU_THREADS` (the count; `1` turns threading off;
default: the cores, at most 4), `RNNJAX_CPU_THREADS_MIN_WORK` (the multiply-adds per step
from which threads are used; `0`: always) and `RNNJAX_CPU_SPLIT=units` (split the hidden
units instead, with a barrier each step: faster for few rows and a large `w_h` on an idle
machine, much slower when other processes compete for the cores).

The library is compiled at install by `setup.py` (the extension
`rnnjax._src._cpu_kernels`, optional: without a C++ compiler the install still
succeeds). `available()` says whether it was built and loaded; the environment variable
`RNNJAX_CPU_KERNELS=0` turns it off (the pure-JAX path is then used).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
import pathlib

import jax
import jax.numpy as jnp

_LIBRARY = "_cpu_kernels"
_TARGETS = {  # FFI target name: exported handler symbol
    "rnnjax_lstm_forward": "RnnjaxLstmForward",
    "rnnjax_lstm_infer": "RnnjaxLstmInfer",
    "rnnjax_lstm_adjoint": "RnnjaxLstmAdjoint",
    "rnnjax_gru_forward": "RnnjaxGruForward",
    "rnnjax_gru_infer": "RnnjaxGruInfer",
    "rnnjax_gru_adjoint": "RnnjaxGruAdjoint",
}


def _library_path() -> pathlib.Path | None:
  """The built shared library next to this module, or None if it was not built."""
  here = pathlib.Path(__file__).parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = here / f"{_LIBRARY}{suffix}"
    if path.is_file():
      return path
  return None


@functools.cache
def _load() -> bool:
  """Loads the library and registers its handlers with XLA (once per process)."""
  path = _library_path()
  if path is None:
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(str(path))
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except Exception:  # a library that does not load or register: the pure-JAX path
    return False
  return True


def available() -> bool:
  """Whether the C++ kernels are built and loaded (never raises).

  False when the extension was not compiled at install, when it does not load, or when
  the environment variable `RNNJAX_CPU_KERNELS` is `0`.

  Returns:
    True if the four functions of this module can be called.
  """
  if os.environ.get("RNNJAX_CPU_KERNELS", "1").strip() == "0":
    return False
  try:
    return _load()
  except Exception:
    return False


def fits(hidden: int, gates: int, rows: int) -> bool:
  """Whether the C++ kernels should be used for these sizes (all sizes, for now).

  Args:
    hidden: the hidden size `H`.
    gates: the number of gate blocks of `w_h` (4 for the LSTM, 3 for the GRU).
    rows: the number of rows `R` (the batch).

  Returns:
    True for every positive size; the kernels handle any `H` and `R`.
  """
  return hidden >= 1 and gates >= 1 and rows >= 1


def _call(name: str, shapes, *args, **attrs) -> tuple[jax.Array, ...]:
  if not _load():
    raise RuntimeError(f"rnnjax: the C++ CPU kernels are not built ({name}); "
                       "reinstall rnnjax with a C++ compiler, or check `available()` first.")
  out = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  fn = jax.ffi.ffi_call(name, out, vmap_method="sequential")
  return tuple(fn(*[jnp.asarray(a, jnp.float32) for a in args], **attrs))


def lstm_forward(xw: jax.Array, w_h: jax.Array, h0: jax.Array, c0: jax.Array,
                 valid: jax.Array, keep: jax.Array, *, save: bool = True
                 ) -> tuple[jax.Array, ...]:
  """The LSTM over a sequence in one C++ call: `pallas_rnn.lstm_forward`'s contract.

  The arguments, equations and results are those of `pallas_rnn.lstm_forward` (gates
  are 0 where a step is not valid), without its block and interpreter keywords.

  Args:
    xw: `[T, R, 4H]` input projection with both biases added.
    w_h: `[H, 4H]` recurrent weight.
    h0: `[R, H]` initial hidden state.
    c0: `[R, H]` initial memory cell.
    valid: `[T, R]` 1.0 where the step exists, 0.0 at padding.
    keep: `[T, R]` 0.0 where the carry is reset to zero before the step, else 1.0.
    save: return what the adjoint needs, `(ys, hs, cs, gates)`; False: only the outputs
      and the last carry, `(ys, h_last, c_last)`, writing nothing else.
  """
  t, r, _ = xw.shape
  h = h0.shape[-1]
  if not save:
    return _call("rnnjax_lstm_infer", [(t, r, h), (r, h), (r, h)], xw, w_h, h0, c0, valid, keep)
  return _call("rnnjax_lstm_forward", [(t, r, h)] * 3 + [(t, r, 4 * h)],
               xw, w_h, h0, c0, valid, keep)


def lstm_adjoint(w_h: jax.Array, gates: jax.Array, cs: jax.Array, c0: jax.Array,
                 valid: jax.Array, keep: jax.Array, dys: jax.Array, dh_last: jax.Array,
                 dc_last: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reverse mode of `lstm_forward` in one C++ call: `pallas_rnn.lstm_adjoint`'s contract.

  The arguments (the forward's residuals and masks, the cotangents `dys`, `dh_last`,
  `dc_last`) and results `(dz, dh0, dc0)` are those of `pallas_rnn.lstm_adjoint`;
  `w_h.T` is made once per call.
  """
  return _call("rnnjax_lstm_adjoint", [gates.shape, c0.shape, c0.shape],
               w_h, gates, cs, c0, valid, keep, dys, dh_last, dc_last)


def gru_forward(xw: jax.Array, w_h: jax.Array, b_hn: jax.Array, h0: jax.Array,
                valid: jax.Array, keep: jax.Array, *, reset_after: bool, save: bool = True
                ) -> tuple[jax.Array, ...]:
  """The GRU over a sequence in one C++ call: `pallas_rnn.gru_forward`'s contract.

  The arguments, equations and results are those of `pallas_rnn.gru_forward` (gates and
  `hn` are 0 where a step is not valid), without its block and interpreter keywords.

  Args:
    xw: `[T, R, 3H]` `x @ w_i + b_i + concat(b_hr, b_hz, 0)`.
    w_h: `[H, 3H]` recurrent weight (`w_hr, w_hz, w_hn` column blocks).
    b_hn: `[H]` the bias of the candidate's recurrent term.
    h0: `[R, H]` initial hidden state.
    valid: `[T, R]` 1.0 where the step exists, 0.0 at padding.
    keep: `[T, R]` 0.0 where the carry is reset to zero before the step, else 1.0.
    reset_after: apply the reset gate after the recurrent product (cuDNN, PyTorch).
    save: return what the adjoint needs, `(ys, hs, gates, hn)`; False: only
      `(ys, h_last)`, writing nothing else.
  """
  t, r, _ = xw.shape
  h = h0.shape[-1]
  if not save:
    return _call("rnnjax_gru_infer", [(t, r, h), (r, h)], xw, w_h, b_hn, h0, valid, keep,
                 reset_after=bool(reset_after))
  return _call("rnnjax_gru_forward", [(t, r, h)] * 2 + [(t, r, 3 * h), (t, r, h)],
               xw, w_h, b_hn, h0, valid, keep, reset_after=bool(reset_after))


def gru_adjoint(w_h: jax.Array, gates: jax.Array, hn: jax.Array, hs: jax.Array, h0: jax.Array,
                valid: jax.Array, keep: jax.Array, dys: jax.Array, dh_last: jax.Array, *,
                reset_after: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reverse mode of `gru_forward` in one C++ call: `pallas_rnn.gru_adjoint`'s contract.

  The arguments (the forward's residuals and masks, `dys`, `dh_last`, `reset_after`) and
  results `(da, dhh, dh0)` are those of `pallas_rnn.gru_adjoint`; `w_h.T` is made once
  per call.
  """
  return _call("rnnjax_gru_adjoint", [gates.shape, gates.shape, h0.shape],
               w_h, gates, hn, hs, h0, valid, keep, dys, dh_last,
               reset_after=bool(reset_after))
