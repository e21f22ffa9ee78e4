"""``python -m benchmarks.readme_table``: the README's speed-up table, generated from committed results.

The table between ``<!-- speedups:begin -->`` and ``<!-- speedups:end -->`` in ``README.md`` is
written by this module, never by hand: ``tests/test_readme.py`` regenerates it and fails when the
README's block differs.

Input: the most recent GPU-suite results document of the quick grid under ``benchmarks/results/``
(``results.json`` or ``bench-quick-results.json``; ``--results FILE`` picks another).  Output: one
line per cell and dtype, one column per (B, H) measured for most of them, at the longest T, one
layer, unidirectional, dense input; each entry is the speed-up forward / forward+backward, where
speed-up = cuDNN time / fastrnn time (above 1: fastrnn is faster, shown in bold).  Below it: the
headline row (cuDNN's best case) and how many entries per dtype are above 1.

    python -m benchmarks.readme_table            # rewrite the block in README.md
    python -m benchmarks.readme_table --check    # exit 1 if the block is out of date
    python -m benchmarks.readme_table --print    # print the block
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .results import load

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
README = REPO_ROOT / "README.md"
BEGIN = "<!-- speedups:begin -->"
END = "<!-- speedups:end -->"

CELL_ORDER = ("LSTM", "GRU", "RNN")
DTYPE_ORDER = ("fp16", "bf16", "fp32", "fp64")
MODES = ("fwd", "fwdbwd")


def latest_results(root: Path = RESULTS) -> Path:
    """The most recent (by ``env.date``) GPU-suite results document of the quick grid under ``root``."""
    found = []
    for path in sorted(root.rglob("*.json")):
        if path.name not in ("results.json", "bench-quick-results.json"):
            continue
        doc = load(path)
        if doc.get("suite") == "gpu" and doc.get("grid") == "quick" and doc.get("env", {}).get("gpu"):
            found.append((doc["env"].get("date", ""), str(path), path))
    if not found:
        raise FileNotFoundError(f"no GPU results of the quick grid under {root}")
    return max(found)[2]


def _speedup(row: dict[str, Any] | None) -> float | None:
    return None if row is None else row.get("speedup")


def _fmt(x: float | None) -> str:
    if x is None:
        return "–"
    return f"**{x:.2f}**" if x >= 1 else f"{x:.2f}"


def table(doc: dict[str, Any], source: str) -> str:
    """The markdown block (without the markers) for results document ``doc`` read from ``source``."""
    rows = [r for r in doc["rows"] if r.get("type", "row") == "row" and "case" in r]
    plain = [
        r
        for r in rows
        if r["case"].get("kind") == "rnn"
        and r["case"].get("layers") == 1
        and not r["case"].get("bidir")
        and not r["case"].get("packed")
    ]
    if not plain:
        raise ValueError(f"{source}: no one-layer unidirectional dense rnn rows")
    T = max(r["case"]["T"] for r in plain)
    plain = [r for r in plain if r["case"]["T"] == T]
    by = {(c["cell"], c["dtype"], c["B"], c["H"], c["run"]): r for r in plain for c in [r["case"]]}
    combos = sorted(
        {(k[0], k[1]) for k in by},
        key=lambda cd: (CELL_ORDER.index(cd[0]) if cd[0] in CELL_ORDER else 99, DTYPE_ORDER.index(cd[1])),
    )
    sizes = {(k[2], k[3]) for k in by}
    # Columns: the (B, H) measured for at least half of the cells and dtypes (the headline's size,
    # measured for one of them, gets its own line below).
    cols = sorted(
        (bh for bh in sizes if 2 * sum((cd + bh + ("fwd",)) in by for cd in combos) >= len(combos)),
        key=lambda bh: (bh[1], bh[0]),
    )
    env = doc["env"]
    date = env.get("date", "")[:10]
    lines = [
        f"Measured on an {env['gpu']} (torch {env.get('torch')}, triton {env.get('triton')}, commit "
        f"{env.get('commit', '')[:7]}, {date}; `{source}`). Speed-up = cuDNN time / fastrnn time, "
        f"forward / forward+backward; above 1 (bold) fastrnn is faster. One layer, unidirectional, "
        f"dense input, T = {T}.",
        "",
        "| cell | dtype | " + " | ".join(f"B={B} H={H}" for B, H in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    faster: dict[str, list[int]] = {}
    for cell, dtype in combos:
        entries = []
        for B, H in cols:
            xs = [_speedup(by.get((cell, dtype, B, H, m))) for m in MODES]
            entries.append(" / ".join(_fmt(x) for x in xs))
            for x in xs:
                if x is not None:
                    n = faster.setdefault(dtype, [0, 0])
                    n[0] += x >= 1
                    n[1] += 1
        lines.append(f"| {cell} | {dtype} | " + " | ".join(entries) + " |")
    lines.append("")
    for r in rows:
        if r.get("tier") != 0 or r["case"]["run"] != "fwd":
            continue
        c = r["case"]
        res = r.get("results", {})
        sub, base = res.get(doc.get("subject", "fastrnn"), {}), res.get(doc.get("baseline", "cudnn"), {})
        bwd = by.get((c["cell"], c["dtype"], c["B"], c["H"], "fwdbwd"))
        if r.get("speedup") is None or "median_ms" not in sub or "median_ms" not in base:
            continue
        lines.append(
            f"Headline (cuDNN's best case, {c['cell']} {c['dtype']} B={c['B']} H={c['H']} T={c['T']}): "
            f"{_fmt(r['speedup'])} forward ({sub['median_ms']:.3g} ms vs cuDNN's {base['median_ms']:.3g} ms), "
            f"{_fmt(_speedup(bwd))} forward+backward."
        )
    counts = ", ".join(f"{n[0]} of {n[1]} {d}" for d in DTYPE_ORDER if d in faster for n in [faster[d]])
    lines.append(f"Entries above 1 in the table: {counts}.")
    return "\n".join(lines)


def render(results: Path | None = None) -> str:
    """The block for ``results`` (default: :func:`latest_results`), path shown relative to the repository."""
    path = (results or latest_results()).resolve()
    try:
        source = path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        source = path.name
    return table(load(path), source)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    return text[: start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def current_block(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    return text[start + len(BEGIN) : end].strip("\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.readme_table", description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, help="results document (default: the newest quick-grid GPU run)")
    ap.add_argument("--readme", type=Path, default=README)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if the README's block differs")
    g.add_argument("--print", action="store_true", help="print the block instead of writing it")
    args = ap.parse_args(argv)
    block = render(args.results)
    if args.print:
        print(block)
        return 0
    text = args.readme.read_text()
    if args.check:
        if current_block(text) != block:
            print(f"{args.readme}: the speed-up table is out of date; run python -m benchmarks.readme_table")
            return 1
        return 0
    new = replace_block(text, block)
    if new != text:
        args.readme.write_text(new)
        print(f"{args.readme}: speed-up table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
