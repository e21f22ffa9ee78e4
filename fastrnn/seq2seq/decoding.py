"""Batched greedy and beam-search decoding on the single-step path.

Both work with any *decoder model* offering (see :class:`DecoderModel`):

* ``init_state(src (B, S), src_lengths (B,)) -> state``
* ``decode_step(y_prev (N,), state) -> (log_probs (N, V), state)``
* ``reorder_state(state, index (M,)) -> state`` (pick/duplicate batch entries)

:class:`~fastrnn.seq2seq.Seq2Seq` is one.  Results are :class:`Hypotheses`: ``tokens (B, T)``
with ``<eos>`` included where a hypothesis ended and ``<pad>`` after it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch

from .data import EOS, PAD, SOS


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


@torch.no_grad()
def greedy_decode(
    model: DecoderModel, src: torch.Tensor, src_lengths: torch.Tensor, max_len: int | None = None
) -> Hypotheses:
    """Batched greedy decoding: the most likely token at each step, until ``<eos>`` or ``max_len``.

    ``src (B, S)`` ids, ``src_lengths (B,)``.  Stops as soon as every sequence has produced ``<eos>``.

    Example::

        hyp = greedy_decode(model, src, src_lengths, max_len=50)
        texts = [tgt_vocab.decode(ids) for ids in hyp.to_lists()]
    """
    max_len = default_max_len(src_lengths) if max_len is None else max_len
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    B = src.shape[0]
    state = model.init_state(src, src_lengths)
    y = torch.full((B,), SOS, dtype=torch.int64, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    lengths = torch.zeros(B, dtype=torch.int64, device=src.device)
    scores = torch.zeros(B, dtype=torch.float32, device=src.device)
    tokens = []
    for _ in range(max_len):
        logp, state = model.decode_step(y, state)
        best, y = logp.max(-1)
        y = y.masked_fill(finished, PAD)
        scores += best.masked_fill(finished, 0.0)
        lengths += (~finished).long()
        tokens.append(y)
        finished |= y == EOS
        if bool(finished.all()):
            break
    return Hypotheses(torch.stack(tokens, 1), lengths, scores)


def normalized_score(score: float, length: int, length_penalty: float) -> float:
    """Length normalisation: ``score / length ** length_penalty`` (0: raw sum, 1: per-token mean)."""
    return score / (max(length, 1) ** length_penalty)


@torch.no_grad()
def beam_search(
    model: DecoderModel,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    beam_size: int = 5,
    max_len: int | None = None,
    length_penalty: float = 1.0,
) -> Hypotheses:
    """Batched beam search; returns the best hypothesis per source.

    At each step the ``2 * beam_size`` best extensions of the live beams are ranked; an ``<eos>``
    among the top ``beam_size`` finishes a hypothesis, the best ``beam_size`` others live on.  A
    source is done when it has ``beam_size`` finished hypotheses (or at ``max_len``, where live
    beams count as finished); the winner has the best ``score / length ** length_penalty``
    (``length`` counts ``<eos>``).  With ``beam_size=1`` this is exactly :func:`greedy_decode`.

    ``src (B, S)``, ``src_lengths (B,)``.  ``scores`` in the result are raw log-probability sums.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    max_len = default_max_len(src_lengths) if max_len is None else max_len
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    B, K, dev = src.shape[0], beam_size, src.device
    state = model.init_state(src, src_lengths)
    state = model.reorder_state(state, torch.arange(B, device=dev).repeat_interleave(K))
    y = torch.full((B * K,), SOS, dtype=torch.int64, device=dev)
    beam_scores = torch.full((B, K), float("-inf"), device=dev)
    beam_scores[:, 0] = 0.0  # all beams start identical: only one may expand at first
    history = torch.zeros(B, K, 0, dtype=torch.int64, device=dev)
    finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    for t in range(max_len):
        logp, state = model.decode_step(y, state)
        V = logp.shape[-1]
        total = beam_scores[:, :, None] + logp.view(B, K, V)
        n_cand = min(2 * K, K * V)
        cand_scores, cand = total.view(B, K * V).topk(n_cand, dim=1)
        cand_beam, cand_tok = cand // V, cand % V
        is_eos = cand_tok == EOS
        # finish hypotheses: <eos> among the top K candidates of a source that is not done
        for b, j in (is_eos[:, :K] & torch.isfinite(cand_scores[:, :K])).nonzero().tolist():
            if done[b] or len(finished[b]) >= K:
                continue
            seq = [*history[b, cand_beam[b, j]].tolist(), EOS]
            score = float(cand_scores[b, j])
            finished[b].append((normalized_score(score, len(seq), length_penalty), score, seq))
        for b in range(B):
            done[b] = done[b] or len(finished[b]) >= K
        if all(done):
            break
        # the K best candidates that are not <eos> live on (there are at least K of them)
        rank = is_eos.long() * n_cand + torch.arange(n_cand, device=dev)
        keep = rank.argsort(dim=1)[:, :K]
        beam_scores = cand_scores.gather(1, keep)
        parent = cand_beam.gather(1, keep)
        y2 = cand_tok.gather(1, keep)
        history = torch.cat([history.gather(1, parent[:, :, None].expand(-1, -1, t)), y2[:, :, None]], 2)
        state = model.reorder_state(state, (torch.arange(B, device=dev)[:, None] * K + parent).view(-1))
        y = y2.view(-1)
    best_tokens, best_scores = [], []
    for b in range(B):
        cands = list(finished[b])
        if not done[b]:  # max_len reached: live beams compete as they are
            for k in range(K):
                score = float(beam_scores[b, k])
                if score > float("-inf"):
                    seq = history[b, k].tolist()
                    cands.append((normalized_score(score, len(seq), length_penalty), score, seq))
        _, score, seq = max(cands, key=lambda c: c[0])
        best_tokens.append(seq)
        best_scores.append(score)
    lengths = torch.tensor([len(s) for s in best_tokens], dtype=torch.int64, device=dev)
    tokens = torch.full((B, int(lengths.max())), PAD, dtype=torch.int64, device=dev)
    for b, seq in enumerate(best_tokens):
        tokens[b, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return Hypotheses(tokens, lengths, torch.tensor(best_scores, device=dev))
