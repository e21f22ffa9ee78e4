"""The grids of every case kind: which rows a run measures, in which order.

The kinds register themselves in :data:`benchmarks.cases.KINDS` when their module is imported;
this module imports them all (a new kind adds its import here) and is the only one that does, so
the registry (:mod:`benchmarks.cases`) never imports the kinds that import it.
"""

from __future__ import annotations

from . import beyond, embedding, rnn, seq2seq  # noqa: F401  (each registers its kind)
from .cases import KINDS, Case


def grid(name: str) -> list[Case]:
    """All rows of grid ``name`` over every registered kind, in run order (headline rows first)."""
    rows: list[Case] = []
    for kind in KINDS.values():
        if name in kind.grids:
            rows += kind.grids[name]()
    seen: set[str] = set()
    unique = [r for r in rows if not (r.key in seen or seen.add(r.key))]
    order = {r.key: i for i, r in enumerate(unique)}
    return sorted(unique, key=lambda r: (KINDS[r.kind].tier(r), order[r.key]))


def grid_names() -> list[str]:
    """The names of the grids some kind defines."""
    return sorted({g for kind in KINDS.values() for g in kind.grids})


def tier(case: Case) -> int:
    """Run-order tier of a row (0: headline rows first)."""
    return KINDS[case.kind].tier(case)
