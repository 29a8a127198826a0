r"""The sLSTM cell of xLSTM (Beck et al. 2024): exponential gating, normaliser and stabiliser.

Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter and Hochreiter,
"xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517), section 2.2 and its appendix,
and the official code (github.com/NX-AI/xlstm: `xlstm/blocks/slstm/src/vanilla/slstm.py`,
`src/cuda/slstm_pointwise.cu`, `cell.py`).

The input gate is exponential, so the cell state `c` is kept with a normaliser `n` (the
sum of the input gates, decayed alike) and the output reads `c / n`. Both are stored
divided by `exp(m)`, where the stabiliser state `m` tracks the largest log-gate seen, so
that no `exp` overflows; `c / n`, and so every output, is unchanged by that scaling. The
recurrent matrices are block-diagonal with `heads` blocks (head-wise recurrence), stored
as one `[H/heads, 4H/heads]` block per head.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax._src import cell as cell_lib
from rnnjax._src import checks, engines
from rnnjax._src import precision as precision_lib
from rnnjax._src.cells import common

FORGET_GATES = ("sigmoid", "exp")


class SLSTMParams(NamedTuple):
  """sLSTM weights, gates fused in xLSTM's order `(i, f, z, o)`.

  `D = H / heads`. Head `k` reads its own `D` units of `h`: its block `r[k]` has the
  four gates side by side (`r[k][:, g*D:(g+1)*D]` feeds gate `g`'s units `k*D` to
  `(k+1)*D`). `w_i` and `b` are gate-major: gate `g` is `[..., g*H:(g+1)*H]`.
  """

  w_i: jax.Array  # [I, 4H], the input weights
  r: jax.Array  # [heads, D, 4D], the head-wise recurrent weights
  b: jax.Array | None  # [4H]


class SLSTMState(NamedTuple):
  """The sLSTM carry: cell, normaliser and stabiliser (the stabilised forms), and output."""

  c: jax.Array  # [..., H], the cell state, divided by exp(m)
  n: jax.Array  # [..., H], the normaliser state, divided by exp(m)
  m: jax.Array  # [..., H], the stabiliser state
  h: jax.Array  # [..., H], the hidden state (the last output)


def _step(pre: jax.Array, state: SLSTMState, exp_forget: bool) -> SLSTMState:
  """One stabilised sLSTM step from `pre = x @ w_i + b + headwise(h, r)`, all in one dtype."""
  i_t, f_t, z_t, o_t = jnp.split(pre, 4, axis=-1)
  log_f = f_t if exp_forget else jax.nn.log_sigmoid(f_t)
  decayed = log_f + state.m
  # A zero normaliser (the initial carry, or after a reset) starts the stabiliser at the
  # input gate, so that n' = 1 (the official CUDA kernel's rule, elementwise).
  m = jnp.where(state.n == 0, i_t, jnp.maximum(decayed, i_t))
  i = jnp.exp(i_t - m)  # <= 1
  f = jnp.exp(jnp.minimum(decayed - m, 0.0))  # <= 1; the cap only acts where n == 0
  c = f * state.c + i * jnp.tanh(z_t)
  n = f * state.n + i
  h = jax.nn.sigmoid(o_t) * (c / n)
  return SLSTMState(c=c, n=n, m=m, h=h)


@cell_lib.factory
def slstm(hidden_size: int, *, heads: int = 1, forget_gate: str = "sigmoid",
          use_bias: bool = True, forget_bias: float = 1.0, kernel_init: Any = None,
          recurrent_init: Any = None, dtype: Any = jnp.float32,
          param_dtype: Any = None) -> cell_lib.Cell:
  r"""The sLSTM cell of xLSTM (Beck et al. 2024, arXiv:2405.04517, section 2.2).

  Equations, unstabilised as in the paper (`σ` the logistic sigmoid, `⊙` elementwise,
  `R` the block-diagonal recurrent matrix of the `heads` blocks of `r`)::

    ĩ, f̃, z̃, õ = split(x @ w_i + b + h @ R, 4)
    i = exp(ĩ),  f = σ(f̃) (forget_gate="sigmoid") or exp(f̃) ("exp"),  o = σ(õ)
    c' = f ⊙ c + i ⊙ tanh(z̃)
    n' = f ⊙ n + i
    h' = o ⊙ c' / n'
    y  = h'

  The cell runs the paper's stabilised form, which stores `c` and `n` divided by
  `exp(m)` and gives the same `h'` without overflowing::

    m' = max(log f + m, ĩ)         # ĩ alone where n == 0 (see below)
    i' = exp(ĩ - m'),  f' = exp(log f + m - m')
    c' = f' ⊙ c + i' ⊙ tanh(z̃),  n' = f' ⊙ n + i',  h' = o ⊙ c' / n'

  As in the official code (github.com/NX-AI/xlstm, `slstm_pointwise.cu`): the initial
  carry is all zeros, `m` included, and where `n == 0` (the first step, or after a
  reset) the stabiliser starts at `m' = ĩ`, so that `n' = 1`; `f'` is capped at 1
  there (it multiplies a zero state). From then on `max(f', i') = 1`, so `n' >= 1`
  and `c' / n'` never divides by zero. An initial carry of your own needs `n >= 0`.
  The forget gate defaults to the sigmoid, the official code's choice; the paper
  allows either. The official layer draws the head-wise input projections, a
  convolution and a group norm outside the cell; here `w_i` is one dense input
  projection.

  Defaults: `w_i` LeCun normal per gate, each head's `[D, D]` block of each gate
  orthogonal, biases zero except the forget gate's slice of `b`, which starts at
  `forget_bias`. (xLSTM starts `r` at zero: pass
  `recurrent_init=jax.nn.initializers.zeros`.)

  Args:
    hidden_size: `H`, the size of the state and of the output.
    heads: the number of diagonal blocks of the recurrent matrix (xLSTM uses 4); must
      divide `hidden_size`. Each head's `D = H / heads` units read only their own head.
    forget_gate: `"sigmoid"` (`f = σ(f̃)`) or `"exp"` (`f = exp(f̃)`).
    use_bias: if False there is no bias `b`.
    forget_bias: initial value of the forget gate's slice of `b`.
    kernel_init: initializer for each gate's `[I, H]` block of `w_i`.
    recurrent_init: initializer for each head's `[D, D]` block of each gate of `r`.
    dtype: the compute dtype: inputs of any floating dtype are cast to it, the matrix
      products take their operands in it and accumulate in float32 (or wider), the gate
      arithmetic runs in that accumulation dtype, and the outputs `y` have `dtype`.
      `jnp.bfloat16` for mixed precision.
    param_dtype: the dtype of the params and of the carry. Default: float32, or
      float64 with `dtype=jnp.float64`.

  Returns:
    A `Cell` with `SLSTMParams` and carry `SLSTMState(c, n, m, h)`, each `[..., H]`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from rnnjax import slstm
    >>> cell = slstm(8, heads=2)
    >>> params = cell.init(jax.random.key(0), input_size=3)
    >>> carry, y = cell.apply(params, cell.initial_carry(params, (5,)), jnp.ones((5, 3)))
    >>> y.shape, params.r.shape, bool(carry.n.min() >= 1)
    ((5, 8), (2, 4, 16), True)
  """
  fn = "rnnjax.slstm"
  hidden_size = common.factory_sizes(fn, hidden_size)
  heads = common.check_heads(fn, hidden_size, heads)
  exp_forget = checks.choice(fn, "forget_gate", forget_gate, FORGET_GATES) == "exp"
  use_bias = checks.boolean(fn, "use_bias", use_bias)
  forget_bias = checks.real_number(fn, "forget_bias", forget_bias)
  prec = common.precision(fn, dtype, param_dtype)
  k_init, r_init = common.resolve_inits(fn, kernel_init, recurrent_init)
  d = hidden_size // heads

  def init(key: jax.Array, input_size: int) -> SLSTMParams:
    checks.key(f"{fn}.init", "key", key)
    input_size = checks.positive_int(f"{fn}.init", "input_size", input_size)
    k_i, k_r = jax.random.split(key)
    w_i = cell_lib.gate_blocks(k_init, k_i, input_size, hidden_size, 4, prec.param)
    r = jnp.stack([cell_lib.gate_blocks(r_init, k, d, d, 4, prec.param)
                   for k in jax.random.split(k_r, heads)])
    b, _ = cell_lib.gated_biases(4, hidden_size, prec.param, use_bias=use_bias,
                                 fill={1: forget_bias})
    return SLSTMParams(w_i=w_i, r=r, b=b)

  def initial_carry(params: SLSTMParams, batch_shape: tuple[int, ...] = ()) -> SLSTMState:
    batch_shape = common.check_initial_carry(fn, params, SLSTMParams, batch_shape)
    zero = cell_lib.zeros(batch_shape, params.r.shape[0] * params.r.shape[1], params.r.dtype)
    return SLSTMState(c=zero, n=zero, m=zero, h=zero)

  def apply(params: SLSTMParams, carry: SLSTMState, x: jax.Array, *,
            key: jax.Array | None = None) -> tuple[SLSTMState, jax.Array]:
    del key
    x = common.check_apply(fn, params, SLSTMParams, carry, x, input_size, initial_carry, prec)
    pre = prec.affine(x, params.w_i, params.b) + common.headwise(carry.h, params.r, prec.matmul)
    new = _step(pre, jax.tree_util.tree_map(prec.wide, carry), exp_forget)
    return precision_lib.like(new, carry), prec.output(new.h)

  input_size = common.input_size_of(fn, SLSTMParams)
  return cell_lib.Cell(init, initial_carry, apply, input_size=input_size,
                       paths=engines.FastPaths(apply, jacobian_heads=heads))
