"""The ``loop`` and ``compile`` reference providers: a plain PyTorch time loop over the cell maths.

This is what one writes without cuDNN: the input projection of all steps is one GEMM per layer
and direction, then a Python loop over time runs ``h_{t-1} @ W_hh^T`` plus the pointwise cell
(about ten kernel launches per step in eager mode).  ``compile`` runs the same loop with the step
function compiled by ``torch.compile`` (``dynamic=True``: the active batch shrinks with packed
input), which fuses the pointwise part.  Compiling the whole unrolled loop is not attempted: at
``T=1024`` Dynamo would trace 1024 copies of the step (minutes of compile time per shape).

Everything runs in the row's dtype (as a hand-written loop would; cuDNN accumulates in fp32).
Autograd differentiates the loop, so ``fwdbwd`` rows include its backward.

Layout: the loop works on *packed* data, ``(N, I)`` with per-step batch sizes (non-increasing,
as in a ``PackedSequence``); dense input is the special case ``N = T*B`` with every batch size
``B``.  The output has the same layout: ``(N, D*H)``, which for packed input is exactly
``PackedSequence.data`` of ``torch.nn``'s output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

#: ``step(gx_t, h, c, w_hh, b_hh) -> (h, c)``; ``gx_t`` = ``x_t W_ih^T`` + input-side biases.
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def rnn_tanh_step(
    gx_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, w_hh: torch.Tensor, b_hh: torch.Tensor | None
) -> tuple[torch.Tensor, None]:
    """Elman step ``h = tanh(gx_t + h W_hh^T)`` (``b_hh`` is folded into ``gx_t``)."""
    return torch.tanh(torch.addmm(gx_t, h, w_hh.t())), None


def lstm_step(
    gx_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LSTM step, gate order i, f, g, o (``b_hh`` is folded into ``gx_t``)."""
    gates = torch.addmm(gx_t, h, w_hh.t())
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(
    gx_t: torch.Tensor, h: torch.Tensor, c: None, w_hh: torch.Tensor, b_hh: torch.Tensor | None
) -> tuple[torch.Tensor, None]:
    """GRU step with PyTorch's maths: ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``."""
    gh = h @ w_hh.t() if b_hh is None else torch.addmm(b_hh, h, w_hh.t())
    x_r, x_z, x_n = gx_t.chunk(3, 1)
    h_r, h_z, h_n = gh.chunk(3, 1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n), None


STEPS: dict[str, StepFn] = {"RNN": rnn_tanh_step, "LSTM": lstm_step, "GRU": gru_step}

_COMPILED: dict[str, StepFn] = {}


def compiled_step(cell: str) -> StepFn:
    """The step of ``cell`` under ``torch.compile(dynamic=True, fullgraph=True)`` (one per cell)."""
    if cell not in _COMPILED:
        import torch._dynamo

        cfg = torch._dynamo.config
        # dtypes x grad modes of one step function recompile; keep all of them cached.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name) and getattr(cfg, name) < 64:
                setattr(cfg, name, 64)
        _COMPILED[cell] = torch.compile(STEPS[cell], dynamic=True, fullgraph=True)
    return _COMPILED[cell]


def loop_stack(
    cell: str,
    data: torch.Tensor,
    batch_sizes: Sequence[int],
    weights: Sequence[torch.Tensor],
    *,
    num_layers: int,
    bidirectional: bool,
    bias: bool = True,
    step: StepFn | None = None,
) -> torch.Tensor:
    """Run a ``torch.nn``-style recurrent stack as a Python loop over time.

    Args:
        cell: ``"RNN"`` (tanh), ``"LSTM"`` or ``"GRU"``.
        data: ``(N, I)`` packed input (dense ``(T, B, I)`` input reshaped to ``(T*B, I)``).
        batch_sizes: active batch size of each of the ``T`` steps (non-increasing, sum ``N``).
        weights: ``torch.nn.RNNBase._flat_weights`` (``w_ih, w_hh[, b_ih, b_hh]`` per layer and
            direction; no projections).
        step: the step function (default: the eager one of ``cell``).

    Returns:
        ``(N, D*H)`` output in the input's layout; initial states are zero.

    Example::

        lstm = torch.nn.LSTM(8, 16)
        x = torch.randn(5, 3, 8)
        out = loop_stack("LSTM", x.reshape(15, 8), [3] * 5, lstm._flat_weights, num_layers=1,
                         bidirectional=False).reshape(5, 3, 16)   # == lstm(x)[0]
    """
    step = step or STEPS[cell]
    D = 2 if bidirectional else 1
    per = 4 if bias else 2
    if len(weights) != num_layers * D * per:
        raise ValueError(f"expected {num_layers * D * per} weight tensors, got {len(weights)}")
    T = len(batch_sizes)
    offsets = [0]
    for bs in batch_sizes:
        offsets.append(offsets[-1] + bs)
    if offsets[-1] != data.shape[0]:
        raise ValueError(f"batch sizes sum to {offsets[-1]} but data has {data.shape[0]} rows")
    layer_input = data
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            group = weights[(layer * D + d) * per : (layer * D + d + 1) * per]
            w_ih, w_hh = group[0], group[1]
            b_ih, b_hh = (group[2], group[3]) if bias else (None, None)
            H = w_hh.shape[1]
            if bias and cell != "GRU":
                b_x, b_h = b_ih + b_hh, None  # both biases sit outside the nonlinearity
            else:
                b_x, b_h = b_ih, b_hh  # GRU: b_hn stays inside r * (W_hn h + b_hn)
            gx = F.linear(layer_input, w_ih, b_x)
            hs: list[torch.Tensor | None] = [None] * T
            h = c = None
            for t in range(T) if d == 0 else range(T - 1, -1, -1):
                bs = batch_sizes[t]
                if h is None:
                    h = gx.new_zeros(bs, H)
                    c = gx.new_zeros(bs, H) if cell == "LSTM" else None
                elif h.shape[0] > bs:  # forward in time: sequences end, keep the active prefix
                    h = h[:bs]
                    c = c[:bs] if c is not None else None
                elif h.shape[0] < bs:  # backward in time: sequences start with a zero state
                    h = torch.cat([h, h.new_zeros(bs - h.shape[0], H)])
                    c = torch.cat([c, c.new_zeros(bs - c.shape[0], H)]) if c is not None else None
                h, c = step(gx[offsets[t] : offsets[t + 1]], h, c, w_hh, b_h)
                hs[t] = h
            outs.append(torch.cat(hs))
        layer_input = outs[0] if D == 1 else torch.cat(outs, dim=1)
    return layer_input
