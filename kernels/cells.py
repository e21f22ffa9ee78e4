"""The one place that states each recurrent cell's gate layout (no Triton import here).

Gate order is PyTorch's, so weights are interchangeable with ``torch.nn``:

==========  ======  =================  ==========================================
cell        gates   order in W_ih/W_hh saved by the forward kernel for backward
==========  ======  =================  ==========================================
RNN_TANH    1       (h)                output h_t only
RNN_RELU    1       (h)                output h_t only
LSTM        4       i, f, g, o         activations i,f,g,o and c_t
GRU         3       r, z, n            activations r,z,n and W_hn h_{t-1} + b_hn
==========  ======  =================  ==========================================
"""

from __future__ import annotations

# Integer codes passed to the kernels as the CELL constexpr.
RNN, LSTM, GRU = 0, 1, 2

# torch.nn's mode string -> (cell code, uses relu, gate count)
MODES: dict[str, tuple[int, bool, int]] = {
    "RNN_TANH": (RNN, False, 1),
    "RNN_RELU": (RNN, True, 1),
    "LSTM": (LSTM, False, 4),
    "GRU": (GRU, False, 3),
}


def gate_count(mode: str) -> int:
    """Number of gates (row blocks of ``W_ih``/``W_hh``) of a ``torch.nn`` mode string."""
    return MODES[mode][2]
