"""Bridges to other frameworks: `rnnjax.interop.flax` (Flax modules), `.equinox` (an
Equinox module) and `.pytorch` (weights).

All are attributes of `rnnjax.interop`, imported on first use; `rnnjax.interop.pytorch`
does not need torch, and only `rnnjax.interop.equinox` needs equinox.
"""

import importlib as _importlib

_LAZY_SUBMODULES = ("equinox", "flax", "pytorch")


def __getattr__(name: str):
  if name in _LAZY_SUBMODULES:
    module = _importlib.import_module(f"{__name__}.{name}")
    globals()[name] = module
    return module
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LAZY_SUBMODULES))
