"""Test configuration: strict dtype promotion (as equinox does), quick compiles, fixtures.

The tests run tiny shapes, so XLA's compile time is most of their cost. Unless
`RNNJAX_TEST_XLA_DEFAULTS=1` is set, this file

- turns off most of XLA's optimisations in this process (`jax_disable_most_optimizations`:
  no LLVM optimisation of the generated code), which cuts compile times by about 3x;
  programs that run for long (the examples and CLI runs) are subprocesses and keep them;
- asks XLA's CPU backend for its classic loop emitters (`XLA_FLAGS`, inherited by the
  subprocesses), quicker to compile and at least as fast to run at these sizes;
- turns on JAX's persistent compilation cache in a directory for this run (shared by
  pytest-xdist workers and by subprocesses, removed at the end), so that a program
  compiled in several processes compiles once. Set `JAX_COMPILATION_CACHE_DIR` to
  keep one across runs.

Results stay IEEE float arithmetic; only rounding in the last bit may differ from a
default build (operations fused differently), so tests compare with tolerances or
within one configuration, never against bits stored from another.

Hypothesis: the `rnnjax` profile (25 examples, no deadline); with the environment
variable `CI` set, the `ci` profile: the same, derandomized (every CI run draws the
same examples) and without an example database.
"""

import atexit
import os
import shutil
import tempfile

_QUICK = not os.environ.get("RNNJAX_TEST_XLA_DEFAULTS")
_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)
if _QUICK:
  _flags = os.environ.get("XLA_FLAGS", "").split()
  _names = {f.split("=")[0] for f in _flags}
  os.environ["XLA_FLAGS"] = " ".join(
      _flags + [f for f in _XLA_FLAGS if f.split("=")[0] not in _names])
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # One directory per run, removed at its end; xdist workers and subprocesses inherit it.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rnnjax-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  # Cache every program, however quick its compile (the default skips those under 1 s).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after the environment above)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
if _QUICK:
  jax.config.update("jax_disable_most_optimizations", True)

# Property tests reuse jitted functions of fixed shape; examples differ in values only.
_PROFILE = dict(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("rnnjax", **_PROFILE)
settings.register_profile("ci", derandomize=True, database=None, **_PROFILE)
settings.load_profile("ci" if os.environ.get("CI") else "rnnjax")


@pytest.fixture
def rng():
  return np.random.default_rng(0)
