"""Multi-layer recurrences over explicit weights, on the Triton kernels.

``weights`` is the flat list ``torch.nn.RNNBase._flat_weights`` holds, in the same order: for
each layer and direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``.  Inputs are time-major padded
``(T, B, I)`` tensors (``batch_first=True`` takes ``(B, T, I)``), with optional per-sequence
``lengths`` for variable-length batches (padding positions of the output are zero).

Example::

    lstm = torch.nn.LSTM(8, 16, num_layers=2)
    x = torch.randn(5, 3, 8)
    out, (h_n, c_n) = fastrnn.functional.lstm(x, lstm._flat_weights, num_layers=2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import ops
from .errors import BackendUnavailable
from .kernels import cells, tiers


def _per_layer(weights: Sequence[torch.Tensor], num_layers: int, num_directions: int) -> list[list[torch.Tensor]]:
    per = len(weights) // (num_layers * num_directions)
    if per * num_layers * num_directions != len(weights) or per not in (2, 3, 4, 5):
        raise ValueError(
            f"expected {num_layers * num_directions} groups of (w_ih, w_hh[, b_ih, b_hh][, w_hr]) "
            f"weights, got {len(weights)} tensors"
        )
    return [list(weights[i * per : (i + 1) * per]) for i in range(num_layers * num_directions)]


def resolve_precision(allow_tf32: bool, fp32_precision: str | None = None) -> str:
    """The precision of fp32 dots (:data:`fastrnn.kernels.tiers.PRECISIONS`): ``fp32_precision``
    when given (``"ieee"``, ``"tf32x3"`` or ``"tf32"``), else ``"tf32"`` with ``allow_tf32`` and
    ``"tf32x3"`` without (three TF32 products: fp32's accuracy at tensor-core speed,
    docs/numerics.md)."""
    if fp32_precision is None:
        return "tf32" if allow_tf32 else "tf32x3"
    if fp32_precision not in tiers.PRECISIONS:
        raise ValueError(f"fp32_precision must be one of {tiers.PRECISIONS} or None, got {fp32_precision!r}")
    if allow_tf32 and fp32_precision != "tf32":
        raise ValueError(f"allow_tf32=True asks for TF32 dots, fp32_precision={fp32_precision!r} for others")
    return fp32_precision


def plan_stack(mode: str, w_hh: torch.Tensor, proj_size: int, device: torch.device, *, layers: int, directions: int,
               precision: str, tier: int | None = None) -> tuple[tiers.LayerPlan, ...]:  # fmt: skip
    """The plan of a stack for the functional API: :func:`fastrnn.kernels.tiers.plan_stack` on
    the first layer's ``w_hh`` (``tier``: that tier, checked), raising
    :class:`fastrnn.BackendUnavailable` when no tier runs it."""
    H = w_hh.shape[0] // cells.get(mode).G
    interpreted = device.type == "cpu"
    if tier is not None:
        why = tiers.tier_unsupported(tier, mode, H, proj_size, w_hh.dtype, interpreted)
        if why:
            raise BackendUnavailable(f"fastrnn: tier {tier} cannot run {mode} with hidden_size={H}: {why}")
        plan = tiers.plan_layer(mode, H, proj_size, w_hh.dtype, tier, tiers.smem_per_block(device), precision)
        return (plan,) * (layers * directions)
    try:
        return tiers.plan_stack(mode, H, proj_size, w_hh.dtype, layers=layers, directions=directions, device=device,
                                precision=precision, interpreted=interpreted)  # fmt: skip
    except tiers.NoTier as e:
        raise BackendUnavailable(f"fastrnn: {e}") from None


def _split_group(group: list[torch.Tensor], has_bias: bool, has_proj: bool):
    w_ih, w_hh = group[0], group[1]
    b_ih, b_hh = (group[2], group[3]) if has_bias else (None, None)
    w_hr = group[-1] if has_proj else None
    return w_ih, w_hh, b_ih, b_hh, w_hr


def _folded_bias(cell: cells.Cell, b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """``b_ih + b_hh`` for every gate but the cell's inner-bias gates, whose recurrent bias stays
    inside the cell maths (GRU's ``b_hn`` in ``r * (W_hn h + b_hn)``)."""
    if not cell.inner_gates:
        return b_ih + b_hh
    H = b_hh.shape[0] // cell.G
    blocks = [b.new_zeros(H) if g in cell.inner_gates else b for g, b in enumerate(b_hh.split(H))]
    return b_ih + torch.cat(blocks)


def _projection(mode: str, parts: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight ``(D*G*H, I)`` and bias ``(D*G*H,)`` of one layer's input projection, both
    directions stacked, biases folded (:func:`_folded_bias`)."""
    w = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
    if parts[0][2] is None:
        return w, None
    cell = cells.get(mode)
    biases = [_folded_bias(cell, b_ih, b_hh) for _, _, b_ih, b_hh, _ in parts]
    return w, (biases[0] if len(biases) == 1 else torch.cat(biases))


def first_layer_projection(
    mode: str,
    weights: Sequence[torch.Tensor],
    *,
    num_layers: int = 1,
    bias: bool = True,
    bidirectional: bool = False,
    proj_size: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, b)`` with ``gx = F.linear(x, W, b)`` the first layer's input projection that
    :func:`recurrent_stack` expects as ``input_projection`` (both directions stacked)."""
    D = 2 if bidirectional else 1
    groups = _per_layer(weights, num_layers, D)
    return _projection(mode, [_split_group(groups[d], bias, proj_size > 0) for d in range(D)])


def stack_layers(
    num_layers: int,
    input: torch.Tensor,
    run_layer,
    *,
    dropout: float,
    training: bool,
    has_cell_state: bool,
    return_states: bool,
) -> tuple[torch.Tensor, ...]:
    """The layer loop every stack shares (:func:`recurrent_stack`, the layer-norm stack).

    ``run_layer(layer, layer_input)`` returns the layer's ``(out, h_n, c_n, c_states)`` per
    direction; here the directions' outputs are concatenated, ``torch.nn``'s inter-layer dropout
    applied, and the final states stacked in ``(L*D, ...)`` order.  Returns what
    :func:`recurrent_stack` returns.
    """
    layer_input = input
    h_n, c_n, c_states = [], [], []
    for layer in range(num_layers):
        results = run_layer(layer, layer_input)
        outs = [r[0] for r in results]
        for _, hn, cn, cs in results:
            h_n.append(hn)
            c_n.append(cn)
            c_states.append(cs)
        layer_input = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    c_n = torch.stack(c_n) if has_cell_state else None
    if return_states:
        return layer_input, torch.stack(h_n), c_n, torch.cat(c_states, dim=2)
    return layer_input, torch.stack(h_n), c_n


def recurrent_stack(
    mode: str,
    input: torch.Tensor,
    weights: Sequence[torch.Tensor],
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    *,
    num_layers: int = 1,
    bias: bool = True,
    bidirectional: bool = False,
    proj_size: int = 0,
    dropout: float = 0.0,
    training: bool = False,
    lengths: torch.Tensor | None = None,
    allow_tf32: bool = False,
    input_projection: torch.Tensor | None = None,
    tier: int | None = None,
    return_states: bool = False,
    fp32_precision: str | None = None,
    plan: Sequence[tiers.LayerPlan] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Run a ``torch.nn``-style stack of recurrent layers; the core of every module.

    Args:
        mode: a registered cell (:mod:`fastrnn.kernels.cells`): ``"RNN_TANH"``, ``"RNN_RELU"``,
            ``"LSTM"``, ``"GRU"``.
        input: ``(T, B, I)`` time-major input.
        weights: flat ``_flat_weights``-ordered list (see module doc).
        h0: ``(L*D, B, P)`` or ``None``; c0: ``(L*D, B, H)`` (LSTM) or ``None``.
        lengths: ``(B,)`` int64 lengths on ``input``'s device, or ``None`` (all ``T``).
        input_projection: ``(T, B, D*G*H)`` first-layer input projection computed elsewhere (the
            fused embedding); it must equal ``F.linear(input, *first_layer_projection(...))``.
            ``input`` is then not read (it may be ``None``).
        allow_tf32, fp32_precision: the precision of fp32 dots (:func:`resolve_precision`).
        tier: the kernel tier every layer runs in; ``None``: the one
            :func:`fastrnn.kernels.tiers.choose_tier` picks (``FASTRNN_TIER`` forces one).
        return_states: also return every step's cell state (cells with one, e.g. LSTM).
        plan: how every layer and direction runs (``layer * D + direction``), decided by the
            caller (the modules decide once per call: ``fastrnn.dispatch``); it replaces
            ``tier`` and the precision arguments.  Raises :class:`fastrnn.BackendUnavailable`
            when no tier can run the layers.

    Returns:
        ``(output (T, B, D*P), h_n (L*D, B, P), c_n (L*D, B, H) or None)``, and with
        ``return_states`` a fourth item ``c_states (T, B, L*D*H)``: the cell state ``c_t`` of
        every step, layer and direction, written by the kernels themselves (differentiable);
        layer ``l``, direction ``d`` at ``[..., (l*D + d)*H : (l*D + d + 1)*H]`` (the order of
        ``c_n``'s first dimension), 0 at padding like ``output``.
    """
    if return_states and not cells.get(mode).has_cell_state:
        raise ValueError(f"return_states: {mode} has no cell state")
    D = 2 if bidirectional else 1
    cell = cells.get(mode)
    G = cell.G
    groups = _per_layer(weights, num_layers, D)
    if plan is None:
        ref = input_projection if input_projection is not None else input
        plan = plan_stack(
            mode, groups[0][1], proj_size, ref.device, layers=num_layers, directions=D, tier=tier,
            precision=resolve_precision(allow_tf32, fp32_precision),
        )  # fmt: skip

    def run_layer(layer, layer_input):
        parts = [_split_group(groups[layer * D + d], bias, proj_size > 0) for d in range(D)]
        H = parts[0][1].shape[0] // G
        if layer == 0 and input_projection is not None:
            gx_all = input_projection
        else:
            gx_all = F.linear(layer_input, *_projection(mode, parts))
        results = []
        for d, (_, w_hh, _, b_hh, w_hr) in enumerate(parts):
            idx = layer * D + d
            res = ops.recurrence(
                mode,
                gx_all[..., d * G * H : (d + 1) * G * H],
                w_hh,
                h0[idx] if h0 is not None else None,
                c0[idx] if c0 is not None else None,
                lengths,
                b_hh=b_hh,
                w_hr=w_hr,
                reverse=d == 1,
                plan=plan[idx],
                return_states=return_states,
            )
            results.append((*res[:3], res[3] if return_states else None))
        return results

    return stack_layers(
        num_layers, input, run_layer, dropout=dropout, training=training, has_cell_state=cell.has_cell_state,
        return_states=return_states,
    )  # fmt: skip


def _run(mode: str, input, weights, h0, c0, batch_first: bool, options: dict):
    """:func:`recurrent_stack` on ``input`` in the caller's layout (``batch_first``: (B, T, ...));
    ``options`` are its keywords.  Returns its results, the sequences in the caller's layout."""
    x = input.transpose(0, 1) if batch_first else input
    res = recurrent_stack(mode, x, weights, h0, c0, **options)
    tm = lambda t: t.transpose(0, 1) if batch_first else t
    return (tm(res[0]), res[1], res[2], *(tm(t) for t in res[3:]))


def rnn(
    input: torch.Tensor,
    weights: Sequence[torch.Tensor],
    hx: torch.Tensor | None = None,
    *,
    nonlinearity: str = "tanh",
    batch_first: bool = False,
    **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elman RNN stack: ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    ``input`` (T, B, I) (or (B, T, I) with ``batch_first``), ``hx`` (L*D, B, H).  ``options``:
    :func:`recurrent_stack`'s keywords (``num_layers``, ``bias``, ``dropout``, ``training``,
    ``bidirectional``, ``lengths``, ``allow_tf32``, ``fp32_precision``, ...).
    Returns ``(output (T, B, D*H), h_n (L*D, B, H))``.
    """
    out, h_n, _ = _run(cells.rnn_mode(nonlinearity), input, weights, hx, None, batch_first, options)
    return out, h_n


def lstm(
    input: torch.Tensor,
    weights: Sequence[torch.Tensor],
    hx: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    batch_first: bool = False,
    **options,
):
    """LSTM stack (gate order i, f, g, o; optional projection ``h_t = W_hr (o * tanh(c_t))``).

    ``input`` (T, B, I), ``hx = (h_0 (L*D, B, P), c_0 (L*D, B, H))`` with ``P = proj_size or H``;
    ``options`` as :func:`rnn`'s, plus ``proj_size`` and ``return_states``.
    Returns ``(output (T, B, D*P), (h_n (L*D, B, P), c_n (L*D, B, H)))``; with ``return_states``
    also ``c_states`` (T, B, L*D*H) (``(B, T, L*D*H)`` with ``batch_first``): the cell state of
    every step, layer and direction (layer ``l``, direction ``d`` at ``(l*D + d)*H``), computed
    by the kernels and differentiable.

    Example::

        out, (h_n, c_n), c_states = fastrnn.functional.lstm(x, lstm._flat_weights, return_states=True)
    """
    h0, c0 = hx if hx is not None else (None, None)
    out, h_n, c_n, *states = _run("LSTM", input, weights, h0, c0, batch_first, options)
    return (out, (h_n, c_n), *states)


def gru(
    input: torch.Tensor,
    weights: Sequence[torch.Tensor],
    hx: torch.Tensor | None = None,
    *,
    batch_first: bool = False,
    **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU stack with PyTorch's maths (gate order r, z, n; ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``).

    ``input`` (T, B, I), ``hx`` (L*D, B, H); ``options`` as :func:`rnn`'s.  Returns ``(output (T,
    B, D*H), h_n (L*D, B, H))``.
    """
    out, h_n, _ = _run("GRU", input, weights, hx, None, batch_first, options)
    return out, h_n
