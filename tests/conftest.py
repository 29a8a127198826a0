"""Test configuration: strict dtype promotion (as equinox does) and shared fixtures."""

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_dtype_promotion", "strict")

# Property tests reuse jitted functions of fixed shape; examples differ in values only.
settings.register_profile(
    "rnnjax", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("rnnjax")


@pytest.fixture
def rng():
  return np.random.default_rng(0)
