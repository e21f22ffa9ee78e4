"""Test helpers: twin modules on one state dict, losses that reach every gradient, comparisons."""

from __future__ import annotations

import copy

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fastrnn.kernels import _runtime, cells
from fastrnn.modules import FAMILIES, resolve

#: Cell family -> (fastrnn module, torch.nn module), from the cell registry.
TWINS = {family: (cls, cells.families()[family]) for family, cls in FAMILIES.items()}
#: The registered cells that torch.nn has (tests of the kernels run over them).
TORCH_MODES = [mode for mode, cell in cells.CELLS.items() if cell.twin is not None]

# Tolerances of comparisons between two runs of the same arithmetic (compiled vs eager, one
# backend vs itself): fp32 with TF32 off, fp64.  fastrnn against torch.nn uses the oracle rule below.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}

#: The one rule for fastrnn against torch.nn, on every device (docs/numerics.md): against a
#: float64 oracle, fastrnn's largest error is at most twice torch.nn's own largest error in the same
#: dtype, plus this floor times the oracle's magnitude (at least 1).  A fixed 1e-5 against torch.nn
#: held on CPU and failed on an H200, where after long sequences both sides sit 1-4e-5 from float64.
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}


def device() -> torch.device:
    """Where the tests put their tensors: CUDA when the kernels are compiled for it, else the CPU
    (the kernels then run in Triton's interpreter; on a CUDA machine that is the separate
    ``TRITON_INTERPRET=1`` process of the interpreter tests)."""
    return torch.device("cuda" if torch.cuda.is_available() and not _runtime.INTERPRET else "cpu")


def assert_within_oracle(got: torch.Tensor, base: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str = ""):
    """``got`` (fastrnn) and ``base`` (torch.nn), both in ``dtype``, against ``want`` (float64):
    see :data:`FLOOR`."""
    assert got.shape == want.shape == base.shape, (what, got.shape, base.shape, want.shape)
    if want.numel() == 0:
        return
    want = want.double()
    err_fast = (got.double() - want).abs().max().item()
    err_torch = (base.double() - want).abs().max().item()
    bound = 2 * err_torch + FLOOR[dtype] * max(1.0, want.abs().max().item())
    assert err_fast <= bound, (
        f"{what}: fastrnn is {err_fast:.3g} from float64, torch.nn {err_torch:.3g} (bound {bound:.3g})"
    )


def twins(cell: str, *args, dtype=torch.float32, **kwargs):
    """``(fastrnn module with backend='triton', torch.nn module)`` sharing one state dict."""
    fast_cls, torch_cls = TWINS[cell]
    ref = torch_cls(*args, **kwargs).to(device=device(), dtype=dtype)
    fast = fast_cls(*args, **kwargs, backend="triton").to(device=device(), dtype=dtype)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return fast, ref


def _tensors(obj):
    if isinstance(obj, PackedSequence):
        return [obj.data]
    if isinstance(obj, torch.Tensor):
        return [obj]
    return [t for o in obj for t in _tensors(o)]


def run_and_grad(module, x, hx, leaves, weights_seed: int = 1):
    """Forward, then backward of a random linear functional of every output; returns
    ``(outputs, {name: grad})`` with grads of ``leaves`` (input, initial states) and every parameter."""
    module.zero_grad(set_to_none=True)
    for t in leaves:
        t.grad = None
    out = module(x, hx)
    flat = _tensors(out)
    g = torch.Generator(device="cpu").manual_seed(weights_seed)
    # drawn in fp32 and cast: the float64 oracle gets the same output gradients
    loss = sum((t * torch.randn(t.shape, generator=g).to(t.device, t.dtype)).sum() for t in flat)
    loss.backward()
    grads = {f"input{i}": t.grad.clone() for i, t in enumerate(leaves)}
    grads.update({n: p.grad.clone() for n, p in module.named_parameters()})
    return [t.detach().clone() for t in flat], grads


def assert_same_structure(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, PackedSequence):
        torch.testing.assert_close(a.batch_sizes, b.batch_sizes)
        for x, y in ((a.sorted_indices, b.sorted_indices), (a.unsorted_indices, b.unsorted_indices)):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device, (a.shape, b.shape)
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_structure(x, y)


def compare_twins(fast, ref, make_inputs, dtype):
    """Run both modules on identical fresh inputs; outputs and every gradient must agree by the
    oracle rule (:func:`assert_within_oracle`), the oracle being ``ref`` in float64.

    ``make_inputs(cast=None)`` returns ``(x, hx, leaves)``: the module arguments and the leaf
    tensors whose gradients are compared; ``cast`` converts the same values to another dtype."""
    x1, h1, leaves1 = make_inputs()
    x2, h2, leaves2 = make_inputs()
    x3, h3, leaves3 = make_inputs(torch.float64)
    oracle = copy.deepcopy(ref).double()
    assert_same_structure(fast(x1, h1), ref(x2, h2))
    out_f, g_f = run_and_grad(fast, x1, h1, leaves1)
    out_r, g_r = run_and_grad(ref, x2, h2, leaves2)
    out_o, g_o = run_and_grad(oracle, x3, h3, leaves3)
    for i, (a, b, c) in enumerate(zip(out_f, out_r, out_o, strict=True)):
        assert_within_oracle(a, b, c, dtype, f"output {i}")
    assert g_f.keys() == g_r.keys() == g_o.keys()
    for k in g_f:
        assert_within_oracle(g_f[k], g_r[k], g_o[k], dtype, f"gradient {k}")


def module_inputs(cell, kwargs, T, B, kind, with_h0, I, H, dtype):
    """``make()`` for :func:`compare_twins`: the input (dense, unbatched or packed with random
    lengths, ``kind``) and, ``with_h0``, initial states for a module built with ``kwargs``."""
    dev = device()
    D = 2 if kwargs.get("bidirectional") else 1
    L = kwargs.get("num_layers", 1)
    P = kwargs.get("proj_size", 0) or H
    bf = kwargs.get("batch_first", False)
    gen = torch.Generator().manual_seed(1234)

    def make(cast=None):
        gen.manual_seed(1234)

        def rnd(*shape):
            return torch.randn(*shape, generator=gen, dtype=dtype).to(dev, cast or dtype).requires_grad_()

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
            stateful = resolve(cell).has_cell_state
            hx = (rnd(*state_shape), rnd(*cell_shape)) if stateful else rnd(*state_shape)
            leaves += list(hx) if stateful else [hx]
        return x, hx, leaves

    return make
