"""``fastrnn train | translate | evaluate | demo``: the seq2seq command line.

Every command prints a one-line ``fastrnn CMD: error: ...`` and exits with status 2 on bad input
(missing or damaged files, malformed data, mismatching checkpoints); nothing is overwritten then.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields

import torch

from .data import (
    STRING_TASKS,
    TASKS,
    Seq2SeqError,
    Vocab,
    check_texts,
    encode_batch,
    make_task,
    plural,
    read_tsv,
    unknown_tokens,
)
from .decoding import LENGTH_PENALTY
from .model import ATTENTIONS, MODES

EXIT_ERROR = 2


def _none_or(kind):
    return lambda s: None if s.lower() == "none" else kind(s)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``translate``, ``evaluate`` and ``demo`` on the ``fastrnn`` parser.

    Every option has a help line; the parser's formatter (``fastrnn.__main__.HelpFormatter``)
    appends its default unless the help already states it.
    """
    from .train import LR_DECAYS, TrainOptions

    d = TrainOptions()
    p = sub.add_parser(
        "train",
        help="train a seq2seq model on a built-in task or a TSV file",
        description="Train an encoder-decoder on a built-in task (generated from --seed) or on your "
        "source<TAB>target pairs; checkpoint to OUT/checkpoint.pt after every epoch. A progress bar on a "
        "terminal, plain progress lines otherwise (a log file). "
        "Several processes: torchrun --nproc_per_node N -m fastrnn train ...",
    )
    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--task", choices=TASKS, help="built-in task, generated from --seed (default: reverse, unless --data)")  # fmt: skip
    src.add_argument("--data", metavar="FILE.tsv", help="training pairs, one source<TAB>target per line (default: none, use --task)")  # fmt: skip
    g.add_argument("--valid-data", metavar="FILE.tsv", help="validation pairs (default: every 20th line of --data)")
    g.add_argument("--level", choices=("char", "word"), default=d.level, help="tokenisation of --data")
    g.add_argument("--max-vocab", type=int, default=d.max_vocab, help="keep the most frequent tokens only (default: all)")  # fmt: skip
    g.add_argument("--train-size", type=int, default=d.train_size, help="pairs generated for a task")
    g.add_argument("--valid-size", type=int, default=d.valid_size, help="validation pairs")
    g.add_argument("--min-len", type=int, default=d.min_len, help="shortest task source")
    g.add_argument("--max-len", type=int, default=d.max_len, help="longest task source")
    g = p.add_argument_group("model")
    g.add_argument("--mode", choices=MODES, default=d.mode, help="recurrent cell")
    g.add_argument("--embedding-dim", type=int, default=d.embedding_dim, help="token embedding size")
    g.add_argument("--hidden-size", type=int, default=d.hidden_size, help="hidden size of encoder and decoder")
    g.add_argument("--num-layers", type=int, default=d.num_layers, help="stacked recurrent layers")
    g.add_argument("--bidirectional", action="store_true", help="bidirectional encoder")
    g.add_argument("--attention", type=_none_or(str), default=None, choices=ATTENTIONS, metavar="{none,dot,general,concat,bahdanau}", help="none, dot, general, concat (Luong) or bahdanau (default: none)")  # fmt: skip
    g.add_argument("--attention-size", type=int, default=None, help="hidden size of additive scores (default: --hidden-size)")  # fmt: skip
    g.add_argument("--dropout", type=float, default=d.dropout, help="dropout between layers and before the output")
    g.add_argument("--backend", choices=("auto", "triton", "torch"), default=d.backend, help="recurrent kernels: auto = triton on a GPU, torch.nn's code on a CPU")  # fmt: skip
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training pairs")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per step and process")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear learning-rate warm-up")
    g.add_argument("--lr-decay", choices=LR_DECAYS, default=d.lr_decay, help="after warm-up, to 5%% at the last epoch")  # fmt: skip
    g.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clip")
    g.add_argument("--teacher-forcing", type=float, default=d.teacher_forcing, help="probability of feeding the truth; < 1: scheduled sampling")  # fmt: skip
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the task data, the initialisation and the data order")  # fmt: skip
    g = p.add_argument_group("running")
    g.add_argument("--out", default=d.out, help="run directory; checkpoint at OUT/checkpoint.pt")
    g.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    g.add_argument("--overwrite", action="store_true", help="start over even if --out holds a checkpoint")
    g.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (0: after each epoch only)")  # fmt: skip
    g.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after N steps in all (default: no limit)")  # fmt: skip
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="pairs per validation batch")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda, per local rank, if available, else cpu)")  # fmt: skip
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or progress lines")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_guard(run_train))

    p = sub.add_parser(
        "translate",
        help="translate sources (arguments, or lines on stdin) with a checkpoint",
        description="Translate each source (the arguments, or else every line on stdin) with a trained "
        "checkpoint and print one output line per source. Greedy decoding, or beam search with --beam.",
    )
    p.add_argument("text", nargs="*", help="sources to translate (default: read lines from stdin)")
    _checkpoint_args(p)
    p.set_defaults(run=_guard(run_translate))

    p = sub.add_parser(
        "evaluate",
        help="exact match, token accuracy and BLEU of a checkpoint, by source length",
        description="Decode held-out pairs with a checkpoint (its validation data, fresh pairs of a built-in "
        "task, or a TSV file) and print exact match, token accuracy and, for word-level data, BLEU, "
        "overall and by source length.",
    )
    _checkpoint_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", choices=TASKS, help="evaluate on fresh pairs of a built-in task (default: the checkpoint's validation data)")  # fmt: skip
    src.add_argument("--data", metavar="FILE.tsv", help="evaluate on these pairs (default: the checkpoint's validation data)")  # fmt: skip
    p.add_argument("--size", type=int, default=1000, help="pairs of --task")
    p.add_argument("--min-len", type=int, default=None, help="--task: shortest source (default: the checkpoint's)")
    p.add_argument("--max-len", type=int, default=None, help="--task: longest source (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=12345, help="--task: generation seed")
    p.add_argument("--buckets", type=int, default=6, help="number of source-length buckets")
    p.add_argument("--plot", metavar="FILE.png", help="plot the metric by source-length bucket, BLEU for text (default: no plot)")  # fmt: skip
    p.set_defaults(run=_guard(run_evaluate))

    from . import demo

    p = sub.add_parser(
        "demo",
        help="long-range forgetting, measured: seq2seq with and without attention on reverse",
        description=demo.DESCRIPTION,
    )
    demo.add_arguments(p)
    p.set_defaults(run=_guard(demo.main))


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", required=True, help="checkpoint file, or a run directory")
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy decoding)")
    p.add_argument("--length-penalty", type=float, default=LENGTH_PENALTY, metavar="L", help="beam search ranks a hypothesis by its log-probability / length ** L (0: the raw log-probability, 1: per token)")  # fmt: skip
    p.add_argument("--max-out", type=int, default=None, help="longest output (default: 2 x longest source + 10)")
    p.add_argument("--batch-size", type=int, default=256, help="sources decoded together")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--eager", action="store_true", help="decode step by step with the model's own step, not on static buffers (a CUDA graph on a GPU)")  # fmt: skip


def _guard(fn):
    """Run a command; a :class:`Seq2SeqError` becomes a one-line message and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except Seq2SeqError as e:
            print(f"fastrnn {args.command}: error: {e}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print(f"fastrnn {args.command}: interrupted", file=sys.stderr)
            return 130

    return run


def _device(name: str | None) -> torch.device:
    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_train(args: argparse.Namespace) -> int:
    from .train import TrainOptions, train

    kw = {f.name: getattr(args, f.name) for f in fields(TrainOptions) if hasattr(args, f.name)}
    if kw["task"] is None and kw["data"] is None:
        kw["task"] = "reverse"
    if kw["valid_data"] is not None and kw["data"] is None:
        raise Seq2SeqError("--valid-data needs --data")
    train(TrainOptions(**kw))
    return 0


def _load(args: argparse.Namespace):
    from .train import load_checkpoint, model_from_checkpoint

    if args.beam < 1:
        raise Seq2SeqError(f"--beam must be at least 1, got {args.beam}")
    if args.max_out is not None and args.max_out < 1:
        raise Seq2SeqError(f"--max-out must be at least 1, got {args.max_out}")
    if args.batch_size < 1:
        raise Seq2SeqError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not math.isfinite(args.length_penalty):
        raise Seq2SeqError(f"--length-penalty must be a finite number, got {args.length_penalty}")
    ckpt = load_checkpoint(args.checkpoint)
    model, src_vocab, tgt_vocab = model_from_checkpoint(ckpt, _device(args.device))
    return ckpt, model, src_vocab, tgt_vocab


def _warn_unknown(command: str, vocab: Vocab, texts: list[str], what: str) -> None:
    """One warning line on stderr when ``texts`` hold tokens that ``vocab`` does not know."""
    unknown = unknown_tokens(vocab, texts)
    if not unknown:
        return
    kind = "character" if vocab.level == "char" else "word"
    shown = ", ".join(repr(t) for t, _ in unknown.most_common(10)) + (", ..." if len(unknown) > 10 else "")
    print(
        f"fastrnn {command}: warning: {plural(len(unknown), 'distinct ' + kind)} of the {what} "
        f"({plural(unknown.total(), 'occurrence')}) not in the model's vocabulary, read as <unk>: {shown}",
        file=sys.stderr,
    )


def _decode(model, src, src_len, args: argparse.Namespace):
    from .decoding import beam_search, greedy_decode

    static = False if args.eager else None
    if args.beam > 1:
        return beam_search(
            model, src, src_len, beam_size=args.beam, max_len=args.max_out, length_penalty=args.length_penalty,
            static=static,
        )  # fmt: skip
    return greedy_decode(model, src, src_len, max_len=args.max_out, static=static)


def run_translate(args: argparse.Namespace) -> int:
    _, model, src_vocab, tgt_vocab = _load(args)
    if args.text:
        texts, what = list(args.text), "arguments"
    else:
        texts, what = sys.stdin.read().splitlines(), "stdin"
    if not texts:
        raise Seq2SeqError(f"nothing to translate on {what}")
    check_texts(texts, what)
    _warn_unknown("translate", src_vocab, texts, "input")
    device = next(model.parameters()).device
    for i in range(0, len(texts), args.batch_size):
        src, src_len = encode_batch(src_vocab, texts[i : i + args.batch_size], add_eos=False, device=device)
        for ids in _decode(model, src, src_len, args).to_lists():
            print(tgt_vocab.decode(ids))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .train import TrainOptions, bleu_score, bucket_rows, evaluate, length_buckets, prepare_data

    ckpt, model, src_vocab, tgt_vocab = _load(args)
    saved = {f.name: v for f, v in ((f, ckpt.get("options", {}).get(f.name)) for f in fields(TrainOptions))}
    if args.data is not None:
        pairs, name = read_tsv(args.data), args.data
    elif args.task is not None:
        min_len = args.min_len if args.min_len is not None else saved.get("min_len") or 1
        max_len = args.max_len if args.max_len is not None else saved.get("max_len") or 20
        pairs = make_task(args.task, args.size, seed=args.seed, split="valid", min_len=min_len, max_len=max_len)
        name = f"task {args.task} (seed {args.seed}" + (
            f", source lengths {min_len}..{max_len})" if args.task in STRING_TASKS else ")"
        )
    else:
        try:
            opts = TrainOptions(**{k: v for k, v in saved.items() if v is not None or k in ("task", "data")})
        except TypeError as e:
            raise Seq2SeqError(
                f"the checkpoint does not say what it was trained on ({e}); pass --task or --data"
            ) from None
        pairs, name = prepare_data(opts)[1], "the checkpoint's validation data"
    _warn_unknown("evaluate", src_vocab, [s for s, _ in pairs], "sources")
    _warn_unknown("evaluate", tgt_vocab, [t for _, t in pairs], "references")
    res = evaluate(
        model, pairs, src_vocab, tgt_vocab, batch_size=args.batch_size, beam_size=args.beam, max_len=args.max_out,
        length_penalty=args.length_penalty, static=False if args.eager else None,
    )  # fmt: skip
    how = f"beam {args.beam}, length penalty {args.length_penalty:g}" if args.beam > 1 else "greedy"
    print(f"{name}: {res.summary()}, {how}")
    text = tgt_vocab.level == "word"
    with_bleu = text and res.bleu is not None
    if text and not with_bleu:
        print("(install sacrebleu for BLEU: pip install sacrebleu)")
    srcs = [s for s, _ in pairs]
    if with_bleu:
        print(f"copying the source as the translation: BLEU {bleu_score(srcs, [r[3] for r in res.rows]):.2f}")
    header = f"{'source length':>14} {'pairs':>6} {'exact match':>12}"
    print(header + (f" {'BLEU':>6} {'copy BLEU':>10}" if with_bleu else ""))
    index = {id(r): i for i, r in enumerate(res.rows)}
    table = []  # (label, exact match, BLEU, copy BLEU)
    for lo, hi, n, em, rows in bucket_rows(res.rows, length_buckets([r[0] for r in res.rows], args.buckets)):
        if not n:
            continue
        label = f"{lo}-{hi}" if hi > lo else str(lo)
        line = f"{label:>14} {n:>6} {em:>12.3f}"
        bleu = copy = None
        if with_bleu:
            bleu = bleu_score([r[2] for r in rows], [r[3] for r in rows])
            copy = bleu_score([srcs[index[id(r)]] for r in rows], [r[3] for r in rows])
            line += f" {bleu:>6.2f} {copy:>10.2f}"
        table.append((label, em, bleu, copy))
        print(line)
    if args.plot:
        print(f"plot: {_plot_buckets(table, args.plot, name, with_bleu)}")
    return 0


def _plot_buckets(table: list[tuple], path: str, title: str, with_bleu: bool) -> str:
    """BLEU (and the copy baseline) or exact match by source-length bucket, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Seq2SeqError("--plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = list(range(len(table)))
    if with_bleu:
        ax.plot(x, [t[2] for t in table], marker="o", label="model")
        ax.plot(x, [t[3] for t in table], marker="s", ls="--", label="copy the source")
        ax.set_ylabel("BLEU")
    else:
        ax.plot(x, [100 * t[1] for t in table], marker="o", label="model")
        ax.set_ylabel("exact match (%)")
    ax.set_xticks(x, [t[0] for t in table])
    ax.set_xlabel("source length (tokens)")
    from .demo import finish_figure

    finish_figure(fig, ax, title, path)
    return path
