"""A new cell by registration alone: the kernel layer has one home per cell.

This file defines a cell torch.nn does not have -- a GRU without a reset gate (gates z, n)::

    z = sigmoid(px_z + ph_z);  n = tanh(px_n + ph_n);  h' = (1 - z) n + z h

by registering exactly three things: its spec (:func:`fastrnn.kernels.cells.register`), its jit
maths (the two ``@triton.jit`` functions below) and its reference step
(:func:`fastrnn.reference.register`, forward only: the reference differentiates it by autograd).
It then runs through the tier-1 and the tier-2 kernels (in the interpreter) against that
reference, forward and every gradient, in float64 -- with no edit to a kernel, a launcher, the
ops or the stack.  If that ever needs more than registration, a cell has lost its home.
See ARCHITECTURE.md ("Adding a cell").
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl  # noqa: F401  (Triton's interpreter needs it visible to jit functions)

from fastrnn import reference
from fastrnn.functional import recurrent_stack
from fastrnn.kernels import _runtime, cells
from fastrnn.kernels.common import sigmoid, tanh
from helpers import device

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


def _reference_forward(px, ph, h, c):
    z = torch.sigmoid(px[0] + ph[0])
    n = torch.tanh(px[1] + ph[1])
    return (1 - z) * n + z * h, c, dict(z=z, n=n)


@pytest.fixture
def new_cell():
    cell = cells.register(
        cells.Cell(
            MODE,
            "GRU_NO_RESET",
            ("z", "n"),
            ("z", "n"),
            _gru_nr_forward,
            _gru_nr_backward,
            reads=frozenset({"h_prev"}),
            direct_dh=True,
        )  # fmt: skip
    )
    reference.register(MODE, _reference_forward)  # no backward: autograd of the step
    yield cell
    cells.unregister(MODE)
    reference.unregister(MODE)


def _weights(G, I, H, layers, D, gen):
    ws = []
    for layer in range(layers):
        for _ in range(D):
            inp = I if layer == 0 else D * H
            ws += [torch.randn(G * H, inp, generator=gen, dtype=torch.float64) * 0.5,
                   torch.randn(G * H, H, generator=gen, dtype=torch.float64) * 0.5,
                   torch.randn(G * H, generator=gen, dtype=torch.float64) * 0.1,
                   torch.randn(G * H, generator=gen, dtype=torch.float64) * 0.1]  # fmt: skip
    return [w.to(device()).requires_grad_() for w in ws]


@pytest.mark.parametrize("tier", [1, 2])
def test_a_cell_registered_alone_runs_in_every_tier(new_cell, tier):
    gen = torch.Generator().manual_seed(0)
    T, B, I, H, layers, D = 5, 3, 4, 20, 2, 2  # H = 20: two tier-2 programs per layer, one partial
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(device()).requires_grad_()
    h0 = torch.randn(layers * D, B, H, generator=gen, dtype=torch.float64).to(device()).requires_grad_()
    lengths = torch.tensor([5, 2, 4], device=device())
    weights = _weights(new_cell.G, I, H, layers, D, gen)
    kw = dict(num_layers=layers, bidirectional=True, lengths=lengths)
    d_out = torch.randn(T, B, D * H, generator=gen, dtype=torch.float64).to(device())
    d_hn = torch.randn(layers * D, B, H, generator=gen, dtype=torch.float64).to(device())
    leaves = [x, h0, *weights]

    before = dict(_runtime.LAUNCHES)
    out, h_n, c_n = recurrent_stack(MODE, x, weights, h0, tier=tier, **kw)
    got = torch.autograd.grad((out * d_out).sum() + (h_n * d_hn).sum(), leaves)
    launched = {k for k, n in _runtime.LAUNCHES.items() if n != before.get(k, 0)}
    assert launched == ({"recurrent_fwd", "recurrent_bwd"} if tier == 1 else {"multi_fwd_tier2", "multi_bwd_tier2"})

    ref_out, ref_hn, ref_cn = reference.stack_forward(MODE, x, weights, h0, **kw)
    want = torch.autograd.grad((ref_out * d_out).sum() + (ref_hn * d_hn).sum(), leaves)
    assert c_n is None and ref_cn is None
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n, ref_hn, rtol=1e-10, atol=1e-10)
    names = ["x", "h0"] + [f"weight {i}" for i in range(len(weights))]
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_the_reference_backward_of_a_registered_cell_is_its_autograd(new_cell):
    """The reference's BPTT loop (layer_backward) serves a cell registered without a hand-written
    backward, through autograd of its step, and agrees with autograd of the whole loop."""
    gen = torch.Generator().manual_seed(1)
    T, B, I, H = 4, 2, 3, 5
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64, requires_grad=True)
    w_ih, w_hh, b_ih, b_hh = (torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
                              for s in ((2 * H, I), (2 * H, H), (2 * H,), (2 * H,)))  # fmt: skip
    out, h_n, _, cache = reference.layer_forward(MODE, x, w_ih, w_hh, b_ih, b_hh)
    d_out, d_hn = torch.randn_like(out), torch.randn_like(h_n)
    manual = reference.layer_backward(cache, d_out, d_hn)
    auto = torch.autograd.grad((out * d_out).sum() + (h_n * d_hn).sum(), [x, w_ih, w_hh, b_ih, b_hh])
    for name, a in zip(["x", "w_ih", "w_hh", "b_ih", "b_hh"], auto, strict=True):
        torch.testing.assert_close(manual[name], a, rtol=1e-10, atol=1e-12)


def test_registration_is_checked():
    with pytest.raises(ValueError, match="a cell state must be saved"):
        cells.Cell("BAD", "BAD", ("i",), (), _gru_nr_forward, _gru_nr_backward, has_cell_state=True)
    with pytest.raises(ValueError, match="inner_bias names unknown gates"):
        cells.Cell("BAD", "BAD", ("i",), (), _gru_nr_forward, _gru_nr_backward, inner_bias=("x",))
    with pytest.raises(ValueError, match="unknown recurrent cell 'NOPE'"):
        cells.get("NOPE")
