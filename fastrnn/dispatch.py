"""Backend choice for one forward call.

* ``"triton"``: the fastrnn kernels (CUDA tensors; CPU tensors through Triton's interpreter).
* ``"torch"``: the ``torch.nn`` twin's own code (aten/cuDNN): the fastest choice on CPU and the
  honest fallback wherever a kernel does not support an input.
* ``"auto"`` (default): triton on CUDA tensors when the kernels support the call, torch otherwise.
  ``auto`` never fails where ``torch.nn`` would have worked.

The environment variable ``FASTRNN_BACKEND`` (``auto``/``triton``/``torch``) replaces ``"auto"``
for modules built with the default.  A backend asked for explicitly that cannot serve an input
raises :class:`BackendUnavailable` listing every reason.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch.nn.utils.rnn import PackedSequence

BACKENDS = ("auto", "triton", "torch")


class BackendUnavailable(RuntimeError):
    """``backend='triton'`` was requested for an input the kernels cannot serve."""


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def requested_backend(module) -> str:
    backend = module.backend
    if backend == "auto":
        env = os.environ.get("FASTRNN_BACKEND", "auto") or "auto"
        check_backend_name(env)
        backend = env
    return backend


def triton_reasons(module, input) -> list[str]:
    """Every reason the Triton kernels cannot run this module on ``input`` (empty: they can)."""
    data = input.data if isinstance(input, PackedSequence) else input
    reasons = []
    if importlib.util.find_spec("triton") is None:
        return ["Triton is not installed"]
    from .kernels import _runtime

    dev = data.device
    if dev.type == "cuda" and _runtime.INTERPRET:
        reasons.append("TRITON_INTERPRET=1 is set, so the kernels run on CPU tensors only")
    elif dev.type == "cpu" and _runtime.LATE_INTERPRET:
        reasons.append("Triton was imported before fastrnn without TRITON_INTERPRET=1 (import fastrnn first)")
    elif dev.type == "cpu" and not _runtime.INTERPRET:
        reasons.append(
            "CPU tensors run the kernels in Triton's interpreter, which needs TRITON_INTERPRET=1 set "
            "before fastrnn is imported on a machine with a CUDA device"
        )
    elif dev.type not in ("cpu", "cuda"):
        reasons.append(f"{dev.type} tensors are not supported")
    params = module._flat_weights
    if params and params[0].device != dev:
        reasons.append(f"input is on {dev} but the parameters are on {params[0].device}")
    tier, why = kernel_tier(module, input)
    if tier is None:
        reasons.append(why)
    return reasons


def kernel_tier(module, input) -> tuple[int | None, str]:
    """``(tier, why)`` of the kernels for ``module(input)``'s layers (all layers have the same
    sizes but the first's input width, which only the input-projection GEMM sees)."""
    from .kernels.multi import choose_tier

    data = input.data if isinstance(input, PackedSequence) else input
    params = module._flat_weights
    # The parameters' dtype decides: an input of another dtype is rejected by the argument checks
    # (the same ValueError as torch.nn), not by the backend choice.
    dtype = params[0].dtype if params else data.dtype
    return choose_tier(module.mode, module.hidden_size, module.proj_size, dtype, interpreted=data.device.type == "cpu")


def autocast_dtype(mode: str, input: torch.Tensor) -> torch.dtype | None:
    """The dtype the ``torch.nn`` twin computes in under the active autocast, or ``None``.

    CUDA autocast runs every cuDNN RNN in the autocast dtype.  CPU autocast (torch 2.11-2.13)
    lowers LSTM and RNN but leaves GRU in fp32; ``tests/test_autocast.py`` checks this rule
    against ``torch.nn`` so a change in PyTorch shows up as a failing test.
    """
    dev = input.device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev) or not input.is_floating_point():
        return None
    if dev == "cpu" and mode == "GRU":
        return None
    return torch.get_autocast_dtype(dev)


def select_backend(module, input) -> str:
    """``"triton"`` or ``"torch"`` for this call (see module doc)."""
    backend = requested_backend(module)
    if backend == "torch":
        return "torch"
    data = input.data if isinstance(input, PackedSequence) else input
    if backend == "auto" and data.device.type != "cuda":
        return "torch"
    reasons = triton_reasons(module, input)
    if not reasons:
        return "triton"
    if backend == "auto":
        return "torch"
    raise BackendUnavailable(
        f"fastrnn {type(module).__name__}: backend='triton' cannot run this call: " + "; ".join(reasons)
    )


def explain(module, input) -> str:
    """One line saying which backend ``module(input)`` uses, and why (mirrors :func:`select_backend`)."""
    backend = requested_backend(module)
    if backend == "torch":
        return "requested 'torch' -> torch: asked for explicitly"
    reasons = triton_reasons(module, input)
    device = (input.data if isinstance(input, PackedSequence) else input).device.type
    if backend == "auto" and device != "cuda":
        why = (
            "; ".join(reasons)
            or f"{device} tensors: torch (aten) is the fastest there; pass backend='triton' for the kernels"
        )
        return f"requested 'auto' -> torch: {why}"
    if not reasons:
        _, why = kernel_tier(module, input)
        return f"requested {backend!r} -> triton: {why}"
    chosen = "torch" if backend == "auto" else "error"
    return f"requested {backend!r} -> {chosen}: " + "; ".join(reasons)
