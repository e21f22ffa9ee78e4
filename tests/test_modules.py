"""fastrnn.RNN/LSTM/GRU (backend='triton') against torch.nn on one state dict.

Forward outputs, final states and every gradient (input, initial states, all weights and biases)
across the option space, in float32 (TF32 off) and float64.  On CPU the kernels run in Triton's
interpreter, so shapes are small; the configurations cover every option value and awkward sizes
(T=1, odd B and H, B spanning two batch tiles).
"""

from __future__ import annotations

import pytest
import torch

from fastrnn.kernels import cells
from helpers import compare_twins, module_inputs, twins

# (name, constructor kwargs, T, B, input kind, with initial state)
CONFIGS = [
    ("plain", dict(num_layers=1), 5, 3, "dense", False),
    ("h0", dict(num_layers=1), 4, 2, "dense", True),
    ("T1", dict(num_layers=1), 1, 3, "dense", True),
    ("two_layers_bidir", dict(num_layers=2, bidirectional=True), 4, 3, "dense", True),
    ("three_layers_nobias", dict(num_layers=3, bias=False), 3, 2, "dense", False),
    ("batch_first_bidir", dict(batch_first=True, bidirectional=True), 4, 5, "dense", True),
    ("unbatched", dict(num_layers=2), 4, None, "unbatched", True),
    ("unbatched_batch_first_bidir", dict(batch_first=True, bidirectional=True), 3, None, "unbatched", False),
    ("packed_sorted", dict(num_layers=2), 5, 4, "packed_sorted", True),
    ("packed_unsorted_bidir", dict(bidirectional=True), 5, 4, "packed_unsorted", True),
    (
        "packed_unsorted_bf_bidir_2l",
        dict(num_layers=2, bidirectional=True, batch_first=True),
        4,
        3,
        "packed_unsorted",
        False,
    ),
    ("two_batch_tiles", dict(bidirectional=True), 3, 17, "dense", True),
]


def _cells() -> list[tuple[str, dict, str]]:
    """``(family, constructor kwargs, id)`` of every registered cell with a ``torch.nn`` twin (and
    its projection variant where it has one): the registry is the list."""
    out = []
    for mode in cells.modes(twin=True):
        cell = cells.get(mode)
        name = cell.twin_kwargs.get("nonlinearity") or mode.lower()  # tanh, relu, lstm, gru
        out.append((cell.family, dict(cell.twin_kwargs), name))
        if cell.projection:
            out.append((cell.family, dict(proj_size=3), f"{name}_proj"))
    return out


# fp32 covers every configuration; fp64 a representative subset (tight 1e-10 tolerance).  The
# whole product is slow; the default run keeps configuration k with cell k (cycling through the
# cells), so it still has every configuration and every cell.
FP64_CONFIGS = ("h0", "two_layers_bidir", "packed_unsorted_bidir")
CASES = [
    pytest.param(cell, ckw, *cfg, dtype, id=f"{cfg[0]}-{cid}-{tag}",
                 marks=() if k % len(_cells()) == j else pytest.mark.slow)
    for dtype, tag, cfgs in (
        (torch.float32, "fp32", CONFIGS),
        (torch.float64, "fp64", [c for c in CONFIGS if c[0] in FP64_CONFIGS]),
    )
    for k, cfg in enumerate(cfgs)
    for j, (cell, ckw, cid) in enumerate(_cells())
]  # fmt: skip


@pytest.mark.parametrize("cell,cell_kwargs,name,kwargs,T,B,kind,with_h0,dtype", CASES)
def test_matches_torch_nn(cell, cell_kwargs, name, kwargs, T, B, kind, with_h0, dtype):
    I, H = 3, 5
    kw = {**cell_kwargs, **kwargs}
    fast, ref = twins(cell, I, H, dtype=dtype, **kw)
    compare_twins(fast, ref, module_inputs(cell, kw, T, B, kind, with_h0, I, H, dtype), dtype)
