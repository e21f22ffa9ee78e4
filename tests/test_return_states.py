"""``return_states=True``: every step's LSTM cell state, written by the kernels, differentiable.

Oracles: the step-loop reference (float64, every tier, forward and every gradient through the
states), ``torch.nn.LSTM`` (its ``c_n`` is the last valid step of the states, its output is
fastrnn's), and the ``torch`` backend's step loop (same layout, same values).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn import ops, reference
from fastrnn.functional import recurrent_stack
from fastrnn.kernels import _runtime, tier1, tiers
from fastrnn.kernels.call import Gradients, RecurrenceCall
from helpers import assert_within_oracle, device


def _stack_inputs(T, B, I, H, layers, D, seed=0, dtype=torch.float64, proj=0):
    gen = torch.Generator().manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, num_layers=layers, bidirectional=D == 2, proj_size=proj).to(dtype)
    weights = [w.detach().to(device()).requires_grad_() for w in lstm._flat_weights]
    x = torch.randn(T, B, I, generator=gen, dtype=dtype).to(device()).requires_grad_()
    P = proj or H
    h0 = torch.randn(layers * D, B, P, generator=gen, dtype=dtype).to(device()).requires_grad_()
    c0 = torch.randn(layers * D, B, H, generator=gen, dtype=dtype).to(device()).requires_grad_()
    return x, weights, h0, c0, gen


@pytest.mark.parametrize("tier", [1, 2, 3])
def test_states_and_their_gradients_match_the_reference_in_every_tier(tier):
    """Forward (output, h_n, c_n, every c_t) and every gradient, through a loss that reads the
    states, in float64: 2 layers, bidirectional, variable lengths, initial states."""
    T, B, I, H, layers, D = 5, 3, 3, 18 if tier > 1 else 5, 2, 2  # H = 18: two tier-2 programs, one partial
    x, weights, h0, c0, gen = _stack_inputs(T, B, I, H, layers, D)
    lengths = torch.tensor([5, 2, 4], device=device())
    kw = dict(num_layers=layers, bidirectional=True, lengths=lengths, return_states=True)
    before = dict(_runtime.LAUNCHES)
    out, h_n, c_n, cs = recurrent_stack("LSTM", x, weights, h0, c0, tier=tier, **kw)
    want = reference.stack_forward("LSTM", x, weights, h0, c0, **kw)
    assert cs.shape == (T, B, layers * D * H)
    for name, a, b in zip(["output", "h_n", "c_n", "c_states"], (out, h_n, c_n, cs), want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    # every element written: padding is zero, exactly
    pad = torch.arange(T, device=device())[:, None] >= lengths[None, :]
    assert (cs[pad] == 0).all()

    leaves = [x, h0, c0, *weights]
    probes = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(device()) for t in (out, h_n, c_n, cs)]
    loss = lambda res: sum((r * p).sum() for r, p in zip(res, probes, strict=True))
    got = torch.autograd.grad(loss((out, h_n, c_n, cs)), leaves)
    ref = torch.autograd.grad(loss(want), leaves)
    launched = {k for k, n in _runtime.LAUNCHES.items() if n != before.get(k, 0)}
    assert launched == (
        {"recurrent_fwd", "recurrent_bwd"} if tier == 1 else {f"multi_fwd_tier{tier}", f"multi_bwd_tier{tier}"}
    )
    names = ["x", "h0", "c0"] + [f"weight {i}" for i in range(len(weights))]
    for name, a, b in zip(names, got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}")


def test_gradient_of_the_states_alone_matches_the_hand_written_bptt():
    """The backward kernel's per-step ``dc_t`` input against the reference's hand-written BPTT
    (``layer_backward`` with ``d_states``), one layer, reverse direction, variable lengths."""
    T, B, I, H = 4, 3, 2, 5
    x, weights, h0, c0, gen = _stack_inputs(T, B, I, H, 1, 1, seed=3)
    w_ih, w_hh, b_ih, b_hh = weights
    lengths = torch.tensor([2, 4, 3], device=device())
    d_states = torch.randn(T, B, H, generator=gen, dtype=torch.float64).to(device())
    gx = torch.nn.functional.linear(x, w_ih, b_ih + b_hh)
    out, h_n, c_n, cs = ops.recurrence("LSTM", gx, w_hh, h0[0], c0[0], lengths, reverse=True, return_states=True)
    got = torch.autograd.grad((cs * d_states).sum(), [x, w_ih, w_hh, b_ih, h0, c0])
    _, _, _, cache = reference.layer_forward("LSTM", x, w_ih, w_hh, b_ih, b_hh, h0[0], c0[0], lengths=lengths,
                                             reverse=True)  # fmt: skip
    torch.testing.assert_close(cs, cache.c_states, rtol=1e-12, atol=1e-12)
    want = reference.layer_backward(cache, torch.zeros_like(out), torch.zeros_like(h_n), torch.zeros_like(c_n),
                                    d_states)  # fmt: skip
    for name, a in zip(["x", "w_ih", "w_hh", "b_ih"], got, strict=False):
        torch.testing.assert_close(a, want[name], rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(got[4], want["h0"][None] if got[4].dim() == 3 else want["h0"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[5], want["c0"][None] if got[5].dim() == 3 else want["c0"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["dense", "batch_first", "packed", "unbatched"])
def test_module_states_match_torch_nn_and_the_torch_backend(kind):
    """``fastrnn.LSTM(...)(x, return_states=True)`` (triton) against torch.nn.LSTM (output and
    ``c_n`` = the states' last valid step) and the torch backend's step loop (same layout and
    values), in float32 with the oracle rule against float64."""
    torch.manual_seed(0)
    T, B, I, H, layers = 4, 3, 3, 5, 2
    bf = kind == "batch_first"
    kw = dict(num_layers=layers, bidirectional=True, batch_first=bf)
    nn_lstm = torch.nn.LSTM(I, H, **kw).to(device())
    fast = fastrnn.LSTM(I, H, **kw, backend="triton").to(device())
    loop = fastrnn.LSTM(I, H, **kw, backend="torch").to(device())
    loop64 = fastrnn.LSTM(I, H, **kw, backend="torch").to(device(), torch.float64)
    for m in (fast, loop, loop64):
        m.load_state_dict(nn_lstm.state_dict())
    gen = torch.Generator().manual_seed(1)
    x64 = torch.randn(*((B, T, I) if bf else (T, B, I)), generator=gen, dtype=torch.float64).to(device())
    lengths = torch.tensor([3, 4, 1])

    def make(dtype):
        x = x64.to(dtype).requires_grad_()
        if kind == "packed":
            return x, pack_padded_sequence(x, lengths, enforce_sorted=False)
        if kind == "unbatched":
            return x, x[:, 0]
        return x, x

    results = {}
    for name, m, dtype in (
        ("fast", fast, torch.float32),
        ("loop", loop, torch.float32),
        ("oracle", loop64, torch.float64),
    ):
        leaf, inp = make(dtype)
        out, (h_n, c_n), cs = m(inp, return_states=True)
        assert type(cs) is type(out)
        if isinstance(out, PackedSequence):
            assert torch.equal(cs.batch_sizes, out.batch_sizes) and torch.equal(
                cs.unsorted_indices, out.unsorted_indices
            )
            out, cs = out.data, cs.data
        probe = torch.Generator().manual_seed(2)
        loss = sum((t * torch.randn(t.shape, generator=probe).to(t)).sum() for t in (out, h_n, c_n, cs))
        grads = torch.autograd.grad(loss, [leaf, *m.parameters()])
        results[name] = [out.detach(), h_n.detach(), c_n.detach(), cs.detach(), *grads]
    for i, (a, b, c) in enumerate(zip(results["fast"], results["loop"], results["oracle"], strict=True)):
        assert_within_oracle(a, b, c, torch.float32, f"result {i}")

    # torch.nn: same output; c_n is each layer/direction's state at its last valid step
    leaf, inp = make(torch.float32)
    out_nn, (h_nn, c_nn) = nn_lstm(inp)
    out, (h_n, c_n), cs = fast(inp, return_states=True)
    torch.testing.assert_close(c_n, c_nn, rtol=1e-5, atol=1e-5)
    if kind == "packed":
        cs, lens = pad_packed_sequence(cs)
        torch.testing.assert_close(pad_packed_sequence(out)[0], pad_packed_sequence(out_nn)[0], rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(out, out_nn, rtol=1e-5, atol=1e-5)
        if kind == "unbatched":
            cs, c_n = cs[:, None], c_n[:, None]
        elif bf:
            cs = cs.transpose(0, 1)
        lens = torch.full((cs.shape[1],), T)
    for k in range(layers * 2):
        d = k % 2
        last = (lens - 1) if d == 0 else torch.zeros_like(lens)  # the reverse direction ends at step 0
        torch.testing.assert_close(
            cs[last, torch.arange(cs.shape[1]), k * H : (k + 1) * H], c_n[k], rtol=1e-6, atol=1e-6
        )


def test_projected_lstm_states_have_the_hidden_size():
    torch.manual_seed(0)
    fast = fastrnn.LSTM(3, 6, proj_size=2, backend="triton").to(device(), torch.float64)
    loop = fastrnn.LSTM(3, 6, proj_size=2, backend="torch").to(device(), torch.float64)
    loop.load_state_dict(fast.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=device())
    out, (h_n, c_n), cs = fast(x, return_states=True)
    assert out.shape == (4, 2, 2) and cs.shape == (4, 2, 6)
    torch.testing.assert_close(cs, loop(x, return_states=True)[2], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cs[-1], c_n[0], rtol=0, atol=0)


def test_off_by_default_and_free_when_off():
    """Without ``return_states`` the call returns what torch.nn returns, and the launches store no
    states and read no state gradients (compile-time flags off: the kernels are the ones before)."""
    torch.manual_seed(0)
    m = fastrnn.LSTM(3, 4, backend="triton").to(device())
    x = torch.randn(3, 2, 3, device=device())
    res = m(x)
    assert len(res) == 2 and len(res[1]) == 2
    cfg = tier1.tier1_config("LSTM", 4, 0, torch.float32)
    gx, w = torch.randn(3, 2, 16), torch.randn(16, 4)
    call = RecurrenceCall("LSTM", 3, 2, w)
    launch, fwd = tier1.forward_launch(call, gx, cfg)
    assert launch.kwargs["STORE_C"] is False and fwd.cs is None
    grads = Gradients(torch.randn(3, 2, 4), torch.randn(2, 4), torch.randn(2, 4), None, fwd.out, fwd.saved)
    bwd, _ = tier1.backward_launch(call, grads, cfg)
    assert bwd.kwargs["HAS_DCS"] is False
    launch, fwd = tier1.forward_launch(dataclasses.replace(call, states=True), gx, cfg)
    assert launch.kwargs["STORE_C"] is True and fwd.cs.shape == (3, 2, 4)


def test_backends_and_errors():
    x = torch.randn(3, 2, 3)
    auto = fastrnn.LSTM(3, 4)
    out, (h_n, c_n), cs = auto(x, return_states=True)  # CPU + auto: the torch step loop
    assert cs.shape == (3, 2, 4)
    torch.testing.assert_close(cs[-1], c_n[0])
    with pytest.raises(ValueError, match="no cell state"):
        recurrent_stack("GRU", x, torch.nn.GRU(3, 4)._flat_weights, tier=1, return_states=True)
    with pytest.raises(ValueError, match="no cell state"):
        reference.stack_forward("GRU", x, torch.nn.GRU(3, 4)._flat_weights, return_states=True)
    with pytest.raises(TypeError):
        fastrnn.GRU(3, 4)(x, return_states=True)


def test_functional_lstm_returns_states_batch_first():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, batch_first=True).to(device())
    x = torch.randn(2, 5, 3, device=device())
    out, (h_n, c_n), cs = fastrnn.functional.lstm(x, lstm._flat_weights, batch_first=True, return_states=True)
    assert cs.shape == (2, 5, 4)
    torch.testing.assert_close(out, lstm(x)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cs[:, -1], c_n[0], rtol=0, atol=0)


def test_opcheck_with_states():
    def rnd(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device()).requires_grad_()

    T, B, H = 3, 2, 3
    args = (
        "LSTM", rnd(T, B, 4 * H), rnd(4 * H, H), rnd(B, H), rnd(B, H), torch.tensor([3, 1], device=device()),
        None, None, 1, 1, tiers.plan_layer("LSTM", H, 0, torch.float64, 1).key, 1,
    )  # fmt: skip
    torch.library.opcheck(ops.recurrence_fwd, args)


def test_compile_fullgraph_with_states():
    torch.manual_seed(0)
    m = fastrnn.LSTM(3, 4, num_layers=2, backend="triton").to(device())

    def f(x):
        out, (h, c), cs = m(x, return_states=True)
        return out.sum() + cs.pow(2).sum()

    x = torch.randn(4, 2, 3, device=device())
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.backward()
    g = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    f(x).backward()
    torch.testing.assert_close(y, f(x))
    for n, p in m.named_parameters():
        torch.testing.assert_close(g[n], p.grad, rtol=1e-5, atol=1e-6)
