"""The ``"seq2seq"`` case kind: a whole training step of :class:`fastrnn.seq2seq.Seq2Seq`.

What a seq2seq user gains from the swap, end to end: embedding, encoder, decoder with attention,
loss, backward and the optimiser.  Rows of one model shape come in two modes:

* ``fwdbwd``: one training step on a fixed batch: forward (teacher-forced), the loss over the real
  target tokens (:func:`fastrnn.seq2seq.sequence_loss`), backward and an AdamW step.  ``bf16`` and
  ``fp16`` rows run the forward under autocast (the weights stay fp32); ``fp16`` scales the loss
  with a ``GradScaler``, as fp16 training does.  Throughput: target tokens per second (``tokens``
  of the row: the real, non-pad target tokens of the batch).
* ``fwd``: decoding of the batch, same model, ``max_len = T``: greedy
  (:func:`fastrnn.seq2seq.greedy_decode`), or beam search (:func:`fastrnn.seq2seq.beam_search`,
  rows with the extra field ``beam``: the beam size, length penalty 1).  The fastrnn providers
  decode on static buffers (:mod:`fastrnn.seq2seq.static`: a captured CUDA graph on CUDA, the
  same step uncaptured on the CPU) and also time their eager step-by-step decoding
  (``static=False``) for their note; ``cudnn``/``torch_nn`` decode eagerly (today's torch.nn
  model).  Throughput: sentences per second (``B`` per call) and milliseconds per token (per
  call / ``T``: one decoding step of the whole batch; random weights hardly ever say ``<eos>``
  among 8000 tokens, so every call runs ``T`` steps).

Providers, all on the same weights (the workload's state dict):

* ``fastrnn``: ``Seq2SeqConfig(backend="triton")``: the encoder's and decoder's
  :class:`fastrnn.EmbeddingRNN` run the kernels (embedding fused into the first layer).
* ``fastrnn_auto``: ``backend="auto"`` (on the CPU: the ``torch.nn`` code behind fastrnn's wrapper).
* ``cudnn`` / ``torch_nn``: the same :class:`~fastrnn.seq2seq.Seq2Seq` with each ``EmbeddingRNN``
  replaced by :class:`TorchEmbeddingRNN` (``nn.Embedding`` then the ``torch.nn`` recurrent module:
  cuDNN on CUDA, aten on the CPU), see :func:`torch_nn_seq2seq`.  Every other part (bridge,
  attention, output layer) is ``torch.nn`` in all three.

Each provider's note carries the recurrent layers' share of one step's time, measured with
``torch.profiler`` (:func:`recurrent_share`, :func:`is_recurrent_op`: everything the encoder's and
decoder's recurrent modules run, the same for every provider); a decoding row's fastrnn notes
carry the eager path's time and profile (a replayed CUDA graph hides its operations from the
profiler).  ``python -m benchmarks.seq2seq RESULTS`` prints per row and provider the time, tokens
or sentences per second (and milliseconds per token: graph or static path, eager path), peak
memory and that share (:func:`summary_lines`).

Rows carry the vocabulary size ``V`` (source and target), the attention ``att`` (``none`` or a
Luong score), the source length ``S`` (``= T``) and, for beam-search rows, ``beam`` in ``extra``;
the embedding size is ``H``.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fastrnn.modules import build, resolve
from fastrnn.seq2seq import Seq2Seq, Seq2SeqConfig, beam_search, greedy_decode, sequence_loss
from fastrnn.seq2seq.data import EOS, PAD, UNK

from .cases import Case, CaseKind, Cost, register_kind
from .results import load
from .timing import TimingConfig, time_cpu_interleaved, time_cuda

#: AdamW's learning rate in the timed steps (every call is a real update of the weights).
LR = 1e-3

#: Vocabulary of the GPU rows (source and target): a typical subword vocabulary.
GPU_VOCAB = 8000


class TorchEmbeddingRNN(nn.Module):
    """``nn.Embedding`` then the ``torch.nn`` recurrent module: what :class:`fastrnn.EmbeddingRNN`
    replaces, with the same parameter names (its state dict loads as is) and the same forward
    ``(input, hx=None, lengths=None)``: with ``lengths`` the padded batch is packed, run and
    padded again (zero output at padding, each sequence's own last state)."""

    def __init__(self, embedding: nn.Embedding, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.embedding, self.rnn = embedding, rnn

    def forward(self, input: torch.Tensor, hx: Any = None, lengths: torch.Tensor | None = None) -> Any:
        x = self.embedding(input)
        if lengths is None:
            return self.rnn(x, hx)
        bf = self.rnn.batch_first
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=bf, enforce_sorted=False)
        out, hidden = self.rnn(packed, hx)
        assert isinstance(out, PackedSequence)
        out, _ = pad_packed_sequence(out, batch_first=bf, total_length=x.shape[1] if bf else x.shape[0])
        return out, hidden


def _torch_twin(module: nn.RNNBase) -> nn.RNNBase:
    """The ``torch.nn`` module of a fastrnn recurrent module's shape (fresh weights)."""
    p = module.weight_ih_l0
    return build(module.mode, module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                 batch_first=module.batch_first, dropout=module.dropout, bidirectional=module.bidirectional,
                 device=p.device, dtype=p.dtype, torch_nn=True)  # fmt: skip


def torch_nn_seq2seq(config: Seq2SeqConfig, device: torch.device | str | None = None) -> Seq2Seq:
    """The :class:`~fastrnn.seq2seq.Seq2Seq` of ``config`` on plain ``torch.nn`` modules.

    The encoder's and decoder's :class:`fastrnn.EmbeddingRNN` become :class:`TorchEmbeddingRNN`
    (``nn.Embedding`` + ``nn.GRU``/``nn.LSTM``/``nn.RNN``: cuDNN on CUDA) and Bahdanau's input
    feeding layer its ``torch.nn`` twin; parameter names are unchanged, so a fastrnn model's state
    dict loads into it (and back).  The weights are fresh: load a state dict to compare models.
    """
    model = Seq2Seq(replace(config, backend="torch")).to(device)
    for owner in (model.encoder, model.decoder):
        fused = owner.rnn
        emb = fused.embedding
        owner.rnn = TorchEmbeddingRNN(emb, _torch_twin(fused.rnn))
    if model.decoder.feed is not None:
        model.decoder.feed = _torch_twin(model.decoder.feed)
    return model


# ---------------------------------------------------------------------------------------------
# The recurrent layers' share of a step (torch.profiler)

#: The profiler range :func:`profile_share` opens around every call of a recurrent module (the
#: encoder's and decoder's embedding + RNN stack, Bahdanau's input-feeding layer): whatever the
#: module runs -- its kernels or torch.nn's, its id and length checks, torch's packing or
#: fastrnn's own length handling -- is the recurrent layers' time, for every provider alike.
RECURRENT_RANGE = "seq2seq::recurrent_layer"

#: Operators that belong to the recurrent layers, by name: the range above, fastrnn's custom ops
#: and torch.nn's RNN entry points, the embedding lookups and the packing of variable-length
#: batches (the names matter where a recurrent module runs outside :func:`profile_share`).
#: Everything they call, and the backward nodes autograd recorded for them, counts too (see
#: :func:`recurrent_share`).
RECURRENT_OPS = (
    RECURRENT_RANGE,
    "fastrnn::",  # recurrence_fwd/bwd, embedding_projection (and their Triton kernels)
    "aten::_cudnn_rnn",  # cuDNN forward and backward (_cudnn_rnn_backward)
    "aten::lstm",
    "aten::gru",
    "aten::rnn_tanh",
    "aten::rnn_relu",
    "aten::embedding",  # embedding, embedding_backward, embedding_dense_backward
    "aten::_pack_padded_sequence",
    "aten::_pad_packed_sequence",
)


def is_recurrent_op(name: str) -> bool:
    """Whether a profiler event named ``name`` is one of the recurrent layers' entry points
    (:data:`RECURRENT_OPS`: a name equal to one, or starting with one)."""
    return name.startswith(RECURRENT_OPS)


def recurrent_share(events: Iterable[Any], device_time: bool) -> float:
    """The recurrent layers' share of a profiled step's time.

    ``events``: ``torch.profiler.profile(...).events()``.  An event counts as the recurrent
    layers' when :func:`is_recurrent_op` names it or an ancestor, or when it is (or runs under)
    the autograd node of a forward operator that counts (linked by sequence number and forward
    thread: on the CPU, torch.nn's RNN backward is made of such generic nodes).  Returns the
    counted operators' self time over every operator's self time: self device time (the kernels
    each operator launched) with ``device_time``, else self CPU time.
    """
    from torch.autograd import DeviceType

    # Operators only: a CPU operator's self device time covers the kernels it launched, and the
    # kernels' own events would count them twice.
    events = [e for e in events if e.device_type == DeviceType.CPU]
    counted: set[int] = set()
    forward_keys: set[tuple[int, int]] = set()

    def mark(ev: Any) -> None:
        stack = [ev]
        while stack:
            e = stack.pop()
            if id(e) in counted:
                continue
            counted.add(id(e))
            if e.sequence_nr >= 0 and not e.name.startswith("autograd::engine"):
                forward_keys.add((e.sequence_nr, e.thread))
            stack.extend(e.cpu_children)

    for ev in events:
        if is_recurrent_op(ev.name):
            mark(ev)
    for ev in events:
        if (
            ev.name.startswith("autograd::engine::evaluate_function")
            and (ev.sequence_nr, ev.fwd_thread) in forward_keys
        ):
            mark(ev)

    def self_time(e: Any) -> float:
        return float(e.self_device_time_total if device_time else e.self_cpu_time_total)

    total = sum(self_time(e) for e in events)
    if total <= 0:
        return float("nan")
    return sum(self_time(e) for e in events if id(e) in counted) / total


def recurrent_modules(model: Seq2Seq) -> list[nn.Module]:
    """The recurrent modules of a seq2seq model (fastrnn's or torch.nn's): encoder, decoder, and
    Bahdanau's input-feeding layer."""
    mods = [model.encoder.rnn, model.decoder.rnn]
    return mods + ([model.decoder.feed] if model.decoder.feed is not None else [])


@contextlib.contextmanager
def labelled(modules: Iterable[nn.Module]):
    """Every call of ``modules`` inside a :data:`RECURRENT_RANGE` profiler range (a forward
    wrapper set on the instances, removed on exit)."""
    from torch.profiler import record_function

    wrapped = []
    try:
        for module in modules:
            forward = module.forward

            def in_range(*args, _forward=forward, **kwargs):
                with record_function(RECURRENT_RANGE):
                    return _forward(*args, **kwargs)

            module.forward = in_range
            wrapped.append(module)
        yield
    finally:
        for module in wrapped:
            del module.forward


def profile_share(step: Callable[[], Any], device: torch.device, modules: Iterable[nn.Module] = ()) -> float:
    """Run ``step`` once under ``torch.profiler``, every call of ``modules`` (the recurrent layers)
    in a :data:`RECURRENT_RANGE` range, and return :func:`recurrent_share` of it (device time on
    CUDA, CPU time on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with labelled(modules), profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return recurrent_share(prof.events(), device_time=device.type == "cuda")


# ---------------------------------------------------------------------------------------------
# Rows, workload, providers


def attention_of(case: Case) -> str | None:
    """The row's attention (``None`` for ``att`` = ``none``)."""
    att = dict(case.extra)["att"]
    return None if att == "none" else att


def beam_of(case: Case) -> int:
    """The row's beam size (1: greedy decoding, and every training row)."""
    return int(dict(case.extra).get("beam", 1))


def config_of(case: Case, backend: str) -> Seq2SeqConfig:
    """The model of a row: one layer, embedding size = hidden size = ``H``, ``V`` both sides."""
    V = int(dict(case.extra)["V"])
    return Seq2SeqConfig(src_vocab_size=V, tgt_vocab_size=V, embedding_dim=case.H, hidden_size=case.H,
                         num_layers=case.layers, mode=case.cell, attention=attention_of(case), backend=backend)  # fmt: skip


@dataclass
class Seq2SeqWorkload:
    """What every provider of a row shares: the weights, and one batch."""

    state: dict[str, torch.Tensor]
    src: torch.Tensor  # (B, S) ids, padded with PAD
    src_lengths: torch.Tensor  # (B,)
    tgt: torch.Tensor  # (B, T) ids ending with EOS, padded with PAD
    tgt_tokens: int  # real (non-pad) target tokens


def _lengths(n: int, B: int, gen: torch.Generator) -> torch.Tensor:
    """Lengths in ``[max(1, n // 2), n]``, one of them ``n``."""
    lengths = torch.randint(max(1, n // 2), n + 1, (B,), generator=gen)
    lengths[0] = n
    return lengths


def make_batch(B: int, S: int, T: int, V: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random batch on the CPU: ``(src (B, S), src_lengths (B,), tgt (B, T))``; ids in
    ``[UNK + 1, V)``, targets end with ``<eos>``, both padded with ``<pad>``."""
    gen = torch.Generator().manual_seed(seed)
    src_len, tgt_len = _lengths(S, B, gen), _lengths(T, B, gen)
    src = torch.randint(UNK + 1, V, (B, S), generator=gen)
    tgt = torch.randint(UNK + 1, V, (B, T), generator=gen)
    src[torch.arange(S)[None, :] >= src_len[:, None]] = PAD
    tgt[torch.arange(T)[None, :] == (tgt_len - 1)[:, None]] = EOS
    tgt[torch.arange(T)[None, :] >= tgt_len[:, None]] = PAD
    return src, src_len, tgt


def setup(case: Case, device: torch.device, seed: int) -> Seq2SeqWorkload:
    """Seeded weights (the ``torch.nn`` model's init) and a random batch for ``case``."""
    torch.manual_seed(seed)
    ref = torch_nn_seq2seq(config_of(case, "torch"), device)
    S = int(dict(case.extra)["S"])
    src, src_len, tgt = make_batch(case.B, S, case.T, int(dict(case.extra)["V"]), seed)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    return Seq2SeqWorkload(state, src.to(device), src_len.to(device), tgt.to(device), int((tgt != PAD).sum()))


def build_model(case: Case, wl: Seq2SeqWorkload, device: torch.device, provider: str) -> Seq2Seq:
    """The row's model for ``provider`` (``"triton"``, ``"auto"`` or ``"torch_nn"``) with the
    workload's weights."""
    if provider == "torch_nn":
        model = torch_nn_seq2seq(config_of(case, "torch"), device)
    else:
        model = Seq2Seq(config_of(case, provider)).to(device)
    model.load_state_dict(wl.state)
    return model


def _autocast(case: Case, device: torch.device) -> contextlib.AbstractContextManager:
    if case.dtype in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=case.torch_dtype)
    return contextlib.nullcontext()


def train_step(case: Case, model: Seq2Seq, wl: Seq2SeqWorkload, device: torch.device) -> Callable[[], torch.Tensor]:
    """A zero-argument training step on the workload's batch: forward (under autocast for bf16 and
    fp16 rows), loss, backward, AdamW step (fp16: through a ``GradScaler``); returns the loss."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler(device.type) if case.dtype == "fp16" else None

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with _autocast(case, device):
            logits = model(wl.src, wl.src_lengths, wl.tgt)
        loss = sequence_loss(logits, wl.tgt)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return loss.detach()

    return step


def decode_step(
    case: Case, model: Seq2Seq, wl: Seq2SeqWorkload, device: torch.device, static: bool | None = None
) -> Callable[[], torch.Tensor]:
    """A zero-argument decoding of the workload's sources (``max_len = T``; greedy, or beam search
    of the row's ``beam`` with length penalty 1); returns the tokens ``(B, <= T)``.  ``static``:
    as :func:`fastrnn.seq2seq.greedy_decode`'s (``None``: static buffers, a CUDA graph on CUDA)."""
    model.eval()
    beam = beam_of(case)

    def step() -> torch.Tensor:
        with _autocast(case, device):
            if beam == 1:
                return greedy_decode(model, wl.src, wl.src_lengths, max_len=case.T, static=static).tokens
            return beam_search(model, wl.src, wl.src_lengths, beam, max_len=case.T, static=static).tokens

    return step


#: How the eager decoding of a fastrnn decoding row is timed (for its note).
EAGER_TIMING = TimingConfig(rep_ms=100.0, warmup_ms=20.0, min_reps=3, max_reps=20, flush_l2=False)

_EAGER = re.compile(r"eager path ([0-9.]+) ms per call")


def _time_ms(step: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        return time_cuda(step, EAGER_TIMING, device).median_ms
    step()
    return time_cpu_interleaved({"eager": step}, EAGER_TIMING)["eager"].median_ms


def _build(case: Case, wl: Seq2SeqWorkload, device: torch.device, provider: str):
    model = build_model(case, wl, device, provider)
    decoding = case.run == "fwd"
    if decoding:  # fastrnn on static buffers (a CUDA graph on CUDA); torch.nn step by step, as it is
        step = decode_step(case, model, wl, device, static=False if provider == "torch_nn" else None)
    else:
        step = train_step(case, model, wl, device)
    if provider == "torch_nn":
        what = "nn.Embedding + cuDNN" if device.type == "cuda" else "nn.Embedding + torch.nn (aten)"
    else:
        import fastrnn

        try:  # the encoder's route (the decoder's is the same: same cell, sizes and device)
            what = "encoder: " + fastrnn.explain(model.encoder.rnn, wl.src)
        except Exception as e:  # informative only
            what = f"backend={provider!r} (explain() failed: {type(e).__name__}: {e})"
    step()  # warm-up (kernel compilation, CUDA-graph capture, lazy init) before the profiled call
    profiled = step
    if decoding and provider != "torch_nn":
        eager = decode_step(case, model, wl, device, static=False)
        eager()
        path = "graph" if device.type == "cuda" else "static"
        what += f"; decoding on the {path} path, eager path {_time_ms(eager, device):.3f} ms per call"
        profiled = eager  # a replayed graph's kernels have no operators for the profiler to attribute them to
    share = profile_share(profiled, device, recurrent_modules(model))
    basis = "device" if device.type == "cuda" else "CPU"
    of = "the eager decoding step" if profiled is not step else "the step"
    step.note = f"{what}; recurrent layers {100 * share:.1f}% of {of} ({basis} time, profiler)"
    return step


def build_fastrnn(case: Case, wl: Seq2SeqWorkload, device: torch.device):
    """``Seq2SeqConfig(backend="triton")``: the kernels."""
    return _build(case, wl, device, "triton")


def build_fastrnn_auto(case: Case, wl: Seq2SeqWorkload, device: torch.device):
    """``Seq2SeqConfig(backend="auto")``."""
    return _build(case, wl, device, "auto")


def build_torch_nn(case: Case, wl: Seq2SeqWorkload, device: torch.device):
    """The same model on ``nn.Embedding`` + ``torch.nn`` RNNs (:func:`torch_nn_seq2seq`)."""
    return _build(case, wl, device, "torch_nn")


def cost(case: Case, seed: int) -> Cost:
    """A floor of one call's work (padding included; AdamW and the loss's bytes as minimal traffic).

    Forward FLOPs: the encoder's and decoder's recurrent layers ``2*N*G*H*(E+H)`` over their
    ``N = B*S`` / ``B*T`` tokens, Luong ``general`` attention ``2*B*T*H*(H + 2*S)`` plus the combine
    layer ``4*B*T*H*H``, the output layer ``2*B*T*H*V``; training is three times that; beam search
    runs the decoder's side on ``beam + 1`` rows per source.  Bytes: the logits (written and read,
    twice more in training) and the parameters (read; training: the gradients and AdamW's two
    moments read and written).  Steps: ``S + T`` (twice in training).  ``tokens``: the real target
    tokens (training) or ``B*T`` decoded tokens (decoding).
    """
    extra = dict(case.extra)
    V, S, H, B, T = int(extra["V"]), int(extra["S"]), case.H, case.B, case.T
    G = resolve(case.cell).G
    att = attention_of(case) is not None
    beam = beam_of(case)
    rows = B * (beam + 1 if beam > 1 else 1)  # decoder rows
    flops = 2.0 * (B * S + rows * T) * G * H * (H + H) * case.layers + 2.0 * rows * T * H * V
    if att:
        flops += 2.0 * rows * T * H * (H + 2 * S) + 4.0 * rows * T * H * H
    params = 2 * V * H + 2 * case.layers * G * H * (2 * H + 2) + H * V + V + (3 * H * H + H if att else 0)
    train = case.run == "fwdbwd"
    elem = 2 if case.dtype in ("bf16", "fp16") else 4
    nbytes = (4.0 if train else 2.0) * rows * T * V * elem + params * 4.0 * (8 if train else 1)
    if train:
        flops *= 3
        _, _, tgt = make_batch(B, S, T, V, seed)
        tokens = int((tgt != PAD).sum())
    else:
        tokens = B * T
    return Cost(bytes=nbytes, flops=flops, steps=(S + T) * (2 if train else 1), tokens=tokens,
                recurrent_bytes=G * H * H * elem)  # fmt: skip


#: Beam size of the beam-search decoding rows.
BEAM = 5


def _rows(cells, atts, Hs, Bs, Ts, dtypes, V, modes=("fwdbwd", "fwd"), beams=(1,)) -> list[Case]:
    """Rows of every combination; decoding (``fwd``) rows once per beam size in ``beams`` (1:
    greedy, no ``beam`` field), training rows once."""
    rows = []
    for T, H, B, cell, att, dtype, mode in itertools.product(Ts, Hs, Bs, cells, atts, dtypes, modes):
        for beam in beams if mode == "fwd" else (1,):
            extra = (("S", T), ("V", V), ("att", att)) + ((("beam", beam),) if beam > 1 else ())
            rows.append(Case("seq2seq", cell, dtype, B, H, T, 1, False, False, mode, extra=extra))
    return rows


def grid_full() -> list[Case]:
    """GRU and LSTM, attention none/general, H 256/512, B 64/256, S = T 30/100, fp32 and bf16/fp16
    autocast, V 8000: a training step, greedy decoding and beam-5 decoding of each (288 rows)."""
    return _rows(("GRU", "LSTM"), ("none", "general"), (256, 512), (64, 256), (30, 100), ("fp32", "bf16", "fp16"),
                 GPU_VOCAB, beams=(1, BEAM))  # fmt: skip


def grid_quick() -> list[Case]:
    """12 rows: training steps of both cells with attention at H 512, B 64/256, T 30, bf16; the LSTM
    also without attention, at T 100, and in fp32 and fp16; greedy and beam-5 decoding of both
    cells at B 64."""
    rows = _rows(("GRU", "LSTM"), ("general",), (512,), (64, 256), (30,), ("bf16",), GPU_VOCAB, ("fwdbwd",))
    rows += _rows(("LSTM",), ("none",), (512,), (64,), (30,), ("bf16",), GPU_VOCAB, ("fwdbwd",))
    rows += _rows(("LSTM",), ("general",), (512,), (64,), (100,), ("bf16",), GPU_VOCAB, ("fwdbwd",))
    rows += _rows(("LSTM",), ("general",), (512,), (64,), (30,), ("fp32", "fp16"), GPU_VOCAB, ("fwdbwd",))
    rows += _rows(("GRU", "LSTM"), ("general",), (512,), (64,), (30,), ("bf16",), GPU_VOCAB, ("fwd",), (1, BEAM))
    return rows


def grid_cpu() -> list[Case]:
    """The CPU comparison: both cells with attention, fp32, H 32, B 8, S = T 10, V 50; a training
    step and greedy decoding (4 rows)."""
    return _rows(("GRU", "LSTM"), ("general",), (32,), (8,), (10,), ("fp32",), 50)


def grid_smoke() -> list[Case]:
    """Tiny rows for exercising the code on a CPU (tests only): greedy and beam-3 decoding rows too."""
    return _rows(("GRU",), ("none", "general"), (8,), (3,), (4,), ("fp32",), 20, beams=(1, 3))


_QUICK = None


def tier(case: Case) -> int:
    """The quick grid's rows run with the core rows (1), so that a time-capped quick run reaches
    them; the rest after every recurrent-layer row (4)."""
    global _QUICK
    if _QUICK is None:
        _QUICK = {c.key for c in grid_quick()}
    return 1 if case.key in _QUICK else 4


KIND = register_kind(
    CaseKind(
        name="seq2seq",
        setup=setup,
        providers={
            "fastrnn": build_fastrnn,
            "fastrnn_auto": build_fastrnn_auto,
            "cudnn": build_torch_nn,
            "torch_nn": build_torch_nn,
        },
        cost=cost,
        grids={"full": grid_full, "quick": grid_quick, "cpu": grid_cpu, "smoke": grid_smoke},
        tier=tier,
        description="Seq2Seq training step (forward, loss, backward, AdamW), greedy and beam decoding: "
        "fastrnn vs the same model on nn.Embedding + torch.nn",
    )
)


# ---------------------------------------------------------------------------------------------
# Summary of a results file

_SHARE = re.compile(r"recurrent layers ([0-9.]+|nan)% of the (?:eager decoding )?step")
_PATH = re.compile(r"decoding on the (graph|static) path")


def _decoding_rate(ms: float, case: dict[str, Any]) -> str:
    """Sentences per second and milliseconds per token (per decoding step: ``ms / T``)."""
    return f"{case['B'] * 1e3 / ms:,.1f} sent/s, {ms / case['T']:.3f} ms/token"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """One line per seq2seq row and provider of a results document (``results.json``): time per
    call, target tokens per second (training) or sentences per second and milliseconds per token
    (decoding: the fastrnn providers' graph (CUDA) or static (CPU) path, then their eager path),
    peak memory and the recurrent layers' share of the step."""
    lines = []
    for row in doc.get("rows", []):
        if row["case"]["kind"] != "seq2seq":
            continue
        train = row["case"]["run"] == "fwdbwd"
        for provider, res in row["results"].items():
            if res.get("status") != "ok":
                lines.append(f"{row['key']} {provider}: {res.get('status')} {res.get('error', res.get('reason', ''))}")
                continue
            note = res.get("note") or ""
            if train:
                rate = f"{row['tokens'] * 1e3 / res['median_ms']:,.0f} tok/s"
            else:
                path, eager = _PATH.search(note), _EAGER.search(note)
                rate = _decoding_rate(res["median_ms"], row["case"]) + (
                    f" ({path.group(1)} path)" if path else " (eager)"
                )
                if eager:
                    ms = float(eager.group(1))
                    rate += f"; eager path {ms:.3f} ms, {_decoding_rate(ms, row['case'])}"
            peak = f"{res['peak_mib']:.0f} MiB" if res.get("peak_mib") is not None else "peak n/a"
            m = _SHARE.search(note)
            share = f"recurrent {m.group(1)}%" if m else "recurrent n/a"
            lines.append(f"{row['key']} {provider}: {res['median_ms']:.3f} ms, {rate}, {peak}, {share}")
    return lines


def host_time_per_token(
    cell: str, attention: str | None, beam: int, static: bool | None, *, B: int = 8, H: int = 32, V: int = 50,
    T: int = 20, reps: int = 30,
) -> float:  # fmt: skip
    """Host time (this thread's CPU time) per decoded token, in microseconds, on the CPU: a tiny
    model (where the host's work per step dominates), ``<eos>`` suppressed so that every call runs
    ``max_len`` steps, ``(t(2T) - t(T)) / T`` with ``t`` the fastest of ``reps`` calls (the
    encoder and the set-up cancel).  ``static``: the decoding path (``None``: a release without
    the keyword)."""
    import inspect
    import time

    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(V, V, embedding_dim=H, hidden_size=H, mode=cell, attention=attention)).eval()
    with torch.no_grad():
        model.decoder.out.bias[EOS] = -1e4
    src, lengths = torch.randint(UNK + 1, V, (B, T)), torch.full((B,), T)
    kw = {"static": static} if "static" in inspect.signature(greedy_decode).parameters else {}

    def call(n: int) -> None:
        if beam == 1:
            greedy_decode(model, src, lengths, max_len=n, **kw)
        else:
            beam_search(model, src, lengths, beam, max_len=n, **kw)

    def fastest(n: int) -> float:
        call(n)
        times = []
        for _ in range(reps):
            t0 = time.thread_time()
            call(n)
            times.append(time.thread_time() - t0)
        return min(times)

    return (fastest(2 * T) - fastest(T)) / T * 1e6


def host_time_lines() -> list[str]:
    """:func:`host_time_per_token` of GRU/LSTM with and without attention, greedy and beam 5, on
    every decoding path this release has (one torch thread)."""
    import inspect

    torch.set_num_threads(1)
    paths = (
        {"static": True, "eager": False} if "static" in inspect.signature(greedy_decode).parameters else {"eager": None}
    )
    lines = []
    for cell, att in (("GRU", "general"), ("LSTM", "general"), ("GRU", None), ("GRU", "bahdanau")):
        for beam in (1, BEAM):
            times = {name: host_time_per_token(cell, att, beam, static) for name, static in paths.items()}
            what = "greedy" if beam == 1 else f"beam {beam}"
            lines.append(
                f"{cell} {att or 'none'} {what}: " + ", ".join(f"{k} {v:.0f} us/token" for k, v in times.items())
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.seq2seq RESULTS``: print :func:`summary_lines` of a results folder
    (or its ``results.json``).  ``python -m benchmarks.seq2seq --host-time``: print
    :func:`host_time_lines` (decoding's host time per token on this CPU)."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--host-time"]:
        print("\n".join(host_time_lines()))
        return 0
    if len(args) != 1:
        print("usage: python -m benchmarks.seq2seq RESULTS_DIR_OR_JSON | --host-time", file=sys.stderr)
        return 2
    path = Path(args[0])
    if path.is_dir():
        path = path / "results.json"
    lines = summary_lines(load(path))
    print("\n".join(lines) if lines else f"no seq2seq rows in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
