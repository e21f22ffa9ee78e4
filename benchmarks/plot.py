"""Speed-up heatmaps from a ``results.json``: ``python -m benchmarks.plot results.json``.

One PNG per mode (``speedup_fwd.png``, ``speedup_fwdbwd.png``; other case kinds than ``rnn`` get
``speedup_<kind>_<mode>.png``): a panel per (cell, dtype), batch
size B down, hidden size H across, each square coloured and labelled with the speed-up over the
baseline (cuDNN on a GPU, torch.nn in CPU mode; above 1 = fastrnn faster, log colour scale centred
at 1).  Squares where fastrnn (or the baseline) did not run say "n/a"; blank squares were not measured.  The other row fields are held fixed at one
slice: by default the longest T, 1 layer, unidirectional, dense (whatever of those the file has) and
the most common value of a kind's extra fields (e.g. ``V``); ``--T``, ``--layers``, ``--bidir``,
``--packed`` choose another.  Matplotlib's Agg backend: no
display needed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .cases import PROVIDER_LABELS
from .results import load

SLICE_FIELDS = ("T", "layers", "bidir", "packed")
_AXES = ("kind", "cell", "dtype", "B", "H", "run")
_TIED_TO_H = {"E", "I"}
_TICKS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 8.0, 16.0)


def _slice_fields(rows: list[dict[str, Any]]) -> list[str]:
    """The fields held fixed in a plot: T, layers, bidir, packed and a kind's extras (``V``...), but
    not the sizes the grids tie to H (``E``, ``I``) nor the axes and panels."""
    extras = sorted({k for r in rows for k in r["case"]} - set(_AXES) - set(SLICE_FIELDS) - _TIED_TO_H)
    return list(SLICE_FIELDS) + extras


def choose_slice(rows: list[dict[str, Any]], **fixed: Any) -> dict[str, Any]:
    """The slice to plot: ``fixed`` values, else the preferred ones present (see module doc)."""
    preferred = {"layers": 1, "bidir": False, "packed": False}
    out: dict[str, Any] = {}
    pool = rows
    for f in _slice_fields(rows):
        values = Counter(r["case"].get(f) for r in pool)
        if fixed.get(f) is not None:
            out[f] = fixed[f]
        elif f == "T":
            with_speedup = [r["case"]["T"] for r in pool if r.get("speedup")]
            out[f] = max(with_speedup or values or [0])
        elif f in preferred and preferred[f] in values:
            out[f] = preferred[f]
        else:
            out[f] = values.most_common(1)[0][0] if values else None
        pool = [r for r in pool if r["case"].get(f) == out[f]] or pool
    return out


def plot_document(doc: dict[str, Any], out_dir: Path | str, **fixed: Any) -> list[Path]:
    """Write one heatmap PNG per mode into ``out_dir``; returns the paths (see module doc)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    out_dir = Path(out_dir)
    paths = []
    for kind in sorted({r["case"]["kind"] for r in doc["rows"]}):
        rows = [r for r in doc["rows"] if r["case"]["kind"] == kind]
        paths += _plot_kind(doc, kind, rows, out_dir, plt, np, TwoSlopeNorm, fixed)
    return paths


