"""Batched greedy and beam-search decoding.

Both work with any *decoder model* offering (see :class:`DecoderModel`):

* ``init_state(src (B, S), src_lengths (B,)) -> state``
* ``decode_step(y_prev (N,), state) -> (log_probs (N, V), state)``
* ``reorder_state(state, index (M,)) -> state`` (pick/duplicate batch entries)

:class:`~fastrnn.seq2seq.Seq2Seq` is one.  Results are :class:`Hypotheses`: ``tokens (B, T)``
with ``<eos>`` included where a hypothesis ended and ``<pad>`` after it.

**Two step paths.**  On a :class:`~fastrnn.seq2seq.Seq2Seq` (in eval mode, or without dropout)
decoding runs by default on *static buffers* (:mod:`fastrnn.seq2seq.static`): one decoder step
(embedding, cell, attention, output layer, then the search's own bookkeeping) that reads and
writes the same tensors at every token.  On CUDA that step is captured once per batch size,
beam size and source-length bucket in a CUDA graph and replayed for each token; on the CPU the
same code runs without capture.  ``static=False`` (the command line's ``--eager``) runs the
model's :meth:`decode_step` token by token instead, as any other decoder model does.  Both give
the same tokens (on CUDA up to floating-point rounding: see :mod:`fastrnn.seq2seq.static`).

**The search's bookkeeping** (:class:`GreedySearch`, :class:`BeamSearch`) lives in device
buffers that every step updates in place, with the step counter on the device too, so that a
captured step can be replayed unchanged and no step reads the device on the host.

**Host synchronisation.**  Neither loop reads a device tensor on the host inside a decoder step
(no ``.item()``, ``.tolist()``, ``bool()``, ``nonzero()``): every source's progress is kept in
device tensors, finished sources are masked (frozen), and whether *all* sources are done is
asked once every ``sync_every`` steps -- the only host sync of the loop.  ``sync_every=None``
means every step on the CPU (where that costs nothing) and every :data:`SYNC_EVERY` steps on
other devices.  Because a finished source is frozen, the result does not depend on
``sync_every``; a larger value only runs up to ``sync_every - 1`` idle steps at the end.
(The decoder model's own eager step may still synchronise: that is up to the model.)

**Devices.**  When the decoder model is an ``nn.Module`` with parameters (a
:class:`~fastrnn.seq2seq.Seq2Seq`), ``src`` and ``src_lengths`` are moved to the device of its
parameters first (token ids are small), and the hypotheses come back on that device.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

import torch

from .data import EOS, PAD, SOS

#: Steps between two "is every source done?" checks (host syncs) off the CPU.
SYNC_EVERY = 8
#: The default ``length_penalty`` of :func:`beam_search` (and of the command line's ``--length-penalty``).
LENGTH_PENALTY = 1.0


class DecoderModel(Protocol):
    def init_state(self, src: torch.Tensor, src_lengths: torch.Tensor) -> Any: ...
    def decode_step(self, y_prev: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...
    def reorder_state(self, state: Any, index: torch.Tensor) -> Any: ...


class Hypotheses(NamedTuple):
    """``tokens (B, T)`` int64 (``<eos>`` included when reached, ``<pad>`` after), ``lengths (B,)``
    (tokens up to and including ``<eos>``), ``scores (B,)`` (sum of token log-probabilities)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor

    def to_lists(self) -> list[list[int]]:
        """Token ids per hypothesis without ``<eos>``/``<pad>``."""
        out = []
        for row, n in zip(self.tokens.tolist(), self.lengths.tolist()):
            row = row[:n]
            out.append(row[:-1] if row and row[-1] == EOS else row)
        return out


def default_max_len(src_lengths: torch.Tensor) -> int:
    """Default output budget: twice the longest source, plus 10."""
    return 2 * int(src_lengths.max()) + 10


def _sync_every(device: torch.device, sync_every: int | None) -> int:
    if sync_every is None:
        return 1 if device.type == "cpu" else SYNC_EVERY
    if sync_every < 1:
        raise ValueError(f"sync_every must be at least 1, got {sync_every}")
    return sync_every


def _budget(src: torch.Tensor, src_lengths: torch.Tensor, max_len: int | None) -> int:
    max_len = default_max_len(src_lengths) if max_len is None else max_len
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    return max_len


def _empty(device: torch.device) -> Hypotheses:
    return Hypotheses(
        torch.zeros(0, 0, dtype=torch.int64, device=device),
        torch.zeros(0, dtype=torch.int64, device=device),
        torch.zeros(0, device=device),
    )


