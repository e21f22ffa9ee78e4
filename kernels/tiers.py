"""Which kernel tier runs a layer, and how it is launched: decided here, once per layer and call.

* **tier 1** (``recurrent.py``): one program holds all of ``W_hh`` (and ``W_hr``) on chip for a
  tile of sequences; no synchronisation between programs.  Limited by what a program can hold.
* **tier 2** (``multi.py``, persistent): the hidden units are split across programs that exchange
  ``h_t`` through L2 with a grid barrier per step, in one cooperative launch.
* **tier 3** (``multi.py``, per step): the same body launched once per step.

:func:`choose_tier` picks the tier (``FASTRNN_TIER`` forces one); :func:`plan` returns it with its
launch configuration (:class:`Tier1Config` or :class:`MultiConfig`), which the launchers take as
given.  The limits below were measured with the kernel report (``python -m fastrnn.kernels.report``);
the measurements and how they were made are in ``kernels/NOTES.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import cells, releases
from .common import element_size, pow2

# ---------------------------------------------------------------------------------------------
# Tier 1

#: The limits of the installed Triton release (``kernels/releases.json``, read by
#: :mod:`.releases`; the measurements behind them: kernels/NOTES.md "Tier 1", "Tiers 2 and 3",
#: "Layer-norm cells").  Largest on-chip weight footprint (:func:`weight_bytes`) a compiled tier-1
#: program holds, per storage dtype, when ``H`` (and ``proj_size``) are multiples of 16: the
#: largest that compiles for sm_90 and sm_80 without local memory in the time loop and within both
#: GPUs' shared memory.
TIER1_MAX_WEIGHT_BYTES: dict[torch.dtype, int] = releases.limits().tier1

#: The same for other sizes (strides that are not multiples of 16: no vector loads, more
#: registers) and for every projected LSTM (one more dot, its tiles in another layout).
TIER1_MAX_WEIGHT_BYTES_UNALIGNED: dict[torch.dtype, int] = releases.limits().tier1_unaligned

#: The interpreter has no registers to spill; its limit only keeps CPU runs tractable.
INTERPRETER_MAX_WEIGHT_BYTES = 4 * 1024 * 1024

#: Lower tier-1 limits of cells whose maths hold more per step than torch.nn's (the layer-norm
#: cells save 12 / 8 tensors per step and reduce rows twice / once): ``mode -> dtype ->
#: (H multiple of 16, other H)`` bytes, heaviest variant with states, at :func:`tier1_config`'s
#: warps (``tests/test_kernel_report.py`` compiles every limit).  0: no compiled tier 1 (the torch
#: step loop runs it).
TIER1_MAX_WEIGHT_BYTES_CELL: dict[str, dict[torch.dtype, tuple[int, int]]] = releases.limits().tier1_cell

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _aborts(mode: str, dtype: torch.dtype, tier: int) -> bool:
    """Whether the installed Triton aborts building this kernel (``releases.json``'s
    ``compiler_aborts``): such a kernel is never launched."""
    return releases.compiler_abort(mode, dtype, tier) is not None


@dataclass(frozen=True)
class Tier1Config:
    """Compile-time tile sizes of one tier-1 launch (never depends on T or B)."""

    block_b: int  # sequences per program
    block_h: int  # next power of two >= H (>= 16 for tl.dot)
    block_p: int  # next power of two >= P (>= 16; >= 32 for 16-bit projections from H = 32)
    num_warps: int
    split_k: int = 1  # the recurrent dots' K split into this many chunks across warps (common.mm_split)


def tiles(hidden_size: int, proj_size: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK_H, BLOCK_P)`` of tier 1.  A 16-wide 16-bit projection dot makes Triton put every
    warp on the same batch rows of all gates (it spilled at any warp count): 32, masked, does not."""
    block_h, block_p = pow2(hidden_size), pow2(proj_size or hidden_size)
    if proj_size and block_h >= 32 and dtype in (torch.float16, torch.bfloat16):
        block_p = max(block_p, 32)
    return block_h, block_p


