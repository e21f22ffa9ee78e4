"""The reference itself: its forward equals torch.nn, its hand-written BPTT equals autograd."""

from __future__ import annotations

import pytest
import torch

from fastrnn import reference
from fastrnn.kernels import cells
from fastrnn.modules import build

CASES = [("RNN_TANH", {}), ("RNN_RELU", {}), ("LSTM", {}), ("LSTM", dict(proj_size=2)), ("GRU", {})]


def _weights(mode, proj):
    return build(mode, 3, 4, 2, bidirectional=True, proj_size=proj, torch_nn=True).double()


@pytest.mark.parametrize("mode,kw", CASES, ids=["tanh", "relu", "lstm", "lstm_proj", "gru"])
def test_stack_forward_matches_torch_nn(mode, kw):
    m = _weights(mode, kw.get("proj_size", 0))
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, h_n, c_n = reference.stack_forward(
        mode, x, m._flat_weights, num_layers=2, bidirectional=True, proj_size=kw.get("proj_size", 0)
    )
    want = m(x)
    torch.testing.assert_close(out, want[0])
    torch.testing.assert_close(h_n, want[1][0] if cells.get(mode).has_cell_state else want[1])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode,kw", CASES, ids=["tanh", "relu", "lstm", "lstm_proj", "gru"])
def test_hand_written_bptt_equals_autograd(mode, kw, reverse):
    P = kw.get("proj_size", 0)
    m = _weights(mode, P)
    w_ih, w_hh, b_ih, b_hh = m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0
    w_hr = m.weight_hr_l0 if P else None
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, P or 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True) if cells.get(mode).has_cell_state else None
    lengths = torch.tensor([5, 2, 4])
    out, h_n, c_n, cache = reference.layer_forward(
        mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr=w_hr, lengths=lengths, reverse=reverse
    )
    d_out, d_hn = torch.randn_like(out), torch.randn_like(h_n)
    d_cn = torch.randn_like(c_n) if c_n is not None else None
    manual = reference.layer_backward(cache, d_out, d_hn, d_cn)
    leaves = dict(x=x, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, h0=h0)
    if c0 is not None:
        leaves["c0"] = c0
    if w_hr is not None:
        leaves["w_hr"] = w_hr
    outs, grads_out = [out, h_n], [d_out, d_hn]
    if c_n is not None:
        outs.append(c_n), grads_out.append(d_cn)
    auto = torch.autograd.grad(outs, list(leaves.values()), grads_out)
    for (name, _), g in zip(leaves.items(), auto):
        torch.testing.assert_close(manual[name], g, msg=lambda msg, name=name: f"{name}: {msg}")


def test_upcast_computes_in_float64():
    m = _weights("LSTM", 0).float()
    x = torch.randn(6, 2, 3)
    lo, _, _, _ = reference.layer_forward("LSTM", x, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    hi, _, _, cache = reference.layer_forward(
        "LSTM", x, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0, upcast=True
    )
    assert hi.dtype == torch.float32 and cache.x.dtype == torch.float64
    torch.testing.assert_close(lo, hi)
