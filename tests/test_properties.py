"""Property-based equivalence with torch.nn (hypothesis), determinism, and save/load round trips.

Example counts are bounded for CI; the ``nightly`` profile draws many more
(``HYPOTHESIS_PROFILE=nightly python -m pytest tests/test_properties.py``).
"""

from __future__ import annotations

import io
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn.modules import resolve
from helpers import TOL, TWINS, compare_twins, device, twins

settings.register_profile("ci", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@st.composite
def configs(draw):
    cell = draw(st.sampled_from(["RNN", "LSTM", "GRU"]))
    kw = dict(
        num_layers=draw(st.integers(1, 2)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
    )
    H = draw(st.integers(1, 6))
    spec = resolve(cell)
    if "nonlinearity" in spec.twin_kwargs:
        kw["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    if spec.projection and H > 1 and draw(st.booleans()):
        kw["proj_size"] = draw(st.integers(1, H - 1))
    kind = draw(st.sampled_from(["dense", "unbatched", "packed"]))
    T = draw(st.integers(1, 5))
    B = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if kind == "packed" else None
    return dict(
        cell=cell, kw=kw, I=draw(st.integers(1, 4)), H=H, T=T, B=B, kind=kind, lengths=lengths,
        with_h0=draw(st.booleans()), dtype=draw(st.sampled_from([torch.float32, torch.float64])),
    )  # fmt: skip


@given(configs())
def test_random_configurations_match_torch_nn(c):
    fast, ref = twins(c["cell"], c["I"], c["H"], dtype=c["dtype"], **c["kw"])
    kw, dtype = c["kw"], c["dtype"]
    D = 2 if kw["bidirectional"] else 1
    P = kw.get("proj_size", 0) or c["H"]
    L = kw["num_layers"]

    def make(cast=None):
        g = torch.Generator().manual_seed(0)
        rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(device(), cast or dtype).requires_grad_()
        if c["kind"] == "unbatched":
            x = rnd(c["T"], c["I"])
            batch = ()
        else:
            x = rnd(*((c["B"], c["T"], c["I"]) if kw["batch_first"] else (c["T"], c["B"], c["I"])))
            batch = (c["B"],)
        leaves, arg = [x], x
        if c["kind"] == "packed":
            lengths = torch.tensor(c["lengths"])
            lengths[0] = c["T"] if lengths.max() < c["T"] else lengths[0]
            arg = pack_padded_sequence(x, lengths, batch_first=kw["batch_first"], enforce_sorted=False)
        hx = None
        if c["with_h0"]:
            h = rnd(L * D, *batch, P)
            stateful = resolve(c["cell"]).has_cell_state
            hx = (h, rnd(L * D, *batch, c["H"])) if stateful else h
            leaves += list(hx) if stateful else [hx]
        return arg, hx, leaves

    compare_twins(fast, ref, make, dtype)


def test_deterministic_outputs_and_gradients():
    fast, _ = twins("LSTM", 3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(6, 4, 3, device=device())
    runs = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            fast.zero_grad(set_to_none=True)
            out, (h, c) = fast(x)
            (out.square().sum() + h.sum() + c.sum()).backward()
            runs.append([out.detach().clone()] + [p.grad.clone() for p in fast.parameters()])
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fastrnn.GRU(3, 4, num_layers=2, backend="triton")
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def test_save_load_round_trips():
    torch.manual_seed(0)
    model = _Model().to(device())
    x = torch.randn(4, 2, 3, device=device())
    want = model(x)
    # state dict, weights_only=True
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = _Model().to(device())
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh(x), want)
    # whole model (pickled classes need weights_only=False, as for any nn.Module)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), want)


def test_checkpoint_moves_between_fastrnn_and_torch_nn():
    for cell in ("RNN", "LSTM", "GRU"):
        fast_cls, torch_cls = TWINS[cell]
        fast = fast_cls(3, 4, num_layers=2, bidirectional=True)
        buf = io.BytesIO()
        torch.save(fast.state_dict(), buf)
        buf.seek(0)
        ref = torch_cls(3, 4, num_layers=2, bidirectional=True)
        ref.load_state_dict(torch.load(buf, weights_only=True), strict=True)
        back = fast_cls(3, 4, num_layers=2, bidirectional=True)
        back.load_state_dict(ref.state_dict(), strict=True)
        x = torch.randn(5, 2, 3)
        torch.testing.assert_close(back(x)[0], fast(x)[0], **TOL[torch.float32])
