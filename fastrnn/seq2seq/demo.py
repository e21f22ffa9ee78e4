"""``fastrnn demo``: long-range forgetting of the plain encoder-decoder, and attention's cure, measured.

Two models that differ only in attention are trained on the built-in ``reverse`` task (a random
letter string -> the same string backwards) for the same number of steps.  The last source letter
is the first one to emit, so the plain model must carry the *first* source letters through the
whole source and the whole output in its single context vector: the longer the source, the more
it forgets.  With attention the decoder looks back at every encoder state instead.

The demo prints the exact-match accuracy by source length of both models on unseen pairs and
writes a plot (PNG) of accuracy vs. source length.  The two models train side by side in two
processes of one thread each (a 2-core machine: about 5 minutes in all), with ``backend="auto"``:
on a CPU that runs ``torch.nn``'s own recurrent code, on a GPU the fastrnn kernels.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import make_task, plural


@dataclass
class DemoSettings:
    """Sizes of the demo's models and runs (the defaults are the tuned ones)."""

    steps: int = 2000
    batch_size: int = 64
    min_len: int = 1
    max_len: int = 20
    hidden_size: int = 128
    embedding_dim: int = 32
    attention: str = "general"
    lr: float = 3e-3
    lr_decay: str = "linear"
    test_size: int = 2000
    seed: int = 0
    epochs: int = 5
    bucket: int = 4


VARIANTS = (("no attention", None), ("attention", "attention"))

DESCRIPTION = (
    "Long-range forgetting, measured: train two bidirectional-GRU encoder-decoders that differ only in "
    "attention on the reverse task (a random letter string -> the same string backwards), print their "
    "exact-match accuracy on unseen pairs by source length and plot it. About 2-4 minutes on 2 CPU cores."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    p.add_argument("--out", default="fastrnn-demo", help="folder for the plot and both checkpoints")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps per model")
    p.add_argument("--max-len", type=int, default=d.max_len, help="longest source")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help="hidden size of both models")
    p.add_argument("--test-size", type=int, default=d.test_size, help="unseen test pairs")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the data and the initialisation")
    p.add_argument("--sequential", action="store_true", help="train the two models one after the other (default: side by side, two processes)")  # fmt: skip


def _train_variant(label: str, attention: str | None, s: DemoSettings, out: str, threads: int | None = None) -> dict:
    """Train one variant and return its per-pair test results (``threads``: set in a worker process)."""
    if threads is not None:
        torch.set_num_threads(threads)
    from .train import TrainOptions, evaluate, train

    opts = TrainOptions(
        out=out, task="reverse", train_size=max(1, s.steps // s.epochs) * s.batch_size, valid_size=300, min_len=s.min_len,
        max_len=s.max_len, mode="GRU", embedding_dim=s.embedding_dim, hidden_size=s.hidden_size,
        bidirectional=True, attention=attention, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, lr_decay=s.lr_decay,
        seed=s.seed, progress=False, overwrite=True, label=label,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = train(opts)
    seconds = time.perf_counter() - t0
    test = make_task("reverse", s.test_size, seed=s.seed + 7919, split="valid", min_len=s.min_len, max_len=s.max_len)
    res = evaluate(result.model, test, result.src_vocab, result.tgt_vocab)
    return {"rows": [(n, ok) for n, ok, *_ in res.rows], "seconds": seconds, "exact": res.exact_match}


def accuracy_by_length(rows: list[tuple[int, bool]], lo: int, hi: int) -> tuple[int, float]:
    """``(pairs, exact-match accuracy)`` of the rows whose source length lies in ``[lo, hi]``."""
    sel = [ok for n, ok in rows if lo <= n <= hi]
    return len(sel), (sum(sel) / len(sel) if sel else float("nan"))


def table(results: dict[str, dict], s: DemoSettings) -> str:
    """The exact-match table by source-length bucket (``s.bucket`` lengths per bucket)."""
    names = list(results)
    lines = [f"{'source length':>13} {'pairs':>6} " + " ".join(f"{n:>13}" for n in names)]
    for lo in range(s.min_len, s.max_len + 1, s.bucket):
        hi = min(lo + s.bucket - 1, s.max_len)
        counts = [accuracy_by_length(results[n]["rows"], lo, hi) for n in names]
        lines.append(
            f"{f'{lo}-{hi}' if hi > lo else str(lo):>13} {counts[0][0]:>6} "
            + " ".join(f"{acc:>13.1%}" for _, acc in counts)
        )
    lines.append(f"{'all':>13} {s.test_size:>6} " + " ".join(f"{results[n]['exact']:>13.1%}" for n in names))
    return "\n".join(lines)


def plot(results: dict[str, dict], s: DemoSettings, path: Path) -> Path | None:
    """Accuracy vs. source length, one line per model (``None`` without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lengths = list(range(s.min_len, s.max_len + 1))
    for (name, res), marker in zip(results.items(), "os"):
        acc = [accuracy_by_length(res["rows"], n, n)[1] * 100 for n in lengths]
        ax.plot(lengths, acc, marker=marker, ms=4, label=name)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("source length (characters)")
    ax.set_ylabel("exact-match accuracy (%)")
    ax.set_ylim(-3, 103)
    finish_figure(fig, ax, f"reverse task: GRU encoder-decoder, {s.steps} training steps each, unseen pairs", path)
    return path


def finish_figure(fig, ax, title: str, path) -> None:
    """Title, grid and legend of a one-axes accuracy plot; write it to ``path`` (PNG) and close it."""
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(s: DemoSettings, out: str | Path = "fastrnn-demo", sequential: bool = False) -> dict[str, dict]:
    """Train both variants, print the table, write ``out/accuracy_vs_length.png``; returns the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(label, s.attention if kind else None, s, str(out / label.replace(" ", "_"))) for label, kind in VARIANTS]
    print(
        f"fastrnn demo: reverse a random string of {s.min_len}-{s.max_len} letters. Two bidirectional-GRU "
        f"encoder-decoders (hidden {s.hidden_size}), one with {s.attention!r} attention, {plural(s.steps, 'step')} of "
        f"{plural(s.batch_size, 'pair')} each{'' if sequential else ', trained side by side'}.",
        flush=True,
    )
    t0 = time.perf_counter()
    if sequential:
        results = {job[0]: _train_variant(*job) for job in jobs}
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(len(jobs)) as pool:
            pending = [pool.apply_async(_train_variant, (*job, 1)) for job in jobs]
            results = {job[0]: p.get() for job, p in zip(jobs, pending)}
    print(f"\nexact-match accuracy on {s.test_size} unseen pairs, by source length:")
    print(table(results, s))
    png = plot(results, s, out / "accuracy_vs_length.png")
    print(f"\nplot: {png}" if png else "\n(no plot: install matplotlib)")
    print(f"checkpoints: {', '.join(str(out / j[0].replace(' ', '_')) for j in jobs)} (try: fastrnn translate -c {out / 'attention'} abcdefghij)")  # fmt: skip
    print(f"total time {time.perf_counter() - t0:.0f}s on {plural(os.cpu_count() or 1, 'CPU core')}")
    return results


def main(args: argparse.Namespace) -> int:
    s = DemoSettings(
        steps=args.steps, max_len=args.max_len, hidden_size=args.hidden_size, test_size=args.test_size, seed=args.seed
    )
    run_demo(s, args.out, sequential=args.sequential)
    return 0
