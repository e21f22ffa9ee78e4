"""fastrnn.RNN/LSTM/GRU (backend='triton') against torch.nn on one state dict.

Forward outputs, final states and every gradient (input, initial states, all weights and biases)
across the option space, in float32 (TF32 off) and float64.  On CPU the kernels run in Triton's
interpreter, so shapes are small; the configurations cover every option value and awkward sizes
(T=1, odd B and H, B spanning two batch tiles).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import compare_twins, device, twins

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

CELLS = [
    ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu")),
    ("LSTM", {}),
    ("LSTM", dict(proj_size=3)),
    ("GRU", {}),
]


def _inputs(cell, kwargs, T, B, kind, with_h0, I, H, dtype):
    dev = device()
    D = 2 if kwargs.get("bidirectional") else 1
    L = kwargs.get("num_layers", 1)
    P = kwargs.get("proj_size", 0) or H
    bf = kwargs.get("batch_first", False)
    gen = torch.Generator().manual_seed(1234)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(dev).requires_grad_()

    def make():
        gen.manual_seed(1234)
        if kind == "unbatched":
            x = rnd(T, I)
            state_shape = (L * D, P)
            cell_shape = (L * D, H)
        else:
            x = rnd(*((B, T, I) if bf else (T, B, I)))
            state_shape = (L * D, B, P)
            cell_shape = (L * D, B, H)
        x_leaf = x
        if kind.startswith("packed"):
            lengths = torch.randint(1, T + 1, (B,), generator=gen)
            lengths[torch.randint(0, B, (1,), generator=gen)] = T
            if kind == "packed_sorted":
                lengths = lengths.sort(descending=True).values
            x = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=kind == "packed_sorted")
        leaves = [x_leaf]
        hx = None
        if with_h0:
            hx = (rnd(*state_shape), rnd(*cell_shape)) if cell == "LSTM" else rnd(*state_shape)
            leaves += list(hx) if cell == "LSTM" else [hx]
        return x, hx, leaves

    return make


CELL_IDS = ["tanh", "relu", "lstm", "lstm_proj", "gru"]
# fp32 covers every configuration; fp64 a representative subset (tight 1e-10 tolerance).
FP64_CONFIGS = ("h0", "two_layers_bidir", "packed_unsorted_bidir")
CASES = [
    pytest.param(cell, ckw, *cfg, dtype, id=f"{cfg[0]}-{cid}-{tag}")
    for dtype, tag, cfgs in (
        (torch.float32, "fp32", CONFIGS),
        (torch.float64, "fp64", [c for c in CONFIGS if c[0] in FP64_CONFIGS]),
    )
    for cfg in cfgs
    for (cell, ckw), cid in zip(CELLS, CELL_IDS)
]


@pytest.mark.parametrize("cell,cell_kwargs,name,kwargs,T,B,kind,with_h0,dtype", CASES)
def test_matches_torch_nn(cell, cell_kwargs, name, kwargs, T, B, kind, with_h0, dtype):
    I, H = 3, 5
    kw = {**cell_kwargs, **kwargs}
    fast, ref = twins(cell, I, H, dtype=dtype, **kw)
    compare_twins(fast, ref, _inputs(cell, kw, T, B, kind, with_h0, I, H, dtype), dtype)
