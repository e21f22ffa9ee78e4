"""Which kernel tier runs a layer: the registry of tiers, decided here once per layer and call.

A tier is a kernel file that registers itself (:func:`register`, a :class:`Tier`): what it
cannot run, its launch configuration, its launchers.  Registered now:

* **tier 1** (``tier1.py``): one program holds all of ``W_hh`` (and ``W_hr``) on chip for a
  tile of sequences; no synchronisation between programs.  Limited by what a program can hold.
* **tier 2** (``persistent.py``, persistent): the hidden units are split across programs that exchange
  ``h_t`` through L2 with a grid barrier per step, in one cooperative launch.
* **tier 3** (``persistent.py``, per step): the same body launched once per step (tier 2's fallback).

:func:`choose_tier` picks the tier (``FASTRNN_TIER`` forces one); :func:`plan` returns it with its
launch configuration, which the launchers take as given.  Each tier's limits come from the
installed Triton release's measurements (:mod:`.releases`); how they were measured is in
``kernels/NOTES.md``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# ---------------------------------------------------------------------------------------------
# Shared by every tier

#: The interpreter has no registers to spill; its limit only keeps CPU runs tractable.
INTERPRETER_MAX_WEIGHT_BYTES = 4 * 1024 * 1024

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
      configuration for ``kernel`` (``"fwd"``/``"bwd"``), a frozen dataclass;
    * ``describe(mode, hidden_size, proj_size, dtype) -> str``: what :func:`choose_tier` says when
      it picks this tier;
    * ``forward(call, gx, cfg) -> ForwardResult`` and ``backward(call, grads, cfg) ->
      BackwardResult`` run it (:mod:`.call`);
    * ``forward_launch(call, gx, cfg)`` / ``backward_launch(call, grads, cfg)`` build its launch
      without running it, and ``compiled(launch)`` gives the ``(kernel, args, kwargs)`` a real launch
      compiles (the kernel report's view);
    * ``rank``: the order :func:`choose_tier` tries tiers in (lowest first); ``automatic=False``:
      only forced (``FASTRNN_TIER``) or as another tier's fallback;
    * ``barriers_per_step``: grid-wide barriers on each step's chain (the kernel report's estimate).

    Its configuration type names its tiles for the report: ``TILE_CONSTEXPRS``, ``tiles()``,
    ``k_trips(hidden_size)`` and ``on_chip_bytes(mode, hidden_size, proj_size, dtype)``.
    """

    number: int
    name: str
    rank: float
    unsupported: Callable[..., str | None]
    config: Callable[..., Any]
    describe: Callable[..., str]
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    forward_launch: Callable[..., Any]
    backward_launch: Callable[..., Any]
    compiled: Callable[..., tuple]
    automatic: bool = True
    barriers_per_step: int = 0


_TIERS: dict[int, Tier] = {}


def register(tier: Tier) -> Tier:
    """Add ``tier`` to the registry (its kernel file calls this at import)."""
    _TIERS[tier.number] = tier
    return tier


def registered() -> dict[int, Tier]:
    """Every registered tier by number, in :attr:`Tier.rank` order."""
    import importlib

    from .sources import TIER_MODULES

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