def aligned(hidden_size: int, proj_size: int) -> bool:
    """Whether every stride the kernels get is a multiple of 16 (whatever T and B are)."""
    return hidden_size % 16 == 0 and (proj_size or hidden_size) % 16 == 0


def weight_bytes(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int:
    """On-chip bytes of the recurrent weight tiles one tier-1 program holds: ``G`` tiles of
    ``W_hh`` and, projected, one of ``W_hr``, each ``BLOCK_H x BLOCK_P`` as launched."""
    block_h, block_p = tiles(hidden_size, proj_size, dtype)
    n_tiles = cells.get(mode).G + (1 if proj_size else 0)
    return n_tiles * block_h * block_p * element_size(dtype)


def tier1_unsupported(
    mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, interpreted: bool = False
) -> str | None:
    """Why tier 1 cannot run this layer (``None`` when it can); ``interpreted``: in Triton's
    interpreter (CPU tensors), where the register limit of a compiled kernel does not apply.

    Example::

        tier1_unsupported("GRU", 64, 0, torch.bfloat16)  # None: 24 KiB of weights on chip
        tier1_unsupported("GRU", 256, 0, torch.bfloat16)  # '... needs 384 KiB ... at most 64 KiB'
    """
    if dtype not in TIER1_MAX_WEIGHT_BYTES:
        return f"dtype {dtype} is not supported (float16, bfloat16, float32, float64 are)"
    nbytes = weight_bytes(mode, hidden_size, proj_size, dtype)
    if interpreted:
        limit, where = INTERPRETER_MAX_WEIGHT_BYTES, " in the interpreter"
    elif proj_size:
        limit, where = TIER1_MAX_WEIGHT_BYTES_UNALIGNED[dtype], " for a projected LSTM"
    elif aligned(hidden_size, proj_size):
        limit, where = TIER1_MAX_WEIGHT_BYTES[dtype], ""
    else:
        limit = TIER1_MAX_WEIGHT_BYTES_UNALIGNED[dtype]
        where = f" when hidden_size is not a multiple of 16 ({TIER1_MAX_WEIGHT_BYTES[dtype] // 1024} KiB when it is)"
    cell_limits = TIER1_MAX_WEIGHT_BYTES_CELL.get(mode, {}).get(dtype)
    if cell_limits is not None and not interpreted:
        cell_limit = cell_limits[0 if aligned(hidden_size, proj_size) else 1]
        if cell_limit < limit:
            limit, where = cell_limit, f" for {mode} (more per-step state than torch.nn's cells; kernels/NOTES.md)"
    if nbytes > limit:
        return (
            f"{mode} with hidden_size={hidden_size}"
            + (f", proj_size={proj_size}" if proj_size else "")
            + f" in {dtype} needs {nbytes // 1024} KiB of recurrent weights on chip; the tier-1 "
            f"kernel holds at most {limit // 1024} KiB{where}"
        )
    abort = None if interpreted else releases.compiler_abort(mode, dtype, 1)
    if abort is not None:
        fixed = f"fixed in {abort['fixed']}" if abort["fixed"] else "not fixed in a release known here"
        return (
            f"{mode} in {dtype} is not compiled with triton {releases.current()}: {abort['what']} "
            f"(from triton {abort['first']}, {fixed}; {', '.join(abort['upstream'])})"
        )
    return None


def tier1_config(
    mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, allow_tf32: bool = False
) -> Tier1Config:
    """Tile sizes, warps and K split of tier 1 (kernels/NOTES.md, "Tier 1"): 16 sequences per
    program (the smallest dot tile: no spills up to the limit, and the most programs); warps by
    on-chip weight bytes -- aligned sizes 4 below 16 KiB, 8 up to 64 KiB, 16 above (half the
    dependent mma per warp per step: the step's serial chain); other sizes 8 from 8 KiB, fp32 16
    from 16 KiB.  fp32 above 48 KiB: RNN (H = 128) 16 warps with its FMA dots' K split in two
    (K-long rows per thread spill otherwise; with ``allow_tf32`` the dots run on tensor cores and
    are not split: split in two, triton 3.6 spills them), LSTM (H = 64) 8 warps.  Extended cells
    (layer norm) take at least 8 warps."""
    block_h, block_p = tiles(hidden_size, proj_size, dtype)
    nbytes = weight_bytes(mode, hidden_size, proj_size, dtype)
    split_k = 1
    if aligned(hidden_size, proj_size):
        num_warps = 4 if nbytes < 16 * 1024 else 8 if nbytes <= 64 * 1024 else 16
        if dtype == torch.float32 and nbytes > 48 * 1024:
            # RNN H = 128 spills at 8 warps; LSTM H = 64 (triton 3.6 only) spills at 16 warps,
            # split or not, and is clean at 8 (forward 244 registers, backward 128)
            num_warps, split_k = (16, 1 if allow_tf32 else 2) if cells.get(mode).G == 1 else (8, 1)
    elif dtype == torch.float32 and nbytes >= 16 * 1024:
        num_warps = 16
    else:
        num_warps = 8 if nbytes >= 8 * 1024 else 4
    if cells.get(mode).extended:  # more per-step state (layer-norm cells: 4 warps spill at H = 15)
        num_warps = max(num_warps, 8)
        if dtype == torch.float32 and cells.get(mode).has_cell_state and nbytes >= 16 * 1024:
            num_warps = 16  # LN_LSTM H = 32: triton 3.9's LLVM aborts building its backward at 8 warps
    return Tier1Config(16, block_h, block_p, num_warps, split_k)


# ---------------------------------------------------------------------------------------------
# Tiers 2 and 3

#: Hidden units per program (the smallest ``tl.dot`` tile: the most programs share a layer).
BLOCK_HS = 16
#: Sequences per batch tile (one ``tl.dot`` M dimension).
BLOCK_B = 16
#: Resident weight slices (a program's padded ``G`` tiles of ``(BLOCK_K, BLOCK_HS)``, loaded once,
#: kept in shared memory) need, besides the slice, the ``(BLOCK_B, BLOCK_K)`` fp32 row of
#: ``h_{t-1}`` on its way to the dot layout: both must fit the device's shared memory per block
#: (227 KB on an H100/H200 when unknown).  Largest resident slice by element size, forward and
#: backward, from the release data (kernels/NOTES.md "Tiers 2 and 3": 16-bit backward slices
#: over 32 KiB spill at 8 warps and cannot launch at 16).
RESIDENT_MAX_WEIGHT_BYTES: dict[int, int] = releases.limits().resident
RESIDENT_MAX_WEIGHT_BYTES_BWD: dict[int, int] = releases.limits().resident_bwd
#: Shared memory per block when the device is not known (sm_90's opt-in maximum).
DEFAULT_SMEM_BYTES = 227 * 1024
#: Chunks of K a resident slice's dots are split into across warps (each at least 16 wide): the
#: toy persistent step on an H200 went from 14.4 to 5.0 us at H = 768 with 4 (kernels/NOTES.md).
#: fp64 (DMMA) is not split (not measured split).
RESIDENT_SPLIT_K = 4
#: Chunk of the reduction dimension of streamed weights, by element size (fp32/fp64 dots hold
#: K-long rows per thread: narrower chunks).
BLOCK_K_STREAMED = {2: 64, 4: 16, 8: 16}
#: The streamed 16-bit backward (slices over :data:`RESIDENT_MAX_WEIGHT_BYTES_BWD`) reads chunks
#: this wide, each split in :data:`RESIDENT_SPLIT_K` across 8 warps: LSTM bf16 H = 1024
#: estimated 9.6 us a step against 15.5 at 64-wide chunks on 4 warps (225 / 255 registers with
#: triton 3.9 / 3.6, no spills; 512-wide chunks spill, 4 warps spill).
STREAMED_SPLIT_BLOCK_K = 256


def slice_weight_bytes(mode: str, hidden_size: int, dtype: torch.dtype) -> int:
    """On-chip bytes of one tier-2 program's resident ``W_hh`` slice (padded tiles)."""
    return cells.get(mode).G * pow2(hidden_size) * BLOCK_HS * element_size(dtype)


@dataclass(frozen=True)
class MultiConfig:
    """Compile-time choices of a tier-2/3 launch (never depends on T or B)."""

    resident: bool
    block_k: int
    num_warps: int
    num_stages: int
    maxnreg: int
    split_k: int = 1  # resident dots: K split in this many chunks across warps (common.mm_split)

    def with_resident(self, resident: bool, hidden_size: int, dtype: torch.dtype) -> MultiConfig:
        """This configuration with the weight slice resident (K in one chunk) or streamed in
        :data:`BLOCK_K_STREAMED` chunks, unsplit (the kernel report's override)."""
        if resident:
            return dataclasses.replace(self, resident=True, block_k=pow2(hidden_size))
        return dataclasses.replace(self, resident=False, block_k=BLOCK_K_STREAMED[element_size(dtype)], split_k=1)


def multi_config(mode: str, hidden_size: int, dtype: torch.dtype, tier: int, kernel: str = "fwd",
                 smem_bytes: int | None = None) -> MultiConfig:  # fmt: skip
    """Tile choices of a tier-2/3 launch of ``kernel`` (``"fwd"``/``"bwd"``) on a device with
    ``smem_bytes`` of shared memory per block (kernels/NOTES.md, "Tiers 2 and 3"):

    * tier 2 keeps each program's weight slice resident (:data:`RESIDENT_MAX_WEIGHT_BYTES`, the
      backward :data:`RESIDENT_MAX_WEIGHT_BYTES_BWD`, and the slice plus the ``h`` row within
      ``smem_bytes``; never where the resident build aborts the compiler) and splits its dots'
      K across warps (8 warps, :data:`RESIDENT_SPLIT_K` chunks); otherwise (and in tier 3) the
      slice is streamed from L2 in ``BLOCK_K`` chunks at 4 warps (16-bit backwards: 256-wide
      chunks split across 8 warps, :data:`STREAMED_SPLIT_BLOCK_K`);
    * ``maxnreg = 255`` (left alone, ptxas parks a few bytes in local memory inside the loop in
      about one config in ten); 2 pipeline stages, 3 for fp32/fp64 streamed builds, 1 for the
      fp64 streamed backward."""
    size = element_size(dtype)
    k_pad = pow2(hidden_size)
    slice_bytes = slice_weight_bytes(mode, hidden_size, dtype)
    smem_needed = slice_bytes + BLOCK_B * k_pad * element_size(torch.float64 if size == 8 else torch.float32)
    limits = RESIDENT_MAX_WEIGHT_BYTES_BWD if kernel == "bwd" else RESIDENT_MAX_WEIGHT_BYTES
    resident = (
        tier == 2
        and slice_bytes <= limits[size]
        and smem_needed <= (smem_bytes or DEFAULT_SMEM_BYTES)
        and not _aborts(mode, dtype, 2)
    )
    if not resident:
        if kernel == "bwd" and size == 2 and k_pad >= STREAMED_SPLIT_BLOCK_K:
            return MultiConfig(False, STREAMED_SPLIT_BLOCK_K, 8, 2, 255, RESIDENT_SPLIT_K)
        # pipeline stages: 2 for 16-bit, 3 for fp32/fp64 -- but 1 for the fp64 backward (the LSTM
        # one spills in the loop at 2 and 3 stages with triton 3.6)
        stages = 2 if size == 2 else 1 if (size == 8 and kernel == "bwd") else 3
        return MultiConfig(False, min(BLOCK_K_STREAMED[size], k_pad), 4, stages, 255, 1)
    split = 1 if size == 8 else RESIDENT_SPLIT_K
    return MultiConfig(True, k_pad, 8, 2, 255, max(1, min(split, k_pad // 16)))


def multi_unsupported(tier: int, mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype,
                      interpreted: bool = False) -> str | None:  # fmt: skip
    """Why tier 2/3 cannot run this layer (``None`` when it can).  Tier 2's co-residency is
    checked at launch (it needs the compiled kernel); a tier-2 launch that does not fit runs as
    tier 3."""
    if dtype not in DTYPES:
        return f"dtype {dtype} is not supported (float16, bfloat16, float32, float64 are)"
    if proj_size:
        return f"tier {tier} does not run a projected LSTM (proj_size={proj_size}): only tier 1 does"
    cell = cells.get(mode)
    if cell.extended:
        return (f"tier {tier} does not run {mode}: its per-step row reductions (layer norm) need every hidden "
                f"unit of a row in one program, which only tier 1 has")  # fmt: skip
    nbytes = cells.get(mode).G * hidden_size * hidden_size * element_size(dtype)
    if interpreted and nbytes > INTERPRETER_MAX_WEIGHT_BYTES:
        return (
            f"tier {tier} in the interpreter runs at most {INTERPRETER_MAX_WEIGHT_BYTES // 2**20} MiB of recurrent "
            f"weights (CPU runs stay tractable); {mode} with hidden_size={hidden_size} in {dtype} has {nbytes // 1024} KiB"
        )
    return None


# ---------------------------------------------------------------------------------------------
# The registry of tiers and the choice


@dataclass(frozen=True)
class Tier:
    """A kernel tier as the rest of fastrnn sees it.  Its kernel file registers it
    (:func:`register`); :func:`choose_tier`, :func:`plan`, ``fastrnn.ops`` and the kernel report
    only go through this record.

    * ``unsupported(mode, hidden_size, proj_size, dtype, interpreted) -> str | None``: why it
      cannot run a layer (``None``: it can);
    * ``config(mode, hidden_size, proj_size, dtype, kernel, smem_bytes, allow_tf32)``: its launch
      configuration for ``kernel`` (``"fwd"``/``"bwd"``), a frozen dataclass of ``config_type``;
    * ``describe(mode, hidden_size, proj_size, dtype) -> str``: what :func:`choose_tier` says when
      it picks this tier;
    * ``forward(call, gx, cfg) -> ForwardResult`` and ``backward(call, grads, cfg) ->
      BackwardResult`` run it (:mod:`.call`);
    * ``forward_launch(call, gx, cfg)`` / ``backward_launch(call, grads, cfg)`` build its launch
      without running it, and ``compiled(launch)`` gives the ``(kernel, args, kwargs)`` a real launch
      compiles (the kernel report's view);
    * ``rank``: the order :func:`choose_tier` tries tiers in (lowest first); ``automatic=False``:
      only forced (``FASTRNN_TIER``) or as another tier's fallback.
    """

    number: int
    name: str
    rank: float
    config_type: type
    unsupported: Callable[..., str | None]
    config: Callable[..., Any]
    describe: Callable[..., str]
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    forward_launch: Callable[..., Any]
    backward_launch: Callable[..., Any]
    compiled: Callable[..., tuple]
    automatic: bool = True


_TIERS: dict[int, Tier] = {}

#: The kernel files that register tiers (imported on first use: they build Triton kernels).
TIER_MODULES = ("recurrent", "multi")


def register(tier: Tier) -> Tier:
    """Add ``tier`` to the registry (its kernel file calls this at import)."""
    _TIERS[tier.number] = tier
    return tier


def registered() -> dict[int, Tier]:
    """Every registered tier by number, in :attr:`Tier.rank` order."""
    import importlib

    for name in TIER_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    return dict(sorted(_TIERS.items(), key=lambda kv: kv[1].rank))


def get_tier(number: int) -> Tier:
    """The registered tier ``number``; a clear error for any other."""
    tiers = registered()
    if number not in tiers:
        raise ValueError(f"tier must be one of {', '.join(map(str, tiers))}, got {number}")
    return tiers[number]


def forced_tier() -> int | None:
    """``FASTRNN_TIER`` (a registered tier's number) forces a tier for tests and benchmarks; unset:
    automatic."""
    env = os.environ.get("FASTRNN_TIER", "")
    if env in ("", "0", "auto"):
        return None
    numbers = [str(n) for n in sorted(registered())]
    if env not in numbers:
        raise ValueError(f"FASTRNN_TIER must be {', '.join(numbers)} or auto, got {env!r}")
    return int(env)


def tier_unsupported(tier: int, mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype,
                     interpreted: bool = False) -> str | None:  # fmt: skip
    """Why ``tier`` cannot run this layer (``None`` when it can)."""
    return get_tier(tier).unsupported(mode, hidden_size, proj_size, dtype, interpreted)


def choose_tier(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype,
                interpreted: bool = False) -> tuple[int | None, str]:  # fmt: skip
    """``(tier, why)``: the tier that runs this layer, or ``(None, reasons)`` when none can.

    Rule: the first automatic tier in rank order that can run it -- tier 1 whenever all of
    ``W_hh`` fits one program (no barrier, fastest per step), else tier 2 (multi-program
    persistent; resident weights when the slice fits; it falls back to tier 3 at launch when the
    GPU cannot hold its grid).  ``FASTRNN_TIER`` forces one.
    """
    forced = forced_tier()
    if forced is not None:
        why = tier_unsupported(forced, mode, hidden_size, proj_size, dtype, interpreted)
        return (None, why) if why else (forced, f"tier {forced} forced by FASTRNN_TIER")
    reasons: list[str] = []
    for number, tier in registered().items():
        if not tier.automatic:
            continue
        why = tier.unsupported(mode, hidden_size, proj_size, dtype, interpreted)
        if why is None:
            said = tier.describe(mode, hidden_size, proj_size, dtype)
            return number, f"{said}: {'; '.join(reasons)}" if reasons else said
        reasons.append(why)
    return None, "; ".join(reasons)


def describe_tier1(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> str:
    return "tier 1: all of W_hh fits one program"


def describe_multi(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> str:
    fwd, bwd = (multi_config(mode, hidden_size, dtype, 2, k).resident for k in ("fwd", "bwd"))
    if fwd and bwd:
        how = "resident W_hh slices"
    elif fwd:
        how = "W_hh slices resident in the forward, streamed from L2 in the backward"
    else:  # the backward's limits are never above the forward's
        how = "W_hh slices streamed from L2"
    return f"tier 2 ({how}, {BLOCK_HS} units each)"


@dataclass(frozen=True)
class Plan:
    """How one layer (and direction) runs: its tier and that tier's launch configuration."""

    tier: int
    config: Any


def plan(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, tier: int, kernel: str = "fwd",
         smem_bytes: int | None = None, allow_tf32: bool = False) -> Plan:  # fmt: skip
    """The launch configuration of ``tier`` for this layer's ``kernel`` (``"fwd"``/``"bwd"``) on a
    device with ``smem_bytes`` of shared memory per block (:func:`smem_per_block`; ``None``:
    sm_90's), fp32 dots on tensor cores with ``allow_tf32``; the tier was chosen by
    :func:`choose_tier`, once per call, and handed down."""
    config = get_tier(tier).config(mode, hidden_size, proj_size, dtype, kernel, smem_bytes, allow_tf32)
    return Plan(tier, config)


def smem_per_block(device: torch.device | None) -> int | None:
    """Shared memory a block may use on ``device`` (its opt-in maximum), ``None`` when unknown."""
    if device is None or device.type != "cuda":
        return None
    return _smem_per_block(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _smem_per_block(index: int) -> int | None:
    props = torch.cuda.get_device_properties(index)
    return getattr(props, "shared_memory_per_block_optin", None)
