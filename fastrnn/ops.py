"""Autograd wiring of the recurrence kernels: one layer and one direction.

:func:`recurrence` is differentiable in ``gx``, ``w_hh``, ``h0``, ``c0``, ``b_hn`` and ``w_hr``.
Its forward is one kernel launch (:func:`fastrnn.kernels.recurrent.recurrent_fwd`); its backward
is one reverse-time launch that writes the gate gradients of every step, followed by
whole-sequence GEMMs for the weight gradients:

    dW_hh = sum_t dG_h[t]^T h_{t-1}      dW_hr = sum_t dh[t]^T m_t      db_hn = sum_t dG_hn[t]

The input projection ``gx = x W_ih^T + b`` stays outside (ordinary autograd: one GEMM forward,
two backward), so ``dW_ih``/``dx`` are whole-sequence GEMMs too.
"""

from __future__ import annotations

import torch

from .kernels.cells import MODES


def _kernels():
    from .kernels import recurrent  # lazy: `import fastrnn` works without Triton

    return recurrent


def _tier(mode: str, w_hh: torch.Tensor, w_hr: torch.Tensor | None, device: torch.device) -> int:
    """The kernel tier for this layer (see :func:`fastrnn.kernels.multi.choose_tier`)."""
    from .kernels.multi import choose_tier

    H = w_hh.shape[0] // MODES[mode][2]
    proj = w_hr.shape[0] if w_hr is not None else 0
    tier, why = choose_tier(mode, H, proj, w_hh.dtype, interpreted=device.type == "cpu")
    if tier is None:  # the dispatcher checked this before choosing the triton backend
        raise RuntimeError(f"fastrnn: no kernel tier runs this layer: {why}")
    return tier


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


# ---------------------------------------------------------------------------------------------
# torch.library ops: opaque to torch.compile (fake impls give shapes), autograd registered.
# Absent optional results are returned as empty tensors (custom ops cannot return None); scalar
# flags are ints.  Nothing returned aliases an input.


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("fastrnn::recurrence_fwd", mutates_args=())
def recurrence_fwd(
    mode: str,
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    lengths: torch.Tensor | None,
    b_hn: torch.Tensor | None,
    w_hr: torch.Tensor | None,
    reverse: int,
    save: int,
    allow_tf32: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out (T,B,P), h_n (B,P), c_n (B,H) | empty, gates (T,B,G*H) | empty, aux (T,B,H) | empty)``.

    Tier 1 (one program holds all of ``W_hh``) or tiers 2/3 (hidden units split across programs),
    by :func:`fastrnn.kernels.multi.choose_tier`; every tier saves the same tensors, so the
    backward may run in another tier."""
    tier = _tier(mode, w_hh, w_hr, gx.device)
    if tier == 1:
        res = _kernels().recurrent_fwd(
            mode, gx, w_hh, h0, c0, lengths, b_hn=b_hn, w_hr=w_hr, reverse=bool(reverse), save=bool(save),
            allow_tf32=bool(allow_tf32),
        )  # fmt: skip
    else:
        from .kernels.multi import multi_fwd

        res = multi_fwd(
            mode, gx, w_hh, h0, c0, lengths, b_hn=b_hn, reverse=bool(reverse), save=bool(save),
            allow_tf32=bool(allow_tf32), tier=tier,
        )  # fmt: skip
    acc = _acc_dtype(gx.dtype)
    return (
        res.out,
        res.h_n,
        res.c_n if res.c_n is not None else gx.new_empty((0,)),
        res.gates if res.gates is not None else gx.new_empty((0,), dtype=acc),
        res.aux if res.aux is not None else gx.new_empty((0,), dtype=acc),
    )


@recurrence_fwd.register_fake
def _(mode, gx, w_hh, h0, c0, lengths, b_hn, w_hr, reverse, save, allow_tf32):
    T, B, GH = gx.shape
    G = MODES[mode][2]
    H, P = GH // G, w_hh.shape[1]
    acc = _acc_dtype(gx.dtype)
    gated = save and mode in ("LSTM", "GRU")
    return (
        gx.new_empty((T, B, P)),
        gx.new_empty((B, P)),
        gx.new_empty((B, H)) if mode == "LSTM" else gx.new_empty((0,)),
        gx.new_empty((T, B, GH), dtype=acc) if gated else gx.new_empty((0,), dtype=acc),
        gx.new_empty((T, B, H), dtype=acc) if gated else gx.new_empty((0,), dtype=acc),
    )


@torch.library.custom_op("fastrnn::recurrence_bwd", mutates_args=())
def recurrence_bwd(
    mode: str,
    d_out: torch.Tensor,
    d_hn: torch.Tensor,
    d_cn: torch.Tensor | None,
    out: torch.Tensor,
    gates: torch.Tensor,
    aux: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    lengths: torch.Tensor | None,
    w_hr: torch.Tensor | None,
    reverse: int,
    allow_tf32: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d_gx (T,B,G*H), d_hn_gate (T,B,H) | empty, d_h (T,B,P) | empty, d_h0 (B,P), d_c0 (B,H) | empty)``
    in fp32 (fp64 for fp64); see :func:`fastrnn.kernels.recurrent.recurrent_bwd`."""
    k = _kernels()
    fwd = k.ForwardResult(out, None, None, gates if gates.numel() else None, aux if aux.numel() else None)
    tier = _tier(mode, w_hh, w_hr, out.device)
    if tier == 1:
        res = k.recurrent_bwd(
            mode, d_out, d_hn, d_cn, fwd, w_hh, h0, c0, lengths, w_hr=w_hr, reverse=bool(reverse),
            allow_tf32=bool(allow_tf32),
        )  # fmt: skip
    else:
        from .kernels.multi import multi_bwd

        res = multi_bwd(
            mode, d_out, d_hn, d_cn, fwd, w_hh, h0, c0, lengths, reverse=bool(reverse),
            allow_tf32=bool(allow_tf32), tier=tier,
        )  # fmt: skip
    e = res.d_gx.new_empty
    return (
        res.d_gx,
        res.d_hn_gate if res.d_hn_gate is not None else e((0,)),
        res.d_h if res.d_h is not None else e((0,)),
        res.d_h0,
        res.d_c0 if res.d_c0 is not None else e((0,)),
    )