def _plot_kind(doc, kind, rows, out_dir, plt, np, TwoSlopeNorm, fixed) -> list[Path]:
    sl = choose_slice(rows, **fixed)
    picked = [r for r in rows if all(r["case"].get(f) == v for f, v in sl.items())]
    base = PROVIDER_LABELS.get(doc["baseline"], doc["baseline"])
    sub = PROVIDER_LABELS.get(doc["subject"], doc["subject"])
    device = doc["env"].get("gpu") or "CPU"
    paths = []
    for mode in sorted({r["case"]["run"] for r in picked}):
        mrows = [r for r in picked if r["case"]["run"] == mode]
        panels = sorted({(r["case"]["cell"], r["case"]["dtype"]) for r in mrows})
        cells = sorted({c for c, _ in panels})
        dtypes = sorted({d for _, d in panels})
        fig, axes = plt.subplots(
            len(cells),
            len(dtypes),
            squeeze=False,
            layout="constrained",
            figsize=(max(7.0, 3.6 * len(dtypes) + 1.2), 2.9 * len(cells) + 1.0),
        )
        logs = [math.log2(r["speedup"]) for r in mrows if r.get("speedup")]
        span = max([abs(x) for x in logs] + [0.25])
        span = min(span, 4.0)
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
        im = None
        for i, cell in enumerate(cells):
            for j, dtype in enumerate(dtypes):
                ax = axes[i][j]
                prs = [r for r in mrows if r["case"]["cell"] == cell and r["case"]["dtype"] == dtype]
                Bs = sorted({r["case"]["B"] for r in prs})
                Hs = sorted({r["case"]["H"] for r in prs})
                if not prs:
                    ax.set_axis_off()
                    continue
                grid = [[math.nan] * len(Hs) for _ in Bs]
                labels = [[""] * len(Hs) for _ in Bs]  # no row measured there
                for r in prs:
                    bi, hi = Bs.index(r["case"]["B"]), Hs.index(r["case"]["H"])
                    labels[bi][hi] = "n/a"  # measured, but not both providers
                    if r.get("speedup"):
                        grid[bi][hi] = math.log2(r["speedup"])
                        labels[bi][hi] = f"{r['speedup']:.2f}×"
                cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#d9d9d9")
                im = ax.imshow(np.ma.masked_invalid(np.array(grid, dtype=float)), cmap=cmap, norm=norm, aspect="auto")
                for bi in range(len(Bs)):
                    for hi in range(len(Hs)):
                        ax.text(hi, bi, labels[bi][hi], ha="center", va="center", fontsize=8)
                ax.set_xticks(range(len(Hs)), [str(h) for h in Hs])
                ax.set_yticks(range(len(Bs)), [str(b) for b in Bs])
                ax.set_xlabel("H")
                ax.set_ylabel("B")
                ax.set_title(f"{cell} {dtype}")
        what = (
            f"T={sl['T']}, {sl['layers']} layer{'s' if sl['layers'] != 1 else ''}, "
            f"{'bidirectional' if sl['bidir'] else 'unidirectional'}, {'packed' if sl['packed'] else 'dense'}"
        )
        what += "".join(f", {k}={v}" for k, v in sl.items() if k not in SLICE_FIELDS)
        title = "" if kind == "rnn" else f"[{kind}] "
        fig.suptitle(
            f"{title}speed-up of {sub} over {base} ({base} time / {sub} time), {mode} — {device}\n{what}",
            fontsize=10,
        )
        if im is not None:
            cbar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
            ticks = [x for x in _TICKS if abs(math.log2(x)) <= span + 1e-9]
            if len(ticks) > 9:
                ticks = [x for x in ticks if math.log2(x).is_integer()]
            cbar.set_ticks([math.log2(x) for x in ticks])
            cbar.set_ticklabels([f"{x:g}×" for x in ticks])
        path = out_dir / (f"speedup_{mode}.png" if kind == "rnn" else f"speedup_{kind}_{mode}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "bi", "packed")


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.plot results.json [--out DIR] [--T 1024] ...``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a results.json written by python -m benchmarks (or its folder)")
    ap.add_argument("--out", help="folder for the PNGs (default: beside the JSON)")
    ap.add_argument("--T", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--bidir", type=_bool)
    ap.add_argument("--packed", type=_bool)
    args = ap.parse_args(argv)
    path = Path(args.results)
    if path.is_dir():
        path = path / "results.json"
    doc = load(path)
    paths = plot_document(
        doc,
        Path(args.out) if args.out else path.parent,
        T=args.T,
        layers=args.layers,
        bidir=args.bidir,
        packed=args.packed,
    )
    for p in paths:
        print(p)
    if not paths:
        print("nothing to plot: no rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
