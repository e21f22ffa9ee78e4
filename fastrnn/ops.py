"""Autograd wiring of the recurrence kernels: one layer and one direction.

:func:`recurrence` is differentiable in ``gx``, ``w_hh``, ``h0``, ``c0``, ``b_hh`` and ``w_hr``.
Its forward is one kernel launch (tier 1, :mod:`fastrnn.kernels.tier1`) or one persistent
launch (tier 2, :mod:`fastrnn.kernels.persistent`); its backward is one reverse-time launch that
writes the gate gradients of every step, followed by whole-sequence GEMMs for the weights:

    dW_hh = sum_t dG_h[t]^T h_{t-1}      dW_hr = sum_t dh[t]^T m_t      db_hh[inner] = sum_t dG_h,inner[t]

where ``dG_h`` is the gradient of the gates' recurrent parts: ``d_gx``, except for the cell's
inner-bias gates (GRU's n: ``r * (W_hn h + b_hn)``), whose recurrent part has its own gradient.
The input projection ``gx = x W_ih^T + b`` stays outside (ordinary autograd: one GEMM forward,
two backward), so ``dW_ih``/``dx`` are whole-sequence GEMMs too.  Nothing here knows a cell: it
reads the cell's spec (:mod:`fastrnn.kernels.cells`).  How each layer runs -- its tier, the fp32
dot precision and the launch configurations -- is decided once per call (by the dispatcher, or
:func:`fastrnn.kernels.tiers.plan_stack` for the functional API) and handed down as a
:class:`~fastrnn.kernels.tiers.LayerPlan`, which crosses the custom ops as its string ``key``.

**Eager calls without autograd** (``torch.no_grad()``, or no input that needs a gradient), outside
``torch.compile``, a ``TorchDispatchMode``/``TorchFunctionMode``, functorch transforms and the
profiler, call the ops' implementation directly instead of going through the dispatcher: the same
function with the same arguments, without the dispatcher's per-call host time (a one-token decoder
step is nothing but host time).  Everywhere else the ops are called as registered.
"""

from __future__ import annotations

import inspect

import torch

from .kernels import cells, tiers
from .kernels.call import Gradients, RecurrenceCall, backward_shapes, forward_shapes
from .kernels.common import acc_dtype


def _direct() -> bool:
    """Whether an op may be called as its implementation, skipping the dispatcher (module doc):
    plain eager execution, nothing that intercepts ops."""
    return not (
        torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._are_functorch_transforms_active()
        or torch.autograd.profiler._is_profiler_enabled
    )


def _recurrent_weight_grad(
    d_gh: torch.Tensor,
    out: torch.Tensor,
    h0: torch.Tensor | None,
    lengths: torch.Tensor | None,
    reverse: bool,
) -> torch.Tensor:
    """``sum_t d_gh[t]^T h_{t-1}`` as two GEMMs, with ``h_{t-1}`` read from ``out`` shifted by one.

    ``d_gh`` (T, B, G*H) is zero and ``out`` (T, B, P) is zero at padding, so the shifted product
    pairs every valid step with its predecessor; the first step of each sequence (time 0, or
    time ``L_b - 1`` in reverse) pairs with ``h0``.
    """
    T, B, GH = d_gh.shape
    P = out.shape[2]
    o = out.to(d_gh.dtype)
    if reverse:
        grad = d_gh[:-1].reshape(-1, GH).t() @ o[1:].reshape(-1, P)
    else:
        grad = d_gh[1:].reshape(-1, GH).t() @ o[:-1].reshape(-1, P)
    if h0 is not None:
        if not reverse:
            first = d_gh[0]
        elif lengths is None:
            first = d_gh[T - 1]
        else:
            first = d_gh[lengths - 1, torch.arange(B, device=d_gh.device)]
        grad = grad + first.t() @ h0.to(d_gh.dtype)
    return grad