@recurrence_bwd.register_fake
def _(mode, d_out, d_hn, d_cn, out, gates, aux, w_hh, h0, c0, lengths, w_hr, reverse, allow_tf32):
    T, B, P = out.shape
    G = MODES[mode][2]
    H = w_hh.shape[0] // G
    acc = _acc_dtype(out.dtype)
    e = (0,)
    return (
        out.new_empty((T, B, G * H), dtype=acc),
        out.new_empty((T, B, H) if mode == "GRU" else e, dtype=acc),
        out.new_empty((T, B, P) if w_hr is not None else e, dtype=acc),
        out.new_empty((B, P), dtype=acc),
        out.new_empty((B, H) if mode == "LSTM" else e, dtype=acc),
    )


def _recurrence_setup(ctx, inputs, output):
    mode, gx, w_hh, h0, c0, lengths, b_hn, w_hr, reverse, save, allow_tf32 = inputs
    out, _, _, gates, aux = output
    ctx.mode, ctx.reverse, ctx.allow_tf32 = mode, reverse, allow_tf32
    ctx.gx_dtype = gx.dtype
    ctx.has = (h0 is not None, c0 is not None, lengths is not None, b_hn is not None, w_hr is not None)
    ctx.save_for_backward(w_hh, h0, c0, lengths, w_hr, out, gates, aux)


def _recurrence_backward(ctx, d_out, d_hn, d_cn, _d_gates, _d_aux):
    w_hh, h0, c0, lengths, w_hr, out, gates, aux = ctx.saved_tensors
    has_h0, has_c0, has_len, has_bhn, has_whr = ctx.has
    h0 = h0 if has_h0 else None
    c0 = c0 if has_c0 else None
    lengths = lengths if has_len else None
    w_hr = w_hr if has_whr else None
    mode = ctx.mode
    d_gx32, d_hn_gate, d_h, d_h0, d_c0 = recurrence_bwd(
        mode, d_out, d_hn, d_cn if mode == "LSTM" else None, out, gates, aux, w_hh, h0, c0, lengths, w_hr,
        ctx.reverse, ctx.allow_tf32,
    )  # fmt: skip
    d_gh = d_gx32
    if mode == "GRU":  # the recurrent n pre-activation is W_hn h + b_hn, scaled by r
        H = d_hn_gate.shape[2]
        d_gh = torch.cat([d_gx32[..., : 2 * H], d_hn_gate], dim=2)
    d_w_hh = _recurrent_weight_grad(d_gh, out, h0, lengths, bool(ctx.reverse)).to(w_hh.dtype)
    d_bhn = d_hn_gate.sum(dim=(0, 1)).to(w_hh.dtype) if has_bhn else None
    d_w_hr = None
    if w_hr is not None:
        H = aux.shape[2]
        m = gates[..., 3 * H :] * torch.tanh(aux)  # o * tanh(c): the unprojected h_t
        d_w_hr = (d_h.flatten(0, 1).t() @ m.flatten(0, 1)).to(w_hr.dtype)
    return (
        None,
        d_gx32.to(ctx.gx_dtype),
        d_w_hh,
        d_h0.to(h0.dtype) if h0 is not None else None,
        d_c0.to(c0.dtype) if c0 is not None else None,
        None,
        d_bhn,
        d_w_hr,
        None,
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
    b_hn: torch.Tensor | None = None,
    w_hr: torch.Tensor | None = None,
    reverse: bool = False,
    allow_tf32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Differentiable recurrence of one layer/direction on the Triton kernels.

    Shapes as :func:`fastrnn.kernels.recurrent.recurrent_fwd`.  Returns ``(out, h_n, c_n)`` with
    ``out`` (T, B, P), ``h_n`` (B, P) and ``c_n`` (B, H) for LSTM, else ``None``.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (gx, w_hh, h0, c0, b_hn, w_hr)
    )
    out, h_n, c_n, _, _ = recurrence_fwd(
        mode, gx, w_hh, h0, c0, lengths, b_hn, w_hr, int(reverse), int(needs_grad), int(allow_tf32)
    )
    return out, h_n, (c_n if mode == "LSTM" else None)


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
    acc = _acc_dtype(emb.dtype)
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
