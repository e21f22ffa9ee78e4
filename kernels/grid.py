"""The multi-program runtime of tiers 2 and 3: occupancy, the cooperative launch, the barrier's
buffers and its timeout.

A tier-2 launch runs the whole sequence in one kernel whose programs wait for each other at a grid
barrier every step, so all of them must be resident on the GPU at once.  Here: how many programs
of a compiled kernel fit (:func:`programs_per_sm`, from its registers and shared memory, cached
per binary and device), the reused counter buffers, and :func:`run`, which launches a
:class:`MultiLaunch` as tier 2 (cooperative, one launch) or tier 3 (one launch per step), and
falls back from 2 to 3 when the GPU cannot hold the grid or refuses the cooperative launch.  The
kernels themselves (and the barrier's device code) are in :mod:`.multi`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import triton

from . import _runtime
from .common import warn_once

#: Polls of a barrier counter before a program gives up (about a second on an H100).
MAX_SPIN = 1 << 21


@functools.cache
def programs_per_sm(
    n_regs: int,
    shared: int,
    num_warps: int,
    regs_per_sm: int = 65536,
    smem_per_sm: int = 228 * 1024,
    max_threads: int = 2048,
    max_blocks: int = 32,
) -> int:
    """How many programs of a compiled kernel one SM holds at once (defaults: H100/A100 limits):
    registers are allocated per warp in units of 256, each block's shared memory gets 1 KiB more
    (reserved by the driver), threads and resident blocks are capped."""
    regs_per_warp = -(-max(1, n_regs) * 32 // 256) * 256
    by_regs = regs_per_sm // (regs_per_warp * num_warps)
    by_smem = smem_per_sm // (shared + 1024)
    return max(0, min(by_regs, by_smem, max_threads // (32 * num_warps), max_blocks))


@functools.cache
def _sm_limits(device_index: int | None) -> tuple[int, dict]:
    props = torch.cuda.get_device_properties(device_index if device_index is not None else torch.cuda.current_device())
    limits = {
        key: getattr(props, attr)
        for key, attr in (
            ("regs_per_sm", "regs_per_multiprocessor"),
            ("smem_per_sm", "shared_memory_per_multiprocessor"),
            ("max_threads", "max_threads_per_multi_processor"),
        )
        if getattr(props, attr, None)
    }
    return props.multi_processor_count, limits


_CAPACITY: dict[tuple, int] = {}

#: Batch groups of per-step launches (``None``: one per batch tile).  Tests set it to 1 to run
#: the build in which a program loops over several tiles (a large tier-2 batch on a GPU) in the
#: interpreter too.
_STEP_GROUPS: int | None = None

#: Value the barrier counters start from.  Tests set it very negative so that no barrier can
#: complete (the bounded spin, the NaN poisoning and :class:`BarrierTimeout` are then certain).
_BARRIER_START = 0


def _co_resident_programs(kernel, args, consts, device: torch.device) -> int:
    """Programs of this kernel that fit the GPU at once, from the compiled kernel's registers and
    shared memory.  ``warmup`` returns the binary the launch will use (same arguments, so the same
    dtypes and divisibility specialisation); its answer is cached per launch signature (the
    kernel, its constexprs, the arguments' dtypes and 16-byte alignment) and device, so that a
    repeated launch does not run ``warmup``'s argument binding again.  (Should two binaries of
    one signature differ in registers, the cooperative launch that does not fit is refused and
    :func:`run` falls back to per-step launches.)"""
    key = (kernel, _signature(args), tuple(sorted(consts.items())), device.index)
    capacity = _CAPACITY.get(key)
    if capacity is None:
        compiled = kernel.warmup(*args, grid=(1,), **consts)
        compiled._init_handles()
        n_sm, limits = _sm_limits(device.index)
        per_sm = programs_per_sm(compiled.n_regs, compiled.metadata.shared, compiled.metadata.num_warps, **limits)
        capacity = _CAPACITY[key] = per_sm * n_sm
    return capacity


def _signature(args) -> tuple:
    """What of a launch's arguments decides its binary: tensors' dtypes and 16-byte alignment,
    integers' divisibility by 16 and equality to 1 (Triton's specialisation), ``None``s."""
    sig = []
    for a in args:
        if isinstance(a, torch.Tensor):
            sig.append((a.dtype, a.data_ptr() % 16 == 0))
        elif isinstance(a, int) and not isinstance(a, bool):
            sig.append((a % 16 == 0, a == 1))
        else:
            sig.append(a if a is None or isinstance(a, (bool, float, str)) else type(a))
    return tuple(sig)


class BarrierTimeout(RuntimeError):
    """The programs of a persistent launch were not all resident at once (a grid barrier timed out)."""


def _check_barriers(cooperative: bool) -> bool:
    """Whether to read the timeout flag after a persistent launch (one host sync).  A cooperative
    launch guarantees co-residency, so there the flag is only read when ``FASTRNN_BARRIER_CHECK=1``;
    a timeout would still show, as NaN in every output computed after it."""
    return not cooperative or os.environ.get("FASTRNN_BARRIER_CHECK", "0") not in ("", "0")


_SYNC_BUFFERS: dict[tuple, torch.Tensor] = {}


def _sync_buffer(n_ints: int, device: torch.device) -> torch.Tensor:
    """A reused int32 buffer of ``n_ints`` for the barrier counters and the timeout flag, one per
    size, device and CUDA stream (launches on one stream run in order, so reuse is safe; a launch
    on another stream gets its own).  Reuse keeps the launch path free of allocation; buffers are
    never freed, because a captured CUDA graph keeps their addresses.  The caller refills the
    buffer on the device each call (that fill is part of a captured graph too)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (n_ints, device, stream)
    if key not in _SYNC_BUFFERS:
        _SYNC_BUFFERS[key] = torch.empty(n_ints, dtype=torch.int32, device=device)
    return _SYNC_BUFFERS[key]


