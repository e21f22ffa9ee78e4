"""Autograd wiring of the recurrence kernels: one layer and one direction.

:func:`recurrence` is differentiable in ``gx``, ``w_hh``, ``h0``, ``c0``, ``b_hh`` and ``w_hr``.
Its forward is one kernel launch (tier 1, :mod:`fastrnn.kernels.recurrent`) or one persistent
launch (tier 2, :mod:`fastrnn.kernels.multi`); its backward is one reverse-time launch that
writes the gate gradients of every step, followed by whole-sequence GEMMs for the weights:

    dW_hh = sum_t dG_h[t]^T h_{t-1}      dW_hr = sum_t dh[t]^T m_t      db_hh[inner] = sum_t dG_h,inner[t]

where ``dG_h`` is the gradient of the gates' recurrent parts: ``d_gx``, except for the cell's
inner-bias gates (GRU's n: ``r * (W_hn h + b_hn)``), whose recurrent part has its own gradient.
The input projection ``gx = x W_ih^T + b`` stays outside (ordinary autograd: one GEMM forward,
two backward), so ``dW_ih``/``dx`` are whole-sequence GEMMs too.  Nothing here knows a cell: it
reads the cell's spec (:mod:`fastrnn.kernels.cells`).  The kernel tier is chosen once per call
(by the dispatcher) and handed down as ``tier``.
"""

from __future__ import annotations

import torch

from .kernels import cells
from .kernels.common import acc_dtype


def _kernels(tier: int):
    """The kernel module of ``tier`` (lazy: ``import fastrnn`` works without Triton)."""
    if tier == 1:
        from .kernels import recurrent

        return recurrent
    from .kernels import multi

    return multi


def _plan(mode: str, w_hh: torch.Tensor, w_hr: torch.Tensor | None, tier: int, kernel: str, allow_tf32: bool):
    from .kernels import tiers

    H = w_hh.shape[0] // cells.get(mode).G
    P = w_hr.shape[0] if w_hr is not None else 0
    return tiers.plan(mode, H, P, w_hh.dtype, tier, kernel, tiers.smem_per_block(w_hh.device), bool(allow_tf32))


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
    """The launchers' ``zoneout``: the training mask, the evaluation keep probability, or none."""
    if mask is not None:
        return mask
    return keep if keep >= 0 else None


# ---------------------------------------------------------------------------------------------
# torch.library ops: opaque to torch.compile (fake impls give shapes), autograd registered.
# Absent optional results are returned as empty tensors (custom ops cannot return None); scalar
# flags are ints.  Nothing returned aliases an input.


