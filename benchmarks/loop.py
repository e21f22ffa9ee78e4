"""The ``loop`` and ``compile`` reference providers: a plain PyTorch time loop over the cell maths.

This is what one writes without cuDNN: the input projection of all steps is one GEMM per layer
and direction, then a Python loop over time runs ``h_{t-1} @ W_hh^T`` plus the pointwise cell --
the cell's reference step from :mod:`fastrnn.reference` (about ten kernel launches per step in
eager mode).  ``compile`` runs the same loop with the step
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

from fastrnn import reference
from fastrnn.modules import resolve

#: ``step(gx_t, h, c, w_hh, b_inner) -> (h, c)``: ``gx_t`` = ``x_t W_ih^T`` + the folded biases,
#: ``b_inner`` the recurrent bias of the cell's inner-bias gates (zero elsewhere) or ``None``.
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def step_fn(cell: str) -> StepFn:
    """The eager step of ``cell`` (a family or mode, :func:`fastrnn.modules.resolve`): the recurrent
    GEMM, then the cell's reference step (:mod:`fastrnn.reference`) on both gate parts."""
    spec = resolve(cell)
    ref = reference.STEPS[spec.mode]
    G, stateful = spec.G, spec.has_cell_state

    def step(gx_t, h, c, w_hh, b_inner):
        gh = h @ w_hh.t() if b_inner is None else torch.addmm(b_inner, h, w_hh.t())
        m, c_new, _ = ref.forward(list(gx_t.chunk(G, 1)), list(gh.chunk(G, 1)), h, c)
        return m, (c_new if stateful else None)

    return step


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
        _COMPILED[cell] = torch.compile(step_fn(cell), dynamic=True, fullgraph=True)
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
        cell: a cell family (``"RNN"`` is tanh) or mode (:func:`fastrnn.modules.resolve`).
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
    spec = resolve(cell)
    step = step or step_fn(cell)
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
            b_x, b_h = b_ih, None
            if bias:  # b_hh is folded into the input side except for the inner-bias gates (GRU's b_hn)
                inner = torch.zeros_like(b_hh)
                for g in spec.inner_gates:
                    inner[g * H : (g + 1) * H] = b_hh[g * H : (g + 1) * H]
                b_x, b_h = b_ih + (b_hh - inner), (inner if spec.inner_gates else None)
            gx = F.linear(layer_input, w_ih, b_x)
            hs: list[torch.Tensor | None] = [None] * T
            h = c = None
            for t in range(T) if d == 0 else range(T - 1, -1, -1):
                bs = batch_sizes[t]
                if h is None:
                    h = gx.new_zeros(bs, H)
                    c = gx.new_zeros(bs, H)
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