def model_device(model: Any) -> torch.device | None:
    """The device of a decoder model's parameters (``None`` for a model without any)."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return None


def _to_model(model: Any, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``src`` and ``src_lengths`` on the model's device (see the module doc, "Devices")."""
    device = model_device(model)
    if device is None:
        return src, src_lengths
    return src.to(device), torch.as_tensor(src_lengths).to(device)


def _static_path(model: Any, static: bool | None):
    """The static-buffer decoder of ``model`` when it is to be used, else ``None``."""
    if static is False:
        return None
    from . import static as static_mod

    reason = static_mod.unsupported(model)
    if reason is None:
        return static_mod.decoder_for(model)
    if static:
        raise ValueError(f"static=True: {reason}")
    return None


# ----------------------------------------------------------------------------------------------
# The searches' state on device buffers


class GreedySearch:
    """Greedy decoding of ``B`` sources on fixed device buffers (up to ``capacity`` tokens).

    :meth:`advance` takes one step's log-probabilities ``(B, V)`` (fp32) and updates every buffer
    in place: ``y`` (the next input: the argmax, ``<pad>`` for a finished source), ``finished``,
    ``lengths``, ``scores``, ``tokens[:, t]`` and the step counter ``t`` (a device tensor).  It
    never reads the device on the host, so a captured step replays it unchanged.
    """

    def __init__(self, B: int, capacity: int, device: torch.device) -> None:
        self.B, self.capacity = B, capacity
        self.y = torch.full((B,), SOS, dtype=torch.int64, device=device)
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(B, dtype=torch.int64, device=device)
        self.scores = torch.zeros(B, dtype=torch.float32, device=device)
        self.tokens = torch.full((B, capacity), PAD, dtype=torch.int64, device=device)
        self.t = torch.zeros(1, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Back to the start (before ``<sos>`` is read)."""
        self.y.fill_(SOS)
        self.finished.zero_()
        self.lengths.zero_()
        self.scores.zero_()
        self.t.zero_()

    def advance(self, logp: torch.Tensor) -> None:
        """One step: ``logp (B, V)`` fp32 log-probabilities of the next token."""
        best, y = logp.max(-1)
        y = y.masked_fill(self.finished, PAD)
        self.scores += best.masked_fill(self.finished, 0.0)
        self.lengths += (~self.finished).long()
        self.tokens.index_copy_(1, self.t, y[:, None])
        self.finished |= y == EOS
        self.y.copy_(y)
        self.t += 1

    def all_done(self) -> bool:
        """Whether every source has produced ``<eos>`` (a host sync)."""
        return bool(self.finished.all())

    def result(self) -> Hypotheses:
        width = int(self.lengths.max())  # idle steps after the last <eos> (sync_every > 1) hold only <pad>
        return Hypotheses(self.tokens[:, :width].clone(), self.lengths.clone(), self.scores.clone())


class BeamSearch:
    """Beam search over ``B`` sources with ``K`` beams each, on fixed device buffers.

    Every source has ``R = K + 1`` rows: ``K`` beams, then the greedy row (index ``K``).  Row
    ``b * R + r`` of the decoder's batch is row ``r`` of source ``b``.  :meth:`advance` takes one
    step's log-probabilities ``(B * R, V)`` (fp32) and updates every buffer in place (see
    :func:`beam_search` for the search and its stopping rule); afterwards ``rows (B * R,)`` is the
    index that reorders the decoder state (row ``i`` of the next step continues row ``rows[i]``)
    and ``y`` the next input.  The step counter ``t`` is a device tensor: nothing is read on the
    host, so a captured step replays it unchanged.  :meth:`finish` builds the hypotheses.

    Buffers: ``score (B, R)`` live rows' raw log-prob sums (``-inf``: a dead row),
    ``greedy_alive (B,)``, ``tokens``/``parents (capacity, B, R)`` (row ``r`` at step ``t`` emitted
    ``tokens[t, b, r]`` and extends row ``parents[t, b, r]`` of step ``t - 1``), the best finished
    hypothesis per source (``best`` its rank, ``best_raw`` its score, ``best_step``/``best_row``
    where its prefix ends (``best_step`` -1: empty prefix, -2: none yet), ``best_len``,
    ``best_eos``: whether ``<eos>`` follows the prefix), ``done (B,)``, and the ranking's
    denominators per step: ``pen_rank[t] = (t + 1) ** length_penalty`` for a hypothesis ending at
    step ``t``, ``pen_bound[t]`` for the stopping rule.
    """

    def __init__(self, B: int, K: int, capacity: int, device: torch.device) -> None:
        self.B, self.K, self.R, self.capacity = B, K, K + 1, capacity
        R, i64, f32 = K + 1, torch.int64, torch.float32
        self.score = torch.zeros(B, R, dtype=f32, device=device)
        self.greedy_alive = torch.ones(B, dtype=torch.bool, device=device)
        self.tokens = torch.zeros(capacity, B, R, dtype=i64, device=device)
        self.parents = torch.zeros(capacity, B, R, dtype=i64, device=device)
        self.best = torch.zeros(B, dtype=f32, device=device)
        self.best_raw = torch.zeros(B, dtype=f32, device=device)
        self.best_step = torch.zeros(B, dtype=i64, device=device)
        self.best_row = torch.zeros(B, dtype=i64, device=device)
        self.best_len = torch.ones(B, dtype=i64, device=device)
        self.best_eos = torch.ones(B, dtype=torch.bool, device=device)
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        self.y = torch.full((B * R,), SOS, dtype=i64, device=device)
        self.rows = torch.arange(B * R, dtype=i64, device=device)
        self.t = torch.zeros(1, dtype=i64, device=device)
        self.pen_rank = torch.ones(capacity, dtype=f32, device=device)
        self.pen_bound = torch.ones(capacity, dtype=f32, device=device)
        self.base = torch.arange(B, dtype=i64, device=device)[:, None] * R
        # all beams start identical, so only beam 0 may expand at first; the greedy row is live
        start = torch.full((B, R), -math.inf, dtype=f32)
        start[:, 0] = start[:, K] = 0.0
        self._start = start.to(device)

    def reset(self, max_len: int, length_penalty: float) -> None:
        """Back to the start, for outputs of at most ``max_len`` tokens (``<= capacity``)."""
        if max_len > self.capacity:
            raise ValueError(f"max_len {max_len} exceeds the buffers' capacity {self.capacity}")
        self.score.copy_(self._start)
        self.greedy_alive.fill_(True)
        self.best.fill_(-math.inf)
        self.best_raw.fill_(-math.inf)
        self.best_step.fill_(-2)
        self.best_row.zero_()
        self.best_len.fill_(1)
        self.best_eos.fill_(True)
        self.done.zero_()
        self.y.fill_(SOS)
        self.rows.copy_(torch.arange(self.B * self.R, device=self.rows.device))
        self.t.zero_()
        rank, bound = penalties(self.capacity, max_len, length_penalty)
        self.pen_rank.copy_(rank)
        self.pen_bound.copy_(bound)

    def _offer(self, rank, raw, row, step, length, eos) -> None:
        """Keep a candidate ``(B,)`` as the best finished hypothesis where it is better (and not done)."""
        take = ((rank > self.best) | (self.best_step < -1)) & ~self.done
        self.best.copy_(torch.where(take, rank, self.best))
        self.best_raw.copy_(torch.where(take, raw, self.best_raw))
        self.best_row.copy_(torch.where(take, row, self.best_row))
        self.best_step.copy_(torch.where(take, step, self.best_step))
        self.best_len.copy_(torch.where(take, length, self.best_len))
        self.best_eos.copy_(torch.where(take, eos, self.best_eos))

    def advance(self, logp: torch.Tensor) -> None:
        """One step: ``logp (B * R, V)`` fp32 log-probabilities of the next token of every row."""
        B, K, R = self.B, self.K, self.R
        G, V, t, neg_inf = K, logp.shape[-1], self.t, float("-inf")
        total = self.score[:, :, None] + logp.view(B, R, V)  # (B, R, V)
        # every live row ending here: finished candidates of length t + 1
        ended = total[:, :, EOS]
        rank, row = (ended / self.pen_rank.index_select(0, t)).max(1)
        self._offer(rank, ended.gather(1, row[:, None])[:, 0], row, t - 1, t + 1, True)
        # the K best extensions of the beams by another token than <eos> live on
        grow = total[:, :K].clone()
        grow[:, :, EOS] = neg_inf
        top, idx = grow.view(B, K * V).topk(K, dim=1)
        # the greedy row: its argmax; it stops at <eos> (its ending was offered above)
        g_logp, g_tok = logp[G::R].max(-1)
        self.greedy_alive &= g_tok != EOS
        g_score = torch.where(self.greedy_alive, self.score[:, G] + g_logp, neg_inf)
        g_tok = g_tok.masked_fill(~self.greedy_alive, PAD)
        parent = torch.cat([idx // V, torch.full((B, 1), G, dtype=torch.int64, device=logp.device)], 1)
        tokens = torch.cat([idx % V, g_tok[:, None]], 1)
        self.tokens.index_copy_(0, t, tokens[None])
        self.parents.index_copy_(0, t, parent[None])
        self.score.copy_(torch.cat([top, g_score[:, None]], 1))
        self.rows.copy_((self.base + parent).view(-1))
        self.y.copy_(tokens.view(-1))
        # the stopping rule (see beam_search): the best rank a live row can still reach
        reachable = (self.score / self.pen_bound.index_select(0, t)).amax(1)
        self.done |= (self.best_step > -2) & (self.best >= reachable)
        self.t += 1

    def all_done(self) -> bool:
        """Whether every source is done (a host sync)."""
        return bool(self.done.all())

    def finish(self, steps: int, max_len: int, length_penalty: float, trace=None) -> Hypotheses:
        """The best hypothesis per source after ``steps`` steps of an output budget of ``max_len``
        (``trace(steps)``: another implementation of :func:`backtrace`)."""
        if steps == max_len:  # live rows compete as they are, with length max_len
            rank, row = (self.score / max_len**length_penalty).max(1)
            self._offer(rank, self.score.gather(1, row[:, None])[:, 0], row, max_len - 1, max_len, False)
        return backtrace(self, steps) if trace is None else trace(steps)


def penalties(capacity: int, max_len: int, length_penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank denominators per step ``t < capacity`` (fp32, on the CPU): ``(t + 1) ** L`` for a
    hypothesis that ends at step ``t``, and the stopping rule's bound after step ``t``: ``max_len **
    L`` for ``L >= 0``, ``min(t + 2, max_len) ** L`` for ``L < 0`` (see :func:`beam_search`)."""
    lp = float(length_penalty)
    rank = [(t + 1) ** lp for t in range(capacity)]
    bound = [max_len**lp if lp >= 0 else min(t + 2, max_len) ** lp for t in range(capacity)]
    return torch.tensor(rank, dtype=torch.float32), torch.tensor(bound, dtype=torch.float32)