@torch.library.custom_op("fastrnn::recurrence_fwd", mutates_args=())
def recurrence_fwd(
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
    allow_tf32: int,
    tier: int,
    states: int = 0,
    params: torch.Tensor | None = None,
    zoneout_mask: torch.Tensor | None = None,
    zoneout_keep: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out (T,B,P), h_n (B,P), c_n (B,H) | empty, saved (T,B,S*H) | empty, m (T,B,H) | empty,
    cs (T,B,H) | empty)``.

    ``tier`` 1, 2 or 3 (:func:`fastrnn.kernels.tiers.choose_tier`); every tier saves the same
    tensors.  ``m`` is the output before the projection (projected layers, when saving); ``cs``
    every step's cell state ``c_t`` (``states``; cells with a cell state), 0 at padding.

    Extended cells (:mod:`fastrnn.kernels.cells`): ``params`` (NPRM*H,) their parameter vectors;
    zoneout by a ``zoneout_mask`` (T, B, H) of keep decisions (training) or a ``zoneout_keep``
    probability in [0, 1] (evaluation; negative: no zoneout)."""
    plan = _plan(mode, w_hh, w_hr, tier, "fwd", allow_tf32)
    kw = dict(b_hh=b_hh, reverse=bool(reverse), save=bool(save), allow_tf32=bool(allow_tf32), states=bool(states))
    if params is not None or zoneout_mask is not None or zoneout_keep >= 0:
        kw.update(params=params, zoneout=_zoneout(zoneout_mask, zoneout_keep))
    if tier == 1:
        res = _kernels(1).recurrent_fwd(mode, gx, w_hh, h0, c0, lengths, plan.config, w_hr=w_hr, **kw)
    else:
        res = _kernels(tier).multi_fwd(mode, gx, w_hh, h0, c0, lengths, plan.config, tier=tier, **kw)
    acc = acc_dtype(gx.dtype)
    return (  # absent results: distinct empty tensors (outputs of a custom op may not alias)
        res.out,
        res.h_n,
        res.c_n if res.c_n is not None else gx.new_empty((0,)),
        res.saved if res.saved is not None else gx.new_empty((0,), dtype=acc),
        res.m if res.m is not None else gx.new_empty((0,), dtype=acc),
        res.cs if res.cs is not None else gx.new_empty((0,)),
    )


@recurrence_fwd.register_fake
def _(
    mode,
    gx,
    w_hh,
    h0,
    c0,
    lengths,
    b_hh,
    w_hr,
    reverse,
    save,
    allow_tf32,
    tier,
    states=0,
    params=None,
    zoneout_mask=None,
    zoneout_keep=-1.0,
):
    cell = cells.get(mode)
    T, B, GH = gx.shape
    H, P = GH // cell.G, w_hh.shape[1]
    acc = acc_dtype(gx.dtype)
    saving = bool(save) and cell.S > 0
    e = (0,)
    return (
        gx.new_empty((T, B, P)),
        gx.new_empty((B, P)),
        gx.new_empty((B, H) if cell.has_cell_state else e),
        gx.new_empty((T, B, cell.S * H) if saving else e, dtype=acc),
        gx.new_empty((T, B, H) if saving and w_hr is not None else e, dtype=acc),
        gx.new_empty((T, B, H) if states and cell.has_cell_state else e),
    )


@torch.library.custom_op("fastrnn::recurrence_bwd", mutates_args=())
def recurrence_bwd(
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
    allow_tf32: int,
    tier: int,
    d_cs: torch.Tensor | None = None,
    params: torch.Tensor | None = None,
    zoneout_mask: torch.Tensor | None = None,
    zoneout_keep: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d_gx (T,B,G*H), d_gh_inner (T,B,N*H) | empty, d_h (T,B,P) | empty, d_h0 (B,P), d_c0 (B,H) | empty,
    d_prm (T,B,NPRM*H) | empty)`` in fp32 (fp64 for fp64); ``d_cs`` (T,B,H) is the gradient of every
    step's ``c_t`` (forwards that returned them), ``params``/``zoneout_*`` those of the forward
    (extended cells, whose ``d_prm`` is each step's share of the parameters' gradient); see
    :func:`fastrnn.kernels.recurrent.recurrent_bwd`."""
    from .kernels.common import ForwardResult

    plan = _plan(mode, w_hh, w_hr, tier, "bwd", allow_tf32)
    fwd = ForwardResult(out, None, None, saved if saved.numel() else None, None)
    kw = dict(reverse=bool(reverse), allow_tf32=bool(allow_tf32), d_cs=d_cs)
    if params is not None or zoneout_mask is not None or zoneout_keep >= 0:
        kw.update(params=params, zoneout=_zoneout(zoneout_mask, zoneout_keep))
    if tier == 1:
        res = _kernels(1).recurrent_bwd(mode, d_out, d_hn, d_cn, fwd, w_hh, h0, c0, lengths, plan.config, w_hr=w_hr,
                                        **kw)  # fmt: skip
    else:
        res = _kernels(tier).multi_bwd(mode, d_out, d_hn, d_cn, fwd, w_hh, h0, c0, lengths, plan.config, tier=tier,
                                       **kw)  # fmt: skip
    e = res.d_gx.new_empty
    return (
        res.d_gx,
        res.d_gh_inner if res.d_gh_inner is not None else e((0,)),
        res.d_h if res.d_h is not None else e((0,)),
        res.d_h0,
        res.d_c0 if res.d_c0 is not None else e((0,)),
        res.d_prm if res.d_prm is not None else e((0,)),
    )


@recurrence_bwd.register_fake
def _(
    mode,
    d_out,
    d_hn,
    d_cn,
    out,
    saved,
    w_hh,
    h0,
    c0,
    lengths,
    w_hr,
    reverse,
    allow_tf32,
    tier,
    d_cs=None,
    params=None,
    zoneout_mask=None,
    zoneout_keep=-1.0,
):
    cell = cells.get(mode)
    T, B, P = out.shape
    H = w_hh.shape[0] // cell.G
    acc = acc_dtype(out.dtype)
    e = (0,)
    n_inner = cell.G if cell.extended else len(cell.inner_gates)
    return (
        out.new_empty((T, B, cell.G * H), dtype=acc),
        out.new_empty((T, B, n_inner * H) if n_inner else e, dtype=acc),
        out.new_empty((T, B, P) if w_hr is not None else e, dtype=acc),
        out.new_empty((B, P), dtype=acc),
        out.new_empty((B, H) if cell.has_cell_state else e, dtype=acc),
        out.new_empty((T, B, len(cell.params) * H) if cell.params else e, dtype=acc),
    )


def _recurrence_setup(ctx, inputs, output):
    mode, gx, w_hh, h0, c0, lengths, b_hh, w_hr, reverse, save, allow_tf32, tier = inputs[:12]
    out, _, _, saved, m, _ = output
    ctx.mode, ctx.reverse, ctx.allow_tf32, ctx.tier = mode, reverse, allow_tf32, tier
    extra = list(inputs[12:]) + [0, None, None, -1.0][len(inputs) - 12 :]
    states, params, zoneout_mask, ctx.zoneout_keep = extra
    ctx.states = bool(states)
    ctx.gx_dtype = gx.dtype
    ctx.has = (h0 is not None, c0 is not None, lengths is not None, b_hh is not None, w_hr is not None,
               params is not None, zoneout_mask is not None)  # fmt: skip
    ctx.save_for_backward(w_hh, h0, c0, lengths, w_hr, out, saved, m, b_hh, params, zoneout_mask)