def _recurrent_part_grad(cell: cells.Cell, d_gx: torch.Tensor, d_gh_inner: torch.Tensor) -> torch.Tensor:
    """The gradient of every gate's recurrent part: ``d_gx`` with the inner-bias gates' blocks
    taken from ``d_gh_inner``."""
    if not cell.inner_gates:
        return d_gx
    H = d_gx.shape[2] // cell.G
    blocks = list(d_gx.split(H, dim=2))
    for k, g in enumerate(cell.inner_gates):
        blocks[g] = d_gh_inner[..., k * H : (k + 1) * H]
    return torch.cat(blocks, dim=2)


def _zoneout(mask: torch.Tensor | None, keep: float) -> torch.Tensor | float | None:
    """The call's ``zoneout``: the training mask, the evaluation keep probability, or none."""
    if mask is not None:
        return mask
    return keep if keep >= 0 else None


def _op_outputs(results: dict[str, torch.Tensor | None], shapes: dict, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The op's outputs in ``shapes``' order; an absent one as a distinct empty tensor of ``like``'s
    dtype (a custom op cannot return ``None``, and its outputs may not alias), as :func:`_fake`."""
    return tuple(results[name] if results[name] is not None else like.new_empty((0,)) for name in shapes)


# ---------------------------------------------------------------------------------------------
# torch.library ops: opaque to torch.compile (fake impls give shapes), autograd registered.
# Absent optional results are returned as empty tensors (custom ops cannot return None); scalar
# flags are ints.  Nothing returned aliases an input.  Each op's arguments are written once, in
# its signature: the real implementation, the fake one and the autograd context bind them to a
# RecurrenceCall (_forward_call, _backward_call).


def _recurrence_fwd(
    mode: str,
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    lengths: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    w_hr: torch.Tensor | None,
    reverse: int,
    save: int,
    plan: str,
    states: int = 0,
    params: torch.Tensor | None = None,
    zoneout_mask: torch.Tensor | None = None,
    zoneout_keep: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out (T,B,P), h_n (B,P), c_n (B,H) | empty, saved (T,B,S*H) | empty, m (T,B,H) | empty,
    cs (T,B,H) | empty)`` (:func:`fastrnn.kernels.call.forward_shapes`).

    ``plan``: the layer's :attr:`~fastrnn.kernels.tiers.LayerPlan.key` (its tier and launch
    configurations; every tier saves the same tensors).  Extended cells
    (:mod:`fastrnn.kernels.cells`): ``params`` (NPRM*H,) their parameter vectors; zoneout by a
    ``zoneout_mask`` (T, B, H) of keep decisions (training) or a ``zoneout_keep`` probability in
    [0, 1] (evaluation; negative: no zoneout)."""
    layer = tiers.from_key(plan)
    call = _forward_call(locals(), layer)
    res = tiers.get_tier(layer.tier).forward(call, gx, layer.forward)
    return _op_outputs(vars(res), forward_shapes(call), gx)


_FWD = inspect.signature(_recurrence_fwd)


def _forward_call(a: dict, layer: tiers.LayerPlan) -> RecurrenceCall:
    """The :class:`RecurrenceCall` of ``recurrence_fwd``'s arguments (by name)."""
    return RecurrenceCall(
        a["mode"], a["gx"].shape[0], a["gx"].shape[1], a["w_hh"], a["h0"], a["c0"], a["lengths"], a["b_hh"],
        a["w_hr"], bool(a["reverse"]), bool(a["save"]), layer.precision, bool(a["states"]), a["params"],
        _zoneout(a["zoneout_mask"], a["zoneout_keep"]),
    )  # fmt: skip


def _bound(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """An op's arguments by name, defaults filled in (the fake implementations and the autograd
    context, which get them positionally)."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


recurrence_fwd = torch.library.custom_op("fastrnn::recurrence_fwd", _recurrence_fwd, mutates_args=())


@recurrence_fwd.register_fake
def _(*args, **kwargs):
    a = _bound(_FWD, args, kwargs)
    return _fake(forward_shapes(_forward_call(a, tiers.from_key(a["plan"]))), a["gx"])


def _fake(shapes: dict, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What the op returns, as empty tensors: each output's shape and dtype, an absent one empty in
    ``like``'s dtype (as :func:`_op_outputs`)."""
    return tuple(like.new_empty(spec[0], dtype=spec[1]) if spec else like.new_empty((0,)) for spec in shapes.values())


def _recurrence_bwd(
    mode: str,
    d_out: torch.Tensor,
    d_hn: torch.Tensor,
    d_cn: torch.Tensor | None,
    out: torch.Tensor,
    saved: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    lengths: torch.Tensor | None,
    w_hr: torch.Tensor | None,
    reverse: int,
    plan: str,
    d_cs: torch.Tensor | None = None,
    params: torch.Tensor | None = None,
    zoneout_mask: torch.Tensor | None = None,
    zoneout_keep: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d_gx (T,B,G*H), d_gh_inner (T,B,N*H) | empty, d_h (T,B,P) | empty, d_h0 (B,P), d_c0 (B,H) | empty,
    d_prm (T,B,NPRM*H) | empty)`` in fp32 (fp64 for fp64) (:func:`fastrnn.kernels.call.backward_shapes`);
    ``d_cs`` (T,B,H) is the gradient of every step's ``c_t`` (forwards that returned them),
    ``params``/``zoneout_*`` those of the forward (extended cells, whose ``d_prm`` is each step's
    share of the parameters' gradient)."""
    layer = tiers.from_key(plan)
    call, grads = _backward_call(locals(), layer)
    res = tiers.get_tier(layer.tier).backward(call, grads, layer.backward)
    return _op_outputs(vars(res), backward_shapes(call), out)


_BWD = inspect.signature(_recurrence_bwd)


def _backward_call(a: dict, layer: tiers.LayerPlan) -> tuple[RecurrenceCall, Gradients]:
    """The forward's :class:`RecurrenceCall` and the :class:`Gradients` of ``recurrence_bwd``'s
    arguments (by name)."""
    out = a["out"]
    call = RecurrenceCall(
        a["mode"], out.shape[0], out.shape[1], a["w_hh"], a["h0"], a["c0"], a["lengths"], None, a["w_hr"],
        bool(a["reverse"]), True, layer.precision, a["d_cs"] is not None, a["params"],
        _zoneout(a["zoneout_mask"], a["zoneout_keep"]),
    )  # fmt: skip
    saved = a["saved"]
    grads = Gradients(a["d_out"], a["d_hn"], a["d_cn"], a["d_cs"], out, saved if saved.numel() else None)
    return call, grads


recurrence_bwd = torch.library.custom_op("fastrnn::recurrence_bwd", _recurrence_bwd, mutates_args=())


@recurrence_bwd.register_fake
def _(*args, **kwargs):
    a = _bound(_BWD, args, kwargs)
    call, grads = _backward_call(a, tiers.from_key(a["plan"]))
    return _fake(backward_shapes(call), grads.out)


def _recurrence_setup(ctx, inputs, output):
    a = _bound(_FWD, inputs, {})
    call = _forward_call(a, tiers.from_key(a["plan"]))
    out, _, _, saved, m, _ = output
    ctx.mode, ctx.reverse, ctx.plan = call.mode, a["reverse"], a["plan"]
    ctx.states, ctx.zoneout_keep, ctx.gx_dtype = call.states, a["zoneout_keep"], a["gx"].dtype
    kept = (call.w_hh, call.h0, call.c0, call.lengths, call.w_hr, out, saved, m, call.b_hh, call.params,
            a["zoneout_mask"])  # fmt: skip
    ctx.has = tuple(t is not None for t in kept)
    ctx.save_for_backward(*kept)


def _recurrence_backward(ctx, d_out, d_hn, d_cn, _d_saved, _d_m, d_cs):
    kept = [t if has else None for t, has in zip(ctx.saved_tensors, ctx.has)]
    w_hh, h0, c0, lengths, w_hr, out, saved, m, b_hh, params, zoneout_mask = kept
    cell = cells.get(ctx.mode)
    d_gx, d_gh_inner, d_h, d_h0, d_c0, d_prm = recurrence_bwd(
        ctx.mode, d_out, d_hn, d_cn if cell.has_cell_state else None, out, saved, w_hh, h0, c0, lengths, w_hr,
        ctx.reverse, ctx.plan, d_cs if ctx.states and cell.has_cell_state else None, params,
        zoneout_mask, ctx.zoneout_keep,
    )  # fmt: skip
    d_gh = d_gh_inner if cell.extended else _recurrent_part_grad(cell, d_gx, d_gh_inner)
    d_w_hh = _recurrent_weight_grad(d_gh, out, h0, lengths, bool(ctx.reverse)).to(w_hh.dtype)
    d_b_hh = None
    if b_hh is not None:  # only the inner-bias gates' recurrent biases reach the kernels
        H = d_gx.shape[2] // cell.G
        d_b_hh = d_gx.new_zeros(cell.G * H)
        sums = d_gh_inner.sum(dim=(0, 1))
        for k, g in enumerate(cell.inner_gates):
            d_b_hh[g * H : (g + 1) * H] = sums[k * H : (k + 1) * H]
        d_b_hh = d_b_hh.to(b_hh.dtype)
    d_w_hr = (d_h.flatten(0, 1).t() @ m.flatten(0, 1)).to(w_hr.dtype) if w_hr is not None else None
    d_params = d_prm.sum(dim=(0, 1)).to(params.dtype) if params is not None else None
    grads = dict(
        gx=d_gx.to(ctx.gx_dtype),
        w_hh=d_w_hh,
        h0=d_h0.to(h0.dtype) if h0 is not None else None,
        c0=d_c0.to(c0.dtype) if c0 is not None else None,
        b_hh=d_b_hh,
        w_hr=d_w_hr,
        params=d_params,
    )
    return tuple(grads.get(name) for name in _FWD.parameters)


torch.library.register_autograd(recurrence_fwd, _recurrence_backward, setup_context=_recurrence_setup)


def recurrence(
    mode: str,
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    b_hh: torch.Tensor | None = None,
    w_hr: torch.Tensor | None = None,
    reverse: bool = False,
    plan: tiers.LayerPlan | None = None,
    return_states: bool = False,
    params: torch.Tensor | None = None,
    zoneout: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, ...]:
    """Differentiable recurrence of one layer/direction on the Triton kernels, as ``plan`` says
    (:class:`~fastrnn.kernels.tiers.LayerPlan`; ``None``: tier 1 with IEEE fp32 dots).

    ``gx`` (T, B, G*H) is the input projection with every bias but the inner-bias gates'
    recurrent ones folded in; ``b_hh`` (G*H,) is the recurrent bias, of which the kernels read
    the inner-bias gates only.  Returns ``(out, h_n, c_n)`` with ``out`` (T, B, P), ``h_n``
    (B, P) and ``c_n`` (B, H) for cells with a cell state, else ``None``; with
    ``return_states`` also ``c_states`` (T, B, H), every step's cell state (0 at padding;
    differentiable), or ``None`` for cells without one.  Extended cells take ``params``
    (NPRM*H,) (differentiable) and ``zoneout``: a (T, B, H) keep mask (training), a keep
    probability (evaluation) or ``None``.
    """
    cell = cells.get(mode)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (gx, w_hh, h0, c0, b_hh, w_hr, params)
    )
    b_hh = b_hh if cell.inner_bias else None
    states = int(return_states and cell.has_cell_state)
    mask = zoneout if isinstance(zoneout, torch.Tensor) else None
    keep = float(zoneout) if zoneout is not None and mask is None else -1.0
    if plan is None:
        P = w_hr.shape[0] if w_hr is not None else 0
        plan = tiers.plan_layer(mode, w_hh.shape[0] // cell.G, P, w_hh.dtype, 1, tiers.smem_per_block(w_hh.device))
    op = _recurrence_fwd if not needs_grad and _direct() else recurrence_fwd
    out, h_n, c_n, _, _, cs = op(
        mode, gx, w_hh, h0, c0, lengths, b_hh, w_hr, int(reverse), int(needs_grad), plan.key, states, params, mask,
        keep,
    )  # fmt: skip
    c_n = c_n if cell.has_cell_state else None
    if return_states:
        return out, h_n, c_n, (cs if states else None)
    return out, h_n, c_n


# ---------------------------------------------------------------------------------------------
# Fused embedding + first-layer input projection


def _embedding_projection(
    ids: torch.Tensor,
    emb: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    padding_idx: int,
    strategy: str,
    precision: str,
) -> torch.Tensor:
    """``E[ids] @ W^T + b`` (N, M) without an (N, K) tensor of embeddings, fp32 dots in
    ``precision`` (:data:`fastrnn.kernels.tiers.PRECISIONS`).

    By ``strategy``: ``"table"`` projects the whole vocabulary once (``E W^T + b``, ``(V, M)``) and
    gathers rows; ``"gather_gemm"`` runs a GEMM whose A-rows are read from ``E`` by id
    (:func:`fastrnn.kernels.embedding.gather_gemm`).  ``padding_idx`` (-1: none) only affects the
    backward: that row of ``E`` gets no gradient.
    """
    if strategy == "table":
        return torch.nn.functional.linear(emb, w, b)[ids]
    from .kernels.embedding import gather_gemm

    return gather_gemm(ids, emb, w, b, precision=precision)


embedding_projection_op = torch.library.custom_op("fastrnn::embedding_projection", _embedding_projection,
                                                  mutates_args=())  # fmt: skip


@embedding_projection_op.register_fake
def _(ids, emb, w, b, padding_idx, strategy, precision):
    return emb.new_empty((ids.shape[0], w.shape[0]))


def _embedding_projection_setup(ctx, inputs, output):
    ids, emb, w, b, padding_idx, _, _ = inputs
    ctx.has_bias = b is not None
    ctx.padding_idx = padding_idx
    ctx.save_for_backward(ids, emb, w)


def _embedding_projection_backward(ctx, d_gx):
    """Token gradients summed per vocabulary row into ``dT`` (V, M) -- ``index_put_`` with
    accumulation, deterministic under ``torch.use_deterministic_algorithms`` -- then
    ``dE = dT W`` (padding row zero), ``dW = dT^T E``, ``db = sum dT``."""
    ids, emb, w = ctx.saved_tensors
    acc = acc_dtype(emb.dtype)
    d_table = torch.zeros(emb.shape[0], w.shape[0], dtype=acc, device=emb.device)
    d_table.index_put_((ids,), d_gx.to(acc), accumulate=True)
    d_emb = d_table @ w.to(acc)
    if ctx.padding_idx >= 0:
        d_emb[ctx.padding_idx] = 0
    d_emb = d_emb.to(emb.dtype)
    d_w = (d_table.t() @ emb.to(acc)).to(w.dtype)
    d_b = d_table.sum(0).to(w.dtype) if ctx.has_bias else None
    return None, d_emb, d_w, d_b, None, None, None


torch.library.register_autograd(
    embedding_projection_op, _embedding_projection_backward, setup_context=_embedding_projection_setup
)


def embedding_projection(
    ids: torch.Tensor,
    emb: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    padding_idx: int | None = None,
    strategy: str = "table",
    precision: str = "ieee",
) -> torch.Tensor:
    """Differentiable ``E[ids] @ W^T + b`` for ``ids`` ``(N,)`` int64, ``E`` ``(V, K)``,
    ``W`` ``(M, K)``; returns ``(N, M)``.  The ``padding_idx`` row of ``E`` gets no gradient, as
    with ``nn.Embedding``.  See :func:`embedding_projection_op`."""
    pad = -1 if padding_idx is None else padding_idx % emb.shape[0]
    direct = _direct() and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (emb, w, b)))
    op = _embedding_projection if direct else embedding_projection_op
    return op(ids, emb, w, b, pad, strategy, precision)
