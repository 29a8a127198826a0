"""Cells and layers with an identity: built-in ones print as their factory call and compare
and hash by it (`rnnjax._src.cell.factory`); user-written `Cell`s compare by their functions.

The references are literal: the expected repr strings, the equalities a user would expect
from the calls, and a Python-side trace counter for `jax.jit`'s cache.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax._src import engines, linear

ZEROS = jax.nn.initializers.zeros

# factory -> (its positional argument, {option: a value other than its default, expected repr})
OPTIONS = {
    "elman": (4, {"heads": (2, "2"), "nonlinearity": ("relu", "'relu'"),
                  "use_bias": (False, "False"),
                  "kernel_init": (ZEROS, repr(ZEROS)), "recurrent_init": (ZEROS, repr(ZEROS)),
                  "init": ("pytorch", "'pytorch'"), "dtype": (jnp.bfloat16, "'bfloat16'"),
                "param_dtype": (jnp.float16, "'float16'")}),
    "lstm": (4, {"heads": (2, "2"), "proj_size": (2, "2"), "use_bias": (False, "False"),
                 "forget_bias": (0.5, "0.5"), "kernel_init": (ZEROS, repr(ZEROS)),
                 "recurrent_init": (ZEROS, repr(ZEROS)), "init": ("pytorch", "'pytorch'"),
                 "dtype": ("bfloat16", "'bfloat16'"),
                "param_dtype": (jnp.float16, "'float16'")}),
    "gru": (4, {"heads": (2, "2"), "reset_after": (False, "False"),
                "use_bias": (False, "False"),
                "kernel_init": (ZEROS, repr(ZEROS)), "recurrent_init": (ZEROS, repr(ZEROS)),
                "init": ("pytorch", "'pytorch'"), "dtype": (jnp.bfloat16, "'bfloat16'"),
                "param_dtype": (jnp.float16, "'float16'")}),
    "mgu": (4, {"reset_after": (False, "False"), "use_bias": (False, "False"),
                "forget_bias": (0.0, "0.0"), "kernel_init": (ZEROS, repr(ZEROS)),
                "recurrent_init": (ZEROS, repr(ZEROS)), "init": ("pytorch", "'pytorch'"),
                "dtype": (jnp.bfloat16, "'bfloat16'"),
                "param_dtype": (jnp.float16, "'float16'")}),
    "mingru": (4, {"log_space": (True, "True"), "use_bias": (False, "False"),
                   "kernel_init": (ZEROS, repr(ZEROS)), "dtype": (jnp.bfloat16, "'bfloat16'"),
                "param_dtype": (jnp.float16, "'float16'")}),
    "minlstm": (4, {"log_space": (True, "True"), "use_bias": (False, "False"),
                    "kernel_init": (ZEROS, repr(ZEROS)), "dtype": (jnp.bfloat16, "'bfloat16'"),
                "param_dtype": (jnp.float16, "'float16'")}),
    "lru": (4, {"output_size": (3, "3"), "r_min": (0.5, "0.5"), "r_max": (0.9, "0.9"),
                "max_phase": (1.0, "1.0"), "dtype": (jnp.bfloat16, "'bfloat16'"),
                "param_dtype": (jnp.float16, "'float16'")}),
    "rglru": (4, {"c": (4.0, "4.0"), "a_min": (0.5, "0.5"), "a_max": (0.99, "0.99"),
                  "dtype": (jnp.bfloat16, "'bfloat16'"),
                "param_dtype": (jnp.float16, "'float16'")}),
}
FIRST = {"lru": "state_size"}  # the name of the positional argument, hidden_size elsewhere
CASES = [(name, option) for name, (_, opts) in OPTIONS.items() for option in opts]


def _first(name):
  return FIRST.get(name, "hidden_size")


def test_the_table_covers_every_option_of_every_factory():
  for name, (_, opts) in OPTIONS.items():
    keywords = [p for p in inspect.signature(getattr(rnnjax, name)).parameters][1:]
    assert sorted(keywords) == sorted(opts), name


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_default_cell_prints_as_its_call_and_equals_an_equal_call(name):
  factory, size = getattr(rnnjax, name), OPTIONS[name][0]
  cell = factory(size)
  assert repr(cell) == str(cell) == f"{name}({_first(name)}={size})"
  same = [factory(size), factory(**{_first(name): size}), factory(np.int64(size)),
          factory(size, dtype="float32"), factory(size, dtype=jnp.float32),
          factory(size, dtype=np.dtype("float32"))]
  for other in same:
    assert cell == other and not cell != other
    assert hash(cell) == hash(other)
  assert factory(size) != factory(size + 1)
  for other in OPTIONS:
    assert (getattr(rnnjax, other)(size) == cell) is (other == name)
  assert len({cell, *same}) == 1
  assert isinstance(cell, rnnjax.Cell) and type(cell) is rnnjax.Cell


@pytest.mark.parametrize("name, option", CASES)
def test_each_option_shows_in_the_repr_and_changes_the_identity(name, option):
  factory, size = getattr(rnnjax, name), OPTIONS[name][0]
  value, shown = OPTIONS[name][1][option]
  cell = factory(size, **{option: value})
  assert repr(cell) == f"{name}({_first(name)}={size}, {option}={shown})"
  assert cell == factory(size, **{option: value})
  assert hash(cell) == hash(factory(size, **{option: value}))
  assert cell != factory(size)


def test_numbers_compare_by_value_and_initializers_by_identity():
  assert rnnjax.lstm(4, forget_bias=1) == rnnjax.lstm(4)
  assert rnnjax.lstm(4, use_bias=np.bool_(True)) == rnnjax.lstm(4)
  assert rnnjax.rglru(4, c=np.float32(8.0)) == rnnjax.rglru(4)
  orthogonal = jax.nn.initializers.orthogonal()
  assert rnnjax.gru(4, recurrent_init=orthogonal) == rnnjax.gru(4, recurrent_init=orthogonal)
  # Two closures that draw alike are still two initializers.
  assert rnnjax.gru(4, recurrent_init=jax.nn.initializers.orthogonal()) != rnnjax.gru(
      4, recurrent_init=jax.nn.initializers.orthogonal())
  assert rnnjax.gru(4, recurrent_init=orthogonal) != rnnjax.gru(4)


class _Unhashable:
  """An initializer object that defines `__eq__` and so has no hash."""

  def __eq__(self, other):
    return isinstance(other, _Unhashable)

  def __call__(self, key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


def test_an_unhashable_initializer_works_and_compares_by_identity():
  init = _Unhashable()
  cell = rnnjax.elman(3, kernel_init=init)
  assert cell == rnnjax.elman(3, kernel_init=init)
  assert hash(cell) == hash(rnnjax.elman(3, kernel_init=init))
  assert cell != rnnjax.elman(3, kernel_init=_Unhashable())
  params = rnnjax.elman(3, kernel_init=init, recurrent_init=ZEROS).init(jax.random.key(0), 2)
  np.testing.assert_array_equal(params.w_i, np.zeros((2, 3)))


def test_layers_and_stacks_print_as_their_calls_and_compare_by_them():
  lstm, gru = rnnjax.lstm, rnnjax.gru
  cells = rnnjax.stack([lstm(4), gru(3)], dropout=0.1)
  assert repr(cells) == "stack(layers=(lstm(hidden_size=4), gru(hidden_size=3)), dropout=0.1)"
  assert cells == rnnjax.stack((lstm(4), gru(3)), dropout=0.1)
  assert hash(cells) == hash(rnnjax.stack([lstm(4), gru(3)], dropout=0.1))
  assert cells != rnnjax.stack([lstm(4), gru(3)])
  assert cells != rnnjax.stack([lstm(4), gru(4)], dropout=0.1)
  assert repr(rnnjax.stack([lstm(4)])) == "stack(layers=(lstm(hidden_size=4),))"
  bi = rnnjax.bidirectional(gru(3), gru(3), merge="sum")
  assert repr(bi) == ("bidirectional(forward=gru(hidden_size=3), backward=gru(hidden_size=3), "
                      "merge='sum')")
  assert bi == rnnjax.bidirectional(gru(3), gru(3), merge="sum")
  assert bi != rnnjax.bidirectional(gru(3), gru(3))
  layers = rnnjax.stack([lstm(4), rnnjax.bidirectional(gru(3), gru(3))])
  assert type(layers) is rnnjax.Layer
  assert repr(layers) == ("stack(layers=(lstm(hidden_size=4), bidirectional(forward=gru("
                          "hidden_size=3), backward=gru(hidden_size=3))))")
  assert layers == rnnjax.stack([lstm(4), rnnjax.bidirectional(gru(3), gru(3))])
  layer = rnnjax.rnn(lstm(4), reverse=True, unroll=2)
  assert repr(layer) == "rnn(cell=lstm(hidden_size=4), reverse=True, unroll=2)"
  assert layer == rnnjax.rnn(lstm(4), reverse=True, unroll=2)
  assert hash(layer) == hash(rnnjax.rnn(lstm(4), reverse=True, unroll=2))
  assert layer != rnnjax.rnn(lstm(4), reverse=True)
  # A cell and a layer never compare equal, even when built from the same pieces.
  assert rnnjax.stack([lstm(4)]) != rnnjax.rnn(lstm(4))


X = jnp.ones((2, 2, 3))  # [T, B, I]


def _one_step(cell, params, xs):
  """One step of `cell` on `xs[0]` (a cheap program to compile)."""
  return cell.apply(params, cell.initial_carry(params, xs.shape[1:-1]), xs[0])[1].sum()


@functools.cache
def _params(module):
  return module.init(jax.random.key(0), X.shape[-1])


def _counting():
  """A jitted `(module, xs) -> ys.sum()`, the module static, and its list of traces."""
  traces = []

  @functools.partial(jax.jit, static_argnums=0)
  def run(module, params, xs):
    traces.append(module)
    if isinstance(module, rnnjax.Layer):
      return module.apply(params, xs)[0].sum()
    return _one_step(module, params, xs)

  return lambda module, xs: run(module, _params(module), xs), traces


@pytest.mark.parametrize("build", [
    lambda: rnnjax.lstm(4), lambda: rnnjax.stack([rnnjax.gru(4), rnnjax.lru(3)]),
    lambda: rnnjax.bidirectional(rnnjax.elman(2), rnnjax.elman(2))],
    ids=["lstm", "stack", "bidirectional"])
def test_a_fresh_equal_cell_as_a_static_argument_does_not_retrace(build):
  run, traces = _counting()
  first = run(build(), X)
  for _ in range(2):
    np.testing.assert_array_equal(run(build(), X), first)
  assert len(traces) == 1


def test_a_different_cell_retraces_and_a_user_cell_keeps_identity_semantics():
  run, traces = _counting()
  run(rnnjax.lstm(4), X)
  run(rnnjax.lstm(5), X)
  assert len(traces) == 2
  base = rnnjax.gru(4)
  user = rnnjax.Cell(base.init, base.initial_carry, base.apply, base.input_size)
  run(user, X)
  run(rnnjax.Cell(*user), X)  # the same functions: equal as tuples, as before
  assert len(traces) == 3
  run(rnnjax.Cell(base.init, base.initial_carry, lambda *a, **k: base.apply(*a, **k)), X)
  assert len(traces) == 4


def test_a_built_cell_is_a_pytree_without_leaves_and_jit_takes_it_as_an_argument():
  traces = []

  @jax.jit
  def run(cell, params, xs):
    traces.append(cell)
    return _one_step(cell, params, xs)

  for _ in range(3):
    run(rnnjax.gru(4), _params(rnnjax.gru(4)), X)
  assert len(traces) == 1
  for module in (rnnjax.lstm(4), rnnjax.lru(4), rnnjax.stack([rnnjax.lstm(4)]),
                 rnnjax.rnn(rnnjax.gru(3)), rnnjax.bidirectional(rnnjax.gru(3), rnnjax.gru(3))):
    leaves = jax.tree_util.tree_leaves(module)
    assert leaves == [] and not any(isinstance(v, jax.Array) for v in leaves)
    assert jax.tree_util.tree_map(lambda v: v, module) is module


def test_user_written_cells_work_as_before():
  base = rnnjax.elman(3)

  def init(key, input_size):
    return base.init(key, input_size)

  user = rnnjax.Cell(init, base.initial_carry, base.apply)
  assert repr(user).startswith("Cell(init=<function ")
  assert user == rnnjax.Cell(init, base.initial_carry, base.apply)
  assert user == (init, base.initial_carry, base.apply, None, None)
  assert hash(user) == hash((init, base.initial_carry, base.apply, None, None))
  assert user != rnnjax.Cell(base.init, base.initial_carry, base.apply)
  assert jax.tree_util.tree_leaves(user) == [init, base.initial_carry, base.apply]
  assert jax.tree_util.tree_map(lambda v: v, user) == user
  init_, _, _, input_size, paths = user
  assert (init_, input_size, paths) == (init, None, None)
  # A built cell whose functions are replaced is no longer its factory's call.
  replaced = base._replace(apply=base.apply)
  assert replaced != base and repr(replaced).startswith("Cell(init=")
  assert replaced == rnnjax.Cell(*base)
  layer = rnnjax.rnn(user)
  assert layer == rnnjax.rnn(user) and layer != rnnjax.rnn(rnnjax.Cell(*user[:3], len))
  assert repr(layer).startswith("rnn(cell=Cell(init=<function ")


def test_equal_cells_carry_the_same_fast_paths():
  for build in (lambda: rnnjax.lstm(4), lambda: rnnjax.gru(4, reset_after=False),
                lambda: rnnjax.stack([rnnjax.lstm(4), rnnjax.lstm(3)])):
    a, b = build(), build()
    assert a == b and engines.sequence_kernel(a) is not None
    assert engines.sequence_kernel(b) is not None
  assert engines.sequence_kernel(rnnjax.lstm(4)) is engines.sequence_kernel(rnnjax.lstm(4))
  for build in (lambda: rnnjax.lru(4), lambda: rnnjax.rglru(4),
                lambda: rnnjax.mingru(4, log_space=True), lambda: rnnjax.minlstm(4)):
    a, b = build(), build()
    assert a == b and rnnjax.is_linear(a) and rnnjax.is_linear(b)
    assert type(linear.recurrence_of(a)) is type(linear.recurrence_of(b))
  stacked = rnnjax.stack([rnnjax.lru(4), rnnjax.lru(3)])
  assert engines.linear_layers(stacked) == (rnnjax.lru(4), rnnjax.lru(3))
