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

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

# ---------------------------------------------------------------------------------------------
# Shared by every tier

#: The interpreter has no registers to spill; its limit only keeps CPU runs tractable.
INTERPRETER_MAX_WEIGHT_BYTES = 4 * 1024 * 1024

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------
# The registry of tiers and the choice


#: The precisions of fp32 dots (``tl.dot``'s ``input_precision``); other dtypes ignore it.
#: ``"ieee"``: IEEE fp32 FMA; ``"tf32x3"``: three TF32 products (about fp32's accuracy on tensor
#: cores); ``"tf32"``: one TF32 product (10-bit mantissa).  docs/numerics.md says when each applies.
PRECISIONS = ("ieee", "tf32x3", "tf32")


@runtime_checkable
class TierConfig(Protocol):
    """What every tier's launch configuration offers (a frozen dataclass of ints, bools and
    strings, so that a :class:`LayerPlan` can be written as a string and read back).

    The kernel report reads a configuration only through this interface:

    * ``TILE_CONSTEXPRS``: the kernels' constexprs of the batch tile, the unit tile and the
      reduction (K) tile, in that order;
    * ``tiles()``: those tiles as the report's rows name them (``block_b``, ``block_h``,
      ``block_p``, and anything else the tier wants shown);
    * ``k_trips(hidden_size)``: passes over the program's weights per step (1: all on chip);
    * ``on_chip_bytes(mode, hidden_size, proj_size, dtype)``: recurrent weight bytes a program
      holds on chip;
    * ``override(hidden_size, dtype, **changes)``: this configuration with the report's
      exploration knobs applied (``num_warps``, ``block_b``, ``split_k``, ``resident``; a knob the
      tier does not have raises ``ValueError``);
    * optionally ``ARCHS``: the compute capabilities (``90``, ``80``) the tier builds for (absent:
      every one the report compiles for).
    """

    TILE_CONSTEXPRS: ClassVar[tuple[str, ...]]

    def tiles(self) -> dict[str, Any]: ...

    def k_trips(self, hidden_size: int) -> int: ...

    def on_chip_bytes(self, mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int: ...

    def override(self, hidden_size: int, dtype: torch.dtype, **changes: Any) -> TierConfig: ...


@dataclass(frozen=True)
class Tier:
    """A kernel tier as the rest of fastrnn sees it.  Its kernel file registers it
    (:func:`register`); :func:`choose_tier`, :func:`plan_layer`, ``fastrnn.ops`` and the kernel
    report only go through this record.

    * ``unsupported(mode, hidden_size, proj_size, dtype, interpreted=False, release=None) -> str |
      None``: why it cannot run a layer (``None``: it can), with the limits of a Triton ``release``
      (default: the installed one; a tier whose limits do not depend on it ignores it);
    * ``device_unsupported(device) -> str | None``: why a CUDA ``device`` (``None``: the current
      one) cannot run the tier at all, whatever the layer (an architecture or a compiler the
      machine lacks; ``None``: no such condition).  :func:`tier_unsupported` asks both; the kernel
      report, which compiles without a GPU, asks only ``unsupported``;
    * ``config(mode, hidden_size, proj_size, dtype, kernel, smem_bytes, precision)``: its launch
      configuration for ``kernel`` (``"fwd"``/``"bwd"``), an instance of ``config_type`` (a frozen
      dataclass following :class:`TierConfig`);
    * ``describe(mode, hidden_size, proj_size, dtype) -> str``: what :func:`choose_tier` says when
      it picks this tier;
    * ``forward(call, gx, cfg) -> ForwardResult`` and ``backward(call, grads, cfg) ->
      BackwardResult`` run it (:mod:`.call`);
    * ``forward_launch(call, gx, cfg)`` / ``backward_launch(call, grads, cfg)`` build its launch
      without running it, and ``compiled(launch)`` gives the ``(kernel, args, kwargs)`` a real launch
      compiles (the kernel report's view of a Triton tier); a tier built otherwise (CUDA C++) has
      no ``compiled`` and gives the report its rows itself: ``report_rows(configs) -> rows``;
    * ``rank``: the order :func:`choose_tier` tries tiers in (lowest first); ``automatic=False``:
      only forced (``FASTRNN_TIER``) or as another tier's fallback;
    * ``verified(device) -> (ok, why)``: for a tier that is chosen automatically only on a GPU
      where its correctness tests have passed with these sources (``None``: no such condition);
      until then it runs only when forced;
    * ``barriers_per_step``: grid-wide barriers on each step's chain (the kernel report's estimate);
    * ``device_sources``: the files (relative to this package) its device code is built from
      (:func:`kernel_identity`).
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
    compiled: Callable[..., tuple] | None = None
    automatic: bool = True
    barriers_per_step: int = 0
    report_rows: Callable[..., list] | None = None
    device_sources: tuple[str, ...] = ()
    verified: Callable[..., tuple[bool, str]] | None = None
    device_unsupported: Callable[..., str | None] | None = None


_TIERS: dict[int, Tier] = {}


def register(tier: Tier) -> Tier:
    """Add ``tier`` to the registry (its kernel file calls this at import).  Its configuration
    type must be a frozen dataclass following :class:`TierConfig`."""
    cls = tier.config_type
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
        raise TypeError(f"tier {tier.number}: config_type {cls.__name__} must be a frozen dataclass")
    missing = [name for name in ("TILE_CONSTEXPRS", "tiles", "k_trips", "on_chip_bytes", "override")
               if not hasattr(cls, name)]  # fmt: skip
    if missing:
        raise TypeError(f"tier {tier.number}: config_type {cls.__name__} lacks {', '.join(missing)} (TierConfig)")
    _TIERS[tier.number] = tier
    _registered_tiers.cache_clear()
    plan_layer.cache_clear()
    return tier


def unregister(number: int) -> None:
    """Remove tier ``number`` from the registry (a tier registered for a while, e.g. by a test)."""
    _TIERS.pop(number, None)
    _registered_tiers.cache_clear()
    plan_layer.cache_clear()


def registered() -> dict[int, Tier]:
    """Every registered tier by number, in :attr:`Tier.rank` order."""
    return _registered_tiers()


@functools.cache
def _registered_tiers() -> dict[int, Tier]:
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
                     interpreted: bool = False, device: torch.device | None = None) -> str | None:  # fmt: skip
    """Why ``tier`` cannot run this layer on ``device`` (``None``: the current CUDA device; with
    ``interpreted``, CPU tensors in Triton's interpreter), ``None`` when it can."""
    record = get_tier(tier)
    why = record.unsupported(mode, hidden_size, proj_size, dtype, interpreted)
    if why is None and not interpreted and record.device_unsupported is not None:
        why = record.device_unsupported(device)
    return why


def choose_tier(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype,
                interpreted: bool = False, device: torch.device | None = None) -> tuple[int | None, str]:  # fmt: skip
    """``(tier, why)``: the tier that runs this layer on ``device`` (``None``: the current CUDA
    device), or ``(None, reasons)`` when none can.

    Rule: the first automatic tier in rank order that can run it (and, for a tier with
    :attr:`Tier.verified`, has passed its tests on this GPU) -- tier 1 whenever all of ``W_hh``
    fits one program (no barrier, fastest per step), else the cluster tier on a GPU where it is
    verified, else tier 2 (multi-program persistent; resident weights when the slice fits; it
    falls back to tier 3 at launch when the GPU cannot hold its grid).  ``FASTRNN_TIER`` forces
    one.
    """
    forced = forced_tier()
    if forced is not None:
        why = tier_unsupported(forced, mode, hidden_size, proj_size, dtype, interpreted, device)
        return (None, why) if why else (forced, f"tier {forced} forced by FASTRNN_TIER")
    reasons: list[str] = []
    for number, tier in registered().items():
        if not tier.automatic:
            continue
        why = tier_unsupported(number, mode, hidden_size, proj_size, dtype, interpreted, device)
        record = ""
        if why is None and tier.verified is not None:
            ok, record = tier.verified(device)
            why = None if ok else f"{record} (it runs when forced: FASTRNN_TIER={number})"
        if why is None:
            said = tier.describe(mode, hidden_size, proj_size, dtype) + (f" ({record})" if record else "")
            return number, f"{said}: {'; '.join(reasons)}" if reasons else said
        reasons.append(why)
    return None, "; ".join(reasons)


@dataclass(frozen=True)
class LayerPlan:
    """How one layer and direction runs: its tier, the fp32 dot precision and the tier's launch
    configuration of the forward and of the backward kernel.  Decided once per call (by
    ``fastrnn.dispatch``, or :func:`plan_stack` for the functional API) and handed down unchanged
    to ``fastrnn.ops`` and the tier; it crosses the custom ops as its :attr:`key`, a string
    (:func:`from_key` reads it back), so that a compiled graph carries it as a constant."""

    tier: int
    precision: str
    forward: Any
    backward: Any

    def config(self, kernel: str) -> Any:
        """The launch configuration of ``kernel`` (``"fwd"``/``"bwd"``)."""
        return self.forward if kernel == "fwd" else self.backward

    @property
    def key(self) -> str:
        """The plan as a string: ``"tier|precision|forward fields|backward fields"``."""
        key = self.__dict__.get("_key")
        if key is None:
            key = f"{self.tier}|{self.precision}|{_encode(self.forward)}|{_encode(self.backward)}"
            object.__setattr__(self, "_key", key)
            _BY_KEY.setdefault(key, self)
        return key


_BY_KEY: dict[str, LayerPlan] = {}


def _encode(config: Any) -> str:
    return ",".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))


