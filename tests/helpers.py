"""Small helpers several test modules share: random params in a cell's layout, and the
relative error between two pytrees. (The independent references are in reference.py.)"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def random_params(cell: Any, rng: np.random.Generator, input_size: int,
                  scale: float = 0.5) -> Any:
  """Params of `cell.init`'s structure, shapes and dtypes, drawn `N(0, scale²)` (biases too,
  so that their layout shows)."""
  shapes = jax.eval_shape(lambda key: cell.init(key, input_size), jax.random.key(0))
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(scale=scale, size=s.shape), s.dtype), shapes)


def max_rel(ref: Any, got: Any) -> float:
  """The largest `|ref - got| / max|ref|` over the leaves (each leaf on its own scale)."""
  errs = []
  for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got), strict=True):
    # In float64 (complex128 for complex leaves: their imaginary parts count too).
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
    a, b = np.asarray(a, wide), np.asarray(b, wide)
    assert a.shape == b.shape, (a.shape, b.shape)
    errs.append(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)))
  return max(errs)
