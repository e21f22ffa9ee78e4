"""Tier 1: the whole time loop of one layer and direction in one kernel launch.

Each program owns a tile of ``BLOCK_B`` sequences and all hidden units; ``W_hh`` (and ``W_hr``
for a projected LSTM) is loaded once and stays on chip for the whole loop.  The input projection
``x W_ih^T + b`` of every step is computed before the launch as one GEMM (``gx``); the kernel adds
``h_{t-1} W_hh^T`` per gate, calls the cell's maths (:mod:`.cells`) and writes ``h_t``.

The backward kernel walks time in reverse and writes the gradient of every gate pre-activation
(``d_gx``); the weight gradients are then whole-sequence GEMMs done by the caller
(``fastrnn/ops.py``), never accumulated step by step.

Dimension letters (used in every shape comment below)::

    T  time steps (padded length)          B  batch (sequences)
    H  hidden size (width of one gate)     P  size of h (= H, or proj_size for a projected LSTM)
    G  gates of the cell                   S  per-step tensors the cell saves for its backward
    N  gates whose recurrent bias stays inside the cell maths (GRU: n)

Variable lengths: with ``IS_VARLEN`` each sequence b has its own length ``L_b <= T``.  At loop
step ``s`` a sequence is *active* while ``s < L_b``; it then reads/writes time ``s`` (forward) or
``L_b - 1 - s`` (reverse direction: the sequence is read backwards in place, no flipped copy).
Inactive sequences keep their state and write 0 to their own padding slot ``s``, so every element
of ``out`` is written exactly once and padding is zero (the caller's weight-gradient GEMMs rely
on that).

Precision: loads in the storage dtype, state ``h``/``c`` and accumulation in ``ACC`` (fp32, or
fp64 for fp64 tensors), stores in the output dtype.  Offsets are int64.  Optional tensors are
passed as ``None`` (a compile-time constant in Triton) with their ``HAS_*`` flag derived once
(:func:`.common.flags`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from . import _runtime, cells, releases, tiers
from .call import Gradients, RecurrenceCall, allocate, backward_shapes, forward_shapes
from .common import (
    BackwardResult,
    ForwardResult,
    Launch,
    backward_step_inputs,
    check_params,
    element_size,
    flags,
    load_gates,
    load_split,
    mm,
    mm_split,
    pow2,
    precision,
    row_major,
    run_backward,
    run_forward,
    store_saved,
    strides,
    time_index,
    tl_acc,
    upcast_dot,
    zoneout_args,
)
from .tiers import INTERPRETER_MAX_WEIGHT_BYTES


def _jit_shape_generic(fn):
    """``triton.jit`` with the sizes ``T`` and ``B`` left unspecialised; the strides (``s_*``) are
    specialised as Triton does by default (divisible by 16, equal to 1, or neither), which lets it
    vectorise the loads and keep the address arithmetic per row.  ``H`` and ``P`` multiples of 16
    make every stride a multiple of 16 whatever ``T`` and ``B`` are: one compiled variant per
    (cell, dtype, flags, tiles).  Other sizes compile a few variants, by the batch size's factors
    of two (kernels/NOTES.md), never one per ``T`` or ``B``."""
    return triton.jit(do_not_specialize=["T", "B"])(fn)


# ---------------------------------------------------------------------------------------------
# forward


@_jit_shape_generic
def _recurrent_fwd_kernel(
    gx_ptr, s_gx_t, s_gx_b,  # gx: (T, B, G*H) = x W_ih^T + biases, last dim contiguous
    w_hh_ptr, s_whh_r, s_whh_c,  # W_hh: (G*H, P), gate blocks in the cell's order
    bh_ptr,  # bh: (G*H,) recurrent biases; only the inner-bias gates' are read (HAS_BH)
    w_hr_ptr, s_whr_r, s_whr_c,  # W_hr: (P, H) LSTM projection (HAS_PROJ)
    h0_ptr, s_h0_b,  # h0: (B, P), last dim contiguous (HAS_H0)
    c0_ptr, s_c0_b,  # c0: (B, H), last dim contiguous (HAS_C0)
    len_ptr,  # lengths: (B,) int64 (IS_VARLEN)
    out_ptr, s_out_t, s_out_b,  # out: (T, B, P) h_t, 0 at padding
    hn_ptr, s_hn_b,  # h_n: (B, P)
    cn_ptr, s_cn_b,  # c_n: (B, H) (HAS_C)
    cs_ptr, s_cs_t, s_cs_b,  # cs: (T, B, H) c_t of every step, 0 at padding (STORE_C)
    sv_ptr, s_sv_t, s_sv_b,  # saved: (T, B, S*H) what the cell's backward reads (SAVE)
    m_ptr, s_m_t, s_m_b,  # m: (T, B, H) the output before the projection (SAVE_M)
    prm_ptr,  # prm: (NPRM*H,) ACC, the cell's parameter vectors (EXT cells with NPRM > 0)
    zm_ptr, s_zm_t, s_zm_b,  # zm: (T, B, H) zoneout keep mask, 1 keeps the new state (ZONEOUT == 1)
    zkeep,  # zoneout keep probability, the mask's expectation (ZONEOUT == 2: evaluation)
    T, B, H, P,
    CELL_FWD: tl.constexpr, CELL_BWD: tl.constexpr, G: tl.constexpr, S: tl.constexpr, INNER_SLOTS: tl.constexpr,
    HAS_C: tl.constexpr, STATE_SLOT: tl.constexpr, READ_H_NEW: tl.constexpr, READ_H_PREV: tl.constexpr,
    DIRECT_DH: tl.constexpr, EXT: tl.constexpr, NPRM: tl.constexpr, ZONEOUT: tl.constexpr,
    HAS_BH: tl.constexpr, HAS_H0: tl.constexpr, HAS_C0: tl.constexpr, IS_VARLEN: tl.constexpr,
    REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr, SAVE_M: tl.constexpr, STORE_C: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, SPLIT_K: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_ok = rows < B
    ch = tl.arange(0, BLOCK_H)
    cp = tl.arange(0, BLOCK_P)
    mask_bh = row_ok[:, None] & (ch < H)[None, :]
    mask_bp = row_ok[:, None] & (cp < P)[None, :]

    # W_hh^T gate tiles, (BLOCK_P, BLOCK_H) each (split along K in SPLIT_K chunks), and the
    # inner-bias gates' biases: on chip for the whole sequence.
    w = ()
    bh = ()
    for g in tl.static_range(G):
        w = w + (load_split(w_hh_ptr + g * H * s_whh_r, s_whh_r, s_whh_c, H, P, BLOCK_H, BLOCK_P, SPLIT_K),)
        if HAS_BH and INNER_SLOTS[g] >= 0:
            bh = bh + (tl.load(bh_ptr + g * H + ch, mask=ch < H, other=0.0).to(ACC)[None, :],)
        else:
            bh = bh + (0.0,)
    if HAS_PROJ:
        w_r = load_split(w_hr_ptr, s_whr_r, s_whr_c, P, H, BLOCK_P, BLOCK_H, 1)  # (BH, BP)
    if EXT:  # the cell's parameters (1, BLOCK_H) each, and the valid-column mask of its row reductions
        prm = _load_params(prm_ptr, ch, H, NPRM, ACC)
        cm = (ch < H).to(ACC)[None, :]

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

    # The input parts of step s+1 are loaded while step s computes (they do not depend on h):
    # the step's serial chain never waits for an L2 round trip.
    t0, active0 = time_index(0, seq_len, REVERSE)
    gx_next = load_gates(gx_ptr + t0[:, None] * s_gx_t + rows[:, None] * s_gx_b + ch[None, :], H,
                         mask_bh & active0[:, None], G)
    if ZONEOUT == 1:
        zm_next = tl.load(zm_ptr + t0[:, None] * s_zm_t + rows[:, None] * s_zm_b + ch[None, :],
                          mask=mask_bh & active0[:, None], other=0.0)
    for s in range(0, T):
        t, active = time_index(s, seq_len, REVERSE)
        keep = active[:, None]
        gx_raw = gx_next
        t_n, active_n = time_index(s + 1, seq_len, REVERSE)  # s + 1 == T: nothing is loaded
        gx_next = load_gates(gx_ptr + t_n[:, None] * s_gx_t + rows[:, None] * s_gx_b + ch[None, :], H,
                             mask_bh & active_n[:, None], G)
        if ZONEOUT == 1:
            zm_raw = zm_next
            zm_next = tl.load(zm_ptr + t_n[:, None] * s_zm_t + rows[:, None] * s_zm_b + ch[None, :],
                              mask=mask_bh & active_n[:, None], other=0.0)
        px = ()
        ph = ()
        for g in tl.static_range(G):
            px = px + (gx_raw[g].to(ACC),)
            p = mm_split(h, w[g], SPLIT_K, PRECISION, ACC, UPCAST_DOT)
            if HAS_BH and INNER_SLOTS[g] >= 0:
                p = p + bh[g]
            ph = ph + (p,)
        if EXT:
            # zoneout: the step's keep mask (training), its expectation (evaluation), or none
            if ZONEOUT == 1:
                zm = zm_raw.to(ACC)
            elif ZONEOUT == 2:
                zm = zkeep
            else:
                zm = 1.0
            m, c_new, saved = CELL_FWD(px, ph, h, c, prm, zm, cm, H, ZONEOUT)
        else:
            m, c_new, saved = CELL_FWD(px, ph, h, c)
        if HAS_PROJ:
            h_new = mm(m, w_r, PRECISION, ACC, UPCAST_DOT)
        else:
            h_new = m
        if HAS_C:
            c = tl.where(keep, c_new, c)
        h = tl.where(keep, h_new, h)
        out_t = out_ptr + t[:, None] * s_out_t + rows[:, None] * s_out_b + cp[None, :]
        tl.store(out_t, tl.where(keep, h_new, 0.0).to(out_ptr.dtype.element_ty), mask=mask_bp)
        if SAVE:
            sv_t = sv_ptr + t[:, None] * s_sv_t + rows[:, None] * s_sv_b + ch[None, :]
            store_saved(sv_t, H, keep, mask_bh, saved, S)
        if SAVE_M:
            m_t = m_ptr + t[:, None] * s_m_t + rows[:, None] * s_m_b + ch[None, :]
            tl.store(m_t, tl.where(keep, m, 0.0).to(m_ptr.dtype.element_ty), mask=mask_bh)
        if STORE_C:
            cs_t = cs_ptr + t[:, None] * s_cs_t + rows[:, None] * s_cs_b + ch[None, :]
            tl.store(cs_t, tl.where(keep, c_new, 0.0).to(cs_ptr.dtype.element_ty), mask=mask_bh)

    tl.store(hn_ptr + rows[:, None] * s_hn_b + cp[None, :], h.to(hn_ptr.dtype.element_ty), mask=mask_bp)
    if HAS_C:
        tl.store(cn_ptr + rows[:, None] * s_cn_b + ch[None, :], c.to(cn_ptr.dtype.element_ty), mask=mask_bh)


@triton.jit
def _load_params(prm_ptr, ch, H, NPRM: tl.constexpr, ACC: tl.constexpr):
    """The cell's ``NPRM`` parameter vectors as (1, BLOCK_H) ``ACC`` tiles, 0 past ``H``."""
    prm = ()
    for k in tl.static_range(NPRM):
        prm = prm + (tl.load(prm_ptr + k * H + ch, mask=ch < H, other=0.0).to(ACC)[None, :],)
    return prm


