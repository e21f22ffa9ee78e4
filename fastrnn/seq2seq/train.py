"""Training, checkpoints and evaluation for :mod:`fastrnn.seq2seq`.

* :func:`train` runs a whole training job from :class:`TrainOptions`: AdamW with linear warm-up,
  gradient clipping, a loss over real (non-pad) target tokens, validation after every epoch
  (exact match, token accuracy, BLEU when ``sacrebleu`` is installed and the data is text),
  progress on stderr (a ``tqdm`` bar when stderr is a terminal and tqdm is installed, else a plain
  line about every tenth of an epoch, as a log file wants), bf16 autocast on CUDA when asked, and
  ``DistributedDataParallel`` when started by ``torchrun`` (gloo on CPU, nccl on GPU).
* Checkpoints are written to a temporary file in the same directory and renamed over the old
  one (:func:`save_checkpoint`): a run that fails never leaves a half-written or overwritten
  checkpoint.  ``resume=True`` continues exactly where the checkpoint stopped -- model,
  optimiser, scheduler, RNG states and the position in the data -- so a resumed run reproduces
  the losses of an uninterrupted one.
* Data order is a pure function of ``(seed, epoch)``; with ``N`` processes every step consumes
  one global batch of ``N * batch_size`` pairs, each process its own slice, and the loss is
  normalised by the global number of target tokens, so ``N`` processes compute the same update
  as one process on the concatenated batch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import pickle
import random
import sys
import tempfile
import time
import zipfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist

from .data import (
    PAD,
    TASKS,
    Pair,
    Seq2SeqError,
    Vocab,
    make_task,
    pad_batch,
    plural,
    read_tsv,
    task_level,
)
from .decoding import LENGTH_PENALTY, Hypotheses, beam_search, greedy_decode
from .model import Seq2Seq, Seq2SeqConfig, sequence_loss

CHECKPOINT_FORMAT = "fastrnn.seq2seq.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


LR_DECAYS = ("none", "linear", "cosine")


def lr_schedule(warmup_steps: int, decay: str, total_steps: int):
    """The learning-rate factor of step ``s``: linear warm-up over ``warmup_steps``, then constant
    (``"none"``) or decaying to 5% at ``total_steps`` (``"linear"``, ``"cosine"``)."""
    warmup = max(warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "none":
            return 1.0
        frac = min(1.0, (step - warmup) / max(total_steps - warmup, 1))
        shape = 1.0 - frac if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
        return 0.05 + 0.95 * shape

    return factor


@dataclass
class TrainOptions:
    """Every setting of a training run (the ``fastrnn train`` flags; saved in the checkpoint)."""

    out: str = "fastrnn-run"
    # data: a built-in task, or a TSV file of source<TAB>target lines
    task: str | None = "reverse"
    data: str | None = None
    valid_data: str | None = None
    level: str = "char"
    max_vocab: int | None = None
    train_size: int = 20000
    valid_size: int = 500
    min_len: int = 1
    max_len: int = 20
    # model
    mode: str = "GRU"
    embedding_dim: int = 32
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    attention: str | None = None
    attention_size: int | None = None
    dropout: float = 0.0
    backend: str = "auto"
    # optimisation
    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_decay: str = "none"
    clip: float = 1.0
    teacher_forcing: float = 1.0
    seed: int = 0
    # running
    save_every: int = 0
    max_steps: int | None = None
    eval_batch_size: int = 256
    progress: bool = True
    bf16: bool = False
    device: str | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        if (self.task is None) == (self.data is None):
            raise Seq2SeqError("give either a built-in task or a data file (not both, not neither)")
        if self.task is not None and self.task not in TASKS:
            raise Seq2SeqError(f"unknown task {self.task!r}; built-in tasks: {', '.join(TASKS)}")
        for name in ("epochs", "batch_size", "train_size", "valid_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise Seq2SeqError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise Seq2SeqError(f"teacher-forcing must lie in [0, 1], got {self.teacher_forcing}")
        if self.lr_decay not in LR_DECAYS:
            raise Seq2SeqError(f"lr-decay must be one of {LR_DECAYS}, got {self.lr_decay!r}")
        if self.lr <= 0 or self.clip <= 0:
            raise Seq2SeqError("lr and clip must be positive")


#: Options that may change when a run is resumed; every other one must match the checkpoint's.
RESUMABLE_OPTIONS = {"out", "epochs", "max_steps", "save_every", "eval_batch_size", "progress", "device", "resume", "overwrite", "quiet", "label"}  # fmt: skip


@dataclass
class EvalResult:
    """Validation/evaluation metrics.

    ``rows`` holds ``(source length in tokens, exact, hypothesis, reference)`` per pair; ``exact``
    compares with the reference as the vocabulary can express it (unknown tokens as ``<unk>``).
    """

    exact_match: float
    token_accuracy: float
    bleu: float | None
    n: int
    rows: list[tuple[int, bool, str, str]] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        s = f"exact match {self.exact_match:.3f}, token accuracy {self.token_accuracy:.3f}"
        return s + (f", BLEU {self.bleu:.2f}" if self.bleu is not None else "") + f" ({plural(self.n, 'pair')})"


@dataclass
class TrainResult:
    """What :func:`train` returns: the model, its vocabularies, per-step losses, per-epoch metrics."""

    model: Seq2Seq
    src_vocab: Vocab
    tgt_vocab: Vocab
    losses: list[float]
    history: list[dict]
    checkpoint: Path


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same directory, then
    ``os.replace``.  An existing checkpoint is replaced only by a complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` when ``path`` is a directory."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`train` (tensors and plain data only: ``weights_only``).

    Raises :class:`Seq2SeqError` for a missing file, a file that is not a readable checkpoint
    (truncated, corrupted, another program's) or one of an unknown format version.
    """
    path = checkpoint_path(path)
    if not path.exists():
        raise Seq2SeqError(f"checkpoint not found: {path}")
    _check_archive(path)
    what = f"cannot read checkpoint {path}: the file is damaged or not a checkpoint"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise Seq2SeqError(
            f"{what} (it holds Python objects other than tensors and plain data, e.g. a whole pickled model; "
            "fastrnn checkpoints never do)"
        ) from None
    except Exception as e:  # torch raises many types for damaged files; all mean the same here
        raise Seq2SeqError(f"{what} (torch.load could not read it: {_describe(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise Seq2SeqError(f"{path} is not a fastrnn seq2seq checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise Seq2SeqError(
            f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {CHECKPOINT_VERSION})"
        )
    missing = [k for k in ("config", "src_vocab", "tgt_vocab", "model") if k not in ckpt]
    if missing:
        raise Seq2SeqError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def _describe(e: BaseException) -> str:
    """An exception as words: its type, and its message's first line unless that is a bare key/code."""
    msg = str(e).strip()
    if isinstance(e, (KeyError, OSError, EOFError)) or not msg:  # "'101'", "[Errno 22] ...": meaningless here
        return type(e).__name__
    return f"{type(e).__name__}: {msg.splitlines()[0][:200]}"


