"""A toy kernel tier, defined and registered the way ARCHITECTURE.md ("Adding a tier") says: one
file -- its limits, its launch configuration (a frozen dataclass following
:class:`fastrnn.kernels.tiers.TierConfig`), its launchers -- and one registration.

It runs tier 1's kernels with 32-row batch tiles and 4 warps, forced only (``FASTRNN_TIER=9``),
and only small layers.  Nothing in fastrnn names it: ``tests/test_new_tier.py`` takes it through
dispatch, the ops, the kernel report and a benchmark row by this registration alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from fastrnn.kernels import cells, tier1, tiers
from fastrnn.kernels.common import pow2

NUMBER = 9
#: The largest hidden size it takes.
MAX_HIDDEN = 64


@dataclass(frozen=True)
class ToyConfig:
    """Tier 1's tiles with 32 sequences per program (tier 1's launchers read these fields)."""

    block_b: int
    block_h: int
    block_p: int
    num_warps: int = 4
    split_k: int = 1

    TILE_CONSTEXPRS = ("BLOCK_B", "BLOCK_H", "BLOCK_P")

    def tiles(self) -> dict[str, Any]:
        return dict(block_b=self.block_b, block_h=self.block_h, block_p=self.block_p)

    def k_trips(self, hidden_size: int) -> int:
        return 1

    def on_chip_bytes(self, mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int:
        return cells.get(mode).G * self.block_h * self.block_p * torch.empty(0, dtype=dtype).element_size()

    def override(self, hidden_size: int, dtype: torch.dtype, **changes: Any) -> ToyConfig:
        unknown = set(changes) - {"num_warps", "block_b"}
        if unknown:
            raise ValueError(f"the toy tier has no {', '.join(sorted(unknown))} to override")
        return dataclasses.replace(self, **changes)


def unsupported(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, interpreted: bool = False,
                release: str | None = None) -> str | None:  # fmt: skip
    if proj_size or cells.get(mode).extended:
        return "the toy tier runs plain cells without a projection"
    if hidden_size > MAX_HIDDEN:
        return f"the toy tier runs hidden sizes up to {MAX_HIDDEN}"
    return None


def config(mode, hidden_size, proj_size, dtype, kernel, smem_bytes, precision) -> ToyConfig:
    return ToyConfig(32, pow2(hidden_size), pow2(proj_size or hidden_size))


def register() -> tiers.Tier:
    return tiers.register(
        tiers.Tier(
            number=NUMBER,
            name="toy (tier 1's kernels, 32-row tiles)",
            rank=0.5,
            config_type=ToyConfig,
            unsupported=unsupported,
            config=config,
            describe=lambda mode, hidden_size, proj_size, dtype: "the toy tier",
            forward=tier1.recurrent_fwd,
            backward=tier1.recurrent_bwd,
            forward_launch=tier1.forward_launch,
            backward_launch=tier1.backward_launch,
            compiled=lambda launch: (launch.kernel, launch.args, dict(launch.kwargs)),
            automatic=False,
        )
    )


def unregister() -> None:
    tiers.unregister(NUMBER)
