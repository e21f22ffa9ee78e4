"""Tiers 2 and 3: the hidden units of one layer/direction split across many programs.

Tier 1 (:mod:`.recurrent`) keeps all of ``W_hh`` in one program, which caps ``H``.  Here program
``(j, g)`` owns the slice of hidden units ``u in [j*HS, (j+1)*HS)`` (``HS = BLOCK_HS``) of every
gate and the batch tiles ``g, g + N_GROUPS, g + 2*N_GROUPS, ...``.  Per step it needs all of
``h_{t-1}`` but produces only its own columns of ``h_t``, so the programs of one batch group
exchange ``h`` through global memory (L2) and wait for each other between steps:

* **tier 2** (persistent): one launch runs the whole sequence; a grid barrier separates steps
  (a per-group arrival counter, ``atomic_add`` with release semantics, a bounded spin with
  acquire semantics, see :func:`_grid_barrier`).  The launch is cooperative
  (``launch_cooperative_grid``) and the grid is sized from the compiled kernel's registers and
  shared memory, so the programs of a group are co-resident; were they not, the bounded spin
  gives up and sets a flag, and every later output is NaN (the launcher raises
  :class:`BarrierTimeout` when it reads the flag) -- never a hang.  With ``RESIDENT`` the
  program's slice of ``W_hh`` is loaded once and stays on chip for the whole sequence; without
  it the slice is re-read from L2 every step in ``BLOCK_K``-wide chunks (any ``H``).
* **tier 3** (per step): the same kernel body launched once per step (the kernel boundary is the
  barrier), chunked over ``K``: always fits.  Triton's interpreter runs programs one after
  another, so a barrier cannot work there: in the interpreter tier 2 also runs as per-step
  launches (with its resident weights), which tests its maths and indexing on CPU; the barrier
  itself is tested on a GPU (``tests/test_tiers.py``).

State that crosses programs lives in fp32 (fp64) buffers, never in the storage dtype:
``hbuf`` (2, B, H) holds ``h`` after step ``s`` in slot ``s % 2`` (slot 1 starts as ``h0``;
ping-pong, so a step never overwrites what another program may still be reading), ``cbuf``
(B, H) the LSTM cell state (each program only touches its own columns).  Cross-program reads
use ``cache_modifier=".cg"`` (L2, not the non-coherent L1).

Backward: iteration ``j`` of the reverse loop (``s = T - 1 - j``) first finishes the previous
step -- ``dh_{s}`` of its own columns ``+= dG[s+1] W_hh[:, own]``, a dot over the gate gradients
of all programs, written at step ``s+1`` -- then computes its own columns' gate gradients of step
``s`` (into ``d_gx``, which is an output anyway) and arrives at the barrier.  Iteration ``T`` only
finishes step 0.  So there is one barrier per step, the reduction over programs happens inside
the dot (deterministic, no atomics), and ``dhbuf``/``dcbuf`` end as ``dL/dh0``/``dL/dc0``.

Not here: the projected LSTM (``proj_size``): ``h_t = m_t W_hr^T`` needs every program's ``m``
before any ``h`` column exists (a second exchange per step).  Such layers run in tier 1 or fall
back to ``torch``.

Dimension letters as in :mod:`.recurrent` (here ``P == H``); ``HS`` hidden units per program,
``NS = cdiv(H, HS)`` slices, ``NG`` batch groups.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import _runtime
from .cells import GRU, LSTM, MODES, RNN
from .recurrent import (
    INTERPRETER_MAX_WEIGHT_BYTES,
    BackwardResult,
    ForwardResult,
    _acc_dtype,
    _mm,
    _row_major,
    _save_for_backward,
    _sigmoid,
    _strides3,
    _tanh,
    _time_index,
    tier1_unsupported,
)

_RNN = tl.constexpr(RNN)
_LSTM = tl.constexpr(LSTM)
_GRU = tl.constexpr(GRU)

#: Runtime integers that change between launches without a recompile (never constexpr).
_RUNTIME_INTS = ["T", "B", "J_BEGIN", "J_END", "N_GROUPS", "MAX_SPIN"]


@triton.jit
def _grid_barrier(counter_ptr, flag_ptr, target, max_spin):
    """Arrive at this group's barrier and wait until ``target`` arrivals were counted.

    Every program adds 1 per step to its group's counter (release: its stores of this step are
    visible first), then spins (acquire) until the counter reaches ``target = NS * steps done``.
    The spin is bounded by ``max_spin`` polls, and skipped once the flag says another program
    already timed out; on timeout the flag is set and the function returns ``False``: the caller
    then stops waiting and writes NaN from then on, so a failed barrier is never a silent wrong
    answer (the launcher can also raise :class:`BarrierTimeout`).
    """
    tl.debug_barrier()  # every thread's stores of this step precede the release
    if tl.load(flag_ptr, volatile=True) != 0:
        max_spin = 0
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < target) & (spins < max_spin):
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    ok = seen >= target
    if not ok:
        tl.atomic_xchg(flag_ptr, 1, sem="relaxed", scope="gpu")
    tl.debug_barrier()  # no thread reads other programs' data before the acquire
    return ok


@triton.jit
def _dot_slice(a_ptr, s_a_b, rows, row_ok, w_ptr, s_w_k, s_w_u, units, unit_ok, w_res, K,
               RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
               PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``a[rows, :K] @ w[:K, units]`` as a (BLOCK_B, BLOCK_HS) ``ACC`` tile.

    ``a`` is another program's data (read through L2); ``w[k, u]`` is at
    ``w_ptr + k*s_w_k + u*s_w_u``.  ``RESIDENT``: ``w_res`` already holds ``w[:K, units]`` as a
    (BLOCK_K >= K, BLOCK_HS) tile; otherwise ``w`` is read in ``BLOCK_K`` chunks.
    """
    kk = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + rows[:, None] * s_a_b
    if RESIDENT:
        a = tl.load(a_rows + kk[None, :], mask=row_ok[:, None] & (kk < K)[None, :], other=0.0,
                    cache_modifier=".cg")
        acc = _mm(a, w_res, PRECISION, ACC, UPCAST_DOT)
    else:
        acc = tl.zeros((BLOCK_B, w_res.shape[1]), ACC)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + kk
            a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0.0,
                        cache_modifier=".cg")
            w = tl.load(w_ptr + k[:, None].to(tl.int64) * s_w_k + units[None, :].to(tl.int64) * s_w_u,
                        mask=(k < K)[:, None] & unit_ok[None, :], other=0.0)
            acc += _mm(a, w, PRECISION, ACC, UPCAST_DOT)
    return acc


