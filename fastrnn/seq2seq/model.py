"""The encoder-decoder of :mod:`fastrnn.seq2seq`, built on :class:`fastrnn.EmbeddingRNN`.

Shapes (batch first everywhere): ``B`` batch, ``S`` source length, ``T`` target length, ``L``
layers, ``D`` encoder directions, ``He``/``H`` encoder/decoder hidden size, ``V`` target
vocabulary, ``K = D * He`` the size of an encoder output (the attention keys).

Targets are id tensors ``(B, T)`` that end with ``<eos>`` and are padded with ``<pad>`` (no
``<sos>``): the decoder reads ``<sos>, y_1 .. y_{T-1}`` and predicts ``y_1 .. y_T``.

Decoder variants (``attention=``):

* ``None``: the plain encoder-decoder; the encoder's final state is the only link to the source.
* ``"dot"``, ``"general"``, ``"concat"``: Luong attention.  The recurrence does not depend on the
  attention, so teacher-forced training runs the decoder over the whole target in one fused
  :class:`~fastrnn.EmbeddingRNN` call, then attends for all steps at once.
* ``"bahdanau"``: additive attention, step-wise, with the context fed back into the recurrence
  (input feeding).  Because :class:`~fastrnn.EmbeddingRNN` takes token ids only, the context enters
  through a second recurrent transition on the top layer (the *conditional* decoder of Nematus,
  Sennrich et al. 2017): ``s' = rnn(y_{t-1}, s_{t-1})``, ``c_t = attend(s')``,
  ``s_t = feed(c_t, s')``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..embedding import EmbeddingRNN
from ..modules import FAMILIES, build, resolve
from . import static
from .attention import LUONG_SCORES, BahdanauAttention, LuongAttention
from .data import PAD, SOS
from .decoding import LENGTH_PENALTY, Hypotheses, beam_search, greedy_decode

ATTENTIONS = (None, *LUONG_SCORES, "bahdanau")
MODES = tuple(FAMILIES)  # the recurrent cell families: "RNN", "LSTM", "GRU"

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (L, B, H), or (h, c) for LSTM


@dataclass
class Seq2SeqConfig:
    """Everything that defines a :class:`Seq2Seq`'s shape (saved in checkpoints).

    ``encoder_hidden_size`` defaults to ``hidden_size``; ``attention_size`` (the additive scores'
    hidden size) to ``hidden_size``.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    embedding_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    mode: str = "GRU"
    bidirectional: bool = False
    encoder_hidden_size: int | None = None
    attention: str | None = None
    attention_size: int | None = None
    dropout: float = 0.0
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        for name in ("src_vocab_size", "tgt_vocab_size", "embedding_dim", "hidden_size", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.attention == "dot" and self.key_size != self.hidden_size:
            raise ValueError(
                f"attention 'dot' needs the decoder hidden size ({self.hidden_size}) to equal the encoder output "
                f"size ({self.key_size} = directions x encoder hidden size); use 'general' or 'concat'"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def enc_hidden(self) -> int:
        return self.encoder_hidden_size or self.hidden_size

    @property
    def key_size(self) -> int:
        return self.enc_hidden * (2 if self.bidirectional else 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Seq2SeqConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown Seq2SeqConfig fields: {unknown}")
        return cls(**d)


@dataclass
class EncoderOutput:
    """``outputs (B, S, K)`` (zero at padding), ``state`` (final state, ``(L*D, B, He)`` or a pair),
    ``mask (B, S)`` bool (True at real tokens), ``lengths (B,)``."""

    outputs: torch.Tensor
    state: State
    mask: torch.Tensor
    lengths: torch.Tensor


@dataclass
class DecoderState:
    """What one decoding step needs: the recurrent ``hidden`` state ``(L, B, H)`` (or ``(h, c)``),
    the encoder ``memory (B, S, K)``, its ``mask (B, S)`` and, for Bahdanau, its projected keys."""

    hidden: State
    memory: torch.Tensor
    mask: torch.Tensor
    projected_keys: torch.Tensor | None = None

    def index_select(self, index: torch.Tensor) -> DecoderState:
        """The states of batch entries ``index (N,)`` (beam search reorders and expands with it)."""
        hidden = tuple(h.index_select(1, index) for h in self.hidden) if isinstance(self.hidden, tuple) else None
        return DecoderState(
            hidden if hidden is not None else self.hidden.index_select(1, index),
            self.memory.index_select(0, index),
            self.mask.index_select(0, index),
            None if self.projected_keys is None else self.projected_keys.index_select(0, index),
        )


def reseed_rnn_dropout(module: nn.Module, device: torch.device) -> None:
    """Make the next cuDNN call of ``module`` seed its inter-layer dropout from torch's CUDA RNG.

    cuDNN keeps the dropout state of its recurrent layers (dropout between layers) to itself: it is
    seeded from the CUDA generator once, then advances inside cuDNN, outside the generator's state.
    A training run resumed from a checkpoint's ``torch.cuda.get_rng_state_all()`` would therefore
    draw other dropout masks than the uninterrupted run did.  Setting the generator's state (to
    itself: its random stream is unchanged) makes cuDNN seed its dropout state afresh from the
    generator at its next call; done before every recurrent call in training, the masks depend on
    the generator's state alone, which checkpoints hold.  (fastrnn's kernels draw their dropout from
    the generator anyway; then this costs two host calls and nothing else.)  Nothing to do on the
    CPU, in eval mode, without dropout or with one layer.
    """
    rnn = getattr(module, "rnn", module)
    if device.type != "cuda" or not rnn.training or not getattr(rnn, "dropout", 0) or rnn.num_layers < 2:
        return
    torch.cuda.set_rng_state(torch.cuda.get_rng_state(device), device)


def check_batch(ids: torch.Tensor, lengths: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` unless ``ids`` is ``(B, T)`` integer and ``lengths (B,)`` lies in ``[1, T]``."""
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{what} must be a (B, T) integer tensor of token ids, got {ids.dtype} {tuple(ids.shape)}")
    if lengths.shape != ids.shape[:1]:
        raise ValueError(f"{what} lengths must have shape ({ids.shape[0]},), got {tuple(lengths.shape)}")
    if ids.shape[0] and (int(lengths.min()) < 1 or int(lengths.max()) > ids.shape[1]):
        raise ValueError(f"{what} lengths must lie in [1, {ids.shape[1]}] (the padded length)")


class Encoder(nn.Module):
    """Fused embedding + RNN/LSTM/GRU stack over the source (optionally bidirectional).

    Example::

        enc = Encoder(100, 16, 32, bidirectional=True)
        out = enc(torch.randint(4, 100, (3, 7)), torch.tensor([7, 2, 5]))
        out.outputs.shape   # (3, 7, 64); out.state: (2, 3, 32)
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int = 1, *, mode: str = "GRU",
        bidirectional: bool = False, dropout: float = 0.0, backend: str = "auto",
    ) -> None:  # fmt: skip
        super().__init__()
        self.rnn = EmbeddingRNN(
            vocab_size, embedding_dim, hidden_size, num_layers, mode=mode, padding_idx=PAD, batch_first=True,
            dropout=dropout, bidirectional=bidirectional, backend=backend,
        )  # fmt: skip

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``src (B, S)`` ids, ``lengths (B,)`` (any order) -> :class:`EncoderOutput`."""
        check_batch(src, lengths, "source")
        # Variable-length: outputs zero at padding, the state is each sequence's own last step.
        reseed_rnn_dropout(self.rnn, src.device)
        out, state = self.rnn(src, lengths=lengths)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < lengths.to(src.device)[:, None]
        return EncoderOutput(out, state, mask, lengths)


class Bridge(nn.Module):
    """Encoder final state ``(L*D, B, He)`` -> decoder initial state ``(L, B, H)``.

    The identity when ``D == 1`` and ``He == H``; otherwise each layer's directions are
    concatenated and mapped by ``tanh(W h)`` (and ``W' c`` for an LSTM's cell state).
    """

    def __init__(self, mode: str, num_layers: int, directions: int, enc_hidden: int, dec_hidden: int) -> None:
        super().__init__()
        self.num_layers, self.directions = num_layers, directions
        self.identity = directions == 1 and enc_hidden == dec_hidden
        if not self.identity:
            self.h = nn.Linear(directions * enc_hidden, dec_hidden)
            self.c = nn.Linear(directions * enc_hidden, dec_hidden) if resolve(mode).has_cell_state else None

    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        L, D = self.num_layers, self.directions
        return t.view(L, D, *t.shape[1:]).permute(0, 2, 1, 3).reshape(L, t.shape[1], -1)

    def forward(self, state: State) -> State:
        if self.identity:
            return state
        if isinstance(state, tuple):
            h, c = state
            return torch.tanh(self.h(self._merge(h))), self.c(self._merge(c))
        return torch.tanh(self.h(self._merge(state)))


class Decoder(nn.Module):
    """Fused embedding + recurrent stack + (optional) attention + output projection.

    :meth:`forward` runs a whole teacher-forced target (one fused call when the attention allows
    it); :meth:`step` runs one step (greedy/beam decoding, Bahdanau, scheduled sampling).
    """

    def __init__(
        self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int = 1, *, mode: str = "GRU",
        key_size: int | None = None, attention: str | None = None, attention_size: int | None = None,
        dropout: float = 0.0, backend: str = "auto",
    ) -> None:  # fmt: skip
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        key_size = key_size or hidden_size
        self.mode, self.attention_kind = mode, attention
        self.rnn = EmbeddingRNN(
            vocab_size, embedding_dim, hidden_size, num_layers, mode=mode, padding_idx=PAD, batch_first=True,
            dropout=dropout, backend=backend,
        )  # fmt: skip
        self.attention: nn.Module | None = None
        self.feed: nn.Module | None = None
        if attention in LUONG_SCORES:
            self.attention = LuongAttention(hidden_size, key_size, attention, attention_size)
        elif attention == "bahdanau":
            self.attention = BahdanauAttention(hidden_size, key_size, attention_size)
            self.feed = build(mode, key_size, hidden_size, batch_first=True, backend=backend)
        self.combine = nn.Linear(key_size + hidden_size, hidden_size) if attention else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)

    @property
    def fused_teacher_forcing(self) -> bool:
        """True when a teacher-forced target runs as one recurrent call (no Bahdanau input feeding)."""
        return self.attention_kind != "bahdanau"

    def init_state(self, hidden: State, enc: EncoderOutput) -> DecoderState:
        pk = self.attention.project_keys(enc.outputs) if isinstance(self.attention, BahdanauAttention) else None
        return DecoderState(hidden, enc.outputs, enc.mask, pk)

    def _readout(self, h: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """``h (B, T, H)``, ``ctx (B, T, K)`` -> logits ``(B, T, V)`` via ``tanh(W_c [ctx; h])``."""
        if ctx is not None:
            h = torch.tanh(self.combine(torch.cat([ctx, h], -1)))
        return self.out(self.dropout(h))

    def forward(self, tgt_in: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Teacher-forced decoding of ``tgt_in (B, T)`` (``<sos>`` then the target shifted right).

        Returns ``(logits (B, T, V), state after the last step)``.  Without Bahdanau attention the
        recurrence runs as one call over all ``T`` steps and Luong attention is computed for all
        steps at once; with Bahdanau it runs step by step.
        """
        if not self.fused_teacher_forcing:
            logits = []
            for t in range(tgt_in.shape[1]):
                step_logits, state = self.step(tgt_in[:, t], state)
                logits.append(step_logits)
            return torch.stack(logits, 1), state
        reseed_rnn_dropout(self.rnn, tgt_in.device)
        out, hidden = self.rnn(tgt_in, state.hidden)  # (B, T, H): the whole target in one call
        ctx = self.attention(out, state.memory, state.mask)[0] if self.attention is not None else None
        return self._readout(out, ctx), DecoderState(hidden, state.memory, state.mask, state.projected_keys)

    def step(self, y_prev: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One step: ``y_prev (B,)`` ids -> ``(logits (B, V), new state)``."""
        reseed_rnn_dropout(self.rnn, y_prev.device)
        out, hidden = self.rnn(y_prev[:, None], state.hidden)  # (B, 1, H)
        ctx = None
        if isinstance(self.attention, LuongAttention):
            ctx = self.attention(out, state.memory, state.mask)[0]
        elif isinstance(self.attention, BahdanauAttention):
            ctx, _ = self.attention(out, state.memory, state.projected_keys, state.mask)
            top = (hidden[0][-1:], hidden[1][-1:]) if isinstance(hidden, tuple) else hidden[-1:]
            out, top = self.feed(ctx, top)  # input feeding: the context drives the top layer's state
            if isinstance(hidden, tuple):
                hidden = (torch.cat([hidden[0][:-1], top[0]]), torch.cat([hidden[1][:-1], top[1]]))
            else:
                hidden = torch.cat([hidden[:-1], top])
        logits = self._readout(out, ctx)[:, 0]
        return logits, DecoderState(hidden, state.memory, state.mask, state.projected_keys)


class Seq2Seq(nn.Module):
    """Encoder-decoder over token ids, with optional attention (see the module doc).

    Example::

        cfg = Seq2SeqConfig(src_vocab_size=30, tgt_vocab_size=30, attention="general")
        model = Seq2Seq(cfg)
        logits = model(src, src_lengths, tgt)          # (B, T, 30), teacher-forced
        hyp = greedy_decode(model, src, src_lengths)   # see fastrnn.seq2seq.decoding
        hyp = model.eval().translate(src, src_lengths, beam_size=5)
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(
            c.src_vocab_size, c.embedding_dim, c.enc_hidden, c.num_layers, mode=c.mode,
            bidirectional=c.bidirectional, dropout=c.dropout, backend=c.backend,
        )  # fmt: skip
        self.bridge = Bridge(c.mode, c.num_layers, 2 if c.bidirectional else 1, c.enc_hidden, c.hidden_size)
        self.decoder = Decoder(
            c.tgt_vocab_size, c.embedding_dim, c.hidden_size, c.num_layers, mode=c.mode, key_size=c.key_size,
            attention=c.attention, attention_size=c.attention_size, dropout=c.dropout, backend=c.backend,
        )  # fmt: skip

    def init_state(self, src: torch.Tensor, src_lengths: torch.Tensor) -> DecoderState:
        """Encode ``src (B, S)`` with ``src_lengths (B,)``: the decoder's state before ``<sos>``."""
        enc = self.encoder(src, src_lengths)
        return self.decoder.init_state(self.bridge(enc.state), enc)

    def forward(
        self, src: torch.Tensor, src_lengths: torch.Tensor, tgt: torch.Tensor, teacher_forcing: float = 1.0
    ) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, V)`` for ``tgt (B, T)`` (ends with ``<eos>``, no ``<sos>``).

        ``teacher_forcing < 1`` is scheduled sampling: at each step after the first, each sequence
        is fed the ground truth with that probability, else its own previous argmax (step-wise).
        """
        if tgt.dim() != 2 or tgt.shape[0] != src.shape[0]:
            raise ValueError(f"tgt must be (B, T) with B = {src.shape[0]}, got {tuple(tgt.shape)}")
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing must lie in [0, 1], got {teacher_forcing}")
        state = self.init_state(src, src_lengths)
        tgt_in = F.pad(tgt[:, :-1], (1, 0), value=SOS)
        if teacher_forcing >= 1.0:
            return self.decoder(tgt_in, state)[0]
        logits, y = [], tgt_in[:, 0]
        for t in range(tgt.shape[1]):
            if t:
                use_truth = torch.rand(tgt.shape[0], device=tgt.device) < teacher_forcing
                y = torch.where(use_truth, tgt_in[:, t], logits[-1].argmax(-1))
            step_logits, state = self.decoder.step(y, state)
            logits.append(step_logits)
        return torch.stack(logits, 1)

    def decode_step(self, y_prev: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """``y_prev (N,)`` -> ``(log-probabilities (N, V) in fp32, new state)``: the decoding interface."""
        logits, state = self.decoder.step(y_prev, state)
        return logits.float().log_softmax(-1), state

    @staticmethod
    def reorder_state(state: DecoderState, index: torch.Tensor) -> DecoderState:
        """The states of batch entries ``index (N,)``: beam search expands and reorders with it."""
        return state.index_select(index)

    def static_decoder(self):
        """``(decoder, None)``: this model's static-buffer decoding step
        (:mod:`fastrnn.seq2seq.static`, made on first use), or ``(None, why not)`` (e.g. training
        mode with dropout).  What :func:`~fastrnn.seq2seq.greedy_decode` and
        :func:`~fastrnn.seq2seq.beam_search` ask a decoder model for."""
        reason = static.unsupported(self)
        return (static.decoder_for(self), None) if reason is None else (None, reason)

    def translate(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor | None = None,
        *,
        beam_size: int = 1,
        max_len: int | None = None,
        length_penalty: float = LENGTH_PENALTY,
        static: bool | None = None,
        sync_every: int | None = None,
    ) -> Hypotheses:
        """Decode ``src (B, S)`` ids: greedy (``beam_size=1``) or beam search (see
        :mod:`fastrnn.seq2seq.decoding`).  ``src_lengths`` defaults to each row's count of
        non-``<pad>`` ids.  ``src`` is moved to the model's device; ``static=False`` decodes step by
        step instead of on static buffers (a CUDA graph on CUDA).  Call :meth:`eval` first.

        Example::

            hyp = model.eval().translate(src, src_lengths, beam_size=5)
            texts = [tgt_vocab.decode(ids) for ids in hyp.to_lists()]
        """
        if src_lengths is None:
            src_lengths = (src != PAD).sum(1)
        if beam_size == 1:
            return greedy_decode(self, src, src_lengths, max_len, sync_every=sync_every, static=static)
        return beam_search(
            self, src, src_lengths, beam_size, max_len, length_penalty, sync_every=sync_every, static=static
        )


def sequence_loss(logits: torch.Tensor, tgt: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the real (non-``<pad>``) target tokens.

    ``logits (B, T, V)``, ``tgt (B, T)``; ``reduction`` ``"mean"`` (per real token) or ``"sum"``.
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=PAD, reduction=reduction)
