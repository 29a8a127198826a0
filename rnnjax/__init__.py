"""rnnjax: recurrent neural networks for JAX as pure functions over pytrees.

The names below are the public API. The submodules `rnnjax.tasks`, `rnnjax.interop`,
`rnnjax.diagnostics` and `rnnjax.runs` are attributes too, imported on first use so that
`import rnnjax` stays fast: `rnnjax.tasks.get_task("co2")` works after a plain `import rnnjax`,
and so do `rnnjax.load_run` and `rnnjax.Run` (from `rnnjax.runs`).
"""

import importlib as _importlib
import typing as _typing

from rnnjax._src.cell import Cell as Cell
from rnnjax._src.cells.common import HiddenState as HiddenState
from rnnjax._src.cells.diagonal import DiagonalGRUParams as DiagonalGRUParams
from rnnjax._src.cells.diagonal import DiagonalLSTMParams as DiagonalLSTMParams
from rnnjax._src.cells.diagonal import diagonal_gru as diagonal_gru
from rnnjax._src.cells.diagonal import diagonal_lstm as diagonal_lstm
from rnnjax._src.cells.elman import ElmanParams as ElmanParams
from rnnjax._src.cells.elman import elman as elman
from rnnjax._src.cells.gru import GRUParams as GRUParams
from rnnjax._src.cells.gru import gru as gru
from rnnjax._src.cells.lru import LRUParams as LRUParams
from rnnjax._src.cells.lru import lru as lru
from rnnjax._src.cells.lstm import LSTMParams as LSTMParams
from rnnjax._src.cells.lstm import LSTMState as LSTMState
from rnnjax._src.cells.lstm import lstm as lstm
from rnnjax._src.cells.mgu import MGUParams as MGUParams
from rnnjax._src.cells.mgu import mgu as mgu
from rnnjax._src.cells.minimal import MinGRUParams as MinGRUParams
from rnnjax._src.cells.minimal import MinLSTMParams as MinLSTMParams
from rnnjax._src.cells.minimal import mingru as mingru
from rnnjax._src.cells.minimal import minlstm as minlstm
from rnnjax._src.cells.rglru import RGLRUParams as RGLRUParams
from rnnjax._src.cells.rglru import rglru as rglru
from rnnjax._src.cells.slstm import SLSTMParams as SLSTMParams
from rnnjax._src.cells.slstm import SLSTMState as SLSTMState
from rnnjax._src.cells.slstm import slstm as slstm
from rnnjax._src.checkpoint import Checkpointer as Checkpointer
from rnnjax._src.checkpoint import CheckpointError as CheckpointError
from rnnjax._src.engines import ENGINES as ENGINES
from rnnjax._src.engines import EnginePlan as EnginePlan
from rnnjax._src.engines import FastPaths as FastPaths
from rnnjax._src.engines import auto_engine as auto_engine
from rnnjax._src.engines import engine_plan as engine_plan
from rnnjax._src.generate import generate as generate
from rnnjax._src.layers import BidirectionalParams as BidirectionalParams
from rnnjax._src.layers import BidirectionalState as BidirectionalState
from rnnjax._src.layers import Layer as Layer
from rnnjax._src.layers import bidirectional as bidirectional
from rnnjax._src.layers import rnn as rnn
from rnnjax._src.layers import stack as stack
from rnnjax._src.linear import LinearRecurrence as LinearRecurrence
from rnnjax._src.linear import is_linear as is_linear
from rnnjax._src.linear import with_recurrence as with_recurrence
from rnnjax._src.model import SequenceModel as SequenceModel
from rnnjax._src.model import SequenceModelParams as SequenceModelParams
from rnnjax._src.model import sequence_model as sequence_model
from rnnjax._src.newton import Newton as Newton
from rnnjax._src.newton import NewtonInfo as NewtonInfo
from rnnjax._src.newton import newton_unroll as newton_unroll
from rnnjax._src.packing import pack as pack
from rnnjax._src.packing import pad as pad
from rnnjax._src.packing import unpack as unpack
from rnnjax._src.packing import unpad as unpad
from rnnjax._src.parallel import parallel_unroll as parallel_unroll
from rnnjax._src.progress import ProgressBar as ProgressBar
from rnnjax._src.selection import restore_best as restore_best
from rnnjax._src.train import FitResult as FitResult
from rnnjax._src.train import TrainState as TrainState
from rnnjax._src.train import fit as fit
from rnnjax._src.train import make_train_step as make_train_step
from rnnjax._src.train import train_state as train_state
from rnnjax._src.truncated import truncated_unroll as truncated_unroll
from rnnjax._src.unroll import unroll as unroll
from rnnjax._src.writers import JsonlWriter as JsonlWriter
from rnnjax._src.writers import TensorBoardWriter as TensorBoardWriter

__version__ = "0.1.0"

__all__ = (
  "ENGINES",
  "BidirectionalParams",
  "BidirectionalState",
  "Cell",
  "CheckpointError",
  "Checkpointer",
  "ElmanParams",
  "EnginePlan",
  "FastPaths",
  "FitResult",
  "GRUParams",
  "HiddenState",
  "JsonlWriter",
  "LRUParams",
  "LSTMParams",
  "LSTMState",
  "Layer",
  "LinearRecurrence",
  "MGUParams",
  "MinGRUParams",
  "MinLSTMParams",
  "Newton",
  "NewtonInfo",
  "ProgressBar",
  "RGLRUParams",
  "Run",
  "SequenceModel",
  "SequenceModelParams",
  "TensorBoardWriter",
  "TrainState",
  "auto_engine",
  "bidirectional",
  "elman",
  "engine_plan",
  "fit",
  "generate",
  "gru",
  "is_linear",
  "load_run",
  "lru",
  "lstm",
  "make_train_step",
  "mgu",
  "mingru",
  "minlstm",
  "newton_unroll",
  "pack",
  "pad",
  "parallel_unroll",
  "restore_best",
  "rglru",
  "rnn",
  "sequence_model",
  "stack",
  "train_state",
  "truncated_unroll",
  "unpack",
  "unpad",
  "unroll",
  "with_recurrence",
)

_LAZY_SUBMODULES = ("diagnostics", "interop", "runs", "tasks")
# Public names that live above the library (they build tasks), imported on first use.
_LAZY_ATTRIBUTES = {"Run": "runs", "load_run": "runs"}
if _typing.TYPE_CHECKING:  # For type checkers and the API reference (griffe).
  from rnnjax.runs import Run as Run
  from rnnjax.runs import load_run as load_run


def __getattr__(name: str):
  if name in _LAZY_SUBMODULES:
    module = _importlib.import_module(f"{__name__}.{name}")
    globals()[name] = module  # Later lookups find it without calling __getattr__.
    return module
  if name in _LAZY_ATTRIBUTES:
    value = getattr(_importlib.import_module(f"{__name__}.{_LAZY_ATTRIBUTES[name]}"), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_ATTRIBUTES))
