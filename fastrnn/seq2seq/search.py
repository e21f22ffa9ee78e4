"""The searches' state on device buffers: greedy decoding and beam search as bookkeeping that
every step updates in place (:class:`GreedySearch`, :class:`BeamSearch`), the step counter on the
device too, so that a captured step replays it unchanged and no step reads the device on the host;
and their result, :class:`Hypotheses`.  Used by the token-by-token loops of
:mod:`fastrnn.seq2seq.decoding` and by the static-buffer step of :mod:`fastrnn.seq2seq.static`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .data import EOS, PAD, SOS


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
