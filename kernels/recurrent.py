"""Tier 1: the whole time loop of one layer and direction in one kernel launch.

Each program owns a tile of ``BLOCK_B`` sequences and all hidden units; ``W_hh`` (and ``W_hr``
for a projected LSTM) is loaded once and stays on chip for the whole loop.  The input projection
``x W_ih^T + b`` of every step is computed before the launch as one GEMM (``gx``); the kernel adds
``h_{t-1} W_hh^T`` per step, applies the cell's pointwise maths and writes ``h_t``.

The backward kernel walks time in reverse and writes the gradient of every gate pre-activation
(``dgx``); the weight gradients are then whole-sequence GEMMs done by the caller
(``fastrnn/ops.py``), never accumulated step by step.

Dimension letters (used in every shape comment below)::

    T  time steps (padded length)          B  batch (sequences)
    H  hidden size (width of one gate)     P  size of h (= H, or proj_size for a projected LSTM)
    G  gates: 1 RNN, 4 LSTM (i,f,g,o), 3 GRU (r,z,n) -- see kernels/cells.py

Variable lengths: with ``IS_VARLEN`` each sequence b has its own length ``L_b <= T``.  At loop
step ``s`` a sequence is *active* while ``s < L_b``; it then reads/writes time ``s`` (forward) or
``L_b - 1 - s`` (reverse direction: the sequence is read backwards in place, no flipped copy).
Inactive sequences keep their state and write 0 to their own padding slot ``s``, so every element
of ``out`` is written exactly once and padding is zero (the caller's weight-gradient GEMMs rely
on that).

Precision: loads in the storage dtype, state ``h``/``c`` and accumulation in ``ACC`` (fp32, or
fp64 for fp64 tensors), stores in the output dtype.  Offsets are int64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import _runtime
from .cells import GRU, LSTM, MODES, RNN

_RNN = tl.constexpr(RNN)
_LSTM = tl.constexpr(LSTM)
_GRU = tl.constexpr(GRU)


# ---------------------------------------------------------------------------------------------
# jit helpers


def _jit_shape_generic(fn):
    """``triton.jit`` with the sizes ``T`` and ``B`` left unspecialised; the strides (``s_*``) are
    specialised as Triton does by default.

    Triton compiles one variant per combination of "integer argument ``== 1``, divisible by 16,
    or neither".  ``T`` and ``B`` never take part, so the sequence length and the batch size pick
    no variant.  The strides do, and must: their divisibility is what lets Triton vectorise the
    loads/stores and keep the address arithmetic per row, and the unit column stride of ``W_hh``
    / ``W_hr`` becomes a constant (kernels/NOTES.md, finding 1: unspecialised strides doubled the
    registers and cut the spill-free tier-1 range 5-10x).  Every row stride is a multiple of
    ``G*H``, ``H`` or ``P`` (times ``B`` or ``T`` for the outer ones), so:

    * ``H`` and ``P`` multiples of 16: every stride is a multiple of 16 whatever ``T`` and ``B``
      are -- exactly one compiled variant per (cell, dtype, flags, tiles, warps).
    * other sizes: a stride such as ``s_out_t = B*P`` is a multiple of 16 for some batch sizes
      and not for others, and equals 1 when ``B = 1`` and ``P = 1``; a ``batch_first``
      gradient's batch stride ``T*D*P`` likewise with ``T``.  So the batch size's factors of two
      pick one of a few variants (measured through Triton's binder: 2 for H = 3, 10 or 24, 3 for
      H = 20 with P = 5 and for H = 1), each compiled once and cached -- never one per ``T`` or
      ``B``.  (Pointer alignment, which Triton always specialises, behaves the same way for
      sliced inputs of such sizes.)  These sizes also compile to slower code, and tier 1 takes
      less of them (``TIER1_MAX_WEIGHT_BYTES_UNALIGNED``).
    """
    return triton.jit(do_not_specialize=["T", "B"])(fn)


@triton.jit
def _tanh(x):
    """tanh without libdevice (the interpreter has none), within 1.5 ulp in fp32 (torch.tanh: 0.5).

    ``|x| >= 0.625``: ``1 - 2/(exp(2|x|) + 1)``, so the rounding of exp and of the division falls
    on the small term and tanh near +-1 keeps full precision (``|x|`` capped at 20, where tanh is 1
    in fp64 too: no overflow; NaN passes through).  ``|x| < 0.625``: an odd polynomial fit for
    fp32 (at most 0.8 ulp; no cancellation near 0).  The former ``(1 - e)/(1 + e)``,
    ``e = exp(-2|x|)``, was up to 2.5 ulp off beyond 0.6 and 8 ulp below (relative error
    unbounded near 0); the backward's ``1 - tanh^2`` and every later step inherit such errors
    (issue 21).  fp64 keeps that form: its error there is ~1e-16.
    """
    a = tl.abs(x)
    if x.dtype == tl.float64:
        e = tl.exp(-2.0 * a)
        t = (1.0 - e) / (1.0 + e)
    else:
        is_small = a < 0.625
        big = 1.0 - 2.0 / (tl.exp(2.0 * tl.where(a > 20.0, 20.0, a)) + 1.0)
        s = tl.where(is_small, a, 0.0)
        z = s * s
        q = -0.3333328068256378 + z * (0.13331441581249237 + z * (-0.05373971536755562 + z * (
            0.02063908614218235 + z * -0.005704985000193119)))
        t = tl.where(is_small, s + s * z * q, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """(M, K) @ (K, N) with ``ACC`` accumulation; ``a`` is cast to ``b``'s storage dtype."""
    if UPCAST_DOT:  # the interpreter's bf16 tl.dot is wrong: multiply in ACC there
        return tl.dot(a.to(ACC), b.to(ACC), input_precision=PRECISION, out_dtype=ACC)
    else:
        return tl.dot(a.to(b.dtype), b, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def _load_block_t(w_ptr, s_row, s_col, block, N_ROWS, N_COLS, BLOCK_ROWS: tl.constexpr,
                  BLOCK_COLS: tl.constexpr):
    """Rows ``[block*N_ROWS, (block+1)*N_ROWS)`` of ``w`` (N_COLS columns), transposed:
    a ``(BLOCK_COLS, BLOCK_ROWS)`` tile, zero outside the matrix."""
    r = tl.arange(0, BLOCK_ROWS)
    c = tl.arange(0, BLOCK_COLS)
    ptrs = w_ptr + (block * N_ROWS + r[None, :]).to(tl.int64) * s_row + c[:, None].to(tl.int64) * s_col
    return tl.load(ptrs, mask=(r[None, :] < N_ROWS) & (c[:, None] < N_COLS), other=0.0)


@triton.jit
def _load_block(w_ptr, s_row, s_col, block, N_ROWS, N_COLS, BLOCK_ROWS: tl.constexpr,
                BLOCK_COLS: tl.constexpr):
    """Rows ``[block*N_ROWS, (block+1)*N_ROWS)`` of ``w``: a ``(BLOCK_ROWS, BLOCK_COLS)`` tile."""
    r = tl.arange(0, BLOCK_ROWS)
    c = tl.arange(0, BLOCK_COLS)
    ptrs = w_ptr + (block * N_ROWS + r[:, None]).to(tl.int64) * s_row + c[None, :].to(tl.int64) * s_col
    return tl.load(ptrs, mask=(r[:, None] < N_ROWS) & (c[None, :] < N_COLS), other=0.0)


@triton.jit
def _time_index(s, seq_len, REVERSE: tl.constexpr):
    """Per-sequence time slot of loop step ``s`` (BLOCK_B,), and whether the sequence is active."""
    active = s < seq_len
    if REVERSE:
        t = seq_len - 1 - s
    else:
        t = seq_len * 0 + s
    return tl.where(active, t, s).to(tl.int64), active


@triton.jit
def _save_for_backward(gt_t, aux_t, H, keep, mask, g0, g1, g2, g3, aux, CELL: tl.constexpr):
    """Store what the backward reads at one step: the gate activations (LSTM ``i,f,g,o`` /
    GRU ``r,z,n``) at ``gt_t + gate*H`` and ``aux`` (LSTM ``c_t``, GRU ``W_hn h + b_hn``) at
    ``aux_t``; rows outside ``keep`` (inactive sequences) get 0.  Shared by every tier."""
    sdt = gt_t.dtype.element_ty
    tl.store(gt_t, tl.where(keep, g0, 0.0).to(sdt), mask=mask)
    tl.store(gt_t + H, tl.where(keep, g1, 0.0).to(sdt), mask=mask)
    tl.store(gt_t + 2 * H, tl.where(keep, g2, 0.0).to(sdt), mask=mask)
    if CELL == _LSTM:
        tl.store(gt_t + 3 * H, tl.where(keep, g3, 0.0).to(sdt), mask=mask)
    tl.store(aux_t, tl.where(keep, aux, 0.0).to(sdt), mask=mask)


# ---------------------------------------------------------------------------------------------
# forward


@_jit_shape_generic
def _recurrent_fwd_kernel(
    gx_ptr, s_gx_t, s_gx_b,  # gx: (T, B, G*H) = x W_ih^T + biases, last dim contiguous
    w_hh_ptr, s_whh_r, s_whh_c,  # W_hh: (G*H, P), gate blocks in torch order
    b_hn_ptr,  # b_hn: (H,) GRU's recurrent n-gate bias (HAS_BHN)
    w_hr_ptr, s_whr_r, s_whr_c,  # W_hr: (P, H) LSTM projection (HAS_PROJ)
    h0_ptr, s_h0_b,  # h0: (B, P), last dim contiguous (HAS_H0)
    c0_ptr, s_c0_b,  # c0: (B, H), last dim contiguous (LSTM, HAS_C0)
    len_ptr,  # lengths: (B,) int64 (IS_VARLEN)
    out_ptr, s_out_t, s_out_b,  # out: (T, B, P) h_t, 0 at padding
    hn_ptr, s_hn_b,  # h_n: (B, P)
    cn_ptr, s_cn_b,  # c_n: (B, H) (LSTM)
    gates_ptr, s_gt_t, s_gt_b,  # gates: (T, B, G*H) gate activations (SAVE, LSTM/GRU)
    aux_ptr, s_aux_t, s_aux_b,  # aux: (T, B, H) c_t (LSTM) or W_hn h_{t-1} + b_hn (GRU) (SAVE)
    T, B, H, P,
    CELL: tl.constexpr, RELU: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_C0: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr,
    HAS_BHN: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_ok = rows < B
    ch = tl.arange(0, BLOCK_H)
    cp = tl.arange(0, BLOCK_P)
    mask_bh = row_ok[:, None] & (ch < H)[None, :]
    mask_bp = row_ok[:, None] & (cp < P)[None, :]

    # W_hh^T gate tiles, (BLOCK_P, BLOCK_H) each: on chip for the whole sequence.
    w0 = _load_block_t(w_hh_ptr, s_whh_r, s_whh_c, 0, H, P, BLOCK_H, BLOCK_P)
    if CELL != _RNN:
        w1 = _load_block_t(w_hh_ptr, s_whh_r, s_whh_c, 1, H, P, BLOCK_H, BLOCK_P)
        w2 = _load_block_t(w_hh_ptr, s_whh_r, s_whh_c, 2, H, P, BLOCK_H, BLOCK_P)
    if CELL == _LSTM:
        w3 = _load_block_t(w_hh_ptr, s_whh_r, s_whh_c, 3, H, P, BLOCK_H, BLOCK_P)
    if HAS_PROJ:
        w_r = _load_block_t(w_hr_ptr, s_whr_r, s_whr_c, 0, P, H, BLOCK_P, BLOCK_H)  # (BH, BP)
    if HAS_BHN:
        b_hn = tl.load(b_hn_ptr + ch, mask=ch < H, other=0.0).to(ACC)[None, :]

    if HAS_H0:
        h = tl.load(h0_ptr + rows[:, None] * s_h0_b + cp[None, :], mask=mask_bp, other=0.0).to(ACC)
    else:
        h = tl.zeros((BLOCK_B, BLOCK_P), ACC)
    if HAS_C0:
        c = tl.load(c0_ptr + rows[:, None] * s_c0_b + ch[None, :], mask=mask_bh, other=0.0).to(ACC)
    else:
        c = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    if IS_VARLEN:
        seq_len = tl.load(len_ptr + rows, mask=row_ok, other=0)
    else:
        seq_len = tl.zeros((BLOCK_B,), tl.int64) + T

    for s in range(0, T):
        t, active = _time_index(s, seq_len, REVERSE)
        act_bh = mask_bh & active[:, None]
        gx_t = gx_ptr + t[:, None] * s_gx_t + rows[:, None] * s_gx_b + ch[None, :]
        if CELL == _RNN:
            pre = tl.load(gx_t, mask=act_bh, other=0.0).to(ACC) + _mm(h, w0, PRECISION, ACC, UPCAST_DOT)
            if RELU:
                h_new = tl.maximum(pre, 0.0)
            else:
                h_new = _tanh(pre)
        elif CELL == _LSTM:
            i = _sigmoid(tl.load(gx_t, mask=act_bh, other=0.0).to(ACC) + _mm(h, w0, PRECISION, ACC, UPCAST_DOT))
            f = _sigmoid(tl.load(gx_t + H, mask=act_bh, other=0.0).to(ACC) + _mm(h, w1, PRECISION, ACC, UPCAST_DOT))
            g = _tanh(tl.load(gx_t + 2 * H, mask=act_bh, other=0.0).to(ACC) + _mm(h, w2, PRECISION, ACC, UPCAST_DOT))
            o = _sigmoid(tl.load(gx_t + 3 * H, mask=act_bh, other=0.0).to(ACC) + _mm(h, w3, PRECISION, ACC, UPCAST_DOT))
            c_new = f * c + i * g
            m = o * _tanh(c_new)
            if HAS_PROJ:
                h_new = _mm(m, w_r, PRECISION, ACC, UPCAST_DOT)
            else:
                h_new = m
            c = tl.where(active[:, None], c_new, c)
        else:  # GRU
            hn = _mm(h, w2, PRECISION, ACC, UPCAST_DOT)
            if HAS_BHN:
                hn = hn + b_hn
            r = _sigmoid(tl.load(gx_t, mask=act_bh, other=0.0).to(ACC) + _mm(h, w0, PRECISION, ACC, UPCAST_DOT))
            z = _sigmoid(tl.load(gx_t + H, mask=act_bh, other=0.0).to(ACC) + _mm(h, w1, PRECISION, ACC, UPCAST_DOT))
            n = _tanh(tl.load(gx_t + 2 * H, mask=act_bh, other=0.0).to(ACC) + r * hn)
            h_new = (1.0 - z) * n + z * h
        h = tl.where(active[:, None], h_new, h)
        keep_p = active[:, None]
        out_t = out_ptr + t[:, None] * s_out_t + rows[:, None] * s_out_b + cp[None, :]
        tl.store(out_t, tl.where(keep_p, h_new, 0.0).to(out_ptr.dtype.element_ty), mask=mask_bp)
        if SAVE:
            gt_t = gates_ptr + t[:, None] * s_gt_t + rows[:, None] * s_gt_b + ch[None, :]
            aux_t = aux_ptr + t[:, None] * s_aux_t + rows[:, None] * s_aux_b + ch[None, :]
            if CELL == _LSTM:
                _save_for_backward(gt_t, aux_t, H, keep_p, mask_bh, i, f, g, o, c_new, CELL)
            if CELL == _GRU:
                _save_for_backward(gt_t, aux_t, H, keep_p, mask_bh, r, z, n, n, hn, CELL)

    tl.store(hn_ptr + rows[:, None] * s_hn_b + cp[None, :], h.to(hn_ptr.dtype.element_ty), mask=mask_bp)
    if CELL == _LSTM:
        tl.store(cn_ptr + rows[:, None] * s_cn_b + ch[None, :], c.to(cn_ptr.dtype.element_ty), mask=mask_bh)


# ---------------------------------------------------------------------------------------------
# backward


@_jit_shape_generic
def _recurrent_bwd_kernel(
    dout_ptr, s_do_t, s_do_b,  # dL/d out: (T, B, P)
    dhn_ptr, s_dhn_b,  # dL/d h_n: (B, P)
    dcn_ptr, s_dcn_b,  # dL/d c_n: (B, H) (LSTM)
    out_ptr, s_out_t, s_out_b,  # out of the forward: (T, B, P)
    h0_ptr, s_h0_b,  # h0: (B, P) (HAS_H0)
    c0_ptr, s_c0_b,  # c0: (B, H) (LSTM, HAS_C0)
    gates_ptr, s_gt_t, s_gt_b,  # gates: (T, B, G*H) saved activations (LSTM/GRU)
    aux_ptr, s_aux_t, s_aux_b,  # aux: (T, B, H) c_t (LSTM) or W_hn h_{t-1} + b_hn (GRU)
    w_hh_ptr, s_whh_r, s_whh_c,  # W_hh: (G*H, P)
    w_hr_ptr, s_whr_r, s_whr_c,  # W_hr: (P, H) (HAS_PROJ)
    len_ptr,  # lengths: (B,) int64 (IS_VARLEN)
    dg_ptr, s_dg_t, s_dg_b,  # out, dL/d gx: (T, B, G*H), 0 at padding
    dhng_ptr, s_dhng_t, s_dhng_b,  # out, GRU: dL/d(W_hn h_{t-1} + b_hn): (T, B, H), 0 at padding
    dhtot_ptr, s_dht_t, s_dht_b,  # out, HAS_PROJ: dL/d h_t (all paths): (T, B, P), 0 at padding
    dh0_ptr, s_dh0_b,  # out, dL/d h0: (B, P)
    dc0_ptr, s_dc0_b,  # out, dL/d c0: (B, H) (LSTM)
    T, B, H, P,
    CELL: tl.constexpr, RELU: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_C0: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_ok = rows < B
    ch = tl.arange(0, BLOCK_H)
    cp = tl.arange(0, BLOCK_P)
    mask_bh = row_ok[:, None] & (ch < H)[None, :]
    mask_bp = row_ok[:, None] & (cp < P)[None, :]

    # W_hh gate tiles, (BLOCK_H, BLOCK_P) each: dpre_g @ W_g gives the gradient w.r.t. h_{t-1}.
    w0 = _load_block(w_hh_ptr, s_whh_r, s_whh_c, 0, H, P, BLOCK_H, BLOCK_P)
    if CELL != _RNN:
        w1 = _load_block(w_hh_ptr, s_whh_r, s_whh_c, 1, H, P, BLOCK_H, BLOCK_P)
        w2 = _load_block(w_hh_ptr, s_whh_r, s_whh_c, 2, H, P, BLOCK_H, BLOCK_P)
    if CELL == _LSTM:
        w3 = _load_block(w_hh_ptr, s_whh_r, s_whh_c, 3, H, P, BLOCK_H, BLOCK_P)
    if HAS_PROJ:
        w_r = _load_block(w_hr_ptr, s_whr_r, s_whr_c, 0, P, H, BLOCK_P, BLOCK_H)  # (BP, BH)

    dh = tl.load(dhn_ptr + rows[:, None] * s_dhn_b + cp[None, :], mask=mask_bp, other=0.0).to(ACC)
    if CELL == _LSTM:
        dc = tl.load(dcn_ptr + rows[:, None] * s_dcn_b + ch[None, :], mask=mask_bh, other=0.0).to(ACC)
        if HAS_C0:
            c_init = tl.load(c0_ptr + rows[:, None] * s_c0_b + ch[None, :], mask=mask_bh, other=0.0).to(ACC)
        else:
            c_init = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    if CELL == _GRU:
        if HAS_H0:
            h_init = tl.load(h0_ptr + rows[:, None] * s_h0_b + cp[None, :], mask=mask_bp, other=0.0).to(ACC)
        else:
            h_init = tl.zeros((BLOCK_B, BLOCK_P), ACC)
    if IS_VARLEN:
        seq_len = tl.load(len_ptr + rows, mask=row_ok, other=0)
    else:
        seq_len = tl.zeros((BLOCK_B,), tl.int64) + T

    for k in range(0, T):
        s = T - 1 - k
        t, active = _time_index(s, seq_len, REVERSE)
        keep = active[:, None]
        act_bh = mask_bh & keep
        act_bp = mask_bp & keep
        # The previous step's slot of each active sequence (s > 0), else the initial state.
        if REVERSE:
            t_prev = t + 1
        else:
            t_prev = t - 1
        has_prev = (active & (t_prev >= 0) & (t_prev < seq_len))[:, None]  # i.e. s > 0
        prev_bh = act_bh & has_prev
        prev_bp = act_bp & has_prev

        dh = dh + tl.load(dout_ptr + t[:, None] * s_do_t + rows[:, None] * s_do_b + cp[None, :],
                          mask=act_bp, other=0.0).to(ACC)
        dg_t = dg_ptr + t[:, None] * s_dg_t + rows[:, None] * s_dg_b + ch[None, :]
        ddt = dg_ptr.dtype.element_ty
        if CELL == _RNN:
            h_t = tl.load(out_ptr + t[:, None] * s_out_t + rows[:, None] * s_out_b + cp[None, :],
                          mask=act_bp, other=0.0).to(ACC)
            if RELU:
                d_pre = tl.where(h_t > 0, dh, 0.0)
            else:
                d_pre = dh * (1.0 - h_t * h_t)
            d_pre = tl.where(keep, d_pre, 0.0)
            tl.store(dg_t, d_pre.to(ddt), mask=mask_bh)
            dh_prev = _mm(d_pre, w0, PRECISION, ACC, UPCAST_DOT)
        elif CELL == _LSTM:
            gt_t = gates_ptr + t[:, None] * s_gt_t + rows[:, None] * s_gt_b + ch[None, :]
            i = tl.load(gt_t, mask=act_bh, other=0.0).to(ACC)
            f = tl.load(gt_t + H, mask=act_bh, other=0.0).to(ACC)
            g = tl.load(gt_t + 2 * H, mask=act_bh, other=0.0).to(ACC)
            o = tl.load(gt_t + 3 * H, mask=act_bh, other=0.0).to(ACC)
            c_t = tl.load(aux_ptr + t[:, None] * s_aux_t + rows[:, None] * s_aux_b + ch[None, :],
                          mask=act_bh, other=0.0).to(ACC)
            c_prev = tl.load(aux_ptr + t_prev[:, None] * s_aux_t + rows[:, None] * s_aux_b + ch[None, :],
                             mask=prev_bh, other=0.0).to(ACC)
            c_prev = tl.where(has_prev, c_prev, c_init)
            if HAS_PROJ:
                tl.store(dhtot_ptr + t[:, None] * s_dht_t + rows[:, None] * s_dht_b + cp[None, :],
                         tl.where(keep, dh, 0.0).to(dhtot_ptr.dtype.element_ty), mask=mask_bp)
                dm = _mm(dh, w_r, PRECISION, ACC, UPCAST_DOT)
            else:
                dm = dh
            tc = _tanh(c_t)
            dc_t = dc + dm * o * (1.0 - tc * tc)
            d_i = tl.where(keep, dc_t * g * i * (1.0 - i), 0.0)
            d_f = tl.where(keep, dc_t * c_prev * f * (1.0 - f), 0.0)
            d_g = tl.where(keep, dc_t * i * (1.0 - g * g), 0.0)
            d_o = tl.where(keep, dm * tc * o * (1.0 - o), 0.0)
            tl.store(dg_t, d_i.to(ddt), mask=mask_bh)
            tl.store(dg_t + H, d_f.to(ddt), mask=mask_bh)
            tl.store(dg_t + 2 * H, d_g.to(ddt), mask=mask_bh)
            tl.store(dg_t + 3 * H, d_o.to(ddt), mask=mask_bh)
            dh_prev = (_mm(d_i, w0, PRECISION, ACC, UPCAST_DOT) + _mm(d_f, w1, PRECISION, ACC, UPCAST_DOT)
                       + _mm(d_g, w2, PRECISION, ACC, UPCAST_DOT) + _mm(d_o, w3, PRECISION, ACC, UPCAST_DOT))
            dc = tl.where(keep, dc_t * f, dc)
        else:  # GRU
            gt_t = gates_ptr + t[:, None] * s_gt_t + rows[:, None] * s_gt_b + ch[None, :]
            r = tl.load(gt_t, mask=act_bh, other=0.0).to(ACC)
            z = tl.load(gt_t + H, mask=act_bh, other=0.0).to(ACC)
            n = tl.load(gt_t + 2 * H, mask=act_bh, other=0.0).to(ACC)
            hn = tl.load(aux_ptr + t[:, None] * s_aux_t + rows[:, None] * s_aux_b + ch[None, :],
                         mask=act_bh, other=0.0).to(ACC)
            h_prev = tl.load(out_ptr + t_prev[:, None] * s_out_t + rows[:, None] * s_out_b + cp[None, :],
                             mask=prev_bp, other=0.0).to(ACC)
            h_prev = tl.where(has_prev, h_prev, h_init)
            d_npre = tl.where(keep, dh * (1.0 - z) * (1.0 - n * n), 0.0)
            d_z = tl.where(keep, dh * (h_prev - n) * z * (1.0 - z), 0.0)
            d_r = tl.where(keep, d_npre * hn * r * (1.0 - r), 0.0)
            d_hn = d_npre * r
            tl.store(dg_t, d_r.to(ddt), mask=mask_bh)
            tl.store(dg_t + H, d_z.to(ddt), mask=mask_bh)
            tl.store(dg_t + 2 * H, d_npre.to(ddt), mask=mask_bh)
            tl.store(dhng_ptr + t[:, None] * s_dhng_t + rows[:, None] * s_dhng_b + ch[None, :],
                     d_hn.to(dhng_ptr.dtype.element_ty), mask=mask_bh)
            dh_prev = (dh * z + _mm(d_r, w0, PRECISION, ACC, UPCAST_DOT) + _mm(d_z, w1, PRECISION, ACC, UPCAST_DOT)
                       + _mm(d_hn, w2, PRECISION, ACC, UPCAST_DOT))
        dh = tl.where(keep, dh_prev, dh)

    tl.store(dh0_ptr + rows[:, None] * s_dh0_b + cp[None, :], dh.to(dh0_ptr.dtype.element_ty), mask=mask_bp)
    if CELL == _LSTM:
        tl.store(dc0_ptr + rows[:, None] * s_dc0_b + ch[None, :], dc.to(dc0_ptr.dtype.element_ty), mask=mask_bh)


# ---------------------------------------------------------------------------------------------
# launchers

#: Largest on-chip weight footprint (:func:`weight_bytes`) a compiled tier-1 program holds, per
#: storage dtype, for a layer whose ``hidden_size`` is a multiple of 16 (no projection).  Measured
#: with the kernel report (``python -m fastrnn.kernels.report``, kernels/NOTES.md, triton 3.9 and
#: 3.6): every size up to these compiles for sm_90 and sm_80 with :func:`launch_config`'s warps,
#: no local memory in the time loop, and shared memory that fits both (227 KB H100, 163 KB A100).
#: The next sizes up spill (fp32 RNN H=128 at 4-16 warps), need more shared memory than an A100
#: has (16-bit GRU H=128: 184 KB backward) or both (fp64 GRU/LSTM H=64).  fp32 ``"ieee"`` dots run
#: on FMA units (each thread holds whole K-long rows), fp64 on DMMA, 16-bit on HMMA: three classes.
TIER1_MAX_WEIGHT_BYTES: dict[torch.dtype, int] = {
    torch.float16: 64 * 1024,  # RNN H<=128, GRU/LSTM H<=64
    torch.bfloat16: 64 * 1024,
    torch.float32: 48 * 1024,  # RNN/GRU H<=64, LSTM H<=32 (triton < 3.9)
    torch.float64: 32 * 1024,  # RNN H<=64, GRU/LSTM H<=32
}

#: The same for other sizes, and for every projected LSTM.  Other sizes: some row stride is not a
#: multiple of 16, so Triton cannot vectorise the loads/stores or share the address arithmetic of
#: a row, and registers grow (fp32 GRU H=63 spills at 4 and 8 warps where H=64 does not; 16-bit
#: projected LSTM H=127 spills at 40 KiB).  Projected LSTMs (one more dot, and its tiles in
#: another layout) run out first: fp64 H=32/P=16 (20 KiB) spills with triton 3.6, fp32
#: H=128/P=16 (40 KiB) needs 178 KB of shared memory on sm_80, and 16-bit H=128/P=16 (40 KiB)
#: reaches 255 registers in its sm_80 backward with triton 3.6.
TIER1_MAX_WEIGHT_BYTES_UNALIGNED: dict[torch.dtype, int] = {
    torch.float16: 32 * 1024,  # RNN H<=127, GRU/LSTM H<=63, projected LSTM H<=64 with P<=32
    torch.bfloat16: 32 * 1024,
    torch.float32: 16 * 1024,  # RNN H<=63, GRU H<=31, LSTM H<=31 (triton < 3.9), projected H<=32, P<=16
    torch.float64: 16 * 1024,  # RNN H<=31, GRU/LSTM H<=15, projected LSTM H<=16
}


def _triton_version() -> tuple[int, int]:
    major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    return major, minor


#: triton >= 3.9 aborts the Python process (an assertion in LLVM's SLP vectorizer, which it runs
#: for sm_90 and newer) when it compiles the fp32 LSTM forward kernel with the "ieee" dot, at
#: every size and warp count measured (kernels/NOTES.md, finding 3).  Such a kernel must never be
#: launched there; triton 3.6 compiles it (the bound is moved when a fixed triton is measured).
_LSTM_FP32_ABORTS = (3, 9)


@dataclass(frozen=True)
class LaunchConfig:
    """Compile-time tile sizes of one tier-1 launch."""

    block_b: int  # sequences per program
    block_h: int  # next power of two >= H (>= 16 for tl.dot)
    block_p: int  # next power of two >= P (>= 16 for tl.dot; >= 32 for 16-bit projections, H >= 32)
    num_warps: int


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _tiles(hidden_size: int, proj_size: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK_H, BLOCK_P)``."""
    block_h, block_p = _pow2(hidden_size), _pow2(proj_size or hidden_size)
    if proj_size and block_h >= 32 and dtype in (torch.float16, torch.bfloat16):
        # A 16-wide projection mma makes Triton put every warp on the same 16 batch rows of all
        # gates (kernels/NOTES.md finding 4: H=64 spilled at any warp count); 32 (masked) does not.
        # (fp32's FMA dot is better off at 16.)
        block_p = max(block_p, 32)
    return block_h, block_p


def _aligned(hidden_size: int, proj_size: int) -> bool:
    """Whether every stride the kernels get is a multiple of 16 (whatever T and B are)."""
    return hidden_size % 16 == 0 and (proj_size or hidden_size) % 16 == 0


def weight_bytes(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int:
    """On-chip bytes of the recurrent weight tiles one program holds: ``G`` tiles of ``W_hh``
    and, for a projected LSTM, one of ``W_hr``, each ``BLOCK_H x BLOCK_P`` as launched."""
    block_h, block_p = _tiles(hidden_size, proj_size, dtype)
    tiles = MODES[mode][2] + (1 if proj_size else 0)
    return tiles * block_h * block_p * torch.empty((), dtype=dtype).element_size()


#: The interpreter has no registers to spill; its limit only keeps CPU runs tractable.
INTERPRETER_MAX_WEIGHT_BYTES = 4 * 1024 * 1024


def tier1_unsupported(
    mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, interpreted: bool = False
) -> str | None:
    """Why tier 1 cannot run this layer (``None`` when it can); ``interpreted``: in Triton's
    interpreter (CPU tensors), where the register limit of a compiled kernel does not apply.

    Example::

        tier1_unsupported("GRU", 64, 0, torch.bfloat16)  # None: 24 KiB of weights on chip
        tier1_unsupported("GRU", 256, 0, torch.bfloat16)  # '... needs 384 KiB ... at most 64 KiB'
    """
    if dtype not in TIER1_MAX_WEIGHT_BYTES:
        return f"dtype {dtype} is not supported (float16, bfloat16, float32, float64 are)"
    nbytes = weight_bytes(mode, hidden_size, proj_size, dtype)
    if interpreted:
        limit, where = INTERPRETER_MAX_WEIGHT_BYTES, " in the interpreter"
    elif proj_size:
        limit, where = TIER1_MAX_WEIGHT_BYTES_UNALIGNED[dtype], " for a projected LSTM"
    elif _aligned(hidden_size, proj_size):
        limit, where = TIER1_MAX_WEIGHT_BYTES[dtype], ""
    else:
        limit = TIER1_MAX_WEIGHT_BYTES_UNALIGNED[dtype]
        where = (
            f" when hidden_size is not a multiple of 16 ({TIER1_MAX_WEIGHT_BYTES[dtype] // 1024} KiB when it is)"
        )
    if nbytes > limit:
        return (
            f"{mode} with hidden_size={hidden_size}"
            + (f", proj_size={proj_size}" if proj_size else "")
            + f" in {dtype} needs {nbytes // 1024} KiB of recurrent weights on chip; the tier-1 "
            f"kernel holds at most {limit // 1024} KiB{where}"
        )
    if not interpreted and mode == "LSTM" and dtype == torch.float32 and _triton_version() >= _LSTM_FP32_ABORTS:
        return (
            f"{mode} in {dtype} is not compiled with triton {triton.__version__}: its LLVM aborts the "
            "process building the fp32 LSTM kernel for sm_90 (triton 3.6 builds it; kernels/NOTES.md)"
        )
    return None


def launch_config(mode: str, batch: int, hidden_size: int, proj_size: int, dtype: torch.dtype) -> LaunchConfig:
    """Tile sizes for one layer/direction (never depends on T or B: no recompiles as they vary)."""
    # Measured with the kernel report (kernels/NOTES.md, sm_90 and sm_80): BLOCK_B = 16 (the
    # smallest tl.dot tile) compiles without spills up to the tier-1 limit, while BLOCK_B = 64
    # spills already at H = 32 (LSTM/GRU); 16 also keeps the most programs (SMs) busy.
    block_b = 16
    block_h, block_p = _tiles(hidden_size, proj_size, dtype)
    # Warps by on-chip weight bytes, measured (kernels/NOTES.md): H and P multiples of 16 run 4
    # warps below 16 KiB and 8 from there (4-warp builds reach 255 registers and spill from 32
    # KiB; below 16 KiB 4 warps use fewer registers than 8 in the fp32 builds, e.g. GRU H=32 fwd
    # 94 vs 168).  Other sizes need more registers (scalar loads): 8 warps from 8 KiB (GRU fp32
    # H=31 spills at 4), and fp32 16 from 16 KiB (RNN fp32 H=63: 255 registers at 8 warps).
    nbytes = weight_bytes(mode, hidden_size, proj_size, dtype)
    if _aligned(hidden_size, proj_size):
        num_warps = 8 if nbytes >= 16 * 1024 else 4
    elif dtype == torch.float32 and nbytes >= 16 * 1024:
        num_warps = 16
    else:
        num_warps = 8 if nbytes >= 8 * 1024 else 4
    return LaunchConfig(block_b, block_h, block_p, num_warps)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _kernel_consts(mode: str, dtype: torch.dtype, cfg: LaunchConfig, allow_tf32: bool) -> dict:
    cell, relu, _ = MODES[mode]
    acc = _acc_dtype(dtype)
    return dict(
        CELL=cell, RELU=relu,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_P=cfg.block_p,
        PRECISION="tf32" if (allow_tf32 and dtype == torch.float32) else "ieee",
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        UPCAST_DOT=_runtime.INTERPRET and dtype == torch.bfloat16,
        num_warps=cfg.num_warps,
    )


def _strides3(x: torch.Tensor | None) -> tuple[int, int]:
    return (x.stride(0), x.stride(1)) if x is not None else (0, 0)


def _stride0(x: torch.Tensor | None) -> int:
    return x.stride(0) if x is not None else 0


def _row_major(x: torch.Tensor | None) -> torch.Tensor | None:
    """The kernels index the last dimension with stride 1."""
    if x is None or x.stride(-1) == 1:
        return x
    return x.contiguous()


@dataclass
class ForwardResult:
    out: torch.Tensor  # (T, B, P)
    h_n: torch.Tensor  # (B, P)
    c_n: torch.Tensor | None  # (B, H), LSTM
    gates: torch.Tensor | None  # (T, B, G*H), LSTM/GRU when saved
    aux: torch.Tensor | None  # (T, B, H), LSTM/GRU when saved


def recurrent_fwd(
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
    save: bool = True,
    allow_tf32: bool = False,
) -> ForwardResult:
    """Run one layer/direction's recurrence over the whole sequence in one launch.

    Args:
        mode: ``"RNN_TANH"``, ``"RNN_RELU"``, ``"LSTM"`` or ``"GRU"``.
        gx: ``(T, B, G*H)`` input projection ``x W_ih^T + b_ih (+ b_hh)``; for GRU the n block
            holds ``W_in x + b_in`` only (``b_hn`` is added inside ``r * (...)``).
        w_hh: ``(G*H, P)`` recurrent weight.
        h0: ``(B, P)`` initial hidden state or ``None`` (zeros); c0: ``(B, H)`` for LSTM.
        lengths: ``(B,)`` int64 per-sequence lengths ``1..T`` (any order) or ``None`` (all ``T``).
        b_hn: ``(H,)`` GRU's recurrent n-gate bias.  w_hr: ``(P, H)`` LSTM projection.
        reverse: run each sequence from its last valid step to its first.
        save: also write what :func:`recurrent_bwd` needs (LSTM/GRU gate activations).

    Example::

        gx = torch.randn(5, 3, 8); w = torch.randn(8, 8)
        res = recurrent_fwd("RNN_TANH", gx, w)   # res.out: (5, 3, 8), res.h_n: (3, 8)
    """
    T, B, _ = gx.shape
    H = w_hh.shape[0] // MODES[mode][2]
    P = w_hh.shape[1]
    dtype, dev = gx.dtype, gx.device
    _runtime.check_device(dev)
    cfg = launch_config(mode, B, H, P if w_hr is not None else 0, dtype)
    acc = _acc_dtype(dtype)
    is_gated = mode in ("LSTM", "GRU")
    gx, h0, c0 = _row_major(gx), _row_major(h0), _row_major(c0)

    out = _runtime.empty((T, B, P), dtype, dev)
    h_n = _runtime.empty((B, P), dtype, dev)
    c_n = _runtime.empty((B, H), dtype, dev) if mode == "LSTM" else None
    save = save and is_gated
    gates = _runtime.empty((T, B, gx.shape[2]), acc, dev) if save else None
    aux = _runtime.empty((T, B, H), acc, dev) if save else None
    if B == 0 or T == 0:
        if h0 is not None:
            h_n.copy_(h0)
        else:
            h_n.zero_()
        if c_n is not None:
            c_n.copy_(c0) if c0 is not None else c_n.zero_()
        return ForwardResult(out, h_n, c_n, gates, aux)

    dummy = gx  # stands in for absent optional pointers (never dereferenced)
    grid = (triton.cdiv(B, cfg.block_b),)
    _recurrent_fwd_kernel[grid](
        gx, gx.stride(0), gx.stride(1),
        w_hh, w_hh.stride(0), w_hh.stride(1),
        b_hn if b_hn is not None else dummy,
        w_hr if w_hr is not None else dummy, _stride0(w_hr), w_hr.stride(1) if w_hr is not None else 0,
        h0 if h0 is not None else dummy, _stride0(h0),
        c0 if c0 is not None else dummy, _stride0(c0),
        lengths if lengths is not None else dummy,
        out, out.stride(0), out.stride(1),
        h_n, h_n.stride(0),
        c_n if c_n is not None else dummy, _stride0(c_n),
        gates if gates is not None else dummy, *_strides3(gates),
        aux if aux is not None else dummy, *_strides3(aux),
        T, B, H, P,
        HAS_H0=h0 is not None, HAS_C0=c0 is not None, IS_VARLEN=lengths is not None,
        REVERSE=reverse, HAS_BHN=b_hn is not None, HAS_PROJ=w_hr is not None, SAVE=save,
        **_kernel_consts(mode, dtype, cfg, allow_tf32),
    )
    _runtime.count_launch("recurrent_fwd")
    return ForwardResult(out, h_n, c_n, gates, aux)


@dataclass
class BackwardResult:
    d_gx: torch.Tensor  # (T, B, G*H) gradient of the gate pre-activations, 0 at padding
    d_hn_gate: torch.Tensor | None  # (T, B, H) GRU: gradient of W_hn h_{t-1} + b_hn
    d_h: torch.Tensor | None  # (T, B, P) projected LSTM: total gradient of h_t
    d_h0: torch.Tensor  # (B, P)
    d_c0: torch.Tensor | None  # (B, H) LSTM


def recurrent_bwd(
    mode: str,
    d_out: torch.Tensor,
    d_hn: torch.Tensor,
    d_cn: torch.Tensor | None,
    fwd: ForwardResult,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    w_hr: torch.Tensor | None = None,
    reverse: bool = False,
    allow_tf32: bool = False,
) -> BackwardResult:
    """Reverse-time pass of :func:`recurrent_fwd`: per-step gate gradients and ``dL/dh0``.

    ``d_out`` is ``(T, B, P)``, ``d_hn`` ``(B, P)``, ``d_cn`` ``(B, H)`` (LSTM); the other
    arguments are those given to (and returned by) the forward.  Gradients are in fp32 (fp64 for
    fp64 inputs); weight gradients are left to the caller's GEMMs.
    """
    T, B, P = fwd.out.shape
    G = MODES[mode][2]
    H = w_hh.shape[0] // G
    dtype, dev = fwd.out.dtype, fwd.out.device
    acc = _acc_dtype(dtype)
    cfg = launch_config(mode, B, H, P if w_hr is not None else 0, dtype)
    d_out, d_hn, d_cn, h0, c0 = map(_row_major, (d_out, d_hn, d_cn, h0, c0))

    d_gx = _runtime.empty((T, B, G * H), acc, dev)
    d_hn_gate = _runtime.empty((T, B, H), acc, dev) if mode == "GRU" else None
    d_h = _runtime.empty((T, B, P), acc, dev) if w_hr is not None else None
    d_h0 = _runtime.empty((B, P), acc, dev)
    d_c0 = _runtime.empty((B, H), acc, dev) if mode == "LSTM" else None
    if B == 0 or T == 0:
        d_h0.copy_(d_hn)
        if d_c0 is not None:
            d_c0.copy_(d_cn)
        return BackwardResult(d_gx, d_hn_gate, d_h, d_h0, d_c0)

    dummy = fwd.out
    grid = (triton.cdiv(B, cfg.block_b),)
    _recurrent_bwd_kernel[grid](
        d_out, d_out.stride(0), d_out.stride(1),
        d_hn, d_hn.stride(0),
        d_cn if d_cn is not None else dummy, _stride0(d_cn),
        fwd.out, fwd.out.stride(0), fwd.out.stride(1),
        h0 if h0 is not None else dummy, _stride0(h0),
        c0 if c0 is not None else dummy, _stride0(c0),
        fwd.gates if fwd.gates is not None else dummy, *_strides3(fwd.gates),
        fwd.aux if fwd.aux is not None else dummy, *_strides3(fwd.aux),
        w_hh, w_hh.stride(0), w_hh.stride(1),
        w_hr if w_hr is not None else dummy, _stride0(w_hr), w_hr.stride(1) if w_hr is not None else 0,
        lengths if lengths is not None else dummy,
        d_gx, d_gx.stride(0), d_gx.stride(1),
        d_hn_gate if d_hn_gate is not None else dummy, *_strides3(d_hn_gate),
        d_h if d_h is not None else dummy, *_strides3(d_h),
        d_h0, d_h0.stride(0),
        d_c0 if d_c0 is not None else dummy, _stride0(d_c0),
        T, B, H, P,
        HAS_H0=h0 is not None, HAS_C0=c0 is not None, IS_VARLEN=lengths is not None,
        REVERSE=reverse, HAS_PROJ=w_hr is not None,
        **_kernel_consts(mode, dtype, cfg, allow_tf32),
    )
    _runtime.count_launch("recurrent_bwd")
    return BackwardResult(d_gx, d_hn_gate, d_h, d_h0, d_c0)