def _recurrence_backward(ctx, d_out, d_hn, d_cn, _d_saved, _d_m, d_cs):
    w_hh, h0, c0, lengths, w_hr, out, saved, m, b_hh, params, zoneout_mask = ctx.saved_tensors
    has_h0, has_c0, has_len, has_bhh, has_whr, has_prm, has_zm = ctx.has
    params = params if has_prm else None
    zoneout_mask = zoneout_mask if has_zm else None
    h0 = h0 if has_h0 else None
    c0 = c0 if has_c0 else None
    lengths = lengths if has_len else None
    w_hr = w_hr if has_whr else None
    cell = cells.get(ctx.mode)
    d_gx, d_gh_inner, d_h, d_h0, d_c0, d_prm = recurrence_bwd(
        ctx.mode, d_out, d_hn, d_cn if cell.has_cell_state else None, out, saved, w_hh, h0, c0, lengths, w_hr,
        ctx.reverse, ctx.allow_tf32, ctx.tier, d_cs if ctx.states and cell.has_cell_state else None, params,
        zoneout_mask, ctx.zoneout_keep,
    )  # fmt: skip
    d_gh = d_gh_inner if cell.extended else _recurrent_part_grad(cell, d_gx, d_gh_inner)
    d_w_hh = _recurrent_weight_grad(d_gh, out, h0, lengths, bool(ctx.reverse)).to(w_hh.dtype)
    d_b_hh = None
    if has_bhh:  # only the inner-bias gates' recurrent biases reach the kernels
        H = d_gx.shape[2] // cell.G
        d_b_hh = d_gx.new_zeros(cell.G * H)
        sums = d_gh_inner.sum(dim=(0, 1))
        for k, g in enumerate(cell.inner_gates):
            d_b_hh[g * H : (g + 1) * H] = sums[k * H : (k + 1) * H]
        d_b_hh = d_b_hh.to(b_hh.dtype)
    d_w_hr = (d_h.flatten(0, 1).t() @ m.flatten(0, 1)).to(w_hr.dtype) if w_hr is not None else None
    d_params = d_prm.sum(dim=(0, 1)).to(params.dtype) if params is not None else None
    return (
        None,
        d_gx.to(ctx.gx_dtype),
        d_w_hh,
        d_h0.to(h0.dtype) if h0 is not None else None,
        d_c0.to(c0.dtype) if c0 is not None else None,
        None,
        d_b_hh,
        d_w_hr,
        None,
        None,
        None,
        None,
        None,
        d_params,
        None,
        None,
    )


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
    allow_tf32: bool = False,
    tier: int = 1,
    return_states: bool = False,
    params: torch.Tensor | None = None,
    zoneout: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, ...]:
    """Differentiable recurrence of one layer/direction on the Triton kernels of ``tier``.

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
    out, h_n, c_n, _, _, cs = recurrence_fwd(
        mode, gx, w_hh, h0, c0, lengths, b_hh, w_hr, int(reverse), int(needs_grad), int(allow_tf32), tier, states,
        params, mask, keep,
    )  # fmt: skip
    c_n = c_n if cell.has_cell_state else None
    if return_states:
        return out, h_n, c_n, (cs if states else None)
    return out, h_n, c_n


# ---------------------------------------------------------------------------------------------
# Fused embedding + first-layer input projection


@torch.library.custom_op("fastrnn::embedding_projection", mutates_args=())
def embedding_projection_op(
    ids: torch.Tensor,
    emb: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    padding_idx: int,
    strategy: str,
    allow_tf32: int,
) -> torch.Tensor:
    """``E[ids] @ W^T + b`` (N, M) without an (N, K) tensor of embeddings.

    By ``strategy``: ``"table"`` projects the whole vocabulary once (``E W^T + b``, ``(V, M)``) and
    gathers rows; ``"gather_gemm"`` runs a GEMM whose A-rows are read from ``E`` by id
    (:func:`fastrnn.kernels.embedding.gather_gemm`).  ``padding_idx`` (-1: none) only affects the
    backward: that row of ``E`` gets no gradient.
    """
    if strategy == "table":
        return torch.nn.functional.linear(emb, w, b)[ids]
    from .kernels.embedding import gather_gemm

    return gather_gemm(ids, emb, w, b, allow_tf32=bool(allow_tf32))


@embedding_projection_op.register_fake
def _(ids, emb, w, b, padding_idx, strategy, allow_tf32):
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
    allow_tf32: bool = False,
) -> torch.Tensor:
    """Differentiable ``E[ids] @ W^T + b`` for ``ids`` ``(N,)`` int64, ``E`` ``(V, K)``,
    ``W`` ``(M, K)``; returns ``(N, M)``.  The ``padding_idx`` row of ``E`` gets no gradient, as
    with ``nn.Embedding``.  See :func:`embedding_projection_op`."""
    pad = -1 if padding_idx is None else padding_idx % emb.shape[0]
    return embedding_projection_op(ids, emb, w, b, pad, strategy, int(allow_tf32))
