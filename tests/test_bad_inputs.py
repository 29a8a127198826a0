"""A sweep of bad inputs over the public API: each must end in a clear error, never a raw one.

Every row of `CASES` is `(id, call, exception type, pattern)`. The call must raise that
exception type (ValueError for values and shapes, TypeError for types and structure) with
a message that starts with `rnnjax.` and matches the pattern, which names the function and
the argument. Rows of `LEGAL` are inputs that look odd but are allowed: they must give the
result written next to them (checked against an independent value, not rnnjax's own).

Everything here runs at trace time or before: params are random numbers in the layout of
`init` (from `jax.eval_shape`), engines run under `jax.eval_shape`, so nothing compiles.
"""

from __future__ import annotations

import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax
from rnnjax.interop import flax as rflax
from rnnjax.interop import pytorch

T, B, I, H, V = 5, 2, 3, 4, 7
KEY = jax.random.key(0)
RAW_KEY = jax.random.PRNGKey(0)
_RNG = np.random.default_rng(0)


def _params(module, input_size=I, dtype=None):
  """Random params in the layout of `module.init` (nothing compiled)."""
  shapes = jax.eval_shape(lambda k: module.init(k, input_size), KEY)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.3 * _RNG.standard_normal(s.shape), dtype or s.dtype), shapes)


def _zeros(shape, dtype=jnp.float32):
  return jnp.zeros(shape, dtype)


def _shape_of(f, *args):
  """`f(*args)` traced for shapes only: trace-time errors, no compile."""
  return lambda: jax.eval_shape(f, *args)


LSTM, GRU, ELMAN, MINGRU, MINLSTM = (rnnjax.lstm(H), rnnjax.gru(H), rnnjax.elman(H),
                                     rnnjax.mingru(H), rnnjax.minlstm(H, log_space=True))
LRU, RGLRU = rnnjax.lru(H), rnnjax.rglru(H)
GRU16 = rnnjax.gru(H, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)


def _user_init(key, input_size):
  return {"w": jnp.zeros((input_size, H), jnp.bfloat16), "u": jnp.zeros((H, H), jnp.bfloat16)}


def _user_apply(params, carry, x, *, key=None):  # no casting: an f32 x gives an f32 carry
  h = jnp.tanh(x @ params["w"] + carry @ params["u"])
  return h, h


USER16 = rnnjax.Cell(_user_init, lambda p, batch_shape=(): jnp.zeros((*batch_shape, H),
                                                                     jnp.bfloat16), _user_apply)
STACK = rnnjax.stack([LSTM, GRU])
DROP_STACK = rnnjax.stack([LSTM, GRU], dropout=0.5)
BIDI = rnnjax.bidirectional(GRU, GRU)
LAYER_STACK = rnnjax.stack([BIDI, GRU])
P_LSTM, P_GRU, P_MINGRU, P_MINLSTM = (_params(c) for c in (LSTM, GRU, MINGRU, MINLSTM))
P_LRU, P_RGLRU, P_GRU16 = _params(LRU), _params(RGLRU), _params(GRU16)
P_STACK, P_BIDI, P_LAYER_STACK = _params(STACK), _params(BIDI), _params(LAYER_STACK)
C_LSTM = LSTM.initial_carry(P_LSTM, (B,))
C_GRU = GRU.initial_carry(P_GRU, (B,))
C_LRU = LRU.initial_carry(P_LRU, (B,))
C_STACK = STACK.initial_carry(P_STACK, (B,))
XS, X = _zeros((T, B, I)), _zeros((B, I))
MODEL = rnnjax.sequence_model(GRU, input_size=I, output_size=2)
TOKENS = rnnjax.sequence_model(GRU, input_size=1, output_size=2, vocab_size=V, embed_size=I)
P_MODEL = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(MODEL.init, KEY))
P_TOKENS = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(TOKENS.init, KEY))
BIDI_MODEL = rnnjax.sequence_model(BIDI, input_size=I, output_size=1)
P_BIDI_MODEL = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(BIDI_MODEL.init, KEY))
IDS = jnp.zeros((T, B), jnp.int32)
OPT = optax.sgd(0.1)
LOSS = lambda p, batch, key: jnp.sum(p["w"] * batch)
W = {"w": jnp.ones(3)}


def _unroll(cell, params, xs=XS, carry=None, **kw):
  return _shape_of(lambda p, x, c: rnnjax.unroll(cell, p, x, c, **kw), params, xs, carry)


def _apply(cell, params, carry, x=X, **kw):
  return _shape_of(lambda p, c, v: cell.apply(p, c, v, **kw), params, carry, x)


def _torch_sd(mode="GRU", wrong=None):
  g = {"LSTM": 4, "GRU": 3}.get(mode, 1)
  sd = {"weight_ih_l0": np.zeros((g * H, I), np.float32),
        "weight_hh_l0": np.zeros((g * H, H), np.float32),
        "bias_ih_l0": np.zeros(g * H, np.float32), "bias_hh_l0": np.zeros(g * H, np.float32)}
  if wrong:
    sd[wrong] = np.zeros(tuple(d + 1 for d in sd[wrong].shape), np.float32)
  return sd