def backtrace(search: BeamSearch, steps: int) -> Hypotheses:
    """Follow the back-pointers from each source's best hypothesis (one host sync: the width)."""
    B, dev = search.B, search.score.device
    width = int(search.best_len.max())
    out = torch.full((B, width), PAD, dtype=torch.int64, device=dev)
    ptr = search.best_row.clone()
    for t in range(min(width, steps) - 1, -1, -1):
        on = search.best_step >= t
        out[:, t] = torch.where(on, search.tokens[t].gather(1, ptr[:, None])[:, 0], PAD)
        ptr = torch.where(on, search.parents[t].gather(1, ptr[:, None])[:, 0], ptr)
    last = (search.best_len - 1)[:, None]
    out.scatter_(1, last, torch.where(search.best_eos[:, None], EOS, out.gather(1, last)))
    return Hypotheses(out, search.best_len.clone(), search.best_raw.clone())


# ----------------------------------------------------------------------------------------------
# Greedy decoding and beam search


@torch.no_grad()
def greedy_decode(
    model: DecoderModel,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len: int | None = None,
    *,
    sync_every: int | None = None,
    static: bool | None = None,
) -> Hypotheses:
    """Batched greedy decoding: the most likely token at each step, until ``<eos>`` or ``max_len``.

    ``src (B, S)`` ids, ``src_lengths (B,)`` (moved to the model's device, see the module doc).
    Stops once every sequence has produced ``<eos>`` (checked every ``sync_every`` steps, see the
    module doc).  ``static``: ``None`` (default) runs a :class:`~fastrnn.seq2seq.Seq2Seq` on the
    static-buffer step (a CUDA graph on CUDA) and any other decoder model step by step; ``False``
    always step by step (:meth:`decode_step`); ``True`` insists on the static step (an error
    names why a model cannot have it).

    Example::

        hyp = greedy_decode(model, src, src_lengths, max_len=50)
        texts = [tgt_vocab.decode(ids) for ids in hyp.to_lists()]
    """
    src, src_lengths = _to_model(model, src, src_lengths)
    max_len = _budget(src, src_lengths, max_len)
    every = _sync_every(src.device, sync_every)
    B = src.shape[0]
    if B == 0:
        return _empty(src.device)
    fast = _static_path(model, static)
    if fast is not None:
        return fast.greedy(model, src, src_lengths, max_len, every)
    state = model.init_state(src, src_lengths)
    search = GreedySearch(B, max_len, src.device)
    for t in range(max_len):
        logp, state = model.decode_step(search.y.clone(), state)
        search.advance(logp.float())
        if (t + 1) % every == 0 and search.all_done():  # the loop's only host sync
            break
    return search.result()


