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


def _kernels():
    from .kernels import recurrent  # lazy: `import fastrnn` works without Triton

    return recurrent


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


class RecurrenceFunction(torch.autograd.Function):
    """Autograd Function over :func:`recurrent_fwd`/:func:`recurrent_bwd` (see module doc)."""

    @staticmethod
    def forward(ctx, mode, gx, w_hh, h0, c0, lengths, b_hn, w_hr, reverse, allow_tf32):
        k = _kernels()
        save = torch.is_grad_enabled() or any(ctx.needs_input_grad)
        res = k.recurrent_fwd(
            mode,
            gx,
            w_hh,
            h0,
            c0,
            lengths,
            b_hn=b_hn,
            w_hr=w_hr,
            reverse=reverse,
            save=save,
            allow_tf32=allow_tf32,
        )
        ctx.mode, ctx.reverse, ctx.allow_tf32 = mode, reverse, allow_tf32
        ctx.gx_dtype = gx.dtype
        ctx.has_bhn = b_hn is not None
        ctx.save_for_backward(w_hh, h0, c0, lengths, w_hr, res.out, res.gates, res.aux)
        outs = (res.out, res.h_n) if res.c_n is None else (res.out, res.h_n, res.c_n)
        return outs

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn=None):
        k = _kernels()
        w_hh, h0, c0, lengths, w_hr, out, gates, aux = ctx.saved_tensors
        mode = ctx.mode
        fwd = k.ForwardResult(out, None, None, gates, aux)
        res = k.recurrent_bwd(
            mode,
            d_out,
            d_hn,
            d_cn,
            fwd,
            w_hh,
            h0,
            c0,
            lengths,
            w_hr=w_hr,
            reverse=ctx.reverse,
            allow_tf32=ctx.allow_tf32,
        )
        need = ctx.needs_input_grad  # mode, gx, w_hh, h0, c0, lengths, b_hn, w_hr, ...
        d_gx = res.d_gx.to(ctx.gx_dtype) if need[1] else None
        d_w_hh = d_bhn = d_w_hr = None
        if need[2]:
            d_gh = res.d_gx
            if mode == "GRU":  # the recurrent n pre-activation is W_hn h + b_hn, scaled by r
                H = res.d_hn_gate.shape[2]
                d_gh = torch.cat([res.d_gx[..., : 2 * H], res.d_hn_gate], dim=2)
            d_w_hh = _recurrent_weight_grad(d_gh, out, h0, lengths, ctx.reverse).to(w_hh.dtype)
        if ctx.has_bhn and need[6]:
            d_bhn = res.d_hn_gate.sum(dim=(0, 1)).to(w_hh.dtype)
        if w_hr is not None and need[7]:
            H = aux.shape[2]
            m = gates[..., 3 * H :] * torch.tanh(aux)  # o * tanh(c): the unprojected h_t
            d_w_hr = (res.d_h.flatten(0, 1).t() @ m.flatten(0, 1)).to(w_hr.dtype)
        d_h0 = res.d_h0.to(h0.dtype) if h0 is not None and need[3] else None
        d_c0 = res.d_c0.to(c0.dtype) if c0 is not None and need[4] else None
        return None, d_gx, d_w_hh, d_h0, d_c0, None, d_bhn, d_w_hr, None, None


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
    outs = RecurrenceFunction.apply(mode, gx, w_hh, h0, c0, lengths, b_hn, w_hr, reverse, allow_tf32)
    return (outs[0], outs[1], outs[2] if len(outs) == 3 else None)


# ---------------------------------------------------------------------------------------------
# Fused embedding + first-layer input projection


class EmbeddingProjectionFunction(torch.autograd.Function):
    """``gx = E[ids] @ W^T + b`` without an ``(N, K)`` tensor of embeddings, forward or backward.

    Forward, by ``strategy``: ``"table"`` projects the whole vocabulary once (``E W^T + b``,
    ``(V, M)``) and gathers rows; ``"gather_gemm"`` runs a GEMM whose A-rows are read from ``E`` by
    id (:func:`fastrnn.kernels.embedding.gather_gemm`).  Backward (both): the gradients of the
    ``N`` tokens are summed per vocabulary row into ``dT`` (``(V, M)``, deterministic under
    ``torch.use_deterministic_algorithms``), then ``dE = dT W``, ``dW = dT^T E``, ``db = sum dT``;
    the ``padding_idx`` row of ``dE`` is zero, as ``nn.Embedding``.
    """

    @staticmethod
    def forward(ctx, ids, emb, w, b, padding_idx, strategy, allow_tf32):
        if strategy == "table":
            gx = torch.nn.functional.linear(emb, w, b)[ids]
        else:
            from .kernels.embedding import gather_gemm

            gx = gather_gemm(ids, emb, w, b, allow_tf32=allow_tf32)
        ctx.save_for_backward(ids, emb, w)
        ctx.padding_idx = padding_idx
        ctx.has_bias = b is not None
        return gx

    @staticmethod
    def backward(ctx, d_gx):
        ids, emb, w = ctx.saved_tensors
        acc = torch.float64 if emb.dtype == torch.float64 else torch.float32
        d_table = torch.zeros(emb.shape[0], w.shape[0], dtype=acc, device=emb.device)
        d_table.index_put_((ids,), d_gx.to(acc), accumulate=True)
        need = ctx.needs_input_grad
        d_emb = d_w = d_b = None
        if need[1]:
            d_emb = d_table @ w.to(acc)
            if ctx.padding_idx is not None:
                d_emb[ctx.padding_idx] = 0
            d_emb = d_emb.to(emb.dtype)
        if need[2]:
            d_w = (d_table.t() @ emb.to(acc)).to(w.dtype)
        if ctx.has_bias and need[3]:
            d_b = d_table.sum(0).to(w.dtype)
        return None, d_emb, d_w, d_b, None, None, None


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
    ``W`` ``(M, K)``; returns ``(N, M)``.  See :class:`EmbeddingProjectionFunction`."""
    return EmbeddingProjectionFunction.apply(ids, emb, w, b, padding_idx, strategy, allow_tf32)
