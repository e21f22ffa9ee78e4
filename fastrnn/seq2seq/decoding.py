"""Batched greedy and beam-search decoding on the single-step path.

Both work with any *decoder model* offering (see :class:`DecoderModel`):

* ``init_state(src (B, S), src_lengths (B,)) -> state``
* ``decode_step(y_prev (N,), state) -> (log_probs (N, V), state)``
* ``reorder_state(state, index (M,)) -> state`` (pick/duplicate batch entries)

:class:`~fastrnn.seq2seq.Seq2Seq` is one.  Results are :class:`Hypotheses`: ``tokens (B, T)``
with ``<eos>`` included where a hypothesis ended and ``<pad>`` after it.

**Host synchronisation.**  Neither loop reads a device tensor on the host inside a decoder step
(no ``.item()``, ``.tolist()``, ``bool()``, ``nonzero()``): every source's progress is kept in
device tensors, finished sources are masked (frozen), and whether *all* sources are done is
asked once every ``sync_every`` steps -- the only host sync of the loop.  ``sync_every=None``
means every step on the CPU (where that costs nothing) and every :data:`SYNC_EVERY` steps on
other devices.  Because a finished source is frozen, the result does not depend on
``sync_every``; a larger value only runs up to ``sync_every - 1`` idle steps at the end.
(The decoder model's own step may still synchronise: that is up to the model.)
"""

from __future__ import annotations

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