# ---------------------------------------------------------------------------------------------
# backward


@triton.jit
def _has_prev(t, active, seq_len, REVERSE: tl.constexpr):
    """Whether an active sequence's step at time slot ``t`` has a previous step (else it starts
    from the initial state): ``(BLOCK_B, 1)``."""
    if REVERSE:
        t_prev = t + 1
    else:
        t_prev = t - 1
    return (active & (t_prev >= 0) & (t_prev < seq_len))[:, None]


@triton.jit
def _bwd_step_loads(s, seq_len, rows, ch, cp, mask_bh, mask_bp, dout_ptr, s_do_t, s_do_b, out_ptr, s_out_t,
                    s_out_b, sv_ptr, s_sv_t, s_sv_b, dcs_ptr, s_dcs_t, s_dcs_b, zm_ptr, s_zm_t, s_zm_b, H,
                    S: tl.constexpr, HAS_C: tl.constexpr, STATE_SLOT: tl.constexpr, READ_H_NEW: tl.constexpr,
                    READ_H_PREV: tl.constexpr, REVERSE: tl.constexpr, HAS_DCS: tl.constexpr,
                    ZONEOUT: tl.constexpr):
    """What backward step ``s`` reads (storage dtype): ``(d_out_t, saved_t, h_t, h_{t-1}, c_{t-1},
    d_cs_t, zm_t)``, the last five only where the cell reads them, ``HAS_DCS`` or ``ZONEOUT == 1``
    (else placeholders); nothing for ``s < 0``."""
    t, active = time_index(s, seq_len, REVERSE)
    active = active & (seq_len * 0 + s >= 0)  # (s >= 0 as a tensor: the interpreter needs one)
    act_bh = mask_bh & active[:, None]
    act_bp = mask_bp & active[:, None]
    if REVERSE:
        t_prev = t + 1
    else:
        t_prev = t - 1
    prev = (active & (t_prev >= 0) & (t_prev < seq_len))[:, None]
    d_out = tl.load(dout_ptr + t[:, None] * s_do_t + rows[:, None] * s_do_b + cp[None, :], mask=act_bp, other=0.0)
    saved = ()
    for j in tl.static_range(S):
        saved = saved + (tl.load(sv_ptr + t[:, None] * s_sv_t + rows[:, None] * s_sv_b + j * H + ch[None, :],
                                 mask=act_bh, other=0.0),)
    h_new = d_out
    if READ_H_NEW:
        h_new = tl.load(out_ptr + t[:, None] * s_out_t + rows[:, None] * s_out_b + cp[None, :], mask=act_bp,
                        other=0.0)
    h_prev = d_out
    if READ_H_PREV:
        h_prev = tl.load(out_ptr + t_prev[:, None] * s_out_t + rows[:, None] * s_out_b + cp[None, :],
                         mask=act_bp & prev, other=0.0)
    c_prev = d_out
    if HAS_C:
        c_prev = tl.load(sv_ptr + t_prev[:, None] * s_sv_t + rows[:, None] * s_sv_b + STATE_SLOT * H + ch[None, :],
                         mask=act_bh & prev, other=0.0)
    d_cs = d_out
    if HAS_DCS:
        d_cs = tl.load(dcs_ptr + t[:, None] * s_dcs_t + rows[:, None] * s_dcs_b + ch[None, :], mask=act_bh, other=0.0)
    zm = d_out
    if ZONEOUT == 1:
        zm = tl.load(zm_ptr + t[:, None] * s_zm_t + rows[:, None] * s_zm_b + ch[None, :], mask=act_bh, other=0.0)
    return d_out, saved, h_new, h_prev, c_prev, d_cs, zm