@torch.no_grad()
def beam_search(
    model: DecoderModel,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    beam_size: int = 5,
    max_len: int | None = None,
    length_penalty: float = LENGTH_PENALTY,
    *,
    sync_every: int | None = None,
    static: bool | None = None,
) -> Hypotheses:
    """Batched beam search; returns the best hypothesis per source.

    A hypothesis is ranked by ``score / length ** length_penalty``: ``score`` is its sum of token
    log-probabilities, ``length`` counts its tokens including ``<eos>`` (``length_penalty=0``: the
    raw sum, the model's own probability; ``1``: the per-token mean).  A hypothesis still
    unfinished at ``max_len`` competes as it is, with length ``max_len``.

    The search, per source and step: every live hypothesis that ends here (its ``<eos>``
    extension) is a finished candidate, and the best finished one is kept; the ``beam_size`` best
    extensions by anything but ``<eos>`` live on.  Beside the beam, one extra row follows the
    greedy path (:func:`greedy_decode`'s hypothesis) and competes like any other, so the result
    never ranks below greedy decoding's under the same ranking.

    **Stopping rule** (sound, so stopping early never changes the result): a token's
    log-probability is at most 0, so a live hypothesis with sum ``s`` after ``l`` tokens can only
    end with a sum ``<= s`` and a length in ``l + 1 .. max_len``.  The best rank it can still reach
    is therefore ``s / max_len ** length_penalty`` for ``length_penalty >= 0`` (``s`` itself for the
    raw sum: a live hypothesis only gets worse), and ``s / (l + 1) ** length_penalty`` for a
    negative one.  A source is done when its best finished hypothesis ranks at least as high as
    that bound of every live hypothesis (the greedy row included); the search ends when every
    source is done, or at ``max_len``.  With the raw sum this stops as soon as the best finished
    hypothesis beats every live one; with length normalisation the bound is looser and the
    search runs longer (up to ``max_len``).  Done sources are frozen and the "all done?" check
    syncs with the host once every ``sync_every`` steps only (see the module doc).

    ``beam_size=1`` is :func:`greedy_decode`.  ``src (B, S)``, ``src_lengths (B,)`` (moved to the
    model's device).  ``scores`` in the result are raw log-probability sums.  The decoder's
    ``log_probs`` must be log-probabilities (``<= 0``), as :meth:`Seq2Seq.decode_step` returns.
    ``static``: as for :func:`greedy_decode`.

    Example::

        hyp = beam_search(model, src, src_lengths, beam_size=5, length_penalty=0.0)
        texts = [tgt_vocab.decode(ids) for ids in hyp.to_lists()]
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    src, src_lengths = _to_model(model, src, src_lengths)
    max_len = _budget(src, src_lengths, max_len)
    if beam_size == 1:
        return greedy_decode(model, src, src_lengths, max_len, sync_every=sync_every, static=static)
    every = _sync_every(src.device, sync_every)
    B, K, dev = src.shape[0], beam_size, src.device
    if B == 0:
        return _empty(dev)
    lp = float(length_penalty)
    fast = _static_path(model, static)
    if fast is not None:
        return fast.beam(model, src, src_lengths, K, max_len, lp, every)
    search = BeamSearch(B, K, max_len, dev)
    search.reset(max_len, lp)
    state = model.init_state(src, src_lengths)
    state = model.reorder_state(state, torch.arange(B, device=dev).repeat_interleave(search.R))
    steps = 0
    for t in range(max_len):
        logp, state = model.decode_step(search.y.clone(), state)
        search.advance(logp.float())
        state = model.reorder_state(state, search.rows.clone())
        steps = t + 1
        if (t + 1) % every == 0 and search.all_done():  # the loop's only host sync
            break
    return search.finish(steps, max_len, lp)