@torch.no_grad()
def greedy_decode(
    model: DecoderModel,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len: int | None = None,
    *,
    sync_every: int | None = None,
) -> Hypotheses:
    """Batched greedy decoding: the most likely token at each step, until ``<eos>`` or ``max_len``.

    ``src (B, S)`` ids, ``src_lengths (B,)``.  Stops once every sequence has produced ``<eos>``
    (checked every ``sync_every`` steps, see the module doc).

    Example::

        hyp = greedy_decode(model, src, src_lengths, max_len=50)
        texts = [tgt_vocab.decode(ids) for ids in hyp.to_lists()]
    """
    max_len = _budget(src, src_lengths, max_len)
    every = _sync_every(src.device, sync_every)
    B = src.shape[0]
    if B == 0:
        return _empty(src.device)
    state = model.init_state(src, src_lengths)
    y = torch.full((B,), SOS, dtype=torch.int64, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    lengths = torch.zeros(B, dtype=torch.int64, device=src.device)
    scores = torch.zeros(B, dtype=torch.float32, device=src.device)
    tokens = []
    for t in range(max_len):
        logp, state = model.decode_step(y, state)
        best, y = logp.float().max(-1)
        y = y.masked_fill(finished, PAD)
        scores += best.masked_fill(finished, 0.0)
        lengths += (~finished).long()
        tokens.append(y)
        finished |= y == EOS
        if (t + 1) % every == 0 and bool(finished.all()):  # the loop's only host sync
            break
    width = int(lengths.max())  # idle steps after the last <eos> (sync_every > 1) hold only <pad>
    return Hypotheses(torch.stack(tokens, 1)[:, :width], lengths, scores)


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

    ``beam_size=1`` is :func:`greedy_decode`.  ``src (B, S)``, ``src_lengths (B,)``.  ``scores``
    in the result are raw log-probability sums.  The decoder's ``log_probs`` must be
    log-probabilities (``<= 0``), as :meth:`Seq2Seq.decode_step` returns.

    Example::

        hyp = beam_search(model, src, src_lengths, beam_size=5, length_penalty=0.0)
        texts = [tgt_vocab.decode(ids) for ids in hyp.to_lists()]
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    max_len = _budget(src, src_lengths, max_len)
    if beam_size == 1:
        return greedy_decode(model, src, src_lengths, max_len, sync_every=sync_every)
    every = _sync_every(src.device, sync_every)
    B, K, dev = src.shape[0], beam_size, src.device
    if B == 0:
        return _empty(dev)
    lp = float(length_penalty)
    R, G = K + 1, K  # rows per source: K beams, then the greedy row at index G
    state = model.init_state(src, src_lengths)
    state = model.reorder_state(state, torch.arange(B, device=dev).repeat_interleave(R))
    base = torch.arange(B, device=dev)[:, None] * R
    y = torch.full((B * R,), SOS, dtype=torch.int64, device=dev)
    neg_inf = float("-inf")
    # Live rows: raw log-prob sums, -inf for a dead row.  All beams start identical, so only beam 0
    # may expand at first.
    score = torch.full((B, R), neg_inf, device=dev)
    score[:, 0] = 0.0
    score[:, G] = 0.0
    greedy_alive = torch.ones(B, dtype=torch.bool, device=dev)
    # Back-pointers: row r at step t emitted tokens[t, b, r] and extends row parents[t, b, r] of t-1.
    tokens = torch.zeros(max_len, B, R, dtype=torch.int64, device=dev)
    parents = torch.zeros(max_len, B, R, dtype=torch.int64, device=dev)
    # The best finished hypothesis per source: its rank and raw score; its prefix is row best_row at
    # step best_step (-1: empty prefix; -2: none yet); best_eos says whether <eos> follows the prefix.
    best = torch.full((B,), neg_inf, device=dev)
    best_raw = torch.full((B,), neg_inf, device=dev)
    best_step = torch.full((B,), -2, dtype=torch.int64, device=dev)
    best_row = torch.zeros(B, dtype=torch.int64, device=dev)
    best_len = torch.ones(B, dtype=torch.int64, device=dev)
    best_eos = torch.ones(B, dtype=torch.bool, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)

    def offer(rank, raw, row, step: int, length: int, eos: bool) -> None:
        """Keep a candidate ``(B,)`` as the best finished hypothesis where it is better (and not done)."""
        take = ((rank > best) | (best_step < -1)) & ~done
        best.copy_(torch.where(take, rank, best))
        best_raw.copy_(torch.where(take, raw, best_raw))
        best_row.copy_(torch.where(take, row, best_row))
        best_step.masked_fill_(take, step)
        best_len.masked_fill_(take, length)
        best_eos.masked_fill_(take, eos)

    steps = 0
    for t in range(max_len):
        logp, state = model.decode_step(y, state)
        V = logp.shape[-1]
        total = score[:, :, None] + logp.float().view(B, R, V)  # (B, R, V)
        # every live row ending here: finished candidates of length t + 1
        ended = total[:, :, EOS]
        rank, row = (ended / (t + 1) ** lp).max(1)
        offer(rank, ended.gather(1, row[:, None])[:, 0], row, t - 1, t + 1, True)
        # the K best extensions of the beams by another token than <eos> live on
        grow = total[:, :K].clone()
        grow[:, :, EOS] = neg_inf
        top, idx = grow.view(B, K * V).topk(K, dim=1)
        # the greedy row: its argmax; it stops at <eos> (its ending was offered above)
        g_logp, g_tok = logp[G::R].float().max(-1)
        greedy_alive &= g_tok != EOS
        g_score = torch.where(greedy_alive, score[:, G] + g_logp, neg_inf)
        g_tok = g_tok.masked_fill(~greedy_alive, PAD)
        parent = torch.cat([idx // V, torch.full((B, 1), G, dtype=torch.int64, device=dev)], 1)
        tokens[t] = torch.cat([idx % V, g_tok[:, None]], 1)
        parents[t] = parent
        score = torch.cat([top, g_score[:, None]], 1)
        state = model.reorder_state(state, (base + parent).view(-1))
        y = tokens[t].view(-1)
        steps = t + 1
        # the stopping rule (see the docstring): the best rank a live row can still reach
        denom = max_len**lp if lp >= 0 else min(t + 2, max_len) ** lp
        reachable = (score / denom).amax(1)
        done |= (best_step > -2) & (best >= reachable)
        if (t + 1) % every == 0 and bool(done.all()):  # the loop's only host sync
            break
    if steps == max_len:  # live rows compete as they are, with length max_len
        rank, row = (score / max_len**lp).max(1)
        offer(rank, score.gather(1, row[:, None])[:, 0], row, max_len - 1, max_len, False)
    # follow the back-pointers from each source's best hypothesis
    width = int(best_len.max())  # host sync, once
    out = torch.full((B, width), PAD, dtype=torch.int64, device=dev)
    ptr = best_row.clone()
    for t in range(min(width, steps) - 1, -1, -1):
        on = best_step >= t
        out[:, t] = torch.where(on, tokens[t].gather(1, ptr[:, None])[:, 0], PAD)
        ptr = torch.where(on, parents[t].gather(1, ptr[:, None])[:, 0], ptr)
    last = (best_len - 1)[:, None]
    out.scatter_(1, last, torch.where(best_eos[:, None], EOS, out.gather(1, last)))
    return Hypotheses(out, best_len, best_raw)
