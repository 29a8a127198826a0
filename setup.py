"""Builds the optional C++ CPU kernels (`rnnjax/_src/cpu_kernels_*.cc`) next to pyproject.toml.

Everything else about the package is declared in pyproject.toml. The extension is an XLA
FFI library loaded with ctypes (no Python C API); it needs the XLA FFI headers that jaxlib
ships (`jax.ffi.include_dir()`), hence jaxlib in `[build-system] requires`. It is
optional: if it does not compile (no C++ compiler, no headers), the install succeeds and
rnnjax uses its pure-JAX path.
"""

import os

from setuptools import Extension, setup


def _xla_include_dirs() -> list[str]:
  """jaxlib's bundled headers (`xla/ffi/api/ffi.h`), found without importing jax."""
  try:
    import jaxlib
  except ImportError:
    return []
  root = os.path.dirname(os.path.abspath(jaxlib.__file__ or jaxlib.__path__[0]))
  include = os.path.join(root, "include")
  return [include] if os.path.isdir(include) else []


_FLAGS = ["-O3", "-march=native", "-std=c++17", "-ffp-contract=fast", "-fopenmp-simd",
          "-fno-math-errno", "-g0", "-w"]

setup(ext_modules=[Extension(
    "rnnjax._src._cpu_kernels",
    sources=["rnnjax/_src/cpu_kernels_lstm.cc", "rnnjax/_src/cpu_kernels_gru.cc"],
    depends=["rnnjax/_src/cpu_kernels.h"],
    include_dirs=_xla_include_dirs(),
    language="c++",
    extra_compile_args=os.environ.get("RNNJAX_CXXFLAGS", " ".join(_FLAGS)).split(),
    optional=True,
)])
