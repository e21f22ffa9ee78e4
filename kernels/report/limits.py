"""A tier's size limits in hidden sizes, per cell, dtype and Triton release, as a markdown table.

``docs/tiers.md`` carries tier 1's table between ``<!-- tier1-limits:begin -->`` and
``<!-- tier1-limits:end -->``; it is generated from the release data (``kernels/releases.json``,
through the registered tier's ``unsupported``), never typed:
``python -m fastrnn.kernels.report --limits-table`` prints it and ``tests/test_readme.py`` fails
when the page differs.
"""

from __future__ import annotations

import torch

from .. import cells, releases, tiers

BEGIN = "<!-- tier{}-limits:begin -->"
END = "<!-- tier{}-limits:end -->"

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}

#: Hidden sizes searched (a table is for a tier with a size limit far below this).
MAX_SEARCHED = 1024


def largest(mode: str, dtype: torch.dtype, release: str, multiple_of_16: bool, tier: int = 1) -> int | None:
    """The largest hidden size (a multiple of 16, or not) ``tier`` runs for ``mode`` in ``dtype``
    under ``release``; ``None``: none."""
    unsupported = tiers.get_tier(tier).unsupported
    sizes = range(16, MAX_SEARCHED + 1, 16) if multiple_of_16 else (h for h in range(1, MAX_SEARCHED) if h % 16)
    ok = [h for h in sizes if unsupported(mode, h, 0, dtype, False, release=release) is None]
    return max(ok) if ok else None


def _entry(mode: str, dtype: torch.dtype, release: str, tier: int) -> str:
    a, b = largest(mode, dtype, release, True, tier), largest(mode, dtype, release, False, tier)
    if a is None and b is None:
        return "none"
    return f"≤ {a if a is not None else '–'} (other H ≤ {b if b is not None else '–'})"


def table(release_names: tuple[str, ...] | None = None, tier: int = 1) -> str:
    """One row per registered cell (not extended first, then the extended ones) and dtype column;
    where the known releases differ, each release's entry is named."""
    names = release_names or tuple(releases.load()["releases"])
    modes = cells.modes(extended=False) + cells.modes(extended=True)
    head = f"| tier {tier} on a GPU: largest H | " + " | ".join(DTYPE_NAMES.values()) + " |"
    lines = [head, "|---|" + "---|" * len(DTYPE_NAMES)]
    for mode in modes:
        row = []
        for dtype in DTYPE_NAMES:
            by_release = {r: _entry(mode, dtype, r, tier) for r in names}
            if len(set(by_release.values())) == 1:
                row.append(next(iter(by_release.values())))
            else:
                row.append("; ".join(f"triton {r}: {e}" for r, e in by_release.items()))
        lines.append(f"| {mode} | " + " | ".join(row) + " |")
    where = ", ".join(names)
    return (
        f"{BEGIN.format(tier)}\nGenerated from `kernels/releases.json` (Triton releases {where}) by "
        f"`python -m fastrnn.kernels.report --limits-table`. H a multiple of 16 (other H in parentheses):\n\n"
        + "\n".join(lines)
        + f"\n{END.format(tier)}"
    )


def current_block(text: str, tier: int = 1) -> str:
    """The generated block of a page (markers included); empty when it has none."""
    begin, end = BEGIN.format(tier), END.format(tier)
    if begin not in text or end not in text:
        return ""
    return text[text.index(begin) : text.index(end) + len(end)]
