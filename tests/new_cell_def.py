"""The test cell of ``tests/test_new_cell.py``: a GRU without a reset gate (gates z, n)::

    z = sigmoid(px_z + ph_z);  n = tanh(px_n + ph_n);  h' = (1 - z) n + z h

Its spec and jit maths (:data:`CELL`) and its reference step, registered by :func:`register`
and forgotten by :func:`unregister`.  Importing this module registers nothing (the test suite's
other modules read the registry); ``new_cell_registered`` is the module that registers it on
import, for a process that needs the cell from its start (the kernel report's compile worker).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl  # noqa: F401  (Triton's interpreter needs it visible to jit functions)

from fastrnn import reference
from fastrnn.kernels import cells
from fastrnn.kernels.common import sigmoid, tanh

MODE = "GRU_NO_RESET"


@triton.jit
def _gru_nr_forward(px, ph, h, c):
    z = sigmoid(px[0] + ph[0])
    n = tanh(px[1] + ph[1])
    return (1.0 - z) * n + z * h, c, (z, n)


@triton.jit
def _gru_nr_backward(dm, dc, saved, h_new, h_prev, c_prev):
    z, n = saved
    dz = dm * (h_prev - n) * z * (1.0 - z)
    dn = dm * (1.0 - z) * (1.0 - n * n)
    return (dz, dn), (dz, dn), dm * z, dc


def reference_forward(px, ph, h, c):
    """The cell's plain-PyTorch step (the reference's interface)."""
    z = torch.sigmoid(px[0] + ph[0])
    n = torch.tanh(px[1] + ph[1])
    return (1 - z) * n + z * h, c, dict(z=z, n=n)


#: The cell's spec: no torch.nn twin, so only registration gives it a module and benchmark rows.
CELL = cells.Cell(
    MODE,
    "GRU_NO_RESET",
    ("z", "n"),
    ("z", "n"),
    _gru_nr_forward,
    _gru_nr_backward,
    reads=frozenset({"h_prev"}),
    direct_dh=True,
)


def register() -> cells.Cell:
    """Register the cell's spec and maths and its reference step (no backward: autograd of the step)."""
    cells.register(CELL)
    reference.register(MODE, reference_forward)
    return CELL


def unregister() -> None:
    """Forget the cell again."""
    cells.unregister(MODE)
    reference.unregister(MODE)
