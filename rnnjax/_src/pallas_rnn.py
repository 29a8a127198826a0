"""Persistent Pallas kernels for the LSTM and GRU sequence: weights on chip for all T steps.

The generic fast path (`fused.py`) runs one `lax.scan` step per time step; on a GPU
each step is a few kernel launches, and each launch reads the recurrent weight `w_h`
from memory again. The kernels here are *persistent*, as cuDNN's persistent RNN is:

- one program (a Triton kernel instance) per block of `block_rows` batch rows, so the
  grid is `ceil(R / block_rows)` programs, which run independently;
- each program loads `w_h` (split into `[H, H]` blocks, one per gate) once, before its
  time loop, and keeps it in registers for all steps;
- the time loop (`lax.fori_loop`) runs inside the kernel: one launch per sequence, and
  per step only the `[block_rows, H]` carry, the step's input projection and its
  outputs move between the chip and memory.

The input projection `x @ w_i + b` is not part of the kernels: the caller does it as one
large product over all `T*R` rows beforehand (and the weight gradients afterwards), so a
kernel holds only the sequential part. Each has a reverse-mode twin (`*_adjoint`), the
reverse loop of the fast path's transposed tangent rule, with the transposed weight on
chip. All kernels run forward in time (the caller flips arrays for reverse sequences),
take float32 arrays of `T >= 1` steps and `[T, R]` float32 masks (`valid`: the step
exists; `keep`: the carry is kept, not reset before the step), and never blend with a
mask arithmetically: inputs at steps that are not valid may be NaN and never reach a
valid result.

They apply where `fits` says so: `H` a power of two of at least 16 (Triton's tensors
have power-of-two sizes and its `dot` needs 16 in each dimension) and `w_h` at most
`WEIGHT_BUDGET_BYTES` (64 KiB of float32: `H <= 64` for both cells), the most a program
can hold in registers next to its carry; elsewhere the caller keeps its generic path.
Rows are padded to a multiple of `block_rows` (at least 16, for the same reason) by the
wrappers. Products use `Precision.HIGHEST` (IEEE float32, no TF32). With
`interpret=True` the kernels run anywhere (CPU included): that is how they are tested.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

WEIGHT_BUDGET_BYTES = 64 * 1024  # float32 `w_h` held by one program for all steps
BLOCK_ROWS = 16  # rows per program: Triton's `dot` needs at least 16


def fits(hidden: int, gates: int, rows: int) -> bool:
  """Whether the persistent kernels apply: `w_h: [H, gates*H]` fits on chip for one program.

  Args:
    hidden: the hidden size `H`; a power of two, at least 16.
    gates: the number of gate blocks of `w_h` (4 for the LSTM, 3 for the GRU).
    rows: the number of rows `R` (the batch); any positive number (padded per block).

  Returns:
    True if `H` is a power of two of at least 16, `rows >= 1` and `4 * gates * H * H`
    bytes are at most `WEIGHT_BUDGET_BYTES` (64 KiB: `H <= 64` for the LSTM and GRU).

  >>> fits(64, 4, 8), fits(128, 4, 8), fits(48, 3, 8)
  (True, False, False)
  """
  power_of_two = hidden >= 16 and hidden & (hidden - 1) == 0
  return power_of_two and rows >= 1 and 4 * gates * hidden * hidden <= WEIGHT_BUDGET_BYTES


# ------------------------------------------------------------------ kernel helpers


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _mask(ref, t) -> jax.Array:
  """Step `t` of a `[T, rows]` 0/1 mask as a `[rows, 1]` boolean."""
  return ref[t][:, None] > 0.5


def _col_blocks(ref, n: int, hidden: int) -> list[jax.Array]:
  """A `[H, n*H]` weight loaded as `n` `[H, H]` column blocks (once: they stay on chip)."""
  return [ref[:, pl.ds(j * hidden, hidden)] for j in range(n)]


def _row_blocks(ref, n: int, hidden: int) -> list[jax.Array]:
  """A `[n*H, H]` weight (a transpose) loaded as `n` `[H, H]` row blocks."""
  return [ref[pl.ds(j * hidden, hidden), :] for j in range(n)]


def _load(ref, t, n: int, hidden: int) -> list[jax.Array]:
  """Step `t` of a `[T, rows, n*H]` array as `n` `[rows, H]` blocks."""
  return [ref[t, :, pl.ds(j * hidden, hidden)] for j in range(n)]


def _store(ref, t, blocks: Sequence[jax.Array]) -> None:
  """Writes `n` `[rows, H]` blocks into step `t` of a `[T, rows, n*H]` array."""
  hidden = blocks[0].shape[-1]
  for j, b in enumerate(blocks):
    ref[t, :, pl.ds(j * hidden, hidden)] = b


def _before(ref, init: jax.Array, t) -> jax.Array:
  """The carry before step `t`: `ref[t - 1]`, `init` at `t = 0`."""
  return jnp.where(t > 0, ref[jnp.maximum(t - 1, 0)], init)


def _run(kernel: Callable, args: Sequence[tuple[jax.Array, int | None]],
         outs: Sequence[tuple[tuple[int, ...], int]], *, block_rows: int,
         interpret: bool) -> list[jax.Array]:
  """`pallas_call` of `kernel` with one program per `block_rows` rows.

  `args` and `outs` pair each array (an output's shape) with the axis of its rows, None
  for a weight (read whole by every program). Rows are padded with zeros (a zero mask is
  a step that is not valid) and the outputs cut back to the rows given.
  """
  rows = next(a.shape[ax] for a, ax in args if ax is not None)
  padded = -(-rows // block_rows) * block_rows

  def pad(a, ax):
    if ax is None or padded == rows:
      return a
    return jnp.pad(a, [(0, padded - rows if d == ax else 0) for d in range(a.ndim)])

  def spec(shape, ax):
    block = tuple(block_rows if d == ax else n for d, n in enumerate(shape))
    return pl.BlockSpec(block, lambda i: tuple(i if d == ax else 0 for d in range(len(shape))))

  shapes = [tuple(padded if d == ax else n for d, n in enumerate(s)) for s, ax in outs]
  weight_bytes = sum(4 * a.size for a, ax in args if ax is None)
  results = pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes],
      grid=(padded // block_rows,),
      in_specs=[spec(a.shape, ax) for a, ax in args],
      out_specs=[spec(s, ax) for s, (_, ax) in zip(shapes, outs, strict=True)],
      compiler_params=plgpu.CompilerParams(num_warps=4 if weight_bytes <= 16 * 1024 else 8),
      interpret=interpret,
  )(*[pad(a, ax) for a, ax in args])
  return [jax.lax.slice_in_dim(r, 0, rows, axis=ax) for r, (_, ax) in zip(results, outs,
                                                                          strict=True)]


# ------------------------------------------------------------------ LSTM


def _lstm_forward_kernel(xw, w_h, h0, c0, valid, keep, ys, hs, cs, gates):
  steps, hidden = xw.shape[0], h0.shape[-1]
  w = _col_blocks(w_h, 4, hidden)

  def step(t, carry):
    h, c = carry
    v, k = _mask(valid, t), _mask(keep, t)
    hp, cp = jnp.where(k, h, 0.0), jnp.where(k, c, 0.0)
    z = [x + _dot(hp, wj) for x, wj in zip(_load(xw, t, 4, hidden), w, strict=True)]
    i, f, g, o = jax.nn.sigmoid(z[0]), jax.nn.sigmoid(z[1]), jnp.tanh(z[2]), jax.nn.sigmoid(z[3])
    c1 = f * cp + i * g
    h1 = o * jnp.tanh(c1)
    ys[t] = jnp.where(v, h1, 0.0)
    h, c = jnp.where(v, h1, h), jnp.where(v, c1, c)
    hs[t], cs[t] = h, c
    _store(gates, t, (i, f, g, o))
    return h, c

  jax.lax.fori_loop(0, steps, step, (h0[...], c0[...]))


def lstm_forward(xw: jax.Array, w_h: jax.Array, h0: jax.Array, c0: jax.Array,
                 valid: jax.Array, keep: jax.Array, *, block_rows: int = BLOCK_ROWS,
                 interpret: bool = False, save: bool = True) -> tuple[jax.Array, ...]:
  """The LSTM over a sequence in one persistent kernel (gate order i, f, g, o).

  For each `t`: `hp, cp = h, c` where `keep[t]` else 0; `z = xw[t] + hp @ w_h`;
  `c1 = f*cp + i*g`, `h1 = o*tanh(c1)`; `ys[t] = h1` where `valid[t]` else 0;
  `h, c = h1, c1` where `valid[t]` (else unchanged); `hs[t], cs[t] = h, c`.

  Args:
    xw: `[T, R, 4H]` input projection with both biases added.
    w_h: `[H, 4H]` recurrent weight.
    h0: `[R, H]` initial hidden state.
    c0: `[R, H]` initial memory cell.
    valid: `[T, R]` 1.0 where the step exists, 0.0 at padding (carry kept, output 0).
    keep: `[T, R]` 0.0 where the carry is reset to zero before the step, else 1.0.
    block_rows: rows per program (a power of two, at least 16 on a GPU).
    interpret: run in Pallas's interpreter (any backend) instead of compiling.
    save: False returns only `(ys, h_last, c_last)` (the last step's `hs`, `cs`).

  Returns:
    `(ys, hs, cs, gates)`: outputs, hidden states and cells after each step `[T, R, H]`,
    and the activated gates `[T, R, 4H]` (i, f, g, o; undefined where not valid).
  """
  t, r, _ = xw.shape
  h = h0.shape[-1]
  ys, hs, cs, gates = _run(
      _lstm_forward_kernel, [(xw, 1), (w_h, None), (h0, 0), (c0, 0), (valid, 1), (keep, 1)],
      [((t, r, h), 1)] * 3 + [((t, r, 4 * h), 1)], block_rows=block_rows, interpret=interpret)
  return (ys, hs, cs, gates) if save else (ys, hs[-1], cs[-1])


def _lstm_adjoint_kernel(w_t, gates, cs, c0, valid, keep, dys, dh_last, dc_last, dz, dh0, dc0):
  steps, hidden = cs.shape[0], c0.shape[-1]
  w = _row_blocks(w_t, 4, hidden)
  c_init = c0[...]

  def step(s, carry):
    t = steps - 1 - s
    dh, dc = carry
    v, k = _mask(valid, t), _mask(keep, t)
    cp = jnp.where(k, _before(cs, c_init, t), 0.0)
    i, f, g, o = _load(gates, t, 4, hidden)
    dh1, dc1 = jnp.where(v, dh + dys[t], 0.0), jnp.where(v, dc, 0.0)
    dh, dc = jnp.where(v, 0.0, dh), jnp.where(v, 0.0, dc)
    tc = jnp.tanh(cs[t])
    dc1 = dc1 + dh1 * o * (1.0 - tc * tc)
    d = [dc1 * g * i * (1.0 - i), dc1 * cp * f * (1.0 - f), dc1 * i * (1.0 - g * g),
         dh1 * tc * o * (1.0 - o)]
    d = [jnp.where(v, x, 0.0) for x in d]  # gates may be NaN where not valid: select
    _store(dz, t, d)
    dhp = _dot(d[0], w[0]) + _dot(d[1], w[1]) + _dot(d[2], w[2]) + _dot(d[3], w[3])
    dh = dh + jnp.where(k, dhp, 0.0)
    dc = dc + jnp.where(v & k, dc1 * f, 0.0)
    return dh, dc

  dh, dc = jax.lax.fori_loop(0, steps, step, (dh_last[...], dc_last[...]))
  dh0[...] = dh
  dc0[...] = dc


def lstm_adjoint(w_h: jax.Array, gates: jax.Array, cs: jax.Array, c0: jax.Array,
                 valid: jax.Array, keep: jax.Array, dys: jax.Array, dh_last: jax.Array,
                 dc_last: jax.Array, *, block_rows: int = BLOCK_ROWS,
                 interpret: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reverse mode of `lstm_forward` w.r.t. `xw`, `h0`, `c0`, in one persistent kernel.

  The loop runs `t = T-1 .. 0` with `w_h.T` on chip; at a step that is not valid the
  carry's cotangent passes through and `dz[t]` is 0.

  Args:
    w_h: `[H, 4H]` recurrent weight.
    gates: `[T, R, 4H]` the forward's activated gates.
    cs: `[T, R, H]` the forward's memory cells after each step.
    c0: `[R, H]` initial memory cell.
    valid: `[T, R]` the forward's `valid` mask.
    keep: `[T, R]` the forward's `keep` mask.
    dys: `[T, R, H]` cotangent of the outputs `ys`.
    dh_last: `[R, H]` cotangent of the final hidden state `hs[T-1]`.
    dc_last: `[R, H]` cotangent of the final memory cell `cs[T-1]`.
    block_rows: rows per program (a power of two, at least 16 on a GPU).
    interpret: run in Pallas's interpreter (any backend) instead of compiling.

  Returns:
    `(dz, dh0, dc0)`: cotangents of the pre-activations `z` (equal to those of `xw`)
    `[T, R, 4H]`, and of `h0`, `c0` `[R, H]`.
  """
  args = [(w_h.T, None), (gates, 1), (cs, 1), (c0, 0), (valid, 1), (keep, 1), (dys, 1),
          (dh_last, 0), (dc_last, 0)]
  dz, dh0, dc0 = _run(_lstm_adjoint_kernel, args,
                      [(gates.shape, 1), (c0.shape, 0), (c0.shape, 0)],
                      block_rows=block_rows, interpret=interpret)
  return dz, dh0, dc0


# ------------------------------------------------------------------ GRU


def _gru_forward_kernel(xw, w_h, b_hn, h0, valid, keep, ys, hs, gates, hn_out, *, reset_after):
  steps, hidden = xw.shape[0], h0.shape[-1]
  w_r, w_z, w_n = _col_blocks(w_h, 3, hidden)
  b = b_hn[...][None, :]

  def step(t, h):
    v, k = _mask(valid, t), _mask(keep, t)
    hp = jnp.where(k, h, 0.0)
    x_r, x_z, x_n = _load(xw, t, 3, hidden)
    r = jax.nn.sigmoid(x_r + _dot(hp, w_r))
    z = jax.nn.sigmoid(x_z + _dot(hp, w_z))
    if reset_after:
      hn = _dot(hp, w_n) + b
      n = jnp.tanh(x_n + r * hn)
    else:
      hn = _dot(r * hp, w_n) + b
      n = jnp.tanh(x_n + hn)
    h1 = (1.0 - z) * n + z * hp
    ys[t] = jnp.where(v, h1, 0.0)
    h = jnp.where(v, h1, h)
    hs[t] = h
    hn_out[t] = hn
    _store(gates, t, (r, z, n))
    return h

  jax.lax.fori_loop(0, steps, step, h0[...])


def gru_forward(xw: jax.Array, w_h: jax.Array, b_hn: jax.Array, h0: jax.Array,
                valid: jax.Array, keep: jax.Array, *, reset_after: bool,
                block_rows: int = BLOCK_ROWS, interpret: bool = False,
                save: bool = True) -> tuple[jax.Array, ...]:
  """The GRU over a sequence in one persistent kernel (gate order r, z, n).

  For each `t`: `hp = h` where `keep[t]` else 0; `r = sigmoid(xw_r + hp @ w_hr)`,
  `z = sigmoid(xw_z + hp @ w_hz)`; `hn = hp @ w_hn + b_hn` and `n = tanh(xw_n + r*hn)`
  (`reset_after`), or `hn = (r*hp) @ w_hn + b_hn` and `n = tanh(xw_n + hn)`;
  `h1 = (1-z)*n + z*hp`; outputs and carry masked by `valid[t]` as in `lstm_forward`.

  Args:
    xw: `[T, R, 3H]` `x @ w_i + b_i + concat(b_hr, b_hz, 0)`.
    w_h: `[H, 3H]` recurrent weight (`w_hr, w_hz, w_hn` column blocks).
    b_hn: `[H]` the bias of the candidate's recurrent term.
    h0: `[R, H]` initial hidden state.
    valid: `[T, R]` 1.0 where the step exists, 0.0 at padding (carry kept, output 0).
    keep: `[T, R]` 0.0 where the carry is reset to zero before the step, else 1.0.
    reset_after: apply the reset gate after the recurrent product (cuDNN, PyTorch)
      instead of before it.
    block_rows: rows per program (a power of two, at least 16 on a GPU).
    interpret: run in Pallas's interpreter (any backend) instead of compiling.
    save: False returns only `(ys, h_last)` (the last step's `hs`).

  Returns:
    `(ys, hs, gates, hn)`: outputs and hidden states after each step `[T, R, H]`, the
    activated gates `[T, R, 3H]` (r, z, n) and the recurrent candidate terms `hn`
    `[T, R, H]` (both undefined where not valid).
  """
  t, r, _ = xw.shape
  h = h0.shape[-1]
  kernel = functools.partial(_gru_forward_kernel, reset_after=reset_after)
  ys, hs, gates, hn = _run(
      kernel, [(xw, 1), (w_h, None), (b_hn, None), (h0, 0), (valid, 1), (keep, 1)],
      [((t, r, h), 1)] * 2 + [((t, r, 3 * h), 1), ((t, r, h), 1)], block_rows=block_rows,
      interpret=interpret)
  return (ys, hs, gates, hn) if save else (ys, hs[-1])


def _gru_adjoint_kernel(w_t, gates, hn, hs, h0, valid, keep, dys, dh_last, da, dhh, dh0, *,
                        reset_after):
  steps, hidden = hs.shape[0], h0.shape[-1]
  w_r, w_z, w_n = _row_blocks(w_t, 3, hidden)
  h_init = h0[...]

  def step(s, dh):
    t = steps - 1 - s
    v, k = _mask(valid, t), _mask(keep, t)
    hp = jnp.where(k, _before(hs, h_init, t), 0.0)
    r, z, n = _load(gates, t, 3, hidden)
    dh1 = jnp.where(v, dh + dys[t], 0.0)
    dh = jnp.where(v, 0.0, dh)
    dnp = dh1 * (1.0 - z) * (1.0 - n * n)
    dzg, dhp = dh1 * (hp - n), dh1 * z
    if reset_after:
      dr, dhn = dnp * hn[t], dnp * r
    else:
      drh = _dot(jnp.where(v, dnp, 0.0), w_n)
      dr, dhn, dhp = drh * hp, dnp, dhp + drh * r
    # gates and `hn` may be NaN where not valid: select, never multiply by the mask.
    dpr, dpz, dnp, dhn, dhp = (jnp.where(v, x, 0.0) for x in (
        dr * r * (1.0 - r), dzg * z * (1.0 - z), dnp, dhn, dhp))
    _store(da, t, (dpr, dpz, dnp))
    _store(dhh, t, (dpr, dpz, dhn))
    dhp = dhp + _dot(dpr, w_r) + _dot(dpz, w_z)
    if reset_after:
      dhp = dhp + _dot(dhn, w_n)
    return dh + jnp.where(k, dhp, 0.0)

  dh0[...] = jax.lax.fori_loop(0, steps, step, dh_last[...])


def gru_adjoint(w_h: jax.Array, gates: jax.Array, hn: jax.Array, hs: jax.Array, h0: jax.Array,
                valid: jax.Array, keep: jax.Array, dys: jax.Array, dh_last: jax.Array, *,
                reset_after: bool, block_rows: int = BLOCK_ROWS,
                interpret: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reverse mode of `gru_forward` w.r.t. `xw`, the recurrent pre-activations and `h0`.

  The recurrent pre-activations are `hh = (hp @ w_hr, hp @ w_hz, hn)`; the loop runs
  `t = T-1 .. 0` with `w_h.T` on chip, and at a step that is not valid the carry's
  cotangent passes through and `da[t]`, `dhh[t]` are 0.

  Args:
    w_h: `[H, 3H]` recurrent weight.
    gates: `[T, R, 3H]` the forward's activated gates (r, z, n).
    hn: `[T, R, H]` the forward's recurrent candidate terms.
    hs: `[T, R, H]` the forward's hidden states after each step.
    h0: `[R, H]` initial hidden state.
    valid: `[T, R]` the forward's `valid` mask.
    keep: `[T, R]` the forward's `keep` mask.
    dys: `[T, R, H]` cotangent of the outputs `ys`.
    dh_last: `[R, H]` cotangent of the final hidden state `hs[T-1]`.
    reset_after: the forward's `reset_after`.
    block_rows: rows per program (a power of two, at least 16 on a GPU).
    interpret: run in Pallas's interpreter (any backend) instead of compiling.

  Returns:
    `(da, dhh, dh0)`: cotangents of `xw` and of `hh` `[T, R, 3H]`, and of `h0` `[R, H]`.
  """
  kernel = functools.partial(_gru_adjoint_kernel, reset_after=reset_after)
  args = [(w_h.T, None), (gates, 1), (hn, 1), (hs, 1), (h0, 0), (valid, 1), (keep, 1), (dys, 1),
          (dh_last, 0)]
  da, dhh, dh0 = _run(kernel, args, [(gates.shape, 1), (gates.shape, 1), (h0.shape, 0)],
                      block_rows=block_rows, interpret=interpret)
  return da, dhh, dh0
