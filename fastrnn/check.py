"""``fastrnn check``: a torch.nn module and its fastrnn twin on the same weights, compared.

Runs each cell through the Triton kernels (compiled on a GPU, Triton's interpreter on CPU) and
through ``torch.nn``, and prints the largest differences of outputs and of every gradient, plus
the time of one forward+backward of each.

The verdict uses the project's one tolerance rule: against ``torch.nn`` in float64, fastrnn's
error is at most twice ``torch.nn``'s own error in float32, plus ``1e-5`` times the magnitude (at
least 1).  A fixed threshold against ``torch.nn`` is the wrong oracle: after long sequences both
fp32 results sit well above fp32's rounding from float64 (see kernels/NOTES.md).
"""

from __future__ import annotations

import copy
import time

import torch

from .modules import FAMILIES, build


def _fwd_bwd(module, x, grad_seed: int):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out, hidden = module(x)
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    g = torch.Generator(device="cpu").manual_seed(grad_seed)
    loss = sum((t * torch.randn(t.shape, generator=g).to(t)).sum() for t in [out, *states])
    loss.backward()
    grads = {"input": x.grad}
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return [out, *states], grads


#: Floor of the tolerance rule for float32 (TF32 off), times the magnitude of the float64 value.
FLOOR = 1e-5


def _agrees(got: dict, base: dict, want: dict) -> bool:
    """fastrnn (``got``) and torch.nn (``base``) in float32 against torch.nn in float64 (``want``),
    tensor by tensor: see the module doc."""
    for k, w in want.items():
        w = w.double()
        err_fast = (got[k].double() - w).abs().max().item()
        err_torch = (base[k].double() - w).abs().max().item()
        if not err_fast <= 2 * err_torch + FLOOR * max(1.0, w.abs().max().item()):
            return False
    return True


def _timed(fn, device: torch.device, repeats: int, warmup: int = 3) -> float:
    """The fastest of ``repeats`` calls (ms) after ``warmup`` calls: the kernels compile on a GPU
    on their first call, and oneDNN's RNNs on the CPU take several calls of seconds each before
    they run at speed (the fastest call is the one after that)."""

    def one() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    for _ in range(warmup):
        one()
    return min(one() for _ in range(max(1, repeats)))


def run_check(
    T: int = 16,
    B: int = 4,
    input_size: int = 8,
    hidden_size: int = 16,
    num_layers: int = 2,
    bidirectional: bool = True,
    device: str | None = None,
    repeats: int = 2,
) -> list[dict]:
    """Compare fastrnn (backend='triton') with torch.nn for RNN, LSTM and GRU; return one row per cell.

    Each row: ``cell``, ``tier`` (the kernel tier that ran, ``FASTRNN_TIER`` forces one),
    ``max_out_diff``, ``max_grad_diff`` (over input and all parameters, fastrnn vs torch.nn),
    ``agrees`` (the tolerance rule against float64, see the module doc), ``ms_fastrnn``,
    ``ms_torch`` (one forward+backward).
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for cell in FAMILIES:
        torch.manual_seed(0)
        ref = build(cell, input_size, hidden_size, num_layers, bidirectional=bidirectional, torch_nn=True).to(dev)
        fast = build(cell, input_size, hidden_size, num_layers, bidirectional=bidirectional, backend="triton").to(dev)
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, input_size, device=dev)
        outs_f, grads_f = _fwd_bwd(fast, x, 1)
        outs_r, grads_r = _fwd_bwd(ref, x, 1)
        outs_o, grads_o = _fwd_bwd(copy.deepcopy(ref).double(), x.double(), 1)
        named = lambda outs, grads: {**{f"out{i}": t for i, t in enumerate(outs)}, **grads}
        rows.append(
            dict(
                cell=cell,
                tier=fast.backend_decision(x).tier,
                max_out_diff=max((a - b).abs().max().item() for a, b in zip(outs_f, outs_r)),
                max_grad_diff=max((grads_f[k] - grads_r[k]).abs().max().item() for k in grads_r),
                agrees=_agrees(named(outs_f, grads_f), named(outs_r, grads_r), named(outs_o, grads_o)),
                ms_fastrnn=_timed(lambda fast=fast, x=x: _fwd_bwd(fast, x, 1), dev, repeats),
                ms_torch=_timed(lambda ref=ref, x=x: _fwd_bwd(ref, x, 1), dev, repeats),
            )
        )
    return rows


def main(args) -> int:
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU, kernels in Triton's interpreter"
    print(
        f"fastrnn check: T={args.T} B={args.B} I={args.input_size} H={args.hidden_size} "
        f"layers={args.num_layers} bidirectional, float32, on {where}"
    )
    rows = run_check(args.T, args.B, args.input_size, args.hidden_size, args.num_layers, True, str(dev), args.repeats)
    print(
        f"{'cell':6} {'tier':>4} {'max |out diff|':>15} {'max |grad diff|':>16} {'fastrnn ms':>11} {'torch.nn ms':>12}"
    )
    ok = True
    for r in rows:
        print(
            f"{r['cell']:6} {r['tier']:>4} {r['max_out_diff']:15.2e} {r['max_grad_diff']:16.2e} "
            f"{r['ms_fastrnn']:11.2f} {r['ms_torch']:12.2f}"
        )
        ok &= r["agrees"]
    if dev.type == "cpu":
        print("(CPU timings measure Triton's interpreter, not the kernels' speed; see benchmarks/ on a GPU)")
    print(
        "outputs and gradients agree with torch.nn (against float64: within twice torch.nn's fp32 error + 1e-5)"
        if ok
        else "MISMATCH with torch.nn: some output or gradient is further from float64 than the rule allows"
    )
    return 0 if ok else 1


def add_arguments(p) -> None:
    p.add_argument("--T", type=int, default=16, help="sequence length")
    p.add_argument("--B", type=int, default=4, help="batch size")
    p.add_argument("--input-size", type=int, default=8, help="input features")
    p.add_argument("--hidden-size", type=int, default=16, help="hidden size")
    p.add_argument("--num-layers", type=int, default=2, help="stacked layers")
    p.add_argument("--repeats", type=int, default=2, help="timed forward+backward passes")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