@_jit_shape_generic
def _recurrent_bwd_kernel(
    dout_ptr, s_do_t, s_do_b,  # dL/d out: (T, B, P)
    dhn_ptr, s_dhn_b,  # dL/d h_n: (B, P)
    dcn_ptr, s_dcn_b,  # dL/d c_n: (B, H) (HAS_C)
    dcs_ptr, s_dcs_t, s_dcs_b,  # dL/d cs: (T, B, H) gradient of every step's c_t (HAS_DCS)
    out_ptr, s_out_t, s_out_b,  # out of the forward: (T, B, P)
    h0_ptr, s_h0_b,  # h0: (B, P) (HAS_H0)
    c0_ptr, s_c0_b,  # c0: (B, H) (HAS_C0)
    sv_ptr, s_sv_t, s_sv_b,  # saved: (T, B, S*H) by the forward (S > 0)
    w_hh_ptr, s_whh_r, s_whh_c,  # W_hh: (G*H, P)
    w_hr_ptr, s_whr_r, s_whr_c,  # W_hr: (P, H) (HAS_PROJ)
    len_ptr,  # lengths: (B,) int64 (IS_VARLEN)
    prm_ptr,  # prm: (NPRM*H,) ACC, the cell's parameter vectors (EXT cells with NPRM > 0)
    zm_ptr, s_zm_t, s_zm_b,  # zm: (T, B, H) the forward's zoneout keep mask (ZONEOUT == 1)
    zkeep,  # zoneout keep probability (ZONEOUT == 2)
    dg_ptr, s_dg_t, s_dg_b,  # out, dL/d gx: (T, B, G*H), 0 at padding
    dgh_ptr, s_dgh_t, s_dgh_b,  # out, dL/d(recurrent part) of the inner-bias gates: (T, B, N*H) (EXT: of every gate, (T, B, G*H)), 0 at padding
    dhtot_ptr, s_dht_t, s_dht_b,  # out, HAS_PROJ: dL/d h_t (all paths): (T, B, P), 0 at padding
    dh0_ptr, s_dh0_b,  # out, dL/d h0: (B, P)
    dc0_ptr, s_dc0_b,  # out, dL/d c0: (B, H) (HAS_C)
    dprm_ptr, s_dp_t, s_dp_b,  # out, EXT: (T, B, NPRM*H) each step's share of dL/dprm, 0 at padding
    T, B, H, P,
    CELL_FWD: tl.constexpr, CELL_BWD: tl.constexpr, G: tl.constexpr, S: tl.constexpr, INNER_SLOTS: tl.constexpr,
    HAS_C: tl.constexpr, STATE_SLOT: tl.constexpr, READ_H_NEW: tl.constexpr, READ_H_PREV: tl.constexpr,
    DIRECT_DH: tl.constexpr, EXT: tl.constexpr, NPRM: tl.constexpr, ZONEOUT: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_C0: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr,
    HAS_PROJ: tl.constexpr, HAS_DCS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, SPLIT_K: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_ok = rows < B
    ch = tl.arange(0, BLOCK_H)
    cp = tl.arange(0, BLOCK_P)
    mask_bh = row_ok[:, None] & (ch < H)[None, :]
    mask_bp = row_ok[:, None] & (cp < P)[None, :]

    # W_hh gate tiles, (BLOCK_H, BLOCK_P) each (split along K = H in SPLIT_K chunks):
    # d_ph[g] @ W_g is gate g's share of dL/dh_{t-1}.
    w = ()
    for g in tl.static_range(G):
        w = w + (load_split(w_hh_ptr + g * H * s_whh_r, s_whh_c, s_whh_r, P, H, BLOCK_P, BLOCK_H, SPLIT_K),)
    if HAS_PROJ:
        w_r = load_split(w_hr_ptr, s_whr_c, s_whr_r, H, P, BLOCK_H, BLOCK_P, 1)  # (BP, BH)
    if EXT:
        prm = _load_params(prm_ptr, ch, H, NPRM, ACC)
        cm = (ch < H).to(ACC)[None, :]

    dh = tl.load(dhn_ptr + rows[:, None] * s_dhn_b + cp[None, :], mask=mask_bp, other=0.0).to(ACC)
    dc = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    c_init = dc
    h_init = tl.zeros((BLOCK_B, BLOCK_P), ACC)
    if HAS_C:
        dc = tl.load(dcn_ptr + rows[:, None] * s_dcn_b + ch[None, :], mask=mask_bh, other=0.0).to(ACC)
        if HAS_C0:
            c_init = tl.load(c0_ptr + rows[:, None] * s_c0_b + ch[None, :], mask=mask_bh, other=0.0).to(ACC)
    if READ_H_PREV and HAS_H0:
        h_init = tl.load(h0_ptr + rows[:, None] * s_h0_b + cp[None, :], mask=mask_bp, other=0.0).to(ACC)
    if IS_VARLEN:
        seq_len = tl.load(len_ptr + rows, mask=row_ok, other=0)
    else:
        seq_len = tl.zeros((BLOCK_B,), tl.int64) + T

    # Everything a step reads from memory depends on t only: loaded one step ahead (while the
    # step before computes), so the serial chain never waits for an L2 round trip.
    nxt = _bwd_step_loads(T - 1, seq_len, rows, ch, cp, mask_bh, mask_bp, dout_ptr, s_do_t, s_do_b, out_ptr,
                          s_out_t, s_out_b, sv_ptr, s_sv_t, s_sv_b, dcs_ptr, s_dcs_t, s_dcs_b, zm_ptr, s_zm_t,
                          s_zm_b, H, S, HAS_C, STATE_SLOT, READ_H_NEW, READ_H_PREV, REVERSE, HAS_DCS, ZONEOUT)
    for k in range(0, T):
        s = T - 1 - k
        t, active = time_index(s, seq_len, REVERSE)
        keep = active[:, None]
        has_prev = _has_prev(t, active, seq_len, REVERSE)  # i.e. s > 0
        cur = nxt
        nxt = _bwd_step_loads(s - 1, seq_len, rows, ch, cp, mask_bh, mask_bp, dout_ptr, s_do_t, s_do_b, out_ptr,
                              s_out_t, s_out_b, sv_ptr, s_sv_t, s_sv_b, dcs_ptr, s_dcs_t, s_dcs_b, zm_ptr, s_zm_t,
                              s_zm_b, H, S, HAS_C, STATE_SLOT, READ_H_NEW, READ_H_PREV, REVERSE, HAS_DCS, ZONEOUT)
        d_out, saved, h_new, h_prev, c_prev, d_cs, zm_raw = cur
        dh = dh + d_out.to(ACC)
        if HAS_PROJ:
            tl.store(dhtot_ptr + t[:, None] * s_dht_t + rows[:, None] * s_dht_b + cp[None, :],
                     tl.where(keep, dh, 0.0).to(dhtot_ptr.dtype.element_ty), mask=mask_bp)
            dm = mm(dh, w_r, PRECISION, ACC, UPCAST_DOT)
        else:
            dm = dh
        saved_acc, h_new, h_prev, c_prev, dc = backward_step_inputs(
            saved, h_new, h_prev, c_prev, d_cs, dm, dc, has_prev, h_init, c_init, S, READ_H_NEW, READ_H_PREV, HAS_C,
            HAS_DCS, ACC)  # fmt: skip
        if EXT:
            if ZONEOUT == 1:
                zm = zm_raw.to(ACC)
            elif ZONEOUT == 2:
                zm = zkeep
            else:
                zm = 1.0
            d_px, d_ph, dh_direct, dc_prev, d_prm = CELL_BWD(dm, dc, saved_acc, h_new, h_prev, c_prev, prm, zm, cm,
                                                             H, ZONEOUT)  # fmt: skip
            dp_t = dprm_ptr + t[:, None] * s_dp_t + rows[:, None] * s_dp_b + ch[None, :]
            for k in tl.static_range(NPRM):
                tl.store(dp_t + k * H, tl.where(keep, d_prm[k], 0.0).to(dprm_ptr.dtype.element_ty), mask=mask_bh)
        else:
            d_px, d_ph, dh_direct, dc_prev = CELL_BWD(dm, dc, saved_acc, h_new, h_prev, c_prev)

        dg_t = dg_ptr + t[:, None] * s_dg_t + rows[:, None] * s_dg_b + ch[None, :]
        for g in tl.static_range(G):
            tl.store(dg_t + g * H, tl.where(keep, d_px[g], 0.0).to(dg_ptr.dtype.element_ty), mask=mask_bh)
            if EXT:  # every gate's raw recurrent product h W_hh^T has its own gradient (layer norm)
                tl.store(dgh_ptr + t[:, None] * s_dgh_t + rows[:, None] * s_dgh_b + g * H + ch[None, :],
                         tl.where(keep, d_ph[g], 0.0).to(dgh_ptr.dtype.element_ty), mask=mask_bh)
            elif INNER_SLOTS[g] >= 0:
                tl.store(dgh_ptr + t[:, None] * s_dgh_t + rows[:, None] * s_dgh_b + INNER_SLOTS[g] * H + ch[None, :],
                         tl.where(keep, d_ph[g], 0.0).to(dgh_ptr.dtype.element_ty), mask=mask_bh)
        # Rows of inactive sequences are discarded below: no need to zero them before the dots.
        dh_prev = mm_split(d_ph[0], w[0], SPLIT_K, PRECISION, ACC, UPCAST_DOT)
        for g in tl.static_range(1, G):
            dh_prev = dh_prev + mm_split(d_ph[g], w[g], SPLIT_K, PRECISION, ACC, UPCAST_DOT)
        if DIRECT_DH:
            dh_prev = dh_prev + dh_direct
        if HAS_C:
            dc = tl.where(keep, dc_prev, dc)
        dh = tl.where(keep, dh_prev, dh)

    tl.store(dh0_ptr + rows[:, None] * s_dh0_b + cp[None, :], dh.to(dh0_ptr.dtype.element_ty), mask=mask_bp)
    if HAS_C:
        tl.store(dc0_ptr + rows[:, None] * s_dc0_b + ch[None, :], dc.to(dc0_ptr.dtype.element_ty), mask=mask_bh)


# ---------------------------------------------------------------------------------------------
# What tier 1 runs, and how it is launched

#: The limits of the installed Triton release (``kernels/releases.json``, read by
#: :mod:`.releases`; the measurements behind them: kernels/NOTES.md "Tier 1", "Tiers 2 and 3",
#: "Layer-norm cells").  Largest on-chip weight footprint (:func:`weight_bytes`) a compiled tier-1
#: program holds, per storage dtype, when ``H`` (and ``proj_size``) are multiples of 16: the
#: largest that compiles for sm_90 and sm_80 without local memory in the time loop and within both
#: GPUs' shared memory.
TIER1_MAX_WEIGHT_BYTES: dict[torch.dtype, int] = releases.by_dtype(releases.limits("tier1_max_weight_bytes"))

#: The same for other sizes (strides that are not multiples of 16: no vector loads, more
#: registers) and for every projected LSTM (one more dot, its tiles in another layout).
TIER1_MAX_WEIGHT_BYTES_UNALIGNED: dict[torch.dtype, int] = releases.by_dtype(
    releases.limits("tier1_max_weight_bytes_unaligned")
)

@dataclass(frozen=True)
class Tier1Config:
    """Compile-time tile sizes of one tier-1 launch (never depends on T or B)."""

    block_b: int  # sequences per program
    block_h: int  # next power of two >= H (>= 16 for tl.dot)
    block_p: int  # next power of two >= P (>= 16; >= 32 for 16-bit projections from H = 32)
    num_warps: int
    split_k: int = 1  # the recurrent dots' K split into this many chunks across warps (common.mm_split)

    #: The kernels' constexprs of the batch tile, the unit tile and the reduction (K) tile.
    TILE_CONSTEXPRS = ("BLOCK_B", "BLOCK_H", "BLOCK_P")

    def tiles(self) -> dict[str, Any]:
        """The tiles as the kernel report's rows name them."""
        return dict(block_b=self.block_b, block_h=self.block_h, block_p=self.block_p)

    def k_trips(self, hidden_size: int) -> int:
        """Passes over ``W_hh`` per step (1: all of it on chip)."""
        return 1

    def on_chip_bytes(self, mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int:
        """Bytes of recurrent weights one program holds on chip: its tiles as launched (a tf32x3
        projection tile may be wider than :func:`weight_bytes` counts)."""
        n_tiles = cells.get(mode).G + (1 if proj_size else 0)
        return n_tiles * self.block_h * self.block_p * element_size(dtype)

    def override(self, hidden_size: int, dtype: torch.dtype, **changes: Any) -> Tier1Config:
        """This configuration with the kernel report's knobs (``num_warps``, ``block_b``, ``split_k``)."""
        unknown = set(changes) - {"num_warps", "block_b", "split_k"}
        if unknown:
            raise ValueError(f"tier 1 has no {', '.join(sorted(unknown))} to override")
        return dataclasses.replace(self, **changes)


def tiles(hidden_size: int, proj_size: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK_H, BLOCK_P)`` of tier 1.  A 16-wide 16-bit projection dot makes Triton put every
    warp on the same batch rows of all gates (it spilled at any warp count): 32, masked, does not."""
    block_h, block_p = pow2(hidden_size), pow2(proj_size or hidden_size)
    if proj_size and block_h >= 32 and dtype in (torch.float16, torch.bfloat16):
        block_p = max(block_p, 32)
    return block_h, block_p


def aligned(hidden_size: int, proj_size: int) -> bool:
    """Whether every stride the kernels get is a multiple of 16 (whatever T and B are)."""
    return hidden_size % 16 == 0 and (proj_size or hidden_size) % 16 == 0


def weight_bytes(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int:
    """On-chip bytes of the recurrent weight tiles one tier-1 program holds: ``G`` tiles of
    ``W_hh`` and, projected, one of ``W_hr``, each ``BLOCK_H x BLOCK_P`` as launched."""
    block_h, block_p = tiles(hidden_size, proj_size, dtype)
    n_tiles = cells.get(mode).G + (1 if proj_size else 0)
    return n_tiles * block_h * block_p * element_size(dtype)


def tier1_unsupported(
    mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, interpreted: bool = False,
    release: str | None = None,
) -> str | None:  # fmt: skip
    """Why tier 1 cannot run this layer (``None`` when it can); ``interpreted``: in Triton's
    interpreter (CPU tensors), where the register limit of a compiled kernel does not apply;
    ``release``: the Triton release whose limits apply (:mod:`.releases`; default: the installed).

    Example::

        tier1_unsupported("GRU", 64, 0, torch.bfloat16)  # None: 24 KiB of weights on chip
        tier1_unsupported("GRU", 256, 0, torch.bfloat16)  # '... needs 384 KiB ... at most 128 KiB'
    """
    aligned_limits = releases.by_dtype(releases.limits("tier1_max_weight_bytes", release))
    unaligned_limits = releases.by_dtype(releases.limits("tier1_max_weight_bytes_unaligned", release))
    if dtype not in aligned_limits:
        return f"dtype {dtype} is not supported (float16, bfloat16, float32, float64 are)"
    nbytes = weight_bytes(mode, hidden_size, proj_size, dtype)
    if interpreted:
        limit, where = INTERPRETER_MAX_WEIGHT_BYTES, " in the interpreter"
    elif proj_size:
        limit, where = unaligned_limits[dtype], " for a projected LSTM"
    elif aligned(hidden_size, proj_size):
        limit, where = aligned_limits[dtype], ""
    else:
        limit = unaligned_limits[dtype]
        where = f" when hidden_size is not a multiple of 16 ({aligned_limits[dtype] // 1024} KiB when it is)"
    # Lower limits of cells whose maths hold more per step than torch.nn's (the layer-norm cells save
    # 12 / 8 tensors per step and reduce rows twice / once): (H multiple of 16, other H) bytes,
    # heaviest variant with states, at tier1_config's warps; 0: no compiled tier 1
    cell_limits = releases.by_dtype(releases.limits("tier1_cell_limits", release).get(mode, {})).get(dtype)
    if cell_limits is not None and not interpreted:
        cell_limit = cell_limits[0 if aligned(hidden_size, proj_size) else 1]
        if cell_limit < limit:
            limit, where = cell_limit, f" for {mode} (more per-step state than torch.nn's cells)"
    if nbytes > limit:
        return (
            f"{mode} with hidden_size={hidden_size}"
            + (f", proj_size={proj_size}" if proj_size else "")
            + f" in {dtype} needs {nbytes // 1024} KiB of recurrent weights on chip; the tier-1 "
            f"kernel holds at most {limit // 1024} KiB{where}"
        )
    abort = None if interpreted else releases.compiler_abort(mode, dtype, 1, release)
    if abort is not None:
        fixed = f"fixed in {abort['fixed']}" if abort["fixed"] else "not fixed in a release known here"
        return (
            f"{mode} in {dtype} is not compiled with triton {release or releases.current()}: {abort['what']} "
            f"(from triton {abort['first']}, {fixed}; {', '.join(abort['upstream'])})"
        )
    return None


def tier1_config(
    mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, precision: str = "ieee"
) -> Tier1Config:
    """Tile sizes, warps and K split of tier 1 (kernels/NOTES.md, "Tier 1"): 16 sequences per
    program (the smallest dot tile: no spills up to the limit, and the most programs); warps by
    on-chip weight bytes -- aligned sizes 4 below 16 KiB, 8 up to 64 KiB, 16 above (half the
    dependent mma per warp per step: the step's serial chain); other sizes 8 from 8 KiB, fp32 16
    from 16 KiB.  Extended cells (layer norm) take at least 8 warps.

    fp32 by ``precision`` (the dots' ``input_precision``):

    * ``"ieee"`` (FMA dots): above 48 KiB, RNN (H = 128) 16 warps with K split in two (K-long
      rows per thread spill otherwise), LSTM (H = 64) 8 warps; LN_LSTM from 16 KiB 16 warps
      (triton 3.9's LLVM aborts building its backward at 8);
    * ``"tf32"`` (one tensor-core product): as IEEE, unsplit (split in two, triton 3.6 spills),
      but LN_LSTM from 16 KiB at 8 warps (its backward spills at 16);
    * ``"tf32x3"`` (three tensor-core products on split operands, about twice TF32's live operand
      registers): RNN H = 128 and every gated cell from 16 KiB at 8 warps, unsplit (16 warps cap
      a thread at 128 registers: the RNN spills there), LN_LSTM at 8 (clean, no abort); a
      projected LSTM from H = 32 pads its projection tile to 32 wide, as 16-bit ones do (16 wide,
      its backward spills at 4, 8 and 16 warps)."""
    block_h, block_p = tiles(hidden_size, proj_size, dtype)
    nbytes = weight_bytes(mode, hidden_size, proj_size, dtype)
    cell = cells.get(mode)
    x3 = dtype == torch.float32 and precision == "tf32x3"
    split_k = 1
    if aligned(hidden_size, proj_size):
        num_warps = 4 if nbytes < 16 * 1024 else 8 if nbytes <= 64 * 1024 else 16
        if dtype == torch.float32 and nbytes > 48 * 1024:
            # the warps and splits that compile without spills (kernels/NOTES.md, "Tier 1")
            num_warps, split_k = (16, 1 if precision != "ieee" else 2) if cell.G == 1 else (8, 1)
            if x3:
                num_warps, split_k = 8, 1
    elif dtype == torch.float32 and nbytes >= 16 * 1024:
        num_warps = 8 if x3 and cell.G > 1 else 16
    else:
        num_warps = 8 if nbytes >= 8 * 1024 else 4
    if cell.extended:  # more per-step state (layer-norm cells: 4 warps spill at H = 15)
        num_warps = max(num_warps, 8)
        if dtype == torch.float32 and cell.has_cell_state and nbytes >= 16 * 1024:
            # LN_LSTM: the IEEE backward at 8 warps aborts triton 3.9's LLVM; the tensor-core dots
            # (tf32, tf32x3) spill at 16 (kernels/NOTES.md, "Layer-norm cells")
            num_warps = 16 if precision == "ieee" else 8
    if x3 and proj_size and block_h >= 32:
        block_p = max(block_p, 32)
    return Tier1Config(16, block_h, block_p, num_warps, split_k)



def describe(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> str:
    """What :func:`~.tiers.choose_tier` says when it picks tier 1."""
    return "tier 1: all of W_hh fits one program"


# ---------------------------------------------------------------------------------------------
# launches


def _consts(cell: cells.Cell, dtype: torch.dtype, cfg: Tier1Config, fp32_precision: str) -> dict[str, Any]:
    return dict(
        **cell.constexprs(),
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_P=cfg.block_p, SPLIT_K=cfg.split_k,
        PRECISION=precision(dtype, fp32_precision), ACC=tl_acc(dtype), UPCAST_DOT=upcast_dot(dtype),
        num_warps=cfg.num_warps,
    )  # fmt: skip


def forward_launch(call: RecurrenceCall, gx: torch.Tensor, cfg: Tier1Config) -> tuple[Launch | None, ForwardResult]:
    """The launch of :func:`recurrent_fwd` and its (allocated, unwritten) outputs; no launch when
    there is nothing to compute (``T`` or ``B`` zero)."""
    cell, T, B, H, P, dtype = call.cell, call.T, call.B, call.H, call.P, call.dtype
    params = check_params(cell, call.params, H, dtype)
    zm, zkeep, zoneout_kind = zoneout_args(cell, call.zoneout)
    gx, h0, c0 = row_major(gx), row_major(call.h0), row_major(call.c0)
    res = ForwardResult(**allocate(forward_shapes(call), lambda shape, dt: _runtime.empty(shape, dt, gx.device)))
    if call.empty:
        return None, res
    bh = call.b_hh if cell.inner_bias else None
    out, h_n, c_n, cs, saved, m = res.out, res.h_n, res.c_n, res.cs, res.saved, res.m
    launch = Launch(
        _recurrent_fwd_kernel,
        (triton.cdiv(B, cfg.block_b),),
        (
            gx, *strides(gx),
            call.w_hh, *strides(call.w_hh),
            bh,
            call.w_hr, *strides(call.w_hr),
            h0, *strides(h0, 1),
            c0, *strides(c0, 1),
            call.lengths,
            out, *strides(out),
            h_n, *strides(h_n, 1),
            c_n, *strides(c_n, 1),
            cs, *strides(cs),
            saved, *strides(saved),
            m, *strides(m),
            params,
            zm, *strides(zm),
            zkeep,
            T, B, H, P,
        ),  # fmt: skip
        dict(
            **flags(bh=bh, h0=h0, c0=c0, proj=call.w_hr),
            IS_VARLEN=call.lengths is not None, REVERSE=call.reverse, SAVE=call.saving, SAVE_M=m is not None,
            STORE_C=cs is not None, ZONEOUT=zoneout_kind,
            **_consts(cell, dtype, cfg, call.precision),
        ),  # fmt: skip
        "recurrent_fwd",
    )
    return launch, res


def recurrent_fwd(call: RecurrenceCall, gx: torch.Tensor, cfg: Tier1Config) -> ForwardResult:
    """Run one layer/direction's recurrence over the whole sequence in one launch.

    Args:
        call: the layer, its initial state, lengths and options (:class:`~.call.RecurrenceCall`).
        gx: ``(T, B, G*H)`` input projection ``x W_ih^T + b_ih`` plus ``b_hh`` for every gate
            but the cell's inner-bias gates.
        cfg: the launch configuration (:func:`fastrnn.kernels.tiers.plan`).

    Returns the :class:`~.common.ForwardResult`: ``out`` (T, B, P), ``h_n`` (B, P), ``c_n`` (B, H),
    and what the call asked for (``saved``/``m`` for the backward, ``cs`` every step's ``c_t``).

    Example::

        gx = torch.randn(5, 3, 8); w = torch.randn(8, 8)
        call = RecurrenceCall("RNN_TANH", 5, 3, w)
        res = recurrent_fwd(call, gx, tier1_config("RNN_TANH", 8, 0, gx.dtype))
    """
    _runtime.check_device(gx.device)
    return run_forward(*forward_launch(call, gx, cfg), call)


def backward_launch(call: RecurrenceCall, grads: Gradients, cfg: Tier1Config) -> tuple[Launch | None, BackwardResult]:
    """The launch of :func:`recurrent_bwd` and its (allocated, unwritten) outputs."""
    cell, T, B, H, P, dtype = call.cell, call.T, call.B, call.H, call.P, call.dtype
    dev = grads.out.device
    params = check_params(cell, call.params, H, dtype)
    zm, zkeep, zoneout_kind = zoneout_args(cell, call.zoneout)
    d_out, d_hn, d_cn, h0, c0, d_cs = map(row_major, (grads.d_out, grads.d_hn, grads.d_cn, call.h0, call.c0, grads.d_cs))
    d_cs = d_cs if cell.has_cell_state else None
    res = BackwardResult(**allocate(backward_shapes(call), lambda shape, dt: _runtime.empty(shape, dt, dev)))
    if call.empty:
        return None, res
    launch = Launch(
        _recurrent_bwd_kernel,
        (triton.cdiv(B, cfg.block_b),),
        (
            d_out, *strides(d_out),
            d_hn, *strides(d_hn, 1),
            d_cn, *strides(d_cn, 1),
            d_cs, *strides(d_cs),
            grads.out, *strides(grads.out),
            h0, *strides(h0, 1),
            c0, *strides(c0, 1),
            grads.saved, *strides(grads.saved),
            call.w_hh, *strides(call.w_hh),
            call.w_hr, *strides(call.w_hr),
            call.lengths,
            params,
            zm, *strides(zm),
            zkeep,
            res.d_gx, *strides(res.d_gx),
            res.d_gh_inner, *strides(res.d_gh_inner),
            res.d_h, *strides(res.d_h),
            res.d_h0, *strides(res.d_h0, 1),
            res.d_c0, *strides(res.d_c0, 1),
            res.d_prm, *strides(res.d_prm),
            T, B, H, P,
        ),  # fmt: skip
        dict(
            **flags(h0=h0, c0=c0, proj=call.w_hr, dcs=d_cs),
            IS_VARLEN=call.lengths is not None, REVERSE=call.reverse, ZONEOUT=zoneout_kind,
            **_consts(cell, dtype, cfg, call.precision),
        ),  # fmt: skip
        "recurrent_bwd",
    )
    return launch, res


def recurrent_bwd(call: RecurrenceCall, grads: Gradients, cfg: Tier1Config) -> BackwardResult:
    """Reverse-time pass of :func:`recurrent_fwd`: per-step gate gradients and ``dL/dh0``.

    ``call`` is the forward's (``save`` was on), ``grads`` the incoming gradients and what the
    forward saved (:class:`~.call.Gradients`).  Extended cells also get ``res.d_prm``, each step's
    share of the parameters' gradient (the caller sums it).  Gradients are in fp32 (fp64 for
    fp64 inputs); weight gradients are left to the caller's GEMMs.
    """
    return run_backward(*backward_launch(call, grads, cfg), grads)


def _config(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, kernel: str, smem_bytes: int | None,
            precision: str) -> Tier1Config:  # fmt: skip
    return tier1_config(mode, hidden_size, proj_size, dtype, precision)


tiers.register(
    tiers.Tier(
        number=1,
        name="single program",
        rank=1,
        config_type=Tier1Config,
        unsupported=tier1_unsupported,
        config=_config,
        describe=describe,
        forward=recurrent_fwd,
        backward=recurrent_bwd,
        forward_launch=forward_launch,
        backward_launch=backward_launch,
        compiled=lambda launch: (launch.kernel, launch.args, dict(launch.kwargs)),
        device_sources=("cells.py", "common.py", "tier1.py"),
    )
)
