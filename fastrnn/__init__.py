"""fastrnn: drop-in ``torch.nn`` recurrent layers whose time loop runs in fused Triton kernels.

>>> import torch, fastrnn
>>> rnn = fastrnn.LSTM(8, 16, num_layers=2)          # same API as torch.nn.LSTM
>>> out, (h, c) = rnn(torch.randn(5, 3, 8))

The seq2seq application (``fastrnn.seq2seq``) is imported on first use, so ``import fastrnn``
stays as light as the layers themselves.
"""

import importlib

from . import auto, functional, reference
from ._version import __version__
from .convert import convert
from .dispatch import BackendUnavailable, explain
from .embedding import EmbeddingRNN
from .haste import from_haste
from .layernorm import LayerNormGRU, LayerNormLSTM
from .modules import GRU, LSTM, RNN

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "LayerNormLSTM",
    "LayerNormGRU",
    "EmbeddingRNN",
    "functional",
    "auto",
    "seq2seq",
    "reference",
    "explain",
    "convert",
    "from_haste",
    "BackendUnavailable",
    "__version__",
]

_LAZY_SUBMODULES = ("seq2seq",)


def __getattr__(name: str):
    """``fastrnn.seq2seq`` is imported when first used (PEP 562)."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # the import also sets the attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
