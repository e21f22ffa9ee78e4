"""Where fastrnn's Triton kernels run: compiled on a CUDA GPU, or in Triton's interpreter.

Triton decides between a compiled ``JITFunction`` and an ``InterpretedFunction`` at the moment
``@triton.jit`` decorates a kernel (it reads ``TRITON_INTERPRET`` then).  Interpreted kernels that
call other ``@triton.jit`` helpers only work when that decision was "interpret" for every function,
so it is made once, here, before any kernel module is imported:

* no CUDA device and ``TRITON_INTERPRET`` unset  -> interpret (CPU tensors run the kernels);
* ``TRITON_INTERPRET`` set by the user           -> respected (``0`` forces compiled kernels, which
  is what the sm_90/sm_80 kernel report needs on a machine without a GPU);
* a CUDA device                                  -> compiled; CPU tensors then need the user's
  ``TRITON_INTERPRET=1`` and :func:`check_device` says so.
"""

from __future__ import annotations

import os
import sys

import torch

#: Set when Triton was imported (by the user, torch.compile, ...) before fastrnn on a machine with
#: no CUDA device and no TRITON_INTERPRET: Triton's own library functions (``tl.zeros`` ...) were
#: then built for compilation and cannot run in the interpreter.
LATE_INTERPRET = False

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    LATE_INTERPRET = "triton" in sys.modules
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(device: torch.device) -> None:
    """Raise if the kernels cannot run on tensors of ``device`` in this process."""
    if device.type == "cuda":
        if INTERPRET:
            raise RuntimeError(
                "fastrnn: Triton runs in interpreter mode (TRITON_INTERPRET=1), which takes CPU "
                "tensors only; unset TRITON_INTERPRET to run the kernels on CUDA tensors"
            )
        return
    if device.type == "cpu":
        if LATE_INTERPRET:
            raise RuntimeError(
                "fastrnn: Triton was imported before fastrnn on this machine without a CUDA device, so "
                "its library was built for compilation and the kernels cannot run in Triton's "
                "interpreter; import fastrnn first, or set TRITON_INTERPRET=1 in the environment"
            )
        if not INTERPRET:
            raise RuntimeError(
                "fastrnn: backend='triton' on CPU tensors runs the kernels in Triton's interpreter, "
                "which must be chosen before the kernels are built: set TRITON_INTERPRET=1 in the "
                "environment before importing fastrnn (it is set automatically when no CUDA device "
                "is present)"
            )
        return
    raise RuntimeError(f"fastrnn: backend='triton' does not support {device.type} tensors")


# ---------------------------------------------------------------------------------------------
# Allocation and launch bookkeeping shared by every launcher.

#: Tests set this to True: every buffer a launcher allocates for a kernel to fill is then
#: filled with NaN first (integer buffers with -1), so an element the kernel forgot to write
#: shows up as NaN instead of as plausible stale memory.
POISON_OUTPUTS: bool = False

#: Number of Triton kernel launches per kernel name since import (tests read differences).
LAUNCHES: dict[str, int] = {}


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs, NaN-poisoned when :data:`POISON_OUTPUTS` is set."""
    if POISON_OUTPUTS:
        fill = float("nan") if dtype.is_floating_point else -1
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def count_launch(name: str) -> None:
    LAUNCHES[name] = LAUNCHES.get(name, 0) + 1


def total_launches() -> int:
    return sum(LAUNCHES.values())