@triton.jit
def _gate_dots(a_ptr, s_a_b, rows, row_ok, w_ptr, s_w_k, s_w_u, s_w_gate, units, unit_ok, w0, w1, w2, w3, K,
               N_GATES: tl.constexpr, RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
               PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``a[rows, :K] @ w_g[:K, units]`` for the ``N_GATES`` gates ``g`` (w_g at
    ``w_ptr + g*s_w_gate``), reading each chunk of ``a`` once for all gates; unused gates are
    zero.  ``a`` is other programs' data (read through L2).  ``RESIDENT``: ``w0..w3`` hold the
    (BLOCK_K >= K, BLOCK_HS) tiles; otherwise ``w`` is read in ``BLOCK_K`` chunks."""
    kk = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + rows[:, None] * s_a_b
    if RESIDENT:
        a = tl.load(a_rows + kk[None, :], mask=row_ok[:, None] & (kk < K)[None, :], other=0.0,
                    cache_modifier=".cg")
        p0 = _mm(a, w0, PRECISION, ACC, UPCAST_DOT)
        p1 = p0
        p2 = p0
        p3 = p0
        if N_GATES > 1:
            p1 = _mm(a, w1, PRECISION, ACC, UPCAST_DOT)
            p2 = _mm(a, w2, PRECISION, ACC, UPCAST_DOT)
        if N_GATES > 3:
            p3 = _mm(a, w3, PRECISION, ACC, UPCAST_DOT)
    else:
        p0 = tl.zeros((BLOCK_B, w0.shape[1]), ACC)
        p1 = p0
        p2 = p0
        p3 = p0
        w_u = w_ptr + units[None, :].to(tl.int64) * s_w_u
        for k0 in range(0, K, BLOCK_K):
            k = k0 + kk
            a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0.0,
                        cache_modifier=".cg")
            w_k = w_u + k[:, None].to(tl.int64) * s_w_k
            w_mask = (k < K)[:, None] & unit_ok[None, :]
            p0 += _mm(a, tl.load(w_k, mask=w_mask, other=0.0), PRECISION, ACC, UPCAST_DOT)
            if N_GATES > 1:  # gate blocks by repeated pointer steps: no g * stride product to overflow
                w_k += s_w_gate
                p1 += _mm(a, tl.load(w_k, mask=w_mask, other=0.0), PRECISION, ACC, UPCAST_DOT)
                w_k += s_w_gate
                p2 += _mm(a, tl.load(w_k, mask=w_mask, other=0.0), PRECISION, ACC, UPCAST_DOT)
            if N_GATES > 3:
                w_k += s_w_gate
                p3 += _mm(a, tl.load(w_k, mask=w_mask, other=0.0), PRECISION, ACC, UPCAST_DOT)
    return p0, p1, p2, p3


@triton.jit
def _load_w_slice(w_ptr, s_w_k, s_w_u, units, unit_ok, K, RESIDENT: tl.constexpr, BLOCK_K: tl.constexpr):
    """The resident (BLOCK_K, BLOCK_HS) tile ``w[:K, units]`` (an unused (1, BLOCK_HS) zero tile
    when not resident)."""
    if RESIDENT:
        kk = tl.arange(0, BLOCK_K)
        return tl.load(w_ptr + kk[:, None].to(tl.int64) * s_w_k + units[None, :].to(tl.int64) * s_w_u,
                       mask=(kk < K)[:, None] & unit_ok[None, :], other=0.0)
    else:
        return tl.zeros((1, units.shape[0]), w_ptr.dtype.element_ty)


@triton.jit
def _load_w_slices(w_ptr, s_gate, s_w_k, s_w_u, units, unit_ok, K, N_GATES: tl.constexpr, RESIDENT: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """:func:`_load_w_slice` of each of the ``N_GATES`` gate blocks (gate ``g`` at
    ``w_ptr + g*s_gate``, reached by repeated pointer steps: no ``g * stride`` product to overflow
    int32); gates the cell does not have repeat gate 0 and are never used."""
    w0 = _load_w_slice(w_ptr, s_w_k, s_w_u, units, unit_ok, K, RESIDENT, BLOCK_K)
    w1 = w0
    w2 = w0
    w3 = w0
    if N_GATES > 1:
        w1 = _load_w_slice(w_ptr + s_gate, s_w_k, s_w_u, units, unit_ok, K, RESIDENT, BLOCK_K)
        w2 = _load_w_slice(w_ptr + s_gate + s_gate, s_w_k, s_w_u, units, unit_ok, K, RESIDENT, BLOCK_K)
    if N_GATES > 3:
        w3 = _load_w_slice(w_ptr + s_gate + s_gate + s_gate, s_w_k, s_w_u, units, unit_ok, K, RESIDENT, BLOCK_K)
    return w0, w1, w2, w3


# ---------------------------------------------------------------------------------------------
# forward


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _multi_fwd_kernel(
    gx_ptr, s_gx_t, s_gx_b,  # gx: (T, B, G*H) = x W_ih^T + biases, last dim contiguous
    w_hh_ptr, s_whh_r, s_whh_g,  # W_hh: (G*H, H), row-major, gate blocks in torch order; s_whh_g = H * s_whh_r
    b_hn_ptr,  # b_hn: (H,) GRU's recurrent n-gate bias (HAS_BHN)
    len_ptr,  # lengths: (B,) int64 (IS_VARLEN)
    hbuf_ptr, s_hb_k, s_hb_b,  # hbuf: (2, B, H) ACC, slot s % 2 = h after step s; slot 1 = h0
    cbuf_ptr, s_cb_b,  # cbuf: (B, H) ACC, LSTM cell state (c0 on entry, c_n on exit)
    out_ptr, s_out_t, s_out_b,  # out: (T, B, H) h_t, 0 at padding
    gates_ptr, s_gt_t, s_gt_b,  # gates: (T, B, G*H) gate activations (SAVE, LSTM/GRU)
    aux_ptr, s_aux_t, s_aux_b,  # aux: (T, B, H) c_t (LSTM) or W_hn h_{t-1} + b_hn (GRU) (SAVE)
    sync_ptr,  # sync: ((NG + 1) * 32,) int32: group g's barrier counter at 32 g, the timeout flag at 32 NG
    J_BEGIN, J_END, T, B, H, N_GROUPS, MAX_SPIN,
    CELL: tl.constexpr, N_GATES: tl.constexpr, RELU: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr,
    HAS_BHN: tl.constexpr, SAVE: tl.constexpr,
    RESIDENT: tl.constexpr, USE_BARRIER: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_HS: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_g = tl.program_id(1)
    n_slices = tl.num_programs(0)
    units = pid_h * BLOCK_HS + tl.arange(0, BLOCK_HS)
    unit_ok = units < H
    # W_hh^T restricted to this program's units of each gate: w_g[k, u] = W_hh[g*H + u, k],
    # i.e. base w_hh + g*H*s_whh_r, stride 1 along k and s_whh_r along u; resident or streamed.
    w0, w1, w2, w3 = _load_w_slices(w_hh_ptr, s_whh_g, 1, s_whh_r, units, unit_ok, H, N_GATES, RESIDENT, BLOCK_K)
    if HAS_BHN:
        b_hn = tl.load(b_hn_ptr + units, mask=unit_ok, other=0.0).to(ACC)[None, :]
    n_tiles = tl.cdiv(B, BLOCK_B)
    spin_budget = MAX_SPIN

    for s in range(J_BEGIN, J_END):
        h_prev_ptr = hbuf_ptr + ((s + 1) % 2) * s_hb_k
        h_cur_ptr = hbuf_ptr + (s % 2) * s_hb_k
        for tile in range(pid_g, n_tiles, N_GROUPS):
            rows = tile * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
            row_ok = rows < B
            mask = row_ok[:, None] & unit_ok[None, :]
            if IS_VARLEN:
                seq_len = tl.load(len_ptr + rows, mask=row_ok, other=0)
            else:
                seq_len = tl.zeros((BLOCK_B,), tl.int64) + T
            t, active = _time_index(s, seq_len, REVERSE)
            keep = active[:, None]
            act = mask & keep
            gx_t = gx_ptr + t[:, None] * s_gx_t + rows[:, None] * s_gx_b + units[None, :]
            h_own = tl.load(h_prev_ptr + rows[:, None] * s_hb_b + units[None, :], mask=mask, other=0.0,
                            cache_modifier=".cg")
            # dots with h_{s-1}: all H columns, from every program of the group
            p0, p1, p2, p3 = _gate_dots(h_prev_ptr, s_hb_b, rows, row_ok, w_hh_ptr, 1, s_whh_r, s_whh_g, units,
                                        unit_ok, w0, w1, w2, w3, H, N_GATES, RESIDENT, BLOCK_B, BLOCK_K, PRECISION,
                                        ACC, UPCAST_DOT)
            if CELL == _RNN:
                pre = tl.load(gx_t, mask=act, other=0.0).to(ACC) + p0
                if RELU:
                    h_new = tl.maximum(pre, 0.0)
                else:
                    h_new = _tanh(pre)
            else:
                if CELL == _LSTM:
                    i = _sigmoid(tl.load(gx_t, mask=act, other=0.0).to(ACC) + p0)
                    f = _sigmoid(tl.load(gx_t + H, mask=act, other=0.0).to(ACC) + p1)
                    g = _tanh(tl.load(gx_t + 2 * H, mask=act, other=0.0).to(ACC) + p2)
                    o = _sigmoid(tl.load(gx_t + 3 * H, mask=act, other=0.0).to(ACC) + p3)
                    c_ptrs = cbuf_ptr + rows[:, None] * s_cb_b + units[None, :]
                    c = tl.load(c_ptrs, mask=mask, other=0.0)
                    c_new = f * c + i * g
                    h_new = o * _tanh(c_new)
                    tl.store(c_ptrs, tl.where(keep, c_new, c), mask=mask)
                else:  # GRU
                    hn = p2
                    if HAS_BHN:
                        hn = hn + b_hn
                    r = _sigmoid(tl.load(gx_t, mask=act, other=0.0).to(ACC) + p0)
                    z = _sigmoid(tl.load(gx_t + H, mask=act, other=0.0).to(ACC) + p1)
                    n = _tanh(tl.load(gx_t + 2 * H, mask=act, other=0.0).to(ACC) + r * hn)
                    h_new = (1.0 - z) * n + z * h_own
            h_new = tl.where(spin_budget < 0, float("nan"), h_new)  # after a failed barrier: loud, not wrong
            tl.store(h_cur_ptr + rows[:, None] * s_hb_b + units[None, :], tl.where(keep, h_new, h_own), mask=mask)
            out_t = out_ptr + t[:, None] * s_out_t + rows[:, None] * s_out_b + units[None, :]
            tl.store(out_t, tl.where(keep, h_new, 0.0).to(out_ptr.dtype.element_ty), mask=mask)
            if SAVE:
                gt_t = gates_ptr + t[:, None] * s_gt_t + rows[:, None] * s_gt_b + units[None, :]
                aux_t = aux_ptr + t[:, None] * s_aux_t + rows[:, None] * s_aux_b + units[None, :]
                if CELL == _LSTM:
                    _save_for_backward(gt_t, aux_t, H, keep, mask, i, f, g, o, c_new, CELL)
                if CELL == _GRU:
                    _save_for_backward(gt_t, aux_t, H, keep, mask, r, z, n, n, hn, CELL)
        if USE_BARRIER:
            if s + 1 < J_END:
                ok = _grid_barrier(sync_ptr + 32 * pid_g, sync_ptr + 32 * N_GROUPS, n_slices * (s - J_BEGIN + 1),
                                   spin_budget)
                spin_budget = tl.where(ok, spin_budget, -1)


# ---------------------------------------------------------------------------------------------
# backward


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _multi_bwd_kernel(
    dout_ptr, s_do_t, s_do_b,  # dL/d out: (T, B, H), last dim contiguous
    out_ptr, s_out_t, s_out_b,  # out of the forward: (T, B, H)
    gates_ptr, s_gt_t, s_gt_b,  # gates: (T, B, G*H) saved activations (LSTM/GRU)
    aux_ptr, s_aux_t, s_aux_b,  # aux: (T, B, H) c_t (LSTM) or W_hn h_{t-1} + b_hn (GRU)
    h0_ptr, s_h0_b,  # h0: (B, H) (GRU, HAS_H0)
    c0_ptr, s_c0_b,  # c0: (B, H) (LSTM, HAS_C0)
    w_hh_ptr, s_whh_r, s_whh_g,  # W_hh: (G*H, H), row-major; s_whh_g = H * s_whh_r
    len_ptr,  # lengths: (B,) int64 (IS_VARLEN)
    dhbuf_ptr, s_dhb_b,  # dhbuf: (B, H) ACC, dL/dh carried backwards: d h_n on entry, d h0 on exit
    dcbuf_ptr, s_dcb_b,  # dcbuf: (B, H) ACC, LSTM dL/dc: d c_n on entry, d c0 on exit
    dg_ptr, s_dg_t, s_dg_b,  # out, dL/d gx: (T, B, G*H), 0 at padding
    dhng_ptr, s_dhng_t, s_dhng_b,  # out, GRU: dL/d(W_hn h_{t-1} + b_hn): (T, B, H), 0 at padding
    sync_ptr,  # sync: ((NG + 1) * 32,) int32, as in the forward
    J_BEGIN, J_END, T, B, H, N_GROUPS, MAX_SPIN,
    CELL: tl.constexpr, N_GATES: tl.constexpr, RELU: tl.constexpr, HAS_H0: tl.constexpr, HAS_C0: tl.constexpr,
    IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr,
    RESIDENT: tl.constexpr, USE_BARRIER: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_HS: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_g = tl.program_id(1)
    n_slices = tl.num_programs(0)
    units = pid_h * BLOCK_HS + tl.arange(0, BLOCK_HS)
    unit_ok = units < H
    # W_hh restricted to this program's columns, per gate: w_g[k, u] = W_hh[g*H + k, u],
    # i.e. base w_hh + g*H*s_whh_r, stride s_whh_r along k and 1 along u.
    w0, w1, w2, w3 = _load_w_slices(w_hh_ptr, s_whh_g, s_whh_r, 1, units, unit_ok, H, N_GATES, RESIDENT, BLOCK_K)
    w_c1 = w_hh_ptr + s_whh_g  # gate blocks for the streamed dots, by pointer steps as above
    w_c2 = w_c1 + s_whh_g
    w_c3 = w_c2 + s_whh_g
    n_tiles = tl.cdiv(B, BLOCK_B)
    spin_budget = MAX_SPIN
    ddt = dg_ptr.dtype.element_ty

    for j in range(J_BEGIN, J_END):
        s = T - 1 - j
        for tile in range(pid_g, n_tiles, N_GROUPS):
            rows = tile * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
            row_ok = rows < B
            mask = row_ok[:, None] & unit_ok[None, :]
            if IS_VARLEN:
                seq_len = tl.load(len_ptr + rows, mask=row_ok, other=0)
            else:
                seq_len = tl.zeros((BLOCK_B,), tl.int64) + T
            dh_ptrs = dhbuf_ptr + rows[:, None] * s_dhb_b + units[None, :]

            # 1. finish step s+1: dh_s[own] += dG[s+1] @ W_hh[:, own] (dG is 0 for inactive rows)
            if s + 1 < T:
                t1, _ = _time_index(s + 1, seq_len, REVERSE)
                dg1 = dg_ptr + t1[:, None] * s_dg_t
                d_rec = _dot_slice(dg1, s_dg_b, rows, row_ok, w_hh_ptr, s_whh_r, 1, units, unit_ok, w0, H,
                                   RESIDENT, BLOCK_B, BLOCK_K, PRECISION, ACC, UPCAST_DOT)
                if CELL != _RNN:
                    d_rec += _dot_slice(dg1 + H, s_dg_b, rows, row_ok, w_c1, s_whh_r, 1, units,
                                        unit_ok, w1, H, RESIDENT, BLOCK_B, BLOCK_K, PRECISION, ACC, UPCAST_DOT)
                if CELL == _LSTM:
                    d_rec += _dot_slice(dg1 + 2 * H, s_dg_b, rows, row_ok, w_c2, s_whh_r, 1,
                                        units, unit_ok, w2, H, RESIDENT, BLOCK_B, BLOCK_K, PRECISION, ACC,
                                        UPCAST_DOT)
                    d_rec += _dot_slice(dg1 + 3 * H, s_dg_b, rows, row_ok, w_c3, s_whh_r, 1,
                                        units, unit_ok, w3, H, RESIDENT, BLOCK_B, BLOCK_K, PRECISION, ACC,
                                        UPCAST_DOT)
                if CELL == _GRU:  # the n gate's recurrent part is d(W_hn h + b_hn) = d_npre * r
                    dhng1 = dhng_ptr + t1[:, None] * s_dhng_t
                    d_rec += _dot_slice(dhng1, s_dhng_b, rows, row_ok, w_c2, s_whh_r, 1,
                                        units, unit_ok, w2, H, RESIDENT, BLOCK_B, BLOCK_K, PRECISION, ACC,
                                        UPCAST_DOT)
                tl.store(dh_ptrs, tl.load(dh_ptrs, mask=mask, other=0.0) + d_rec, mask=mask)
                tl.debug_barrier()  # the same program re-reads dhbuf in another layout below

            # 2. step s: this program's columns of every gate gradient
            if s >= 0:
                t, active = _time_index(s, seq_len, REVERSE)
                keep = active[:, None]
                act = mask & keep
                if REVERSE:
                    t_prev = t + 1
                else:
                    t_prev = t - 1
                has_prev = (active & (t_prev >= 0) & (t_prev < seq_len))[:, None]
                prev = act & has_prev
                dh = tl.load(dh_ptrs, mask=mask, other=0.0)
                dh = tl.where(spin_budget < 0, float("nan"), dh)  # after a failed barrier: loud, not wrong
                dh += tl.load(dout_ptr + t[:, None] * s_do_t + rows[:, None] * s_do_b + units[None, :],
                              mask=act, other=0.0).to(ACC)
                dg_t = dg_ptr + t[:, None] * s_dg_t + rows[:, None] * s_dg_b + units[None, :]
                if CELL == _RNN:
                    h_t = tl.load(out_ptr + t[:, None] * s_out_t + rows[:, None] * s_out_b + units[None, :],
                                  mask=act, other=0.0).to(ACC)
                    if RELU:
                        d_pre = tl.where(h_t > 0, dh, 0.0)
                    else:
                        d_pre = dh * (1.0 - h_t * h_t)
                    tl.store(dg_t, tl.where(keep, d_pre, 0.0).to(ddt), mask=mask)
                    dh_carry = tl.where(keep, 0.0, dh)
                elif CELL == _LSTM:
                    gt_t = gates_ptr + t[:, None] * s_gt_t + rows[:, None] * s_gt_b + units[None, :]
                    i = tl.load(gt_t, mask=act, other=0.0).to(ACC)
                    f = tl.load(gt_t + H, mask=act, other=0.0).to(ACC)
                    g = tl.load(gt_t + 2 * H, mask=act, other=0.0).to(ACC)
                    o = tl.load(gt_t + 3 * H, mask=act, other=0.0).to(ACC)
                    aux_c = aux_ptr + rows[:, None] * s_aux_b + units[None, :]
                    c_t = tl.load(aux_c + t[:, None] * s_aux_t, mask=act, other=0.0).to(ACC)
                    c_prev = tl.load(aux_c + t_prev[:, None] * s_aux_t, mask=prev, other=0.0).to(ACC)
                    if HAS_C0:
                        c_init = tl.load(c0_ptr + rows[:, None] * s_c0_b + units[None, :], mask=mask,
                                         other=0.0).to(ACC)
                        c_prev = tl.where(has_prev, c_prev, c_init)
                    dc_ptrs = dcbuf_ptr + rows[:, None] * s_dcb_b + units[None, :]
                    dc = tl.load(dc_ptrs, mask=mask, other=0.0)
                    tc = _tanh(c_t)
                    dc_t = dc + dh * o * (1.0 - tc * tc)
                    tl.store(dg_t, tl.where(keep, dc_t * g * i * (1.0 - i), 0.0).to(ddt), mask=mask)
                    tl.store(dg_t + H, tl.where(keep, dc_t * c_prev * f * (1.0 - f), 0.0).to(ddt), mask=mask)
                    tl.store(dg_t + 2 * H, tl.where(keep, dc_t * i * (1.0 - g * g), 0.0).to(ddt), mask=mask)
                    tl.store(dg_t + 3 * H, tl.where(keep, dh * tc * o * (1.0 - o), 0.0).to(ddt), mask=mask)
                    tl.store(dc_ptrs, tl.where(keep, dc_t * f, dc), mask=mask)
                    dh_carry = tl.where(keep, 0.0, dh)
                else:  # GRU
                    gt_t = gates_ptr + t[:, None] * s_gt_t + rows[:, None] * s_gt_b + units[None, :]
                    r = tl.load(gt_t, mask=act, other=0.0).to(ACC)
                    z = tl.load(gt_t + H, mask=act, other=0.0).to(ACC)
                    n = tl.load(gt_t + 2 * H, mask=act, other=0.0).to(ACC)
                    hn = tl.load(aux_ptr + t[:, None] * s_aux_t + rows[:, None] * s_aux_b + units[None, :],
                                 mask=act, other=0.0).to(ACC)
                    h_prev = tl.load(out_ptr + t_prev[:, None] * s_out_t + rows[:, None] * s_out_b + units[None, :],
                                     mask=prev, other=0.0).to(ACC)
                    if HAS_H0:
                        h_init = tl.load(h0_ptr + rows[:, None] * s_h0_b + units[None, :], mask=mask,
                                         other=0.0).to(ACC)
                        h_prev = tl.where(has_prev, h_prev, h_init)
                    d_npre = tl.where(keep, dh * (1.0 - z) * (1.0 - n * n), 0.0)
                    tl.store(dg_t, tl.where(keep, d_npre * hn * r * (1.0 - r), 0.0).to(ddt), mask=mask)
                    tl.store(dg_t + H, tl.where(keep, dh * (h_prev - n) * z * (1.0 - z), 0.0).to(ddt), mask=mask)
                    tl.store(dg_t + 2 * H, d_npre.to(ddt), mask=mask)
                    tl.store(dhng_ptr + t[:, None] * s_dhng_t + rows[:, None] * s_dhng_b + units[None, :],
                             (d_npre * r).to(dhng_ptr.dtype.element_ty), mask=mask)
                    dh_carry = tl.where(keep, dh * z, dh)
                # what step s-1 inherits before the dot of part 1 adds the gates' share
                tl.store(dh_ptrs, dh_carry, mask=mask)
        if USE_BARRIER:
            if s >= 0:
                ok = _grid_barrier(sync_ptr + 32 * pid_g, sync_ptr + 32 * N_GROUPS, n_slices * (j - J_BEGIN + 1),
                                   spin_budget)
                spin_budget = tl.where(ok, spin_budget, -1)


# ---------------------------------------------------------------------------------------------
# launchers

#: Hidden units per program.  16 is the smallest ``tl.dot`` tile, so the most programs share a
#: layer: H = 512 -> 32 programs per batch group, H = 2048 -> 128.
BLOCK_HS = 16
#: Sequences per batch tile (one ``tl.dot`` M dimension).
BLOCK_B = 16
#: Largest resident weight slice (bytes of the padded ``G`` tiles of ``(BLOCK_K, BLOCK_HS)``) a
#: tier-2 program keeps on chip, and the widest resident ``K`` (the ``(BLOCK_B, K)`` tile of
#: ``h_{t-1}`` is a ``tl.dot`` operand in registers too); larger slices are streamed from L2
#: every step.  Measured with the kernel report on sm_90 (kernels/NOTES.md, "Tiers 2 and 3"):
#: RNN bf16 H=512 (16 KiB, K=512) spills, LSTM bf16 H=256 (32 KiB) spills, LSTM/GRU bf16
#: H=128 and RNN fp32 H=256 do not.
RESIDENT_MAX_WEIGHT_BYTES = 16 * 1024
RESIDENT_MAX_K = 256
#: Chunk of the reduction dimension when the weights are streamed, by element size: fp32's
#: ``"ieee"`` dot runs on FMA units (fp64: DMMA) with whole K-rows per thread, so they get the
#: narrower chunk (GRU fp32 spills at 64; GRU/LSTM fp32/fp64 forwards at 32 on triton 3.6).
BLOCK_K_STREAMED = {2: 64, 4: 16, 8: 16}
#: Polls of a barrier counter before a program gives up (about a second on an H100).
MAX_SPIN = 1 << 21


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def slice_weight_bytes(mode: str, hidden_size: int, dtype: torch.dtype) -> int:
    """On-chip bytes of one program's resident ``W_hh`` slice (padded tiles)."""
    return MODES[mode][2] * _pow2(hidden_size) * BLOCK_HS * torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class MultiConfig:
    """Compile-time choices of a tier-2/3 launch (never depends on T or B)."""

    resident: bool
    block_k: int
    num_warps: int
    num_stages: int
    maxnreg: int


def multi_config(mode: str, hidden_size: int, dtype: torch.dtype, tier: int) -> MultiConfig:
    """Tile choices of a tier-2/3 launch: resident weights where the slice fits (tier 2 only;
    never for fp32 LSTM, whose resident build crashes triton 3.9's LLVM for sm_90, see
    kernels/NOTES.md), else ``BLOCK_K``-wide chunks streamed from L2.  Warps: 8 with resident
    weights (GRU bf16 H=256 spills at 4), 4 when streamed (RNN fp16 H=2048 forward and LSTM fp64
    backward park 8-24 B in local memory inside the loop at 8).  ``maxnreg = 255``: left to
    itself ptxas stops at an occupancy-friendly 72/96/128 registers and parks 8-16 B in local
    memory inside the time loop in about one config in ten (which ones depends on the triton
    version and the pipeline depth); with the whole register file allowed none does.  Pipeline
    stages: 2, except 3 for fp32/fp64 streamed builds (their FMA/DMMA dots hold K-long rows per
    thread, hence also the narrower ``BLOCK_K``).  Measured with ``python -m
    fastrnn.kernels.report --tiers 2 3`` (sm_90 and sm_80, triton 3.9 and 3.6, kernels/NOTES.md);
    the grid sizing reads the resulting occupancy from the compiled kernel."""
    size = torch.empty((), dtype=dtype).element_size()
    resident = (
        tier == 2
        and slice_weight_bytes(mode, hidden_size, dtype) <= RESIDENT_MAX_WEIGHT_BYTES
        and _pow2(hidden_size) <= RESIDENT_MAX_K
        and not (mode == "LSTM" and dtype == torch.float32)
    )
    block_k = _pow2(hidden_size) if resident else min(BLOCK_K_STREAMED[size], _pow2(hidden_size))
    return MultiConfig(resident, block_k, 8 if resident else 4, 2 if (resident or size == 2) else 3, 255)


def forced_tier() -> int | None:
    """``FASTRNN_TIER`` (1, 2 or 3) forces a tier for tests and benchmarks; unset: automatic."""
    env = os.environ.get("FASTRNN_TIER", "")
    if env in ("", "0", "auto"):
        return None
    if env not in ("1", "2", "3"):
        raise ValueError(f"FASTRNN_TIER must be 1, 2, 3 or auto, got {env!r}")
    return int(env)


def tier_unsupported(tier: int, mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype,
                     interpreted: bool = False) -> str | None:  # fmt: skip
    """Why ``tier`` cannot run this layer (``None`` when it can).  Tier 2's co-residency is
    checked at launch (it needs the compiled kernel); a tier-2 launch that does not fit runs as
    tier 3."""
    if tier == 1:
        return tier1_unsupported(mode, hidden_size, proj_size, dtype, interpreted)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"dtype {dtype} is not supported (float16, bfloat16, float32, float64 are)"
    if proj_size:
        return f"tier {tier} does not run a projected LSTM (proj_size={proj_size}): only tier 1 does"
    nbytes = MODES[mode][2] * hidden_size * hidden_size * torch.empty((), dtype=dtype).element_size()
    if interpreted and nbytes > INTERPRETER_MAX_WEIGHT_BYTES:
        return (
            f"tier {tier} in the interpreter runs at most {INTERPRETER_MAX_WEIGHT_BYTES // 2**20} MiB of recurrent "
            f"weights (CPU runs stay tractable); {mode} with hidden_size={hidden_size} in {dtype} has {nbytes // 1024} KiB"
        )
    return None


def choose_tier(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype,
                interpreted: bool = False) -> tuple[int | None, str]:  # fmt: skip
    """``(tier, why)``: the tier that runs this layer, or ``(None, reasons)`` when none can.

    Rule: tier 1 whenever all of ``W_hh`` fits one program (no barrier, fastest per step), else
    tier 2 (multi-program persistent; resident weights when the slice fits), else tier 3.
    ``FASTRNN_TIER`` forces one.
    """
    forced = forced_tier()
    if forced is not None:
        why = tier_unsupported(forced, mode, hidden_size, proj_size, dtype, interpreted)
        return (None, why) if why else (forced, f"tier {forced} forced by FASTRNN_TIER")
    why1 = tier1_unsupported(mode, hidden_size, proj_size, dtype, interpreted)
    if why1 is None:
        return 1, "tier 1: all of W_hh fits one program"
    why2 = tier_unsupported(2, mode, hidden_size, proj_size, dtype, interpreted)
    if why2 is None:
        how = "resident" if multi_config(mode, hidden_size, dtype, 2).resident else "streamed from L2"
        return 2, f"tier 2 ({how} W_hh slices of {BLOCK_HS} units): {why1}"
    return None, f"{why1}; {why2}"


@functools.cache
def programs_per_sm(
    n_regs: int,
    shared: int,
    num_warps: int,
    regs_per_sm: int = 65536,
    smem_per_sm: int = 228 * 1024,
    max_threads: int = 2048,
    max_blocks: int = 32,
) -> int:
    """How many programs of a compiled kernel one SM holds at once (defaults: H100/A100 limits):
    registers are allocated per warp in units of 256, each block's shared memory gets 1 KiB more
    (reserved by the driver), threads and resident blocks are capped."""
    regs_per_warp = -(-max(1, n_regs) * 32 // 256) * 256
    by_regs = regs_per_sm // (regs_per_warp * num_warps)
    by_smem = smem_per_sm // (shared + 1024)
    return max(0, min(by_regs, by_smem, max_threads // (32 * num_warps), max_blocks))


@functools.cache
def _sm_limits(device_index: int | None) -> tuple[int, dict]:
    props = torch.cuda.get_device_properties(device_index if device_index is not None else torch.cuda.current_device())
    limits = {
        key: getattr(props, attr)
        for key, attr in (
            ("regs_per_sm", "regs_per_multiprocessor"),
            ("smem_per_sm", "shared_memory_per_multiprocessor"),
            ("max_threads", "max_threads_per_multi_processor"),
        )
        if getattr(props, attr, None)
    }
    return props.multi_processor_count, limits


_CAPACITY: dict[tuple, int] = {}

#: Value the barrier counters start from.  Tests set it very negative so that no barrier can
#: complete (the bounded spin, the NaN poisoning and :class:`BarrierTimeout` are then certain).
_BARRIER_START = 0


def _co_resident_programs(kernel, args, consts, device: torch.device) -> int:
    """Programs of this kernel that fit the GPU at once, from the compiled kernel's registers and
    shared memory.  ``warmup`` returns the binary the launch will use (same arguments, so the same
    dtypes and divisibility specialisation); the capacity is cached per binary and device."""
    compiled = kernel.warmup(*args, grid=(1,), **consts)
    key = (compiled.hash, device.index)
    if key not in _CAPACITY:
        compiled._init_handles()
        n_sm, limits = _sm_limits(device.index)
        per_sm = programs_per_sm(compiled.n_regs, compiled.metadata.shared, compiled.metadata.num_warps, **limits)
        _CAPACITY[key] = per_sm * n_sm
    return _CAPACITY[key]


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class BarrierTimeout(RuntimeError):
    """The programs of a tier-2 launch were not all resident at once (a grid barrier timed out)."""


def _check_barriers(cooperative: bool) -> bool:
    """Whether to read the timeout flag after a tier-2 launch (one host sync).  A cooperative
    launch guarantees co-residency, so there the flag is only read when ``FASTRNN_BARRIER_CHECK=1``;
    a timeout would still show, as NaN in every output computed after it."""
    return not cooperative or os.environ.get("FASTRNN_BARRIER_CHECK", "0") not in ("", "0")


_SYNC_BUFFERS: dict[tuple, torch.Tensor] = {}


def _sync_buffer(n_ints: int, device: torch.device) -> torch.Tensor:
    """A reused int32 buffer of ``n_ints`` for the barrier counters and the timeout flag, one per
    size, device and CUDA stream (launches on one stream run in order, so reuse is safe; a launch
    on another stream gets its own).  Reuse keeps the launch path free of allocation; buffers are
    never freed, because a captured CUDA graph keeps their addresses.  The caller refills the
    buffer on the device each call (that fill is part of a captured graph too)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (n_ints, device, stream)
    if key not in _SYNC_BUFFERS:
        _SYNC_BUFFERS[key] = torch.empty(n_ints, dtype=torch.int32, device=device)
    return _SYNC_BUFFERS[key]


def _launch(kernel, kind: str, tier: int, T: int, B: int, H: int, n_iters: int, args: list, consts: dict,
            device: torch.device, cooperative: bool | None, max_spin: int) -> int:  # fmt: skip
    """Launch ``kernel`` over ``n_iters`` loop iterations as tier 2 (one launch with a grid
    barrier between iterations) or tier 3 (one launch per iteration); returns the tier that ran
    (launches are counted as ``{kind}_tier{N}``).  ``args`` are the kernel's arguments before
    ``sync_ptr``."""
    n_slices = triton.cdiv(H, BLOCK_HS)
    n_tiles = triton.cdiv(B, BLOCK_B)
    if tier == 2 and not _runtime.INTERPRET:
        coop = True if cooperative is None else cooperative
        full = dict(consts, USE_BARRIER=True, launch_cooperative_grid=coop)
        # a counter per batch group, 32 ints (128 B) apart so that groups poll different lines
        sync = _sync_buffer((n_tiles + 1) * 32, device)
        sync.fill_(_BARRIER_START)
        sync[n_tiles * 32 :] = 0
        with torch.cuda.device(device):
            probe = [*args, sync, 0, n_iters, T, B, H, n_tiles, max_spin]
            capacity = _co_resident_programs(kernel, probe, full, device)
            n_groups = min(n_tiles, capacity // n_slices) if coop else n_tiles
            if n_groups >= 1:
                if n_groups < n_tiles:  # the flag sits after the last group's counter
                    sync[n_groups * 32 :] = 0
                try:
                    kernel[(n_slices, n_groups)](*args, sync, 0, n_iters, T, B, H, n_groups, max_spin, **full)
                except RuntimeError as exc:  # the driver refused the cooperative grid: step by step
                    if not coop or "cooperative" not in str(exc).lower() and "too many blocks" not in str(exc).lower():
                        raise
                    _warn_once(f"fastrnn: a tier-2 cooperative launch of {n_slices} x {n_groups} programs was refused "
                               f"({exc}); running one launch per step (tier 3) instead")  # fmt: skip
                    return _launch(kernel, kind, 3, T, B, H, n_iters, args, consts, device, cooperative, max_spin)
                _runtime.count_launch(f"{kind}_tier2")
                if _check_barriers(coop) and not torch.cuda.is_current_stream_capturing():
                    if int(sync[n_groups * 32].item()):
                        raise BarrierTimeout(
                            f"fastrnn: a tier-2 grid barrier timed out ({n_slices} x {n_groups} programs were "
                            f"not all resident at once); run with FASTRNN_TIER=3"
                        )
                return 2
        # Not even one batch group fits the GPU at once: per-step launches instead.
    sync = _sync_buffer(32, device).zero_()
    per_step = dict(consts, USE_BARRIER=False)
    ran = tier if _runtime.INTERPRET else 3  # the interpreter runs tier 2's body per step
    for j in range(n_iters):
        kernel[(n_slices, n_tiles)](*args, sync, j, j + 1, T, B, H, n_tiles, 0, **per_step)
        _runtime.count_launch(f"{kind}_tier{ran}")
    return ran


def _consts(mode: str, dtype: torch.dtype, cfg: MultiConfig, allow_tf32: bool) -> dict:
    cell, relu, gates = MODES[mode]
    return dict(
        CELL=cell, N_GATES=gates, RELU=relu, RESIDENT=cfg.resident,
        BLOCK_B=BLOCK_B, BLOCK_HS=BLOCK_HS, BLOCK_K=cfg.block_k,
        PRECISION="tf32" if (allow_tf32 and dtype == torch.float32) else "ieee",
        ACC=tl.float64 if dtype == torch.float64 else tl.float32,
        UPCAST_DOT=_runtime.INTERPRET and dtype == torch.bfloat16,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        maxnreg=cfg.maxnreg,
    )


def multi_fwd(
    mode: str,
    gx: torch.Tensor,
    w_hh: torch.Tensor,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    *,
    b_hn: torch.Tensor | None = None,
    reverse: bool = False,
    save: bool = True,
    allow_tf32: bool = False,
    tier: int = 2,
    cooperative: bool | None = None,
    max_spin: int = MAX_SPIN,
) -> ForwardResult:
    """Tier 2/3 forward of one layer/direction; arguments and result as
    :func:`fastrnn.kernels.recurrent.recurrent_fwd` (no projection: ``P == H``).

    ``tier=2``: one persistent launch, cooperative unless ``cooperative=False`` (a plain launch:
    co-residency is then hoped for, not guaranteed, so the timeout flag is always read and a
    failed barrier raises :class:`BarrierTimeout`); ``tier=3``: one launch per step.  In the interpreter
    both run per-step launches (tier 2 with its resident weights).

    Example::

        gx = torch.randn(5, 3, 4 * 40); w = torch.randn(4 * 40, 40)
        res = multi_fwd("LSTM", gx, w, tier=3)   # res.out: (5, 3, 40)
    """
    T, B, _ = gx.shape
    G = MODES[mode][2]
    H = w_hh.shape[0] // G
    if w_hh.shape[1] != H:
        raise ValueError(f"tiers 2 and 3 need a square W_hh per gate (no projection), got {tuple(w_hh.shape)}")
    dtype, dev = gx.dtype, gx.device
    _runtime.check_device(dev)
    acc = _acc_dtype(dtype)
    cfg = multi_config(mode, H, dtype, tier)
    gx, w_hh = _row_major(gx), w_hh.contiguous()
    save = save and mode in ("LSTM", "GRU")

    hbuf = torch.empty((2, B, H), dtype=acc, device=dev)
    hbuf[1] = 0 if h0 is None else h0
    cbuf = torch.zeros((B, H), dtype=acc, device=dev) if c0 is None else c0.to(acc, copy=True).contiguous()
    out = _runtime.empty((T, B, H), dtype, dev)
    gates = _runtime.empty((T, B, G * H), acc, dev) if save else None
    aux = _runtime.empty((T, B, H), acc, dev) if save else None
    if B > 0 and T > 0:
        dummy = gx
        args = [
            gx, gx.stride(0), gx.stride(1),
            w_hh, w_hh.stride(0), H * w_hh.stride(0),
            b_hn if b_hn is not None else dummy,
            lengths if lengths is not None else dummy,
            hbuf, hbuf.stride(0), hbuf.stride(1),
            cbuf, cbuf.stride(0),
            out, out.stride(0), out.stride(1),
            gates if gates is not None else dummy, *_strides3(gates),
            aux if aux is not None else dummy, *_strides3(aux),
        ]  # fmt: skip
        consts = dict(
            IS_VARLEN=lengths is not None, REVERSE=reverse, HAS_BHN=b_hn is not None, SAVE=save,
            **_consts(mode, dtype, cfg, allow_tf32),
        )
        _launch(_multi_fwd_kernel, "multi_fwd", tier, T, B, H, T, args, consts, dev, cooperative, max_spin)
    h_n = hbuf[(T - 1) % 2 if T > 0 else 1].to(dtype)
    c_n = cbuf.to(dtype) if mode == "LSTM" else None
    return ForwardResult(out, h_n, c_n, gates, aux)


def multi_bwd(
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
    reverse: bool = False,
    allow_tf32: bool = False,
    tier: int = 2,
    cooperative: bool | None = None,
    max_spin: int = MAX_SPIN,
) -> BackwardResult:
    """Tier 2/3 backward; arguments and result as :func:`fastrnn.kernels.recurrent.recurrent_bwd`
    (no projection), ``tier``/``cooperative``/``max_spin`` as :func:`multi_fwd`."""
    T, B, H = fwd.out.shape
    G = MODES[mode][2]
    dtype, dev = fwd.out.dtype, fwd.out.device
    acc = _acc_dtype(dtype)
    cfg = multi_config(mode, H, dtype, tier)
    d_out, h0, c0, w_hh = _row_major(d_out), _row_major(h0), _row_major(c0), w_hh.contiguous()

    dhbuf = d_hn.to(acc, copy=True).contiguous()
    dcbuf = (d_cn.to(acc, copy=True).contiguous() if d_cn is not None else torch.zeros((B, H), dtype=acc, device=dev)) \
        if mode == "LSTM" else None  # fmt: skip
    d_gx = _runtime.empty((T, B, G * H), acc, dev)
    d_hn_gate = _runtime.empty((T, B, H), acc, dev) if mode == "GRU" else None
    if B > 0 and T > 0:
        dummy = fwd.out
        args = [
            d_out, d_out.stride(0), d_out.stride(1),
            fwd.out, fwd.out.stride(0), fwd.out.stride(1),
            fwd.gates if fwd.gates is not None else dummy, *_strides3(fwd.gates),
            fwd.aux if fwd.aux is not None else dummy, *_strides3(fwd.aux),
            h0 if h0 is not None else dummy, h0.stride(0) if h0 is not None else 0,
            c0 if c0 is not None else dummy, c0.stride(0) if c0 is not None else 0,
            w_hh, w_hh.stride(0), H * w_hh.stride(0),
            lengths if lengths is not None else dummy,
            dhbuf, dhbuf.stride(0),
            dcbuf if dcbuf is not None else dhbuf, dcbuf.stride(0) if dcbuf is not None else 0,
            d_gx, d_gx.stride(0), d_gx.stride(1),
            d_hn_gate if d_hn_gate is not None else d_gx, *_strides3(d_hn_gate),
        ]  # fmt: skip
        consts = dict(
            HAS_H0=h0 is not None, HAS_C0=c0 is not None, IS_VARLEN=lengths is not None, REVERSE=reverse,
            **_consts(mode, dtype, cfg, allow_tf32),
        )
        _launch(_multi_bwd_kernel, "multi_bwd", tier, T, B, H, T + 1, args, consts, dev, cooperative,
                max_spin)  # fmt: skip
    return BackwardResult(d_gx, d_hn_gate, None, dhbuf, dcbuf)
