"""ELK's damped step (`newton_linear.kalman_scan`, a parallel Kalman filter) against a
sequential Kalman filter written out in NumPy float64.

The model: `h_t = a_t h_{t-1} + b_t + q_t` with `q_t ~ N(0, I)` and `a_0 = 0` (the first
step's prior is `N(b_0, I)`), observed as `guess_t = h_t + r_t` with `r_t ~ N(0, I / damping)`;
the step is the filtered means.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax._src import newton_linear as lin

T, S = 7, 3


def _filter(a, b, guess, damping):
  """The textbook Kalman filter: predict, then update with each observation."""
  mean, cov, out = np.zeros(S), np.zeros((S, S)), []
  for t in range(T):
    mean, cov = a[t] @ mean + b[t], a[t] @ cov @ a[t].T + np.eye(S)
    gain = cov @ np.linalg.inv(cov + np.eye(S) / damping)
    mean, cov = mean + gain @ (guess[t] - mean), (np.eye(S) - gain) @ cov
    out.append(mean)
  return np.stack(out)


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("damping", [0.05, 1.0, 20.0])
def test_the_damped_step_is_the_kalman_filters_means(full, damping):
  rng = np.random.default_rng(int(damping * 100) + full)
  if full:
    a = 0.6 * rng.normal(size=(T, S, S)) / np.sqrt(S)
  else:
    a = np.stack([np.diag(d) for d in rng.uniform(-0.9, 0.9, size=(T, S))])
  a[0] = 0.0
  b, guess = rng.normal(size=(T, S)), rng.normal(size=(T, S))
  want = _filter(a, b, guess, damping)
  a_arg = a if full else np.stack([np.diag(m) for m in a])
  got = lin.kalman_scan(jnp.asarray(a_arg, jnp.float32), jnp.asarray(b, jnp.float32),
                        jnp.asarray(guess, jnp.float32), damping, full)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # No damping is the undamped linear recurrence (DEER's step), in the limit.
  undamped = lin.deer_scan(jnp.asarray(a_arg, jnp.float32), jnp.asarray(b, jnp.float32), full)
  np.testing.assert_allclose(
      lin.kalman_scan(jnp.asarray(a_arg, jnp.float32), jnp.asarray(b, jnp.float32),
                      jnp.asarray(guess, jnp.float32), 1e-7, full), undamped, atol=1e-4)