@dataclass
class MultiLaunch:
    """A launch of a kernel with a grid barrier, as data (kernel, arguments before the barrier
    arguments, constexprs and options): :func:`run` launches it persistently or per step, the
    kernel report compiles it."""

    kernel: Any
    names: tuple[str, str]  # counted launches (_runtime.LAUNCHES): (persistent, per step)
    args: list  # the kernel's arguments before ``sync_ptr``
    consts: dict[str, Any]
    n_iters: int  # loop iterations (forward T, backward T + 1)
    T: int
    B: int
    H: int
    fallback_hint: str = ""  # what to do when the barrier times out (the kernel file's advice)

    @property
    def n_slices(self) -> int:
        return triton.cdiv(self.H, self.consts["BLOCK_HS"])

    @property
    def n_tiles(self) -> int:
        return triton.cdiv(self.B, self.consts["BLOCK_B"])

    def persistent(self, sync: torch.Tensor, n_groups: int, max_spin: int = MAX_SPIN,
                   cooperative: bool = True) -> tuple[tuple, dict]:  # fmt: skip
        """``(args, kwargs)`` of the persistent launch: the whole loop, with the grid barrier.  With as
        many batch groups as tiles each program keeps one tile's state in registers (``ONE_TILE``)."""
        args = (*self.args, sync, 0, self.n_iters, self.T, self.B, self.H, n_groups, max_spin)
        one = n_groups == self.n_tiles
        return args, dict(self.consts, USE_BARRIER=True, ONE_TILE=one, launch_cooperative_grid=cooperative)

    def step(self, sync: torch.Tensor, j: int, n_groups: int | None = None) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of iteration ``j`` launched alone (per step, and the interpreter): one
        program per batch tile, or ``n_groups`` programs looping over the tiles."""
        groups = n_groups or self.n_tiles
        args = (*self.args, sync, j, j + 1, self.T, self.B, self.H, groups, 0)
        return args, dict(self.consts, USE_BARRIER=False, ONE_TILE=groups == self.n_tiles)


def run(launch: MultiLaunch, persistent: bool, device: torch.device, cooperative: bool | None = None,
        max_spin: int = MAX_SPIN) -> bool:  # fmt: skip
    """Launch ``launch`` persistently (one launch with a grid barrier between iterations) or one
    launch per iteration; returns whether it ran persistently.  In Triton's interpreter (programs
    run one after another, so no barrier can complete) a persistent launch runs per step and is
    counted as persistent."""
    kernel, n_slices, n_tiles = launch.kernel, launch.n_slices, launch.n_tiles
    if persistent and not _runtime.INTERPRET:
        coop = True if cooperative is None else cooperative
        # a counter per batch group, 32 ints (128 B) apart so that groups poll different lines
        sync = _sync_buffer((n_tiles + 1) * 32, device)
        sync.fill_(_BARRIER_START)
        sync[n_tiles * 32 :] = 0
        with torch.cuda.device(device):
            # The one-tile build first; if the GPU cannot hold a group per tile, the build that
            # loops over tiles (its own registers, its own capacity).
            probe_args, kwargs = launch.persistent(sync, n_tiles, max_spin, coop)
            capacity = _co_resident_programs(kernel, probe_args, kwargs, device)
            if coop and capacity // n_slices < n_tiles:
                probe_args, kwargs = launch.persistent(sync, max(1, n_tiles - 1), max_spin, coop)
                capacity = _co_resident_programs(kernel, probe_args, kwargs, device)
            n_groups = min(n_tiles, capacity // n_slices) if coop else n_tiles
            if n_groups >= 1:
                if n_groups < n_tiles:  # the flag sits after the last group's counter
                    sync[n_groups * 32 :] = 0
                args, kwargs = launch.persistent(sync, n_groups, max_spin, coop)
                try:
                    kernel[(n_slices, n_groups)](*args, **kwargs)
                except RuntimeError as exc:  # the driver refused the cooperative grid: step by step
                    if not coop or "cooperative" not in str(exc).lower() and "too many blocks" not in str(exc).lower():
                        raise
                    warn_once(f"fastrnn: a cooperative launch of {n_slices} x {n_groups} programs was refused "
                              f"({exc}); running one launch per step instead")  # fmt: skip
                    return run(launch, False, device, cooperative, max_spin)
                _runtime.count_launch(launch.names[0])
                if _check_barriers(coop) and not torch.cuda.is_current_stream_capturing():
                    if int(sync[n_groups * 32].item()):
                        raise BarrierTimeout(
                            f"fastrnn: a grid barrier timed out ({n_slices} x {n_groups} programs were not all "
                            f"resident at once); {launch.fallback_hint}"
                        )
                return True
        # Not even one batch group fits the GPU at once: per-step launches instead.
    sync = _sync_buffer(32, device).zero_()
    counted = launch.names[0] if persistent and _runtime.INTERPRET else launch.names[1]
    groups = min(_STEP_GROUPS or n_tiles, n_tiles)
    for j in range(launch.n_iters):
        args, kwargs = launch.step(sync, j, groups)
        kernel[(n_slices, groups)](*args, **kwargs)
        _runtime.count_launch(counted)
    return persistent and _runtime.INTERPRET
