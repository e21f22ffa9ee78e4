"""fastrnn: drop-in ``torch.nn`` recurrent layers whose time loop runs in fused Triton kernels.

>>> import torch, fastrnn
>>> rnn = fastrnn.LSTM(8, 16, num_layers=2)          # same API as torch.nn.LSTM
>>> out, (h, c) = rnn(torch.randn(5, 3, 8))
"""

from . import auto, functional, reference, seq2seq
from ._version import __version__
from .convert import convert
from .dispatch import BackendUnavailable, explain
from .embedding import EmbeddingRNN
from .modules import GRU, LSTM, RNN

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "EmbeddingRNN",
    "functional",
    "auto",
    "seq2seq",
    "reference",
    "explain",
    "convert",
    "BackendUnavailable",
    "__version__",
]
