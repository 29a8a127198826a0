"""rnnjax: recurrent neural networks for JAX as pure functions over pytrees."""

from rnnjax._src.cell import Cell as Cell
from rnnjax._src.cells.common import HiddenState as HiddenState
from rnnjax._src.cells.elman import ElmanParams as ElmanParams
from rnnjax._src.cells.elman import elman as elman
from rnnjax._src.cells.gru import GRUParams as GRUParams
from rnnjax._src.cells.gru import gru as gru
from rnnjax._src.cells.lstm import LSTMParams as LSTMParams
from rnnjax._src.cells.lstm import LSTMState as LSTMState
from rnnjax._src.cells.lstm import lstm as lstm
from rnnjax._src.cells.mgu import MGUParams as MGUParams
from rnnjax._src.cells.mgu import mgu as mgu
from rnnjax._src.layers import BidirectionalParams as BidirectionalParams
from rnnjax._src.layers import BidirectionalState as BidirectionalState
from rnnjax._src.layers import Layer as Layer
from rnnjax._src.layers import bidirectional as bidirectional
from rnnjax._src.layers import rnn as rnn
from rnnjax._src.layers import stack as stack
from rnnjax._src.unroll import unroll as unroll

__version__ = "0.1.0"

__all__ = (
    "BidirectionalParams",
    "BidirectionalState",
    "Cell",
    "ElmanParams",
    "GRUParams",
    "HiddenState",
    "LSTMParams",
    "LSTMState",
    "Layer",
    "MGUParams",
    "bidirectional",
    "elman",
    "gru",
    "lstm",
    "mgu",
    "rnn",
    "stack",
    "unroll",
)