def _decode_value(text: str, annotation: str) -> Any:
    if annotation == "bool":
        return text == "True"
    if annotation == "int":
        return int(text)
    if annotation == "float":
        return float(text)
    return text


def from_key(key: str) -> LayerPlan:
    """The :class:`LayerPlan` whose :attr:`~LayerPlan.key` is ``key`` (read back from the string
    when this process has not made it: a compiled graph from another process)."""
    plan = _BY_KEY.get(key)
    if plan is not None:
        return plan
    number, precision, fwd, bwd = key.split("|")
    cls = get_tier(int(number)).config_type
    types = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(cls)}

    def decode(text: str) -> Any:
        values = dict(item.split("=", 1) for item in text.split(",")) if text else {}
        return cls(**{name: _decode_value(v, types[name]) for name, v in values.items()})

    plan = LayerPlan(int(number), precision, decode(fwd), decode(bwd))
    _BY_KEY[key] = plan
    return plan


@functools.lru_cache(maxsize=1024)
def plan_layer(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, tier: int,
               smem_bytes: int | None = None, precision: str = "ieee") -> LayerPlan:  # fmt: skip
    """The :class:`LayerPlan` of ``tier`` for this layer on a device with ``smem_bytes`` of shared
    memory per block (:func:`smem_per_block`; ``None``: sm_90's), fp32 dots in ``precision``
    (:data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    make = get_tier(tier).config
    args = (mode, hidden_size, proj_size, dtype)
    plan = LayerPlan(
        tier, precision, make(*args, "fwd", smem_bytes, precision), make(*args, "bwd", smem_bytes, precision)
    )
    plan.key  # noqa: B018  (interned under its key)
    return plan


def plan_stack(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, *, layers: int, directions: int,
               device: torch.device | None, precision: str, interpreted: bool) -> tuple[LayerPlan, ...]:  # fmt: skip
    """One :class:`LayerPlan` per layer and direction (``layer * directions + direction``) of a
    stack: the tier :func:`choose_tier` picks (every layer has the same recurrent sizes; only the
    first layer's input projection, outside the kernels, sees the input width).  Raises
    :class:`NoTier` when no tier can run it."""
    tier, why = choose_tier(mode, hidden_size, proj_size, dtype, interpreted=interpreted, device=device)
    if tier is None:
        raise NoTier(f"no kernel tier runs {mode} with hidden_size={hidden_size}: {why}")
    plan = plan_layer(mode, hidden_size, proj_size, dtype, tier, smem_per_block(device), precision)
    return (plan,) * (layers * directions)


def kernel_identity(plan: LayerPlan, embedded: bool = False) -> str:
    """What a layer's kernels are: its plan's key and the hash of its tier's device code
    (:func:`.sources.device_code_hash`; with the fused embedding's gather-GEMM for ``embedded``).
    A measurement of a call applies to another build of fastrnn exactly while this is the same."""
    from .sources import device_code_hash

    files = get_tier(plan.tier).device_sources + (("embedding.py",) if embedded else ())
    return f"{plan.key}@{device_code_hash(tuple(sorted(set(files))))}"


class NoTier(RuntimeError):
    """No registered tier can run a layer (the message says why each cannot)."""


def smem_per_block(device: torch.device | None) -> int | None:
    """Shared memory a block may use on ``device`` (its opt-in maximum), ``None`` when unknown."""
    if device is None or device.type != "cuda":
        return None
    return _smem_per_block(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _smem_per_block(index: int) -> int | None:
    props = torch.cuda.get_device_properties(index)
    return getattr(props, "shared_memory_per_block_optin", None)
