"""The recurrence kernels directly: float64 gradcheck, launch counts, variable lengths, empty batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastrnn import ops, reference
from fastrnn.functional import first_layer_projection
from fastrnn.kernels import _runtime, cells
from helpers import TORCH_MODES as MODES
from helpers import device


def _layer_inputs(mode, T, B, H, P=None, dtype=torch.float64, proj=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = P or H
    cell = cells.get(mode)
    G = cell.G
    r = lambda *s: (0.5 * torch.randn(*s, generator=g, dtype=dtype)).to(device()).requires_grad_()
    args = dict(gx=r(T, B, G * H), w_hh=r(G * H, P), h0=r(B, P))
    if cell.has_cell_state:
        args["c0"] = r(B, H)
    if cell.inner_bias:
        args["b_hh"] = r(G * H)
    if proj:
        args["w_hr"] = r(P, H)
    return args


def _call(mode, args, lengths=None, reverse=False):
    out, h_n, c_n = ops.recurrence(
        mode,
        args["gx"],
        args["w_hh"],
        args["h0"],
        args.get("c0"),
        lengths,
        b_hh=args.get("b_hh"),
        w_hr=args.get("w_hr"),
        reverse=reverse,
    )
    return (out, h_n) if c_n is None else (out, h_n, c_n)


# The cell x varlen x reverse product is slow; the default run keeps one variant per cell, in turn.
@pytest.mark.parametrize(
    "mode,proj,varlen,reverse",
    [pytest.param(m, p, v, r, id=f"{cid}-{'varlen' if v else 'dense'}-{'rev' if r else 'fwd'}",
                  marks=() if 2 * v + r == k % 4 else pytest.mark.slow)
     for k, ((m, p), cid) in enumerate(zip([(m, False) for m in MODES] + [("LSTM", True)],
                                           ["tanh", "relu", "lstm", "gru", "lstm_proj"], strict=True))
     for v in (False, True) for r in (False, True)],
)  # fmt: skip
def test_gradcheck_float64(mode, proj, varlen, reverse):
    """Every differentiable input of one layer/direction, through the kernels, in float64."""
    T, B, H = 4, 3, 3
    args = _layer_inputs(mode, T, B, H, P=2 if proj else None, proj=proj)
    lengths = torch.tensor([4, 2, 3], device=device()) if varlen else None
    names = list(args)

    def f(*tensors):
        return _call(mode, dict(zip(names, tensors)), lengths, reverse)

    # fast_mode checks random projections of the Jacobian (same maths, far fewer kernel runs)
    assert torch.autograd.gradcheck(f, tuple(args.values()), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("mode", MODES + ["LSTM_PROJ"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_matches_reference_varlen(mode, reverse):
    """Variable lengths against the step-loop reference (padding positions must be zero)."""
    proj = mode == "LSTM_PROJ"
    mode = "LSTM" if proj else mode
    T, B, H, I = 5, 4, 4, 3
    g = torch.Generator().manual_seed(3)
    cell = cells.get(mode)
    G = cell.G
    P = 3 if proj else H
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    w_ih = torch.randn(G * H, I, generator=g, dtype=torch.float64)
    w_hh = torch.randn(G * H, P, generator=g, dtype=torch.float64) * 0.5
    b_ih = torch.randn(G * H, generator=g, dtype=torch.float64)
    b_hh = torch.randn(G * H, generator=g, dtype=torch.float64)
    w_hr = torch.randn(P, H, generator=g, dtype=torch.float64) if proj else None
    h0 = torch.randn(B, P, generator=g, dtype=torch.float64)
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64) if cell.has_cell_state else None
    lengths = torch.tensor([2, 5, 1, 3])
    ref_out, ref_h, ref_c, _ = reference.layer_forward(
        mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr=w_hr, lengths=lengths, reverse=reverse
    )
    weights = [w_ih, w_hh, b_ih, b_hh] + ([w_hr] if proj else [])
    gx = torch.nn.functional.linear(x, *first_layer_projection(mode, weights, proj_size=P if proj else 0))
    dev = device()
    mv = lambda t: None if t is None else t.to(dev)
    out, h_n, c_n = ops.recurrence(
        mode,
        gx.to(dev),
        w_hh.to(dev),
        h0.to(dev),
        mv(c0),
        lengths.to(dev),
        b_hh=b_hh.to(dev),
        w_hr=mv(w_hr),
        reverse=reverse,
    )
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n.cpu(), ref_h, rtol=1e-10, atol=1e-10)
    if cell.has_cell_state:
        torch.testing.assert_close(c_n.cpu(), ref_c, rtol=1e-10, atol=1e-10)
    for b, L in enumerate(lengths.tolist()):
        assert torch.all(out[L:, b] == 0), "padding positions must be zero"


@pytest.mark.parametrize("mode", MODES)
def test_launch_count_constant_in_sequence_length(mode):
    """The time loop runs inside the kernels: one forward+backward launches the same number of
    Triton kernels for T=2 and T=9."""
    counts = []
    for T in (2, 9):
        args = _layer_inputs(mode, T, 3, 4, dtype=torch.float32)
        before = _runtime.total_launches()
        outs = _call(mode, args)
        sum(o.sum() for o in outs).backward()
        counts.append(_runtime.total_launches() - before)
    assert counts[0] == counts[1] == 2, counts


def test_launch_count_module_bidirectional_two_layers():
    import fastrnn

    m = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, backend="triton").to(device())
    counts = []
    for T in (2, 7):
        before = _runtime.total_launches()
        out, _ = m(torch.randn(T, 2, 3, device=device()))
        out.sum().backward()
        counts.append(_runtime.total_launches() - before)
    assert counts == [8, 8]  # (forward + backward) x 2 layers x 2 directions


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch(mode):
    args = _layer_inputs(mode, 3, 0, 4, dtype=torch.float32)
    outs = _call(mode, args)
    assert outs[0].shape == (3, 0, 4)
    sum(o.sum() for o in outs).backward()
    assert args["w_hh"].grad is not None and torch.all(args["w_hh"].grad == 0)


def test_offsets_past_2_to_the_31_elements_in_the_interpreter():
    """A gx whose time stride is 2**30 elements (an int32 value): the offset of step 2 is past
    2**31, so the kernel's address arithmetic must widen to int64 (int32 would wrap and read the
    wrong row).  The 12 GiB buffer is virtual: only the rows written here are ever touched."""
    if device().type != "cpu":
        pytest.skip("the GPU variant is tests/test_gpu.py::test_offsets_past_2_to_the_31_elements")
    B, H = 2, 4
    stride_t = 2**30 + 8
    try:
        base = torch.empty(2 * stride_t + B * H, dtype=torch.float32)
    except RuntimeError as e:  # no overcommit on this machine
        pytest.skip(f"cannot reserve 12 GiB of virtual memory: {e}")
    gx = base.as_strided((3, B, H), (stride_t, H, 1))
    dense = torch.randn(3, B, H)
    gx.copy_(dense)
    w_hh = torch.randn(H, H)
    got, h_n, _ = ops.recurrence("RNN_TANH", gx, w_hh)
    want, h_want, _ = ops.recurrence("RNN_TANH", dense, w_hh)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(h_n, h_want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("split_k", [2, 4])
def test_split_k_dots_equal_the_plain_ones(mode, split_k):
    """Tier 1 with its recurrent dots split along K across warps (common.mm_split) computes what the
    plain dots do, forward and backward, in float64 (H = 40: the last K chunk is partly padding)."""
    from fastrnn.kernels import tier1
    from fastrnn.kernels.call import Gradients, RecurrenceCall

    T, B, H = 4, 3, 40
    args = _layer_inputs(mode, T, B, H)
    cell = cells.get(mode)
    base = tier1.tier1_config(mode, H, 0, torch.float64)
    d_out = torch.randn(T, B, H, dtype=torch.float64, device=device())
    d_hn = torch.randn(B, H, dtype=torch.float64, device=device())
    d_cn = torch.randn(B, H, dtype=torch.float64, device=device()) if cell.has_cell_state else None
    lengths = torch.tensor([4, 1, 3], device=device())
    results = []
    for cfg in (base, dataclasses.replace(base, split_k=split_k)):
        a = {k: v.detach() for k, v in args.items()}
        call = RecurrenceCall(mode, T, B, a["w_hh"], a["h0"], a.get("c0"), lengths, a.get("b_hh"), reverse=True)
        fwd = tier1.recurrent_fwd(call, a["gx"], cfg)
        bwd = tier1.recurrent_bwd(call, Gradients(d_out, d_hn, d_cn, None, fwd.out, fwd.saved), cfg)
        results.append([fwd.out, fwd.h_n, bwd.d_gx, bwd.d_h0])
    for x, y in zip(*results, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