def _ckpt_file():
  path = tempfile.NamedTemporaryFile(delete=False, suffix=".txt")
  path.close()
  return path.name


VE, TE = ValueError, TypeError
CASES = [
    # ---- Factories: bad hyper-parameters. ----
    ("lstm-hidden-str", lambda: rnnjax.lstm("8"),
     TE, r"rnnjax\.lstm: `hidden_size` must be an integer"),
    ("lstm-hidden-zero", lambda: rnnjax.lstm(0),
     VE, r"rnnjax\.lstm: `hidden_size` must be a positive"),
    ("lstm-proj-equal", lambda: rnnjax.lstm(H, proj_size=H),
     VE, r"rnnjax\.lstm: `proj_size` must be smaller"),
    ("lstm-proj-float", lambda: rnnjax.lstm(H, proj_size=2.5),
     TE, r"rnnjax\.lstm: `proj_size` must be an integer"),
    ("lstm-dtype-int", lambda: rnnjax.lstm(H, dtype=jnp.int32),
     TE, r"rnnjax\.lstm: `dtype` must be a floating"),
    ("lstm-use-bias-str", lambda: rnnjax.lstm(H, use_bias="no"),
     TE, r"rnnjax\.lstm: `use_bias` must be a bool"),
    ("lstm-forget-bias-str", lambda: rnnjax.lstm(H, forget_bias="1"),
     TE, r"rnnjax\.lstm: `forget_bias` must be a real number"),
    ("lstm-kernel-init-str", lambda: rnnjax.lstm(H, kernel_init="zeros"),
     TE, r"rnnjax\.lstm: `kernel_init` must be an initializer"),
    ("gru-dtype-str", lambda: rnnjax.gru(H, dtype="nope"),
     TE, r"rnnjax\.gru: `dtype` must be a floating"),
    ("gru-reset-after-none", lambda: rnnjax.gru(H, reset_after=None),
     TE, r"rnnjax\.gru: `reset_after` must be a bool"),
    ("gru-recurrent-init-int", lambda: rnnjax.gru(H, recurrent_init=1),
     TE, r"rnnjax\.gru: `recurrent_init` must be an initializer"),
    ("elman-nonlinearity", lambda: rnnjax.elman(H, nonlinearity="sigmoid"),
     VE, r"rnnjax\.elman: `nonlinearity` must be one of"),
    ("mgu-hidden-none", lambda: rnnjax.mgu(None),
     TE, r"rnnjax\.mgu: `hidden_size` must be an integer"),
    ("mgu-forget-bias-none", lambda: rnnjax.mgu(H, forget_bias=None),
     TE, r"rnnjax\.mgu: `forget_bias` must be a real number"),
    ("mingru-log-space-str", lambda: rnnjax.mingru(H, log_space="yes"),
     TE, r"rnnjax\.mingru: `log_space` must be a bool"),
    ("minlstm-hidden-negative", lambda: rnnjax.minlstm(-1),
     VE, r"rnnjax\.minlstm: `hidden_size` must be a positive"),
    ("minlstm-use-bias-int", lambda: rnnjax.minlstm(H, use_bias=1),
     TE, r"rnnjax\.minlstm: `use_bias` must be a bool"),
    ("lru-state-size-zero", lambda: rnnjax.lru(0),
     VE, r"rnnjax\.lru: `state_size` must be a positive"),
    ("lru-ring-reversed", lambda: rnnjax.lru(H, r_min=0.9, r_max=0.5), VE, r"rnnjax\.lru: .*r_min"),
    ("lru-max-phase-negative", lambda: rnnjax.lru(H, max_phase=-1.0),
     VE, r"rnnjax\.lru: `max_phase` must be positive"),
    ("lru-output-size-zero", lambda: rnnjax.lru(H, output_size=0),
     VE, r"rnnjax\.lru: `output_size` must be a positive"),
    ("lru-r-max-str", lambda: rnnjax.lru(H, r_max="1"), TE, r"rnnjax\.lru: `r_max`"),
    ("rglru-c-zero", lambda: rnnjax.rglru(H, c=0.0), VE, r"rnnjax\.rglru: `c` must be positive"),
    ("rglru-decays-reversed", lambda: rnnjax.rglru(H, a_min=0.99, a_max=0.9),
     VE, r"rnnjax\.rglru: .*a_min"),
    ("rglru-dtype-complex", lambda: rnnjax.rglru(H, dtype=jnp.complex64),
     TE, r"rnnjax\.rglru: `dtype` must be a floating"),
    # ---- init: keys and input sizes. ----
    ("lstm-init-int-seed", lambda: LSTM.init(0, I),
     TE, r"rnnjax\.lstm\.init: `key` must be a PRNG key.*jax\.random\.key\(0\)"),
    ("lstm-init-key-batch", lambda: LSTM.init(jax.random.split(KEY, 3), I),
     VE, r"rnnjax\.lstm\.init: `key` must be a single PRNG key.*\(3,\)"),
    ("lstm-init-raw-key-batch", lambda: LSTM.init(jax.random.split(RAW_KEY, 3), I),
     VE, r"rnnjax\.lstm\.init: `key` must be a single PRNG key.*\(3, 2\)"),
    ("lstm-init-none-key", lambda: LSTM.init(None, I),
     TE, r"rnnjax\.lstm\.init: `key` must be a PRNG key"),
    ("lstm-init-input-zero", lambda: LSTM.init(KEY, 0),
     VE, r"rnnjax\.lstm\.init: `input_size` must be a positive"),
    ("gru-init-input-str", lambda: GRU.init(KEY, "3"),
     TE, r"rnnjax\.gru\.init: `input_size` must be an integer"),
    ("elman-init-float-key", lambda: ELMAN.init(1.5, I),
     TE, r"rnnjax\.elman\.init: `key` must be a PRNG key"),
    ("mingru-init-int-seed", lambda: MINGRU.init(3, I), TE, r"rnnjax\.mingru\.init: `key`"),
    ("lru-init-int-seed", lambda: LRU.init(0, I), TE, r"rnnjax\.lru\.init: `key`"),
    ("rglru-init-key-batch", lambda: RGLRU.init(jax.random.split(KEY, 2), I),
     VE, r"rnnjax\.rglru\.init: `key` must be a single"),
    ("stack-init-int-seed", lambda: STACK.init(0, I),
     TE, r"rnnjax\.stack\.init: `key` must be a PRNG key"),
    ("bidirectional-init-int-seed", lambda: BIDI.init(0, I),
     TE, r"rnnjax\.bidirectional\.init: `key`"),
    ("model-init-int-seed", lambda: MODEL.init(0),
     TE, r"rnnjax\.sequence_model\.init: `key` must be a PRNG key"),
    # ---- initial_carry: params and batch shapes. ----
    ("lstm-carry-int-batch", lambda: LSTM.initial_carry(P_LSTM, 4),
     TE, r"rnnjax\.lstm\.initial_carry: `batch_shape` must be a tuple.*\(4,\)"),
    ("lstm-carry-negative-batch", lambda: LSTM.initial_carry(P_LSTM, (2, -1)),
     VE, r"rnnjax\.lstm\.initial_carry: `batch_shape` must hold sizes >= 0"),
    ("gru-carry-float-batch", lambda: GRU.initial_carry(P_GRU, (2.0,)),
     TE, r"rnnjax\.gru\.initial_carry: `batch_shape` must be a tuple of ints"),
    ("gru-carry-str-batch", lambda: GRU.initial_carry(P_GRU, "2"),
     TE, r"rnnjax\.gru\.initial_carry: `batch_shape`"),
    ("lstm-carry-gru-params", lambda: LSTM.initial_carry(P_GRU, (B,)),
     TE, r"rnnjax\.lstm\.initial_carry: `params` must be LSTMParams.*got GRUParams"),
    ("lstm-carry-dict-params", lambda: LSTM.initial_carry(P_LSTM._asdict(), (B,)),
     TE, r"rnnjax\.lstm\.initial_carry: `params` must be LSTMParams.*dict"),
    ("lru-carry-rglru-params", lambda: LRU.initial_carry(P_RGLRU),
     TE, r"rnnjax\.lru\.initial_carry: `params` must be LRUParams"),
    ("stack-carry-cell-params", lambda: STACK.initial_carry(P_LSTM, (B,)),
     TE,
     r"rnnjax\.stack\.initial_carry: `params` must be a tuple with one entry per layer "
     r"\(2 layers\)"),
    ("stack-carry-int-batch", lambda: STACK.initial_carry(P_STACK, 3),
     TE, r"rnnjax\.stack\.initial_carry: `batch_shape`"),
    ("bidirectional-carry-tuple-params", lambda: BIDI.initial_carry(tuple(P_BIDI), (B,)),
     TE, r"rnnjax\.bidirectional\.initial_carry: `params` must be BidirectionalParams"),
    ("model-carry-core-params", lambda: MODEL.initial_carry(P_GRU, (B,)),
     TE, r"rnnjax\.sequence_model\.initial_carry: `params` must be SequenceModelParams"),
    # ---- apply: one step. ----
    ("lstm-apply-gru-params", _apply(LSTM, P_GRU, C_LSTM),
     TE, r"rnnjax\.lstm\.apply: `params` must be LSTMParams.*got GRUParams"),
    ("lstm-apply-dict-params", lambda: LSTM.apply(dict(P_LSTM._asdict()), C_LSTM, X),
     TE, r"rnnjax\.lstm\.apply: `params` must be LSTMParams.*dict"),
    ("lstm-apply-gru-carry", _apply(LSTM, P_LSTM, C_GRU),
     TE, r"rnnjax\.lstm\.apply: `carry` does not match the cell's carry structure"),
    ("lstm-apply-carry-size", _apply(LSTM, P_LSTM, C_LSTM._replace(h=_zeros((B, H + 1)))),
     VE, r"rnnjax\.lstm\.apply: `carry\.h` has shape \(2, 5\), expected \[\.\.\., 4\]"),
    ("lstm-apply-x-size", _apply(LSTM, P_LSTM, C_LSTM, _zeros((B, I + 1))),
     VE, r"rnnjax\.lstm\.apply: x has feature size 4 but params were made for input_size=3"),
    ("lstm-apply-x-scalar", _apply(LSTM, P_LSTM, C_LSTM, _zeros(())),
     VE, r"rnnjax\.lstm\.apply: `x` must be an array of shape \[\.\.\., I\]"),
    ("lstm-apply-x-list", lambda: LSTM.apply(P_LSTM, C_LSTM, [0.0] * I),
     VE, r"rnnjax\.lstm\.apply: `x` must be an array"),
    ("gru16-apply-int-x", _apply(GRU16, P_GRU16, GRU16.initial_carry(P_GRU16, (B,)),
                                 _zeros((B, I), jnp.int32)),
     TE, r"rnnjax\.gru\.apply: `x` must hold floating-point values \(any float dtype; the cell "
     r"computes in bfloat16\), got dtype int32"),
    ("gru-apply-int-carry", _apply(GRU, P_GRU, C_GRU._replace(h=_zeros((B, H), jnp.int32))),
     TE, r"rnnjax\.gru\.apply: `carry\.h` has dtype int32, expected float32"),
    ("gru-apply-int-x", _apply(GRU, P_GRU, C_GRU, _zeros((B, I), jnp.int32)),
     TE, r"rnnjax\.gru\.apply: `x` must hold floating-point values \(any float dtype; the cell "
     r"computes in float32\), got dtype int32\. Integer token ids need an embedding first"),
    ("lru-apply-real-carry", _apply(LRU, P_LRU, C_LRU._replace(h=_zeros((B, H)))),
     TE, r"rnnjax\.lru\.apply: `carry\.h` has dtype float32, expected complex64"),
    ("mingru-apply-minlstm-params", _apply(MINGRU, P_MINLSTM, C_GRU),
     TE, r"rnnjax\.mingru\.apply: `params` must be MinGRUParams.*MinLSTMParams"),
    ("rglru-apply-lru-params", _apply(RGLRU, P_LRU, C_GRU),
     TE, r"rnnjax\.rglru\.apply: `params` must be RGLRUParams"),
    ("stack-apply-short-carry", _apply(STACK, P_STACK, C_STACK[:1]),
     TE, r"rnnjax\.stack\.apply: `carry` must be a tuple with one carry per layer \(2 layers\)"),
    ("stack-apply-cell-params", _apply(STACK, P_LSTM, C_STACK),
     TE, r"rnnjax\.stack\.apply: `params` must be a tuple with one entry per layer"),
    ("stack-apply-int-key", lambda: STACK.apply(P_STACK, C_STACK, X, key=0),
     TE, r"rnnjax\.stack\.apply: `key` must be a PRNG key"),
    ("stack-apply-carry-dtype",
     _apply(STACK, P_STACK, (C_STACK[0], C_GRU._replace(h=_zeros((B, H), jnp.bfloat16)))),
     TE, r"rnnjax\.stack\.apply: `carry\[1\]\.h` has dtype bfloat16, expected float32"),
    # ---- unroll. ----
    ("unroll-cell-str", _unroll("lstm", P_LSTM),
     TE, r"rnnjax\.unroll: `cell` must be an rnnjax\.Cell.*str"),
    ("unroll-cell-layer", _unroll(BIDI, P_BIDI),
     TE, r"rnnjax\.unroll: `cell` must be an rnnjax\.Cell.*Layer.*layer\.apply"),
    ("unroll-gru-params", _unroll(LSTM, P_GRU),
     TE, r"rnnjax\.lstm: `params` must be LSTMParams.*GRUParams"),
    ("unroll-dict-params", lambda: rnnjax.unroll(LSTM, dict(P_LSTM._asdict()), XS),
     TE, r"rnnjax\.lstm: `params` must be LSTMParams.*dict"),
    ("unroll-f32-xs-user-bf16-cell", _unroll(USER16, _params(USER16)),
     TE,
     r"rnnjax\.unroll: xs has dtype float32 but the cell's params are bfloat16; cast xs with "
     r"xs\.astype\(jnp\.bfloat16\)"),
    ("unroll-int-xs-bf16-cell", _unroll(GRU16, P_GRU16, _zeros((T, B, I), jnp.int32)),
     TE, r"rnnjax\.unroll: xs has dtype int32 but the cell's params are bfloat16; cast xs with "
     r"xs\.astype\(jnp\.bfloat16\)\.$"),
    ("unroll-int-xs", _unroll(GRU, P_GRU, _zeros((T, B, I), jnp.int32)),
     TE, r"rnnjax\.unroll: xs has dtype int32 but the cell's params are float32"),
    ("unroll-int-carry", _unroll(GRU, P_GRU, XS, C_GRU._replace(h=_zeros((B, H), jnp.int32))),
     TE,
     r"rnnjax\.unroll: `carry\.h` has dtype int32, expected float32 "
     r"\(the dtype of cell\.initial_carry\)"),
    ("unroll-int-key", lambda: rnnjax.unroll(GRU, P_GRU, XS, key=0),
     TE, r"rnnjax\.unroll: `key` must be a PRNG key.*jax\.random\.key\(0\)"),
    ("unroll-key-batch", lambda: rnnjax.unroll(GRU, P_GRU, XS, key=jax.random.split(KEY, 2)),
     VE, r"rnnjax\.unroll: `key` must be a single PRNG key"),
    ("unroll-dropout-stack-int-key", lambda: rnnjax.unroll(DROP_STACK, P_STACK, XS, key=7),
     TE, r"rnnjax\.unroll: `key` must be a PRNG key.*jax\.random\.key\(7\)"),
    ("unroll-xs-list", lambda: rnnjax.unroll(GRU, P_GRU, [[0.0] * I] * T),
     TE, r"rnnjax\.unroll: `xs` must be an array"),
    ("unroll-lengths-float", lambda: rnnjax.unroll(GRU, P_GRU, XS, lengths=jnp.ones(B)),
     TE, r"rnnjax\.unroll: `lengths` must have an integer dtype"),
    ("unroll-lengths-range", lambda: rnnjax.unroll(GRU, P_GRU, XS, lengths=np.array([T + 1, 0])),
     VE, r"rnnjax\.unroll: `lengths` must lie in \[0, T\]"),
    ("unroll-resets-int", lambda: rnnjax.unroll(GRU, P_GRU, XS, resets=np.zeros((T, B), int)),
     TE, r"rnnjax\.unroll: `resets` must have dtype bool"),
    ("unroll-unroll-zero", lambda: rnnjax.unroll(GRU, P_GRU, XS, unroll=0),
     VE, r"rnnjax\.unroll: `unroll` must be a positive"),
    ("unroll-remat-str", lambda: rnnjax.unroll(GRU, P_GRU, XS, remat="yes"),
     TE, r"rnnjax\.unroll: `remat` must be a bool"),
    ("unroll-stack-carry-not-tuple", _unroll(STACK, P_STACK, XS, C_LSTM),
     TE, r"rnnjax\.unroll: `carry` does not match the cell's carry structure"),
    # ---- parallel_unroll and truncated_unroll. ----
    ("parallel-lstm", lambda: rnnjax.parallel_unroll(LSTM, P_LSTM, XS),
     TE, r"rnnjax\.parallel_unroll: `cell` must be a linear cell"),
    ("parallel-engine", lambda: rnnjax.parallel_unroll(MINGRU, P_MINGRU, XS, engine="fast"),
     VE, r"rnnjax\.parallel_unroll: `engine` must be one of"),
    ("parallel-chunk-zero", lambda: rnnjax.parallel_unroll(MINGRU, P_MINGRU, XS, chunk=0),
     VE, r"rnnjax\.parallel_unroll: `chunk` must be a positive"),
    ("parallel-xs-dtype", lambda: rnnjax.parallel_unroll(MINGRU, P_MINGRU, XS.astype(jnp.int32)),
     TE, r"rnnjax\.parallel_unroll: xs has dtype int32 but the cell's params are float32"),
    ("parallel-minlstm-params", lambda: rnnjax.parallel_unroll(MINGRU, P_MINLSTM, XS),
     TE, r"rnnjax\.mingru: `params` must be MinGRUParams"),
    ("parallel-log-space-negative-carry",
     lambda: rnnjax.parallel_unroll(MINLSTM, P_MINLSTM, XS, rnnjax.HiddenState(-jnp.ones((B, H))),
                                    engine="parallel"),
     VE, r"rnnjax\.parallel_unroll: a log-space cell needs a carry h >= 0"),
    ("truncated-chunk-zero", lambda: rnnjax.truncated_unroll(GRU, P_GRU, XS, chunk=0),
     VE, r"rnnjax\.truncated_unroll: `chunk` must be a positive"),
    ("truncated-chunk-float", lambda: rnnjax.truncated_unroll(GRU, P_GRU, XS, chunk=2.5),
     TE, r"rnnjax\.truncated_unroll: `chunk` must be an integer"),
    ("truncated-int-key", lambda: rnnjax.truncated_unroll(GRU, P_GRU, XS, chunk=2, key=0),
     TE, r"rnnjax\.truncated_unroll: `key` must be a PRNG key"),
    ("truncated-gru-params", lambda: rnnjax.truncated_unroll(LSTM, P_GRU, XS, chunk=2),
     TE, r"rnnjax\.lstm: `params` must be LSTMParams"),
    # ---- stack, bidirectional, rnn. ----
    ("stack-empty", lambda: rnnjax.stack([]),
     VE, r"rnnjax\.stack: `layers` must hold at least one"),
    ("stack-str-layer", lambda: rnnjax.stack([LSTM, "gru"]),
     TE, r"rnnjax\.stack: `layers\[1\]` must be an rnnjax\.Cell"),
    ("stack-dropout-one", lambda: rnnjax.stack([LSTM, GRU], dropout=1.0),
     VE, r"rnnjax\.stack: `dropout` must be in \[0, 1\)"),
    ("stack-layers-not-iterable", lambda: rnnjax.stack(LSTM.init),
     TE, r"rnnjax\.stack: `layers` must be a sequence"),
    ("bidirectional-str", lambda: rnnjax.bidirectional(LSTM, "gru"),
     TE, r"rnnjax\.bidirectional: `backward` must be an rnnjax\.Cell"),
    ("bidirectional-merge", lambda: rnnjax.bidirectional(GRU, GRU, merge="max"),
     VE, r"rnnjax\.bidirectional: `merge` must be one of"),
    ("bidirectional-sum-sizes",
     _shape_of(lambda k: rnnjax.bidirectional(GRU, rnnjax.gru(H + 1), merge="sum").init(k, I), KEY),
     VE, r"rnnjax\.bidirectional: merge='sum' needs equal output sizes"),
    ("bidirectional-apply-tuple-params", lambda: BIDI.apply(tuple(P_BIDI), XS),
     TE, r"rnnjax\.bidirectional\.apply: `params` must be BidirectionalParams"),
    ("bidirectional-apply-carry", lambda: BIDI.apply(P_BIDI, XS, C_GRU),
     TE, r"rnnjax\.bidirectional\.apply: `carry` must be a BidirectionalState"),
    ("bidirectional-apply-int-key", lambda: BIDI.apply(P_BIDI, XS, key=3),
     TE, r"rnnjax\.bidirectional\.apply: `key` must be a PRNG key"),
    ("rnn-str", lambda: rnnjax.rnn("lstm"), TE, r"rnnjax\.rnn: `cell` must be an rnnjax\.Cell"),
    ("rnn-apply-int-key", lambda: rnnjax.rnn(GRU).apply(P_GRU, XS, key=1),
     TE, r"rnnjax\.unroll: `key` must be a PRNG key"),
    ("layer-stack-apply-params", lambda: LAYER_STACK.apply(P_BIDI, XS),
     TE, r"rnnjax\.stack\.apply: `params` must be a tuple with one entry per layer"),
    ("layer-stack-apply-carry", lambda: LAYER_STACK.apply(P_LAYER_STACK, XS, C_GRU),
     TE, r"rnnjax\.stack\.apply: `carry` must be a tuple with one carry per layer"),
    # ---- sequence_model. ----
    ("model-core-str", lambda: rnnjax.sequence_model("gru", input_size=I, output_size=1),
     TE, r"rnnjax\.sequence_model: `core` must be an rnnjax Cell or Layer"),
    ("model-output-zero", lambda: rnnjax.sequence_model(GRU, input_size=I, output_size=0),
     VE, r"rnnjax\.sequence_model: `output_size` must be a positive"),
    ("model-vocab-zero",
     lambda: rnnjax.sequence_model(GRU, input_size=I, output_size=1, vocab_size=0),
     VE, r"rnnjax\.sequence_model: `vocab_size` must be a positive"),
    ("model-embed-zero",
     lambda: rnnjax.sequence_model(GRU, input_size=1, output_size=1, vocab_size=V, embed_size=0),
     VE, r"rnnjax\.sequence_model: `embed_size` must be a positive"),
    ("model-engine", lambda: rnnjax.sequence_model(GRU, input_size=I, output_size=1, engine="fast"),
     VE, r"rnnjax\.sequence_model: `engine` must be one of"),
    ("model-parallel-lstm",
     lambda: rnnjax.sequence_model(LSTM, input_size=I, output_size=1, engine="parallel"),
     TE, r"rnnjax\.sequence_model: `core` must be a linear cell .* for engine='parallel'"),
    ("model-float-ids", lambda: TOKENS.apply(P_TOKENS, jnp.zeros((T, B))),
     TE, r"rnnjax\.sequence_model\.apply: `xs` must hold integer token ids"),
    ("model-id-too-large", lambda: TOKENS.apply(P_TOKENS, IDS.at[1, 1].set(V)),
     VE,
     r"rnnjax\.sequence_model\.apply: token ids in `xs` must lie in \[0, vocab_size\) = \[0, 7\), "
     r"got 7 at xs\[1, 1\]"),
    ("model-id-negative", lambda: TOKENS.apply(P_TOKENS, IDS.at[4, 0].set(-1)),
     VE, r"rnnjax\.sequence_model\.apply: token ids in `xs` must lie in .*got -1 at xs\[4, 0\]"),
    ("model-ids-lengths-shape",
     lambda: TOKENS.apply(P_TOKENS, IDS, lengths=jnp.ones(B + 1, jnp.int32)),
     VE, r"rnnjax\.sequence_model\.apply: `lengths` must have the batch shape"),
    ("model-int-features", lambda: MODEL.apply(P_MODEL, jnp.zeros((T, B, I), jnp.int32)),
     TE, r"rnnjax\.sequence_model\.apply: `xs` holds integers.*no vocabulary"),
    ("model-params-type", lambda: MODEL.apply(P_GRU, XS),
     TE, r"rnnjax\.sequence_model\.apply: `params` must be SequenceModelParams"),
    ("model-tbptt-layer",
     lambda: BIDI_MODEL.apply(P_BIDI_MODEL, XS, tbptt=2),
     VE, r"rnnjax\.sequence_model\.apply: `tbptt` needs a Cell core"),
    ("model-int-key", lambda: MODEL.apply(P_MODEL, XS, key=0),
     TE, r"rnnjax\.unroll: `key` must be a PRNG key"),
    # ---- Training. ----
    ("train-state-int-key", lambda: rnnjax.train_state(W, OPT, 0),
     TE, r"rnnjax\.train_state: `key` must be a PRNG key"),
    ("train-state-key-batch", lambda: rnnjax.train_state(W, OPT, jax.random.split(KEY, 2)),
     VE, r"rnnjax\.train_state: `key` must be a single PRNG key"),
    ("train-state-optimizer-str", lambda: rnnjax.train_state(W, "adam", KEY),
     TE, r"rnnjax\.train_state: `optimizer` must be an optax"),
    ("train-step-spc-zero", lambda: rnnjax.make_train_step(LOSS, OPT, steps_per_call=0),
     VE, r"rnnjax\.make_train_step: `steps_per_call` must be a positive"),
    ("train-step-loss-str", lambda: rnnjax.make_train_step("mse", OPT),
     TE, r"rnnjax\.make_train_step: `loss_fn` must be callable"),
    ("train-step-optimizer-str", lambda: rnnjax.make_train_step(LOSS, "sgd"),
     TE, r"rnnjax\.make_train_step: `optimizer` must be an optax"),
    ("fit-num-steps-zero", lambda: rnnjax.fit(None, None, None, num_steps=0),
     VE, r"rnnjax\.fit: `num_steps` must be a positive"),
    ("fit-log-every-float", lambda: rnnjax.fit(None, None, None, num_steps=2, log_every=0.5),
     TE, r"rnnjax\.fit: `log_every` must be an integer"),
    ("fit-mesh-str", lambda: rnnjax.fit(None, None, None, num_steps=2, mesh="cpu"),
     TE, r"rnnjax\.fit: `mesh` must be a jax\.sharding\.Mesh"),
    ("checkpointer-keep-zero", lambda: rnnjax.Checkpointer(tempfile.mkdtemp(), keep=0),
     VE, r"rnnjax\.Checkpointer: `keep` must be >= 1"),
    ("checkpointer-keep-str", lambda: rnnjax.Checkpointer(tempfile.mkdtemp(), keep="3"),
     TE, r"rnnjax\.Checkpointer: `keep` must be an int"),
    ("checkpointer-file", lambda: rnnjax.Checkpointer(_ckpt_file()),
     VE, r"rnnjax\.Checkpointer: the checkpoint directory .* cannot be used as a directory"),
    # ---- interop.flax. ----
    ("flax-module-str", lambda: rflax.RNN("lstm").init(KEY, XS),
     TE, r"rnnjax\.interop\.flax\.RNN: `module` must be an rnnjax\.Cell or rnnjax\.Layer"),
    ("flax-inputs-rank", lambda: rflax.RNN(GRU).init(KEY, jnp.zeros(I)),
     VE, r"rnnjax\.interop\.flax\.RNN: `inputs` must have rank >= 2"),
    ("flax-inputs-list", lambda: rflax.RNN(GRU).init(KEY, [[0.0] * I] * T),
     VE, r"rnnjax\.interop\.flax\.RNN: `inputs` must be an array"),
    ("flax-nnx-rngs-int", lambda: rflax.NNXRNN(GRU, I, rngs=0),
     TE, r"rnnjax\.interop\.flax\.NNXRNN: `rngs` must be an nnx\.Rngs"),
    ("flax-initial-carry-unbound", lambda: rflax.RNN(GRU).initial_carry((B,)),
     VE, r"rnnjax\.interop\.flax\.RNN\.initial_carry: no params"),
    ("flax-carry-int-batch",
     lambda: rflax.RNN(GRU).apply({"params": {"cell": P_GRU}}, 4, method="initial_carry"),
     TE, r"rnnjax\.interop\.flax\.RNN\.initial_carry: `batch_shape` must be a tuple"),
    # ---- interop.pytorch. ----
    ("torch-not-a-mapping", lambda: pytorch.from_torch([1], mode="GRU"),
     TE, r"rnnjax\.interop\.pytorch\.from_torch: `state_dict` must be a mapping"),
    ("torch-mode", lambda: pytorch.from_torch(_torch_sd(), mode="rnn"),
     VE, r"rnnjax\.interop\.pytorch\.from_torch: `mode` must be one of"),
    ("torch-weight-hh-shape",
     lambda: pytorch.from_torch(_torch_sd(wrong="weight_hh_l0"), mode="GRU"),
     VE, r"from_torch: `weight_hh_l0` has shape \(13, 5\), expected \(12, 4\)"),
    ("torch-bias-shape",
     lambda: pytorch.from_torch(_torch_sd("LSTM", wrong="bias_hh_l0"), mode="LSTM"),
     VE, r"from_torch: `bias_hh_l0` has shape \(17,\), expected \(16,\)"),
    ("torch-dtype-str", lambda: pytorch.from_torch(_torch_sd(), mode="GRU", dtype="nope"),
     TE, r"rnnjax\.interop\.pytorch\.from_torch: `dtype` must be a floating dtype"),
    ("torch-prefix-int", lambda: pytorch.from_torch(_torch_sd(), mode="GRU", prefix=1),
     TE, r"rnnjax\.interop\.pytorch\.from_torch: `prefix` must be a str"),
    ("torch-to-dict", lambda: pytorch.to_torch({"w": 1}),
     TE, r"rnnjax\.interop\.pytorch\.to_torch: `params` must be params from `from_torch`"),
    ("torch-carry-shape", lambda: pytorch.carry_from_torch(P_GRU, np.zeros((2, B, H), np.float32)),
     VE, r"rnnjax\.interop\.pytorch\.carry_from_torch: `h_0` must have shape"),
    ("torch-apply-cell",
     lambda: pytorch.apply_like_torch(GRU, P_GRU, np.zeros((T, B, I), np.float32)),
     TE, r"rnnjax\.interop\.pytorch\.apply_like_torch: `layer` must be the rnnjax\.Layer"),
    # ---- diagnostics. ----
    ("diag-engine",
     lambda: rnnjax.diagnostics.gradient_norms(GRU, P_GRU, XS, jnp.sum, engine="fast"),
     VE, r"rnnjax\.diagnostics\.gradient_norms: `engine` must be"),
    ("diag-parallel-lstm",
     lambda: rnnjax.diagnostics.gradient_norms(LSTM, P_LSTM, XS, jnp.sum, engine="parallel"),
     TE, r"rnnjax\.diagnostics\.gradient_norms: the parallel engines need a linear"),
    ("diag-loss-str", lambda: rnnjax.diagnostics.gradient_norms(GRU, P_GRU, XS, "mse"),
     TE, r"rnnjax\.diagnostics\.gradient_norms: `loss_fn` must be callable"),
    ("diag-gru-params", lambda: rnnjax.diagnostics.gradient_norms(LSTM, P_GRU, XS, jnp.sum),
     TE, r"rnnjax\.lstm: `params` must be LSTMParams"),
    ("diag-spectrum-rank", lambda: rnnjax.diagnostics.jacobian_spectrum(GRU, P_GRU, jnp.zeros(I)),
     VE, r"rnnjax\.diagnostics\.jacobian_spectrum: `xs` must have rank >= 2"),
    ("diag-spectrum-dict-params",
     lambda: rnnjax.diagnostics.jacobian_spectrum(GRU, P_GRU._asdict(), XS),
     TE, r"rnnjax\.gru: `params` must be GRUParams"),
    ("diag-record-primitives-str",
     lambda: rnnjax.diagnostics.record(GRU, P_GRU, XS, primitives="tanh"),
     TE, r"rnnjax\.diagnostics\.record: `primitives` must be a sequence of primitive names"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error(call, error, pattern):
  with pytest.raises(Exception) as info:  # The type is checked below, with the message.
    call()
  message = str(info.value)
  assert type(info.value) is error or (error is VE and isinstance(info.value, ValueError)), (
      f"expected {error.__name__}, got {type(info.value).__name__}: {message}")
  assert message.startswith("rnnjax."), f"not one of rnnjax's messages: {message}"
  assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def test_the_sweep_is_large_and_ids_are_unique():
  assert len(CASES) >= 100
  assert len({c[0] for c in CASES}) == len(CASES)


# ---- Legal inputs that look odd: each gives the documented result. ----

def test_a_raw_uint32_key_is_a_key():
  # `jax.random.PRNGKey(s)` (raw key data) and `jax.random.key(s)` hold the same bits.
  typed = jax.eval_shape(lambda k: LSTM.init(k, I), jax.random.key(0))
  raw = jax.eval_shape(lambda k: LSTM.init(k, I), jax.random.PRNGKey(0))
  assert jax.tree_util.tree_structure(typed) == jax.tree_util.tree_structure(raw)
  w_typed = rnnjax.elman(H).init(jax.random.key(3), I).w_i
  w_raw = rnnjax.elman(H).init(jax.random.PRNGKey(3), I).w_i
  np.testing.assert_array_equal(w_typed, w_raw)


@pytest.mark.parametrize("batch_shape, want", [((np.int64(2), 3), (2, 3, H)), ([2], (2, H)),
                                               ((), (H,)), ((0,), (0, H))])
def test_batch_shapes_of_numpy_ints_lists_and_empty(batch_shape, want):
  assert GRU.initial_carry(P_GRU, batch_shape).h.shape == want
  assert STACK.initial_carry(P_STACK, batch_shape)[0].c.shape == want


def test_numpy_float64_inputs_follow_jax_without_x64():
  # Without x64, JAX reads float64 NumPy data as float32: a float32 cell accepts it.
  params = _params(ELMAN)
  ys, _ = rnnjax.unroll(ELMAN, params, np.zeros((T, B, I), np.float64))
  assert ys.shape == (T, B, H) and ys.dtype == jnp.float32
  want = np.tanh(np.asarray(params.b_i, np.float64) + np.asarray(params.b_h, np.float64))
  np.testing.assert_allclose(ys[0, 0], want, rtol=1e-6)  # Zero inputs and carry: tanh(b).
