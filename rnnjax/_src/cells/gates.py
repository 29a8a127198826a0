"""The LSTM and GRU gate arithmetic, written once for the cells and the fast paths.

The cells' `apply` (`cells/lstm.py`, `cells/gru.py`) and the whole-sequence
kernels' forward loops (`fused.py`) both call these functions, so the two
cannot drift apart. Gate order and activations are PyTorch's: `(i, f, g, o)`
for the LSTM, `(r, z, n)` for the GRU, along the last axis. The functions are
elementwise apart from the GRU's recurrent product, and broadcast over any
leading dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib

LSTMGates = tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # (i, f, g, o), each [..., H]
GRUGates = tuple[jax.Array, jax.Array, jax.Array]  # (r, z, n), each [..., H]


def lstm_gates(z: jax.Array, c: jax.Array) -> tuple[LSTMGates, jax.Array, jax.Array]:
  """One LSTM step from its summed pre-activation (`σ` the logistic sigmoid)::

    i, f, g, o = σ(z_i), σ(z_f), tanh(z_g), σ(z_o)   # z split in 4 along the last axis
    c' = f ⊙ c + i ⊙ g
    h' = o ⊙ tanh(c')

  Args:
    z: `[..., 4H]`, `x @ w_i + b_i + h @ w_h + b_h` in the order `(i, f, g, o)`.
    c: `[..., H]`, the previous memory cell.

  Returns:
    `((i, f, g, o), c', h')`: the activated gates and the new cell and output
    (before any projection), each `[..., H]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> (i, f, g, o), c, h = lstm_gates(jnp.zeros((2, 12)), jnp.ones((2, 3)))
    >>> c.shape, float(c[0, 0]), float(f[0, 0])
    ((2, 3), 0.5, 0.5)
  """
  i, f, g, o = jnp.split(z, 4, axis=-1)
  # One gate a line, so that `rnnjax.diagnostics.record` tells them apart by source line.
  i = jax.nn.sigmoid(i)
  f = jax.nn.sigmoid(f)
  g = jnp.tanh(g)
  o = jax.nn.sigmoid(o)
  c_new = f * c + i * g
  h_new = o * jnp.tanh(c_new)
  return (i, f, g, o), c_new, h_new


def lstm_gates_jvp(gates: LSTMGates, c_new: jax.Array, c: jax.Array, dz: jax.Array,
                   dc: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The tangent of `lstm_gates` at `(z, c)` along `(dz, dc)`, from its saved values.

  Only the gates and `c'` of the forward step are needed (`tanh(c')` is
  recomputed), so a fast path saves those and nothing else::

    dc' = dσ(z_f) ⊙ c + f ⊙ dc + dσ(z_i) ⊙ g + i ⊙ dtanh(z_g)
    dh' = dσ(z_o) ⊙ tanh(c') + o ⊙ (1 - tanh(c')²) ⊙ dc'

  with `dσ(z_f) = f ⊙ (1 - f) ⊙ dz_f`, `dtanh(z_g) = (1 - g²) ⊙ dz_g`, and so on.

  Args:
    gates: `(i, f, g, o)`, the activated gates returned by `lstm_gates`.
    c_new: `[..., H]`, the new cell `c'` returned by `lstm_gates`.
    c: `[..., H]`, the previous cell the step was given.
    dz: `[..., 4H]`, the tangent of the pre-activation `z`.
    dc: `[..., H]`, the tangent of the previous cell `c`.

  Returns:
    `(dc', dh')`, each `[..., H]`.
  """
  i, f, g, o = gates
  tc = jnp.tanh(c_new)
  coef = jnp.concatenate([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], -1)
  di, df, dg, do = jnp.split(dz * coef, 4, axis=-1)
  dc_new = df * c + f * dc + di * g + i * dg
  dh_new = do * tc + (o * (1 - tc * tc)) * dc_new
  return dc_new, dh_new


def gru_gates(a: jax.Array, h: jax.Array, w_h: jax.Array, b_h: jax.Array | None, *,
              reset_after: bool, affine: Callable[..., jax.Array] = cell_lib.affine
              ) -> tuple[GRUGates, jax.Array, jax.Array]:
  """One GRU step from its input projection (`σ` the logistic sigmoid).

  With `a = x @ w_i + b_i` split as `(a_r, a_z, a_n)` and `w_h`, `b_h` likewise::

    r = σ(a_r + h @ w_hr + b_hr)
    z = σ(a_z + h @ w_hz + b_hz)
    n = tanh(a_n + r ⊙ (h @ w_hn + b_hn))        # reset_after=True
    n = tanh(a_n + (r ⊙ h) @ w_hn + b_hn)        # reset_after=False
    h' = (1 - z) ⊙ n + z ⊙ h

  Args:
    a: `[..., 3H]`, the input projection `x @ w_i + b_i`, in the order `(r, z, n)`.
    h: `[..., H]`, the previous state.
    w_h: `[H, 3H]`, the recurrent weight.
    b_h: `[3H]`, the recurrent bias, or None.
    reset_after: apply the reset gate after the recurrent product (True) or
      before it (False).
    affine: `affine(x, w, b) -> x @ w + b` for the recurrent products (`b` may be
      None); a mixed-precision cell passes its own, which casts the operands.

  Returns:
    `((r, z, n), h', aux)`: the activated gates and the new state, each
    `[..., H]`, and the value a fast path saves for its backward pass:
    `h @ w_hn + b_hn` with `reset_after`, else `r ⊙ h`.

  Examples:
    >>> import jax.numpy as jnp
    >>> (r, z, n), h, aux = gru_gates(jnp.zeros((2, 9)), jnp.ones((2, 3)), jnp.zeros((3, 9)),
    ...                               None, reset_after=True)
    >>> h.shape, float(h[0, 0]), aux.shape
    ((2, 3), 0.5, (2, 3))
  """
  size = w_h.shape[0]
  a_r, a_z, a_n = jnp.split(a, 3, axis=-1)
  if reset_after:
    hh_r, hh_z, hh_n = jnp.split(affine(h, w_h, b_h), 3, axis=-1)
    r = jax.nn.sigmoid(a_r + hh_r)
    z = jax.nn.sigmoid(a_z + hh_z)
    n = jnp.tanh(a_n + r * hh_n)
    aux = hh_n
  else:
    b_rz = None if b_h is None else b_h[:2 * size]
    hh_r, hh_z = jnp.split(affine(h, w_h[:, :2 * size], b_rz), 2, axis=-1)
    r = jax.nn.sigmoid(a_r + hh_r)
    z = jax.nn.sigmoid(a_z + hh_z)
    aux = r * h
    b_n = None if b_h is None else b_h[2 * size:]
    n = jnp.tanh(a_n + affine(aux, w_h[:, 2 * size:], b_n))
  h_new = (1.0 - z) * n + z * h
  return (r, z, n), h_new, aux
