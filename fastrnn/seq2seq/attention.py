"""Attention over encoder states: Luong's multiplicative/concat scores and Bahdanau's additive one.

Shapes: ``B`` batch, ``S`` source length, ``Tq`` number of queries (decoder steps), ``Dq`` query
size (decoder hidden), ``Dk`` key size (encoder output: directions x encoder hidden), ``A``
attention size of the additive score.  ``mask`` is ``(B, S)`` bool, ``True`` at real source
tokens: padding never receives weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LUONG_SCORES = ("dot", "general", "concat")


def _check_mask(keys: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool or mask.shape != keys.shape[:2]:
        raise ValueError(
            f"attention mask must be bool of shape {tuple(keys.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
        )


class AdditiveScore(nn.Module):
    """``score(q, k) = v^T tanh(W_q q + W_k k)``: Bahdanau's additive score (= Luong's ``concat``).

    ``project_keys`` runs once per source; :meth:`forward` scores any number of queries against it.
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_size, attention_size, bias=False)
        self.key = nn.Linear(key_size, attention_size)
        self.v = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """``keys (B, S, Dk)`` -> ``W_k k (B, S, A)``."""
        return self.key(keys)

    def forward(self, query: torch.Tensor, projected_keys: torch.Tensor) -> torch.Tensor:
        """``query (B, Tq, Dq)``, ``projected_keys (B, S, A)`` -> scores ``(B, Tq, S)``."""
        hidden = torch.tanh(self.query(query)[:, :, None, :] + projected_keys[:, None, :, :])
        return self.v(hidden).squeeze(-1)


class LuongAttention(nn.Module):
    """Global attention of Luong et al. (2015) for all decoder steps at once.

    Args:
        query_size: decoder hidden size ``Dq``.  key_size: encoder output size ``Dk``.
        score: ``"dot"`` (``q . k``, needs ``Dq == Dk``), ``"general"`` (``q W k``) or ``"concat"``
            (``v^T tanh(W [q; k])``).
        attention_size: the hidden size ``A`` of the ``concat`` score (default ``Dq``).

    ``dot`` and ``general`` run through :func:`torch.nn.functional.scaled_dot_product_attention`
    (with Luong's unscaled scores) unless the weights are asked for.

    Example::

        att = LuongAttention(32, 64, "general")
        ctx, _ = att(torch.randn(4, 7, 32), torch.randn(4, 9, 64), torch.ones(4, 9, dtype=torch.bool))
        # ctx: (4, 7, 64)
    """

    def __init__(self, query_size: int, key_size: int, score: str = "general", attention_size: int | None = None):
        super().__init__()
        if score not in LUONG_SCORES:
            raise ValueError(f"Luong score must be one of {LUONG_SCORES}, got {score!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(
                f"the 'dot' score needs the decoder hidden size ({query_size}) to equal the encoder output size "
                f"({key_size}, directions x encoder hidden size); use score 'general' or 'concat'"
            )
        self.score = score
        self.weight = nn.Linear(query_size, key_size, bias=False) if score == "general" else None
        self.additive = AdditiveScore(query_size, key_size, attention_size or query_size) if score == "concat" else None

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Unmasked scores ``(B, Tq, S)`` of ``query (B, Tq, Dq)`` against ``keys (B, S, Dk)``."""
        if self.additive is not None:
            return self.additive(query, self.additive.project_keys(keys))
        q = self.weight(query) if self.weight is not None else query
        return q @ keys.transpose(1, 2)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``query (B, Tq, Dq)``, ``keys (B, S, Dk)`` (also the values), ``mask (B, S)`` ->
        ``(context (B, Tq, Dk), weights (B, Tq, S) or None)``; weights are zero at padding."""
        _check_mask(keys, mask)
        if self.additive is None and not need_weights:
            q = self.weight(query) if self.weight is not None else query
            ctx = F.scaled_dot_product_attention(q, keys, keys, attn_mask=mask[:, None, :], scale=1.0)
            return ctx, None
        weights = masked_softmax(self.scores(query, keys), mask)
        return weights @ keys, weights


class BahdanauAttention(nn.Module):
    """Additive attention (Bahdanau et al., 2015), used one decoder step at a time.

    Call :meth:`project_keys` once per source, then :meth:`forward` at each step.

    Example::

        att = BahdanauAttention(32, 64, 48)
        keys = torch.randn(4, 9, 64)
        pk = att.project_keys(keys)
        ctx, w = att(torch.randn(4, 1, 32), keys, pk, torch.ones(4, 9, dtype=torch.bool))
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int | None = None) -> None:
        super().__init__()
        self.additive = AdditiveScore(query_size, key_size, attention_size or query_size)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """``keys (B, S, Dk)`` -> ``(B, S, A)``, reused at every decoder step."""
        return self.additive.project_keys(keys)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, projected_keys: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query (B, Tq, Dq)``, ``keys (B, S, Dk)``, ``projected_keys (B, S, A)``, ``mask (B, S)``
        -> ``(context (B, Tq, Dk), weights (B, Tq, S))``."""
        _check_mask(keys, mask)
        weights = masked_softmax(self.additive(query, projected_keys), mask)
        return weights @ keys, weights


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores (B, Tq, S)`` over ``S`` with ``mask (B, S)`` False positions at exactly 0."""
    return scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