def _check_archive(path: Path) -> None:
    """Say what is wrong with a file that cannot be a checkpoint (:func:`torch.save` writes a zip archive)."""
    size = path.stat().st_size
    what = f"cannot read checkpoint {path}: the file is damaged or not a checkpoint"
    if size == 0:
        raise Seq2SeqError(f"{what} (the file is empty)")
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):
        if head == b"PK\x03\x04":
            raise Seq2SeqError(
                f"{what} (it starts like a checkpoint but its end is missing: the file is truncated, "
                f"an interrupted copy or download?)"
            )
        raise Seq2SeqError(f"{what} (torch.save writes a zip archive, and this file is not one)")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise Seq2SeqError(f"{what} (its zip archive is damaged: {_describe(e)})") from None
    if bad is not None:
        raise Seq2SeqError(f"{what} (the part {bad!r} fails its checksum: bytes in the file were changed)")


def model_from_checkpoint(
    ckpt: dict, device: torch.device | str = "cpu", backend: str | None = None
) -> tuple[Seq2Seq, Vocab, Vocab]:
    """Rebuild ``(model, src_vocab, tgt_vocab)`` from a loaded checkpoint; the model is in eval mode.

    Raises :class:`Seq2SeqError` when the weights do not fit the configuration or the vocabularies
    (a checkpoint whose parts come from different models).
    """
    try:
        config = Seq2SeqConfig.from_dict(dict(ckpt["config"]))
        if backend is not None:
            config.backend = backend
        src_vocab, tgt_vocab = Vocab.from_dict(ckpt["src_vocab"]), Vocab.from_dict(ckpt["tgt_vocab"])
    except (TypeError, ValueError, KeyError) as e:
        raise Seq2SeqError(f"checkpoint has an invalid model configuration or vocabulary: {e}") from None
    if (len(src_vocab), len(tgt_vocab)) != (config.src_vocab_size, config.tgt_vocab_size):
        raise Seq2SeqError(
            f"checkpoint vocabularies ({len(src_vocab)}, {len(tgt_vocab)} tokens) do not match its model "
            f"({config.src_vocab_size}, {config.tgt_vocab_size})"
        )
    model = Seq2Seq(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise Seq2SeqError(f"checkpoint weights do not match its model configuration: {e}") from None
    return model.to(device).eval(), src_vocab, tgt_vocab


# ----------------------------------------------------------------------------------------------
# Data


def _fingerprint(pairs: list[Pair]) -> str:
    h = hashlib.sha256()
    for s, t in pairs:
        h.update(s.encode() + b"\t" + t.encode() + b"\n")
    return h.hexdigest()


def prepare_data(opts: TrainOptions) -> tuple[list[Pair], list[Pair], str]:
    """``(train pairs, validation pairs, tokenisation level)`` for ``opts``.

    A TSV without ``valid_data`` holds out every 20th line for validation (if it has 40 or more).
    """
    if opts.task is not None:
        kw = dict(seed=opts.seed, min_len=opts.min_len, max_len=opts.max_len)
        train = make_task(opts.task, opts.train_size, split="train", **kw)
        valid = make_task(opts.task, opts.valid_size, split="valid", **kw)
        return train, valid, task_level(opts.task)
    pairs = read_tsv(opts.data)
    if opts.valid_data is not None:
        return pairs, read_tsv(opts.valid_data), opts.level
    if len(pairs) >= 40:
        return [p for i, p in enumerate(pairs) if i % 20], pairs[::20][: opts.valid_size], opts.level
    return pairs, pairs[: opts.valid_size], opts.level


def build_vocabs(pairs: list[Pair], level: str, max_vocab: int | None = None) -> tuple[Vocab, Vocab]:
    """Source and target vocabularies of the training pairs."""
    return (
        Vocab.build((s for s, _ in pairs), level, max_size=max_vocab),
        Vocab.build((t for _, t in pairs), level, max_size=max_vocab),
    )


def _encode(pairs: list[Pair], src_vocab: Vocab, tgt_vocab: Vocab) -> tuple[list[list[int]], list[list[int]]]:
    srcs = [src_vocab.encode(s) for s, _ in pairs]
    tgts = [tgt_vocab.encode(t, add_eos=True) for _, t in pairs]
    for i, s in enumerate(srcs):
        if not s:
            raise Seq2SeqError(f"pair #{i + 1} has an empty source after tokenisation: {pairs[i][0]!r}")
    return srcs, tgts


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation of ``range(n)`` that depends on ``(seed, epoch)`` only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


# ----------------------------------------------------------------------------------------------
# Evaluation


def bleu_score(hypotheses: list[str], references: list[str]) -> float | None:
    """Corpus BLEU via ``sacrebleu`` (``None`` when it is not installed)."""
    try:
        import sacrebleu
    except ImportError:
        return None
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@torch.no_grad()
def evaluate(
    model: Seq2Seq,
    pairs: list[Pair],
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    *,
    batch_size: int = 256,
    beam_size: int = 1,
    max_len: int | None = None,
    with_bleu: bool | None = None,
    length_penalty: float = LENGTH_PENALTY,
    static: bool | None = None,
) -> EvalResult:
    """Decode every source (greedy, or beam search when ``beam_size > 1``) and score it.

    ``length_penalty``: the ranking of :func:`~fastrnn.seq2seq.decoding.beam_search`;
    ``static=False``: decode step by step, not on static buffers (see :mod:`fastrnn.seq2seq.decoding`).

    Exact match compares the decoded text with the reference; token accuracy is the teacher-forced
    argmax accuracy over real target tokens (``<eos>`` included).  BLEU (``sacrebleu``) is computed
    for word-level data unless ``with_bleu`` says otherwise.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    srcs, tgts = _encode(pairs, src_vocab, tgt_vocab)
    rows, correct, total = [], 0, 0
    for i in range(0, len(pairs), batch_size):
        src, src_len = pad_batch(srcs[i : i + batch_size], device)
        tgt, _ = pad_batch(tgts[i : i + batch_size], device)
        pred = model(src, src_len, tgt).argmax(-1)
        real = tgt != PAD
        correct += int((pred.eq(tgt) & real).sum())
        total += int(real.sum())
        if beam_size > 1:
            hyp: Hypotheses = beam_search(
                model, src, src_len, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty, static=static
            )
        else:
            hyp = greedy_decode(model, src, src_len, max_len=max_len, static=static)
        for j, ids in enumerate(hyp.to_lists()):
            text = tgt_vocab.decode(ids)
            seen = tgt_vocab.decode(tgts[i + j])  # the reference as the vocabulary sees it (<unk>s)
            ref = " ".join(pairs[i + j][1].split()) if tgt_vocab.level == "word" else pairs[i + j][1]
            rows.append((len(srcs[i + j]), text == seen, text, ref))
    model.train(was_training)
    if with_bleu is None:
        with_bleu = tgt_vocab.level == "word"
    bleu = bleu_score([r[2] for r in rows], [r[3] for r in rows]) if with_bleu else None
    n = len(rows)
    return EvalResult(sum(r[1] for r in rows) / max(n, 1), correct / max(total, 1), bleu, n, rows)


def length_buckets(lengths: list[int], n_buckets: int = 6) -> list[tuple[int, int]]:
    """About ``n_buckets`` contiguous ``(lo, hi)`` source-length ranges covering ``lengths``."""
    lo, hi = min(lengths), max(lengths)
    width = max(1, math.ceil((hi - lo + 1) / n_buckets))
    return [(a, min(a + width - 1, hi)) for a in range(lo, hi + 1, width)]


def bucket_rows(rows: list[tuple[int, bool, str, str]], buckets: list[tuple[int, int]]) -> list[list]:
    """``[[lo, hi, n, exact-match, rows], ...]`` per source-length bucket."""
    out = []
    for lo, hi in buckets:
        sel = [r for r in rows if lo <= r[0] <= hi]
        out.append([lo, hi, len(sel), sum(r[1] for r in sel) / len(sel) if sel else float("nan"), sel])
    return out


# ----------------------------------------------------------------------------------------------
# Distributed helpers


def _dist_env() -> tuple[int, int, int]:
    """``(world size, rank, local rank)`` from torchrun's environment (``(1, 0, 0)`` without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def process_device(requested: str | None, world: int, local_rank: int, n_cuda: int) -> torch.device:
    """The device of this process: ``requested`` (``--device``), else GPU ``local_rank`` when
    CUDA is there, else the CPU.  Under DDP with nccl every rank needs a GPU of its own (nccl
    cannot put two ranks on one GPU): more ranks than GPUs is an error that names the fix."""
    if requested is not None:
        device = torch.device(requested)
        if device.type == "cuda" and world > 1 and device.index is None:
            device = torch.device("cuda", local_rank)
    elif n_cuda > 0:
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda" and (device.index or 0) >= n_cuda:
        raise Seq2SeqError(
            f"process {local_rank} of {world} needs CUDA device {device.index or 0}, but this machine has "
            f"{plural(n_cuda, 'CUDA device')}: one GPU per process (nccl cannot share a GPU between ranks). Start at "
            f"most {plural(n_cuda, 'process', 'processes')} per node (torchrun --nproc-per-node {max(n_cuda, 1)}), "
            "or train on the CPU with --device cpu (gloo)"
        )
    return device


def rng_state() -> dict:
    """Every random state training draws from: the CPU generator, Python's ``random`` and, when
    CUDA is available, every CUDA device's generator (``torch.cuda.get_rng_state_all()``).  The data
    order has a generator of its own (:func:`epoch_order`)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore :func:`rng_state`'s ``state``.  The CUDA states go back to every device the machine
    has (a list, one per device; a checkpoint of an older version holds ``device``'s alone).
    Setting them also makes cuDNN seed its recurrent layers' dropout from them afresh (see
    :func:`~fastrnn.seq2seq.model.reseed_rnn_dropout`)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, torch.Tensor):
        if device.type == "cuda":
            torch.cuda.set_rng_state(cuda, device)
        return
    n = torch.cuda.device_count()
    if len(cuda) == n:
        torch.cuda.set_rng_state_all(cuda)
    else:  # another machine: the devices both have
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(s, i)


def _check_resume(opts: TrainOptions, ckpt: dict, world: int, fingerprint: str, vocabs: tuple[Vocab, Vocab]) -> None:
    saved = ckpt.get("options", {})
    diffs = [
        f"--{f.name.replace('_', '-')}: checkpoint {saved.get(f.name)!r}, now {getattr(opts, f.name)!r}"
        for f in fields(opts)
        if f.name not in RESUMABLE_OPTIONS and saved.get(f.name) != getattr(opts, f.name)
    ]
    if diffs:
        raise Seq2SeqError(
            "cannot resume: the checkpoint was trained with other settings (other model shape or data):\n  "
            + "\n  ".join(diffs)
        )
    if ckpt.get("world_size") != world:
        raise Seq2SeqError(
            f"cannot resume: the checkpoint was trained by {plural(ckpt.get('world_size') or 0, 'process', 'processes')}, "
            f"this run has {world} (the global batch would change)"
        )
    src_vocab, tgt_vocab = vocabs
    if Vocab.from_dict(ckpt["src_vocab"]) != src_vocab or Vocab.from_dict(ckpt["tgt_vocab"]) != tgt_vocab:
        raise Seq2SeqError("cannot resume: the checkpoint's vocabulary differs from the one of this training data")
    if ckpt.get("data_fingerprint") != fingerprint:
        raise Seq2SeqError("cannot resume: the training data differs from the checkpoint's")


def model_config(opts: TrainOptions, src_vocab: Vocab, tgt_vocab: Vocab) -> Seq2SeqConfig:
    try:
        return Seq2SeqConfig(
            len(src_vocab), len(tgt_vocab), opts.embedding_dim, opts.hidden_size, opts.num_layers, mode=opts.mode,
            bidirectional=opts.bidirectional, attention=opts.attention, attention_size=opts.attention_size,
            dropout=opts.dropout, backend=opts.backend,
        )  # fmt: skip
    except ValueError as e:
        raise Seq2SeqError(str(e)) from None


# ----------------------------------------------------------------------------------------------
# The training loop


def progress_style(enabled: bool, stream=None) -> str | None:
    """How :func:`train` shows progress on ``stream`` (default: ``sys.stderr``).

    ``"bar"``: a ``tqdm`` bar, when the stream is a terminal and tqdm is installed; ``"lines"``:
    a plain line about every tenth of an epoch (a log file, a pipe, no tqdm); ``None`` when
    ``enabled`` is false (``--no-progress``, ``--quiet``, processes other than rank 0).
    """
    if not enabled:
        return None
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        terminal = bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed or detached stream
        terminal = False
    return "bar" if terminal and importlib.util.find_spec("tqdm") is not None else "lines"


def train(opts: TrainOptions) -> TrainResult:
    """Run (or resume) the training job described by ``opts``; returns the trained model and logs.

    Example::

        result = train(TrainOptions(out="runs/rev", task="reverse", attention="general", epochs=2))
        result.history[-1]["exact_match"]
    """
    world, rank, local_rank = _dist_env()
    distributed = world > 1
    device = process_device(opts.device, world, local_rank, torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0
    prefix = f"[{opts.label}] " if opts.label else ""
    say = (lambda msg: print(prefix + msg, flush=True)) if is_main and not opts.quiet else (lambda msg: None)

    path = Path(opts.out) / CHECKPOINT_NAME
    ckpt = None
    if opts.resume:
        if not path.exists():
            raise Seq2SeqError(f"--resume: no checkpoint at {path} (nothing to resume; drop --resume to start)")
        ckpt = load_checkpoint(path)
    elif path.exists() and not opts.overwrite:
        raise Seq2SeqError(f"{path} exists: pass --resume to continue that run, or --overwrite to start over")

    train_pairs, valid_pairs, level = prepare_data(opts)
    fingerprint = _fingerprint(train_pairs)
    if ckpt is not None:
        src_vocab, tgt_vocab = Vocab.from_dict(ckpt["src_vocab"]), Vocab.from_dict(ckpt["tgt_vocab"])
        _check_resume(opts, ckpt, world, fingerprint, build_vocabs(train_pairs, level, opts.max_vocab))
    else:
        src_vocab, tgt_vocab = build_vocabs(train_pairs, level, opts.max_vocab)
    srcs, tgts = _encode(train_pairs, src_vocab, tgt_vocab)

    global_batch = opts.batch_size * world
    steps_per_epoch = len(train_pairs) // global_batch
    if steps_per_epoch < 1:
        raise Seq2SeqError(
            f"{plural(len(train_pairs), 'training pair')} do not fill one batch of {global_batch} "
            f"({plural(world, 'process', 'processes')} x batch size {opts.batch_size}): lower --batch-size"
        )

    torch.manual_seed(opts.seed)
    config = model_config(opts, src_vocab, tgt_vocab)
    model = Seq2Seq(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(opts.warmup_steps, opts.lr_decay, opts.epochs * steps_per_epoch)
    )
    torch.manual_seed(opts.seed + 1 + rank)  # dropout / sampling stream, one per process
    epoch, batch_in_epoch, step = 0, 0, 0
    losses: list[float] = []
    history: list[dict] = []
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise Seq2SeqError(f"cannot resume: the checkpoint does not fit this model: {e}") from None
        epoch, batch_in_epoch, step = (ckpt["progress"][k] for k in ("epoch", "batch", "step"))
        losses, history = list(ckpt["losses"]), list(ckpt["history"])
        set_rng_state(ckpt["rng"][rank], device)
        if epoch >= opts.epochs or (opts.max_steps is not None and step >= opts.max_steps):
            say(f"{path}: already trained for {plural(epoch, 'epoch')}, {plural(step, 'step')}; raise --epochs/--max-steps to train on")  # fmt: skip
            return TrainResult(model.eval(), src_vocab, tgt_vocab, losses, history, path)
        say(f"resuming {path} at epoch {epoch + 1}, step {step}")

    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if opts.bf16 and device.type == "cuda" else nullcontext()

    def checkpoint() -> None:
        rng = [None] * world
        if distributed:
            dist.all_gather_object(rng, rng_state())
        else:
            rng[0] = rng_state()
        if is_main:
            payload = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "config": config.to_dict(),
                "src_vocab": src_vocab.to_dict(),
                "tgt_vocab": tgt_vocab.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "progress": {"epoch": epoch, "batch": batch_in_epoch, "step": step},
                "losses": losses,
                "history": history,
                "rng": rng,
                "options": asdict(opts),
                "world_size": world,
                "data_fingerprint": fingerprint,
            }
            save_checkpoint(path, payload)
        if distributed:
            dist.barrier()

    style = progress_style(opts.progress and is_main and not opts.quiet)
    if style == "bar":
        from tqdm.auto import tqdm
    log_every = max(1, steps_per_epoch // 10)  # plain progress lines: about ten per epoch
    say(
        f"training {plural(sum(p.numel() for p in model.parameters()), 'parameter')} on {device} "
        f"({plural(world, 'process', 'processes')}): {plural(len(train_pairs), 'pair')}, "
        f"{plural(steps_per_epoch, 'step')} per epoch, {plural(opts.epochs, 'epoch')}"
    )
    model.train()
    while epoch < opts.epochs:
        order = epoch_order(len(train_pairs), opts.seed, epoch)
        desc = f"{prefix}epoch {epoch + 1}/{opts.epochs}"
        bar = tqdm(total=steps_per_epoch, initial=batch_in_epoch, desc=desc, leave=False) if style == "bar" else None
        t0 = time.perf_counter()
        logged = batch_in_epoch
        while batch_in_epoch < steps_per_epoch:
            idx = order[batch_in_epoch * global_batch : (batch_in_epoch + 1) * global_batch].tolist()
            global_tokens = sum(len(tgts[i]) for i in idx)
            mine = idx[rank * opts.batch_size : (rank + 1) * opts.batch_size]
            src, src_len = pad_batch([srcs[i] for i in mine], device)
            tgt, _ = pad_batch([tgts[i] for i in mine], device)
            with autocast:
                logits = net(src, src_len, tgt, opts.teacher_forcing)
            loss_sum = sequence_loss(logits, tgt, reduction="sum")
            # DDP averages gradients over processes: scale so the update is that of the global batch.
            (loss_sum * (world / global_tokens)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum = loss_sum.detach()
            if distributed:
                dist.all_reduce(loss_sum)
            losses.append(float(loss_sum) / global_tokens)
            batch_in_epoch += 1
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            elif style == "lines" and (batch_in_epoch % log_every == 0 or batch_in_epoch == steps_per_epoch):
                recent = losses[-(batch_in_epoch - logged) :]
                print(
                    f"{desc}: step {batch_in_epoch}/{steps_per_epoch}, loss {sum(recent) / len(recent):.4f}, "
                    f"{time.perf_counter() - t0:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
                logged = batch_in_epoch
            stop = opts.max_steps is not None and step >= opts.max_steps and batch_in_epoch < steps_per_epoch
            if stop or (opts.save_every and step % opts.save_every == 0 and batch_in_epoch < steps_per_epoch):
                checkpoint()
            if stop:
                break
        if bar is not None:
            bar.close()
        if batch_in_epoch < steps_per_epoch:  # stopped by max_steps in mid-epoch
            say(f"stopped at step {step} (--max-steps); checkpoint {path}")
            break
        epoch, batch_in_epoch = epoch + 1, 0
        metrics = {"epoch": epoch, "step": step, "loss": sum(losses[-steps_per_epoch:]) / steps_per_epoch}
        if is_main:
            res = evaluate(model, valid_pairs, src_vocab, tgt_vocab, batch_size=opts.eval_batch_size)
            metrics.update(exact_match=res.exact_match, token_accuracy=res.token_accuracy, bleu=res.bleu)
            say(f"epoch {epoch}: step {step}, loss {metrics['loss']:.4f}, valid {res.summary()}, {time.perf_counter() - t0:.1f}s")  # fmt: skip
        history.append(metrics)
        checkpoint()
        if opts.max_steps is not None and step >= opts.max_steps and epoch < opts.epochs:
            say(f"stopped at step {step} (--max-steps); checkpoint {path}")
            break
    else:
        say(f"saved {path}")
    if distributed:
        dist.destroy_process_group()
    return TrainResult(model.eval(), src_vocab, tgt_vocab, losses, history, path)
