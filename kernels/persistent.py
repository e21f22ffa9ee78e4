"""Tiers 2 and 3: the hidden units of one layer/direction split across many programs.

Tier 1 (:mod:`.recurrent`) keeps all of ``W_hh`` in one program, which caps ``H``.  Here program
``(j, g)`` owns the slice of hidden units ``u in [j*HS, (j+1)*HS)`` (``HS = BLOCK_HS``) of every
gate and the batch tiles ``g, g + N_GROUPS, g + 2*N_GROUPS, ...``.  Per step it needs all of
``h_{t-1}`` but produces only its own columns of ``h_t``, so the programs of one batch group
exchange ``h`` through global memory (L2) and wait for each other between steps:

* **tier 2** (persistent): one launch runs the whole sequence; a grid barrier separates steps
  (a per-group arrival counter, ``atomic_add`` with release semantics, a bounded spin with
  acquire semantics, see :func:`grid_barrier`).  The launch is cooperative
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
(B, H) the cell state of cells that have one (each program only touches its own columns).  Cross-program reads
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

The cell maths are the same ``@triton.jit`` functions tier 1 calls (:mod:`.cells`); the tier
decision comes from :mod:`.tiers`; what these tiers run and their tile choices are below
(:func:`multi_unsupported`, :func:`multi_config`), the runtime of their launches in :mod:`.grid`.

Dimension letters as in :mod:`.recurrent` (here ``P == H``); ``HS`` hidden units per program,
``NS = cdiv(H, HS)`` slices, ``NG`` batch groups.
"""

from __future__ import annotations

import dataclasses
import functools
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
    acc_dtype,
    backward_step_inputs,
    element_size,
    flags,
    load_gates,
    load_split,
    mm,
    mm_split,
    pow2,
    precision,
    row_major,
    store_saved,
    strides,
    time_index,
    tl_acc,
    upcast_dot,
)
from .grid import MAX_SPIN, MultiLaunch, run
from .tiers import DTYPES, INTERPRETER_MAX_WEIGHT_BYTES

#: Runtime integers that change between launches without a recompile (never constexpr).
_RUNTIME_INTS = ["T", "B", "J_BEGIN", "J_END", "N_GROUPS", "MAX_SPIN"]

@triton.jit
def grid_barrier(counter_ptr, flag_ptr, target, max_spin):
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
def _load_slices(w_ptr, s_gate, s_w_k, s_w_u, u0, units, K, G: tl.constexpr, RESIDENT: tl.constexpr,
                 BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """The resident tiles ``w_g[:K, units]`` of the ``G`` gate blocks (gate ``g`` at
    ``w_ptr + g*s_gate``, reached by pointer steps: no ``g * stride`` product to overflow int32),
    as right operands of :func:`~fastrnn.kernels.common.mm_split` (``(BLOCK_K, BLOCK_HS)``, or
    split along K); unused ``(1, BLOCK_HS)`` zero tiles when the weights are streamed."""
    slices = ()
    w_g = w_ptr + u0.to(tl.int64) * s_w_u  # this program's first unit
    for _g in tl.static_range(G):
        if RESIDENT:
            slices = slices + (load_split(w_g, s_w_u, s_w_k, K - u0, K, units.shape[0], BLOCK_K, SPLIT_K),)
        else:
            slices = slices + (tl.zeros((1, units.shape[0]), w_ptr.dtype.element_ty),)
        w_g += s_gate
    return slices


@triton.jit
def _gate_dots(a_rows, row_ok, w_ptr, s_w_k, s_w_u, s_w_gate, units, unit_ok, w_res, K, G: tl.constexpr,
               RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
               PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``a[rows, :K] @ w_g[:K, units]`` for the ``G`` gates: a tuple of (BLOCK_B, BLOCK_HS)
    ``ACC`` tiles.  ``a_rows`` points at the start of each row of ``a`` ((BLOCK_B, 1) pointers;
    other programs' data, read through L2).  ``RESIDENT``: ``w_res`` holds the tiles (K split in
    ``SPLIT_K`` chunks across warps); else each gate's ``w_g`` (at ``w_ptr + g*s_w_gate``) is read
    in ``BLOCK_K`` chunks, each chunk of ``a`` read once for every gate."""
    kk = tl.arange(0, BLOCK_K)
    acc = ()
    if RESIDENT:
        a = tl.load(a_rows + kk[None, :], mask=row_ok[:, None] & (kk < K)[None, :], other=0.0, cache_modifier=".cg")
        for g in tl.static_range(G):
            acc = acc + (mm_split(a, w_res[g], SPLIT_K, PRECISION, ACC, UPCAST_DOT),)
    else:
        for _g in tl.static_range(G):
            acc = acc + (tl.zeros((BLOCK_B, units.shape[0]), ACC),)
        w_u = w_ptr + units[None, :].to(tl.int64) * s_w_u
        for k0 in range(0, K, BLOCK_K):
            k = k0 + kk
            a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0.0, cache_modifier=".cg")
            w_mask = (k < K)[:, None] & unit_ok[None, :]
            w_k = w_u + k[:, None].to(tl.int64) * s_w_k
            new = ()
            for g in tl.static_range(G):
                new = new + (acc[g] + mm(a, tl.load(w_k, mask=w_mask, other=0.0), PRECISION, ACC, UPCAST_DOT),)
                w_k += s_w_gate  # gate blocks by pointer steps: no g * stride product to overflow
            acc = new
    return acc


@triton.jit
def _summed_dots(a_rows, row_ok, w_ptr, s_w_k, s_w_u, s_w_gate, units, unit_ok, w_res, K, G: tl.constexpr,
                 RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                 PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``sum_g a_g[rows, :K] @ w_g[:K, units]``: one (BLOCK_B, BLOCK_HS) ``ACC`` tile, with one
    left operand per gate (``a_rows`` a tuple of (BLOCK_B, 1) row pointers); otherwise as
    :func:`_gate_dots`.  One accumulator: the gates' products are summed as they come."""
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_B, units.shape[0]), ACC)
    if RESIDENT:
        k_ok = row_ok[:, None] & (kk < K)[None, :]
        for g in tl.static_range(G):
            a = tl.load(a_rows[g] + kk[None, :], mask=k_ok, other=0.0, cache_modifier=".cg")
            acc += mm_split(a, w_res[g], SPLIT_K, PRECISION, ACC, UPCAST_DOT)
    elif SPLIT_K == 1:
        w_u = w_ptr + units[None, :].to(tl.int64) * s_w_u
        for k0 in range(0, K, BLOCK_K):
            k = k0 + kk
            k_ok = row_ok[:, None] & (k < K)[None, :]
            w_mask = (k < K)[:, None] & unit_ok[None, :]
            w_k = w_u + k[:, None].to(tl.int64) * s_w_k
            for g in tl.static_range(G):
                a = tl.load(a_rows[g] + k[None, :], mask=k_ok, other=0.0, cache_modifier=".cg")
                acc += mm(a, tl.load(w_k, mask=w_mask, other=0.0), PRECISION, ACC, UPCAST_DOT)
                w_k += s_w_gate
    else:
        # streamed chunks, each split across warps: (SPLIT_K, BLOCK_K / SPLIT_K, BLOCK_HS) tiles
        kc = (tl.arange(0, SPLIT_K)[:, None, None] * (BLOCK_K // SPLIT_K)
              + tl.arange(0, BLOCK_K // SPLIT_K)[None, :, None])  # fmt: skip
        w_u = w_ptr + units[None, None, :].to(tl.int64) * s_w_u
        for k0 in range(0, K, BLOCK_K):
            k = k0 + kk
            k_ok = row_ok[:, None] & (k < K)[None, :]
            w_mask = (k0 + kc < K) & unit_ok[None, None, :]
            w_k = w_u + (k0 + kc).to(tl.int64) * s_w_k
            for g in tl.static_range(G):
                a = tl.load(a_rows[g] + k[None, :], mask=k_ok, other=0.0, cache_modifier=".cg")
                acc += mm_split(a, tl.load(w_k, mask=w_mask, other=0.0), SPLIT_K, PRECISION, ACC, UPCAST_DOT)
                w_k += s_w_gate
    return acc


# ---------------------------------------------------------------------------------------------
# forward


@triton.jit
def _fwd_tile(s, rows, row_ok, units, unit_ok, mask, seq_len, gx_raw, h_prev_ptr, h_cur_ptr, s_hb_b, h_own, c,
              w_hh_ptr, s_whh_r, s_whh_g, w, bh, out_ptr, s_out_t, s_out_b, sv_ptr, s_sv_t, s_sv_b, cs_ptr, s_cs_t,
              s_cs_b, H, spin_budget, CELL_FWD: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
              INNER_SLOTS: tl.constexpr, HAS_C: tl.constexpr, HAS_BH: tl.constexpr, REVERSE: tl.constexpr,
              SAVE: tl.constexpr, STORE_C: tl.constexpr, RESIDENT: tl.constexpr, BLOCK_B: tl.constexpr,
              BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
              UPCAST_DOT: tl.constexpr):
    """One batch tile's step ``s``: this program's units of every gate, the cell, the stores of
    ``h_t`` (own columns, for the other programs), ``out``, the saved tensors (and ``c_t``).
    Returns the tile's new ``(h_own, c)`` (kept for inactive sequences)."""
    t, active = time_index(s, seq_len, REVERSE)
    keep = active[:, None]
    # dots with h_{s-1}: all H columns, from every program of the group
    dots = _gate_dots(h_prev_ptr + rows[:, None] * s_hb_b, row_ok, w_hh_ptr, 1, s_whh_r, s_whh_g, units, unit_ok,
                      w, H, G, RESIDENT, BLOCK_B, BLOCK_K, SPLIT_K, PRECISION, ACC, UPCAST_DOT)
    px = ()
    ph = ()
    for g in tl.static_range(G):
        px = px + (gx_raw[g].to(ACC),)
        p = dots[g]
        if HAS_BH and INNER_SLOTS[g] >= 0:
            p = p + bh[g]
        ph = ph + (p,)
    h_new, c_new, saved = CELL_FWD(px, ph, h_own, c)
    h_new = tl.where(spin_budget < 0, float("nan"), h_new)  # after a failed barrier: loud, not wrong
    h_keep = tl.where(keep, h_new, h_own)
    tl.store(h_cur_ptr + rows[:, None] * s_hb_b + units[None, :], h_keep, mask=mask)
    out_t = out_ptr + t[:, None] * s_out_t + rows[:, None] * s_out_b + units[None, :]
    tl.store(out_t, tl.where(keep, h_new, 0.0).to(out_ptr.dtype.element_ty), mask=mask)
    if SAVE:
        store_saved(sv_ptr + t[:, None] * s_sv_t + rows[:, None] * s_sv_b + units[None, :], H, keep, mask, saved, S)
    if STORE_C:
        tl.store(cs_ptr + t[:, None] * s_cs_t + rows[:, None] * s_cs_b + units[None, :],
                 tl.where(keep, c_new, 0.0).to(cs_ptr.dtype.element_ty), mask=mask)
    if HAS_C:
        c = tl.where(keep, c_new, c)
    return h_keep, c


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _multi_fwd_kernel(
    gx_ptr, s_gx_t, s_gx_b,  # gx: (T, B, G*H) = x W_ih^T + biases, last dim contiguous
    w_hh_ptr, s_whh_r, s_whh_g,  # W_hh: (G*H, H), row-major, gate blocks in the cell's order; s_whh_g = H * s_whh_r
    bh_ptr,  # bh: (G*H,) recurrent biases; only the inner-bias gates' are read (HAS_BH)
    len_ptr,  # lengths: (B,) int64 (IS_VARLEN)
    hbuf_ptr, s_hb_k, s_hb_b,  # hbuf: (2, B, H) ACC, slot s % 2 = h after step s; slot 1 = h0
    cbuf_ptr, s_cb_b,  # cbuf: (B, H) ACC, cell state (HAS_C: c0 on entry, c_n on exit)
    out_ptr, s_out_t, s_out_b,  # out: (T, B, H) h_t, 0 at padding
    sv_ptr, s_sv_t, s_sv_b,  # saved: (T, B, S*H) what the cell's backward reads (SAVE)
    cs_ptr, s_cs_t, s_cs_b,  # cs: (T, B, H) c_t of every step, 0 at padding (STORE_C)
    sync_ptr,  # sync: ((NG + 1) * 32,) int32: group g's barrier counter at 32 g, the timeout flag at 32 NG
    J_BEGIN, J_END, T, B, H, N_GROUPS, MAX_SPIN,
    CELL_FWD: tl.constexpr, CELL_BWD: tl.constexpr, G: tl.constexpr, S: tl.constexpr, INNER_SLOTS: tl.constexpr,
    HAS_C: tl.constexpr, STATE_SLOT: tl.constexpr, READ_H_NEW: tl.constexpr, READ_H_PREV: tl.constexpr,
    DIRECT_DH: tl.constexpr, EXT: tl.constexpr, NPRM: tl.constexpr,  # extended cells: never here (multi_unsupported)
    HAS_BH: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, STORE_C: tl.constexpr,
    RESIDENT: tl.constexpr, USE_BARRIER: tl.constexpr, ONE_TILE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_HS: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_g = tl.program_id(1)
    n_slices = tl.num_programs(0)
    units = pid_h * BLOCK_HS + tl.arange(0, BLOCK_HS)
    unit_ok = units < H
    # W_hh^T restricted to this program's units of each gate: w_g[k, u] = W_hh[g*H + u, k],
    # i.e. base w_hh + g*H*s_whh_r, stride 1 along k and s_whh_r along u; resident or streamed.
    w = _load_slices(w_hh_ptr, s_whh_g, 1, s_whh_r, pid_h * BLOCK_HS, units, H, G, RESIDENT, BLOCK_K, SPLIT_K)
    bh = ()
    for g in tl.static_range(G):
        if HAS_BH and INNER_SLOTS[g] >= 0:
            bh = bh + (tl.load(bh_ptr + g * H + units, mask=unit_ok, other=0.0).to(ACC)[None, :],)
        else:
            bh = bh + (0.0,)
    n_tiles = tl.cdiv(B, BLOCK_B)
    spin_budget = MAX_SPIN

    if ONE_TILE:
        # This program owns one batch tile for the whole launch: its state stays in registers
        # and the next step's input parts are loaded while the current step computes.
        rows = pid_g * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
        row_ok = rows < B
        mask = row_ok[:, None] & unit_ok[None, :]
        if IS_VARLEN:
            seq_len = tl.load(len_ptr + rows, mask=row_ok, other=0)
        else:
            seq_len = tl.zeros((BLOCK_B,), tl.int64) + T
        h_own = tl.load(hbuf_ptr + ((J_BEGIN + 1) % 2) * s_hb_k + rows[:, None] * s_hb_b + units[None, :], mask=mask,
                        other=0.0)
        c = h_own
        if HAS_C:
            c = tl.load(cbuf_ptr + rows[:, None] * s_cb_b + units[None, :], mask=mask, other=0.0)
        t0, active0 = time_index(J_BEGIN, seq_len, REVERSE)
        gx_next = load_gates(gx_ptr + t0[:, None] * s_gx_t + rows[:, None] * s_gx_b + units[None, :], H,
                             mask & active0[:, None], G)
    for s in range(J_BEGIN, J_END):
        h_prev_ptr = hbuf_ptr + ((s + 1) % 2) * s_hb_k
        h_cur_ptr = hbuf_ptr + (s % 2) * s_hb_k
        if ONE_TILE:
            gx_raw = gx_next
            t_n, active_n = time_index(s + 1, seq_len, REVERSE)
            gx_next = load_gates(gx_ptr + t_n[:, None] * s_gx_t + rows[:, None] * s_gx_b + units[None, :], H,
                                 mask & active_n[:, None], G)
            h_own, c = _fwd_tile(s, rows, row_ok, units, unit_ok, mask, seq_len, gx_raw, h_prev_ptr, h_cur_ptr,
                                 s_hb_b, h_own, c, w_hh_ptr, s_whh_r, s_whh_g, w, bh, out_ptr, s_out_t, s_out_b,
                                 sv_ptr, s_sv_t, s_sv_b, cs_ptr, s_cs_t, s_cs_b, H, spin_budget, CELL_FWD, G, S,
                                 INNER_SLOTS, HAS_C, HAS_BH, REVERSE, SAVE, STORE_C, RESIDENT, BLOCK_B, BLOCK_K,
                                 SPLIT_K, PRECISION, ACC, UPCAST_DOT)
        else:
            for tile in range(pid_g, n_tiles, N_GROUPS):
                rows_t = tile * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
                row_ok_t = rows_t < B
                mask_t = row_ok_t[:, None] & unit_ok[None, :]
                if IS_VARLEN:
                    seq_len_t = tl.load(len_ptr + rows_t, mask=row_ok_t, other=0)
                else:
                    seq_len_t = tl.zeros((BLOCK_B,), tl.int64) + T
                t, active = time_index(s, seq_len_t, REVERSE)
                gx_raw_t = load_gates(gx_ptr + t[:, None] * s_gx_t + rows_t[:, None] * s_gx_b + units[None, :], H,
                                      mask_t & active[:, None], G)
                h_own_t = tl.load(h_prev_ptr + rows_t[:, None] * s_hb_b + units[None, :], mask=mask_t, other=0.0,
                                  cache_modifier=".cg")
                c_t = h_own_t
                if HAS_C:
                    c_t = tl.load(cbuf_ptr + rows_t[:, None] * s_cb_b + units[None, :], mask=mask_t, other=0.0)
                _, c_t = _fwd_tile(s, rows_t, row_ok_t, units, unit_ok, mask_t, seq_len_t, gx_raw_t, h_prev_ptr,
                                   h_cur_ptr, s_hb_b, h_own_t, c_t, w_hh_ptr, s_whh_r, s_whh_g, w, bh, out_ptr,
                                   s_out_t, s_out_b, sv_ptr, s_sv_t, s_sv_b, cs_ptr, s_cs_t, s_cs_b, H, spin_budget,
                                   CELL_FWD, G, S, INNER_SLOTS, HAS_C, HAS_BH, REVERSE, SAVE, STORE_C, RESIDENT,
                                   BLOCK_B, BLOCK_K, SPLIT_K, PRECISION, ACC, UPCAST_DOT)
                if HAS_C:
                    tl.store(cbuf_ptr + rows_t[:, None] * s_cb_b + units[None, :], c_t, mask=mask_t)
        if USE_BARRIER:
            if s + 1 < J_END:
                ok = grid_barrier(sync_ptr + 32 * pid_g, sync_ptr + 32 * N_GROUPS, n_slices * (s - J_BEGIN + 1),
                                   spin_budget)
                spin_budget = tl.where(ok, spin_budget, -1)
    if ONE_TILE and HAS_C:
        tl.store(cbuf_ptr + rows[:, None] * s_cb_b + units[None, :], c, mask=mask)


# ---------------------------------------------------------------------------------------------
# backward


@triton.jit
def _bwd_loads(s, seq_len, rows, units, mask, dout_ptr, s_do_t, s_do_b, out_ptr, s_out_t, s_out_b, sv_ptr, s_sv_t,
               s_sv_b, dcs_ptr, s_dcs_t, s_dcs_b, H, S: tl.constexpr, HAS_C: tl.constexpr, STATE_SLOT: tl.constexpr,
               READ_H_NEW: tl.constexpr, READ_H_PREV: tl.constexpr, REVERSE: tl.constexpr, HAS_DCS: tl.constexpr):
    """What step ``s`` of the backward reads from memory, for this program's columns: ``(d_out_t,
    saved_t, h_t, h_{t-1}, c_{t-1}, d_cs_t)`` (storage dtype; the last four where the cell reads
    them or ``HAS_DCS``, else placeholders); nothing for ``s < 0``."""
    t, active = time_index(s, seq_len, REVERSE)
    active = active & (seq_len * 0 + s >= 0)
    act = mask & active[:, None]
    if REVERSE:
        t_prev = t + 1
    else:
        t_prev = t - 1
    prev = act & (active & (t_prev >= 0) & (t_prev < seq_len))[:, None]
    d_out = tl.load(dout_ptr + t[:, None] * s_do_t + rows[:, None] * s_do_b + units[None, :], mask=act, other=0.0)
    saved = ()
    for k in tl.static_range(S):
        saved = saved + (tl.load(sv_ptr + t[:, None] * s_sv_t + rows[:, None] * s_sv_b + k * H + units[None, :],
                                 mask=act, other=0.0),)
    h_new = d_out
    if READ_H_NEW:
        h_new = tl.load(out_ptr + t[:, None] * s_out_t + rows[:, None] * s_out_b + units[None, :], mask=act, other=0.0)
    h_prev = d_out
    if READ_H_PREV:
        h_prev = tl.load(out_ptr + t_prev[:, None] * s_out_t + rows[:, None] * s_out_b + units[None, :], mask=prev,
                         other=0.0)
    c_prev = d_out
    if HAS_C:
        c_prev = tl.load(sv_ptr + t_prev[:, None] * s_sv_t + rows[:, None] * s_sv_b + STATE_SLOT * H + units[None, :],
                         mask=prev, other=0.0)
    d_cs = d_out
    if HAS_DCS:
        d_cs = tl.load(dcs_ptr + t[:, None] * s_dcs_t + rows[:, None] * s_dcs_b + units[None, :], mask=act, other=0.0)
    return d_out, saved, h_new, h_prev, c_prev, d_cs


@triton.jit
def _bwd_tile(s, rows, units, mask, seq_len, loads, dh, dc, h_init, c_init, dg_ptr, s_dg_t, s_dg_b, dgh_ptr,
              s_dgh_t, s_dgh_b, H, spin_budget, CELL_BWD: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
              INNER_SLOTS: tl.constexpr, HAS_C: tl.constexpr, READ_H_NEW: tl.constexpr, READ_H_PREV: tl.constexpr,
              DIRECT_DH: tl.constexpr, REVERSE: tl.constexpr, ACC: tl.constexpr, HAS_DCS: tl.constexpr):
    """Step ``s`` of one batch tile: this program's columns of every gate gradient (stored), and
    what step ``s-1`` inherits before the dots of the next iteration: ``(dh_carry, dc)``."""
    t, active = time_index(s, seq_len, REVERSE)
    keep = active[:, None]
    if REVERSE:
        t_prev = t + 1
    else:
        t_prev = t - 1
    has_prev = (active & (t_prev >= 0) & (t_prev < seq_len))[:, None]
    d_out, saved_raw, h_new, h_prev, c_prev, d_cs = loads
    dh = tl.where(spin_budget < 0, float("nan"), dh)  # after a failed barrier: loud, not wrong
    dh = dh + d_out.to(ACC)
    saved, h_new, h_prev, c_prev, dc = backward_step_inputs(
        saved_raw, h_new, h_prev, c_prev, d_cs, dh, dc, has_prev, h_init, c_init, S, READ_H_NEW, READ_H_PREV, HAS_C,
        HAS_DCS, ACC)  # fmt: skip
    d_px, d_ph, dh_direct, dc_prev = CELL_BWD(dh, dc, saved, h_new, h_prev, c_prev)
    dg_t = dg_ptr + t[:, None] * s_dg_t + rows[:, None] * s_dg_b + units[None, :]
    for g in tl.static_range(G):
        tl.store(dg_t + g * H, tl.where(keep, d_px[g], 0.0).to(dg_ptr.dtype.element_ty), mask=mask)
        if INNER_SLOTS[g] >= 0:
            tl.store(dgh_ptr + t[:, None] * s_dgh_t + rows[:, None] * s_dgh_b + INNER_SLOTS[g] * H + units[None, :],
                     tl.where(keep, d_ph[g], 0.0).to(dgh_ptr.dtype.element_ty), mask=mask)
    if HAS_C:
        dc = tl.where(keep, dc_prev, dc)
    if DIRECT_DH:
        dh_carry = tl.where(keep, dh_direct, dh)
    else:
        dh_carry = tl.where(keep, 0.0, dh)
    return dh_carry, dc


@triton.jit
def _bwd_recurrent(s, T, rows, row_ok, units, unit_ok, seq_len, dg_ptr, s_dg_t, s_dg_b, dgh_ptr, s_dgh_t, s_dgh_b,
                   w_hh_ptr, s_whh_r, s_whh_g, w, H, G: tl.constexpr, INNER_SLOTS: tl.constexpr,
                   RESIDENT: tl.constexpr, REVERSE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                   SPLIT_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``sum_g dph_g[s+1] @ W_g[:, own]``: step ``s+1``'s gate gradients of every program (their
    recurrent parts: ``d_gx``'s gate, or the inner-gate buffer; 0 for inactive rows) times this
    program's columns of ``W_hh`` -- the share of ``dL/dh_s`` that passes through the weights."""
    t1, _ = time_index(s + 1, seq_len, REVERSE)
    srcs = ()
    for g in tl.static_range(G):
        if INNER_SLOTS[g] >= 0:
            srcs = srcs + (dgh_ptr + t1[:, None] * s_dgh_t + rows[:, None] * s_dgh_b + INNER_SLOTS[g] * H,)
        else:
            srcs = srcs + (dg_ptr + t1[:, None] * s_dg_t + rows[:, None] * s_dg_b + g * H,)
    return _summed_dots(srcs, row_ok, w_hh_ptr, s_whh_r, 1, s_whh_g, units, unit_ok, w, H, G, RESIDENT, BLOCK_B,
                        BLOCK_K, SPLIT_K, PRECISION, ACC, UPCAST_DOT)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _multi_bwd_kernel(
    dout_ptr, s_do_t, s_do_b,  # dL/d out: (T, B, H), last dim contiguous
    out_ptr, s_out_t, s_out_b,  # out of the forward: (T, B, H)
    sv_ptr, s_sv_t, s_sv_b,  # saved: (T, B, S*H) by the forward (S > 0)
    h0_ptr, s_h0_b,  # h0: (B, H) (READ_H_PREV and HAS_H0)
    c0_ptr, s_c0_b,  # c0: (B, H) (HAS_C0)
    w_hh_ptr, s_whh_r, s_whh_g,  # W_hh: (G*H, H), row-major; s_whh_g = H * s_whh_r
    len_ptr,  # lengths: (B,) int64 (IS_VARLEN)
    dhbuf_ptr, s_dhb_b,  # dhbuf: (B, H) ACC, dL/dh carried backwards: d h_n on entry, d h0 on exit
    dcbuf_ptr, s_dcb_b,  # dcbuf: (B, H) ACC, dL/dc (HAS_C): d c_n on entry, d c0 on exit
    dcs_ptr, s_dcs_t, s_dcs_b,  # dL/d cs: (T, B, H) gradient of every step's c_t (HAS_DCS)
    dg_ptr, s_dg_t, s_dg_b,  # out, dL/d gx: (T, B, G*H), 0 at padding
    dgh_ptr, s_dgh_t, s_dgh_b,  # out, dL/d(recurrent part) of the inner-bias gates: (T, B, N*H), 0 at padding
    sync_ptr,  # sync: ((NG + 1) * 32,) int32, as in the forward
    J_BEGIN, J_END, T, B, H, N_GROUPS, MAX_SPIN,
    CELL_FWD: tl.constexpr, CELL_BWD: tl.constexpr, G: tl.constexpr, S: tl.constexpr, INNER_SLOTS: tl.constexpr,
    HAS_C: tl.constexpr, STATE_SLOT: tl.constexpr, READ_H_NEW: tl.constexpr, READ_H_PREV: tl.constexpr,
    DIRECT_DH: tl.constexpr, EXT: tl.constexpr, NPRM: tl.constexpr,  # extended cells: never here (multi_unsupported)
    HAS_H0: tl.constexpr, HAS_C0: tl.constexpr, IS_VARLEN: tl.constexpr, REVERSE: tl.constexpr, HAS_DCS: tl.constexpr,
    RESIDENT: tl.constexpr, USE_BARRIER: tl.constexpr, ONE_TILE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_HS: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_g = tl.program_id(1)
    n_slices = tl.num_programs(0)
    units = pid_h * BLOCK_HS + tl.arange(0, BLOCK_HS)
    unit_ok = units < H
    # W_hh restricted to this program's columns, per gate: w_g[k, u] = W_hh[g*H + k, u],
    # i.e. base w_hh + g*H*s_whh_r, stride s_whh_r along k and 1 along u.
    w = _load_slices(w_hh_ptr, s_whh_g, s_whh_r, 1, pid_h * BLOCK_HS, units, H, G, RESIDENT, BLOCK_K, SPLIT_K)
    n_tiles = tl.cdiv(B, BLOCK_B)
    spin_budget = MAX_SPIN

    if ONE_TILE:
        # One batch tile for the whole launch: dh and dc stay in registers, and each step's loads
        # are issued one step ahead.
        rows = pid_g * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
        row_ok = rows < B
        mask = row_ok[:, None] & unit_ok[None, :]
        if IS_VARLEN:
            seq_len = tl.load(len_ptr + rows, mask=row_ok, other=0)
        else:
            seq_len = tl.zeros((BLOCK_B,), tl.int64) + T
        dh = tl.load(dhbuf_ptr + rows[:, None] * s_dhb_b + units[None, :], mask=mask, other=0.0)
        dc = dh
        c_init = tl.zeros((BLOCK_B, BLOCK_HS), ACC)
        h_init = c_init
        if HAS_C:
            dc = tl.load(dcbuf_ptr + rows[:, None] * s_dcb_b + units[None, :], mask=mask, other=0.0)
            if HAS_C0:
                c_init = tl.load(c0_ptr + rows[:, None] * s_c0_b + units[None, :], mask=mask, other=0.0).to(ACC)
        if READ_H_PREV and HAS_H0:
            h_init = tl.load(h0_ptr + rows[:, None] * s_h0_b + units[None, :], mask=mask, other=0.0).to(ACC)
        nxt = _bwd_loads(T - 1 - J_BEGIN, seq_len, rows, units, mask, dout_ptr, s_do_t, s_do_b, out_ptr, s_out_t,
                         s_out_b, sv_ptr, s_sv_t, s_sv_b, dcs_ptr, s_dcs_t, s_dcs_b, H, S, HAS_C, STATE_SLOT,
                         READ_H_NEW, READ_H_PREV, REVERSE, HAS_DCS)
    for j in range(J_BEGIN, J_END):
        s = T - 1 - j
        if ONE_TILE:
            cur = nxt
            nxt = _bwd_loads(s - 1, seq_len, rows, units, mask, dout_ptr, s_do_t, s_do_b, out_ptr, s_out_t,
                             s_out_b, sv_ptr, s_sv_t, s_sv_b, dcs_ptr, s_dcs_t, s_dcs_b, H, S, HAS_C, STATE_SLOT,
                             READ_H_NEW, READ_H_PREV, REVERSE, HAS_DCS)
            # 1. finish step s+1: the share of dL/dh_s through W_hh, from every program's gradients
            if s + 1 < T:
                dh += _bwd_recurrent(s, T, rows, row_ok, units, unit_ok, seq_len, dg_ptr, s_dg_t, s_dg_b, dgh_ptr,
                                     s_dgh_t, s_dgh_b, w_hh_ptr, s_whh_r, s_whh_g, w, H, G, INNER_SLOTS, RESIDENT,
                                     REVERSE, BLOCK_B, BLOCK_K, SPLIT_K, PRECISION, ACC, UPCAST_DOT)
            # 2. step s: this program's columns of every gate gradient
            if s >= 0:
                dh, dc = _bwd_tile(s, rows, units, mask, seq_len, cur, dh, dc, h_init, c_init, dg_ptr, s_dg_t, s_dg_b,
                                   dgh_ptr, s_dgh_t, s_dgh_b, H, spin_budget, CELL_BWD, G, S, INNER_SLOTS, HAS_C,
                                   READ_H_NEW, READ_H_PREV, DIRECT_DH, REVERSE, ACC, HAS_DCS)
        else:
            for tile in range(pid_g, n_tiles, N_GROUPS):
                rows_t = tile * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
                row_ok_t = rows_t < B
                mask_t = row_ok_t[:, None] & unit_ok[None, :]
                if IS_VARLEN:
                    seq_len_t = tl.load(len_ptr + rows_t, mask=row_ok_t, other=0)
                else:
                    seq_len_t = tl.zeros((BLOCK_B,), tl.int64) + T
                dh_ptrs = dhbuf_ptr + rows_t[:, None] * s_dhb_b + units[None, :]
                dh_t = tl.load(dh_ptrs, mask=mask_t, other=0.0)
                if s + 1 < T:
                    dh_t += _bwd_recurrent(s, T, rows_t, row_ok_t, units, unit_ok, seq_len_t, dg_ptr, s_dg_t, s_dg_b,
                                           dgh_ptr, s_dgh_t, s_dgh_b, w_hh_ptr, s_whh_r, s_whh_g, w, H, G,
                                           INNER_SLOTS, RESIDENT, REVERSE, BLOCK_B, BLOCK_K, SPLIT_K, PRECISION, ACC,
                                           UPCAST_DOT)
                if s >= 0:
                    dc_t = dh_t
                    c_init_t = tl.zeros((BLOCK_B, BLOCK_HS), ACC)
                    h_init_t = c_init_t
                    if HAS_C:
                        dc_t = tl.load(dcbuf_ptr + rows_t[:, None] * s_dcb_b + units[None, :], mask=mask_t, other=0.0)
                        if HAS_C0:
                            c_init_t = tl.load(c0_ptr + rows_t[:, None] * s_c0_b + units[None, :], mask=mask_t,
                                               other=0.0).to(ACC)
                    if READ_H_PREV and HAS_H0:
                        h_init_t = tl.load(h0_ptr + rows_t[:, None] * s_h0_b + units[None, :], mask=mask_t,
                                           other=0.0).to(ACC)
                    loads = _bwd_loads(s, seq_len_t, rows_t, units, mask_t, dout_ptr, s_do_t, s_do_b, out_ptr,
                                       s_out_t, s_out_b, sv_ptr, s_sv_t, s_sv_b, dcs_ptr, s_dcs_t, s_dcs_b, H, S,
                                       HAS_C, STATE_SLOT, READ_H_NEW, READ_H_PREV, REVERSE, HAS_DCS)
                    dh_t, dc_t = _bwd_tile(s, rows_t, units, mask_t, seq_len_t, loads, dh_t, dc_t, h_init_t, c_init_t,
                                           dg_ptr, s_dg_t, s_dg_b, dgh_ptr, s_dgh_t, s_dgh_b, H, spin_budget,
                                           CELL_BWD, G, S, INNER_SLOTS, HAS_C, READ_H_NEW, READ_H_PREV, DIRECT_DH,
                                           REVERSE, ACC, HAS_DCS)
                    if HAS_C:
                        tl.store(dcbuf_ptr + rows_t[:, None] * s_dcb_b + units[None, :], dc_t, mask=mask_t)
                tl.store(dh_ptrs, dh_t, mask=mask_t)
        if USE_BARRIER:
            if s >= 0:
                ok = grid_barrier(sync_ptr + 32 * pid_g, sync_ptr + 32 * N_GROUPS, n_slices * (j - J_BEGIN + 1),
                                   spin_budget)
                spin_budget = tl.where(ok, spin_budget, -1)
    if ONE_TILE:
        tl.store(dhbuf_ptr + rows[:, None] * s_dhb_b + units[None, :], dh, mask=mask)
        if HAS_C:
            tl.store(dcbuf_ptr + rows[:, None] * s_dcb_b + units[None, :], dc, mask=mask)


# ---------------------------------------------------------------------------------------------
# launchers


# ---------------------------------------------------------------------------------------------
# What tiers 2 and 3 run, and how they are launched

#: Hidden units per program (the smallest ``tl.dot`` tile: the most programs share a layer).
BLOCK_HS = 16
#: Sequences per batch tile (one ``tl.dot`` M dimension).
BLOCK_B = 16
#: What to do when a tier-2 grid barrier times out (:class:`~.grid.BarrierTimeout`).
FALLBACK_HINT = "run with FASTRNN_TIER=3 (one launch per step)"
#: Resident weight slices (a program's padded ``G`` tiles of ``(BLOCK_K, BLOCK_HS)``, loaded once,
#: kept in shared memory) need, besides the slice, the ``(BLOCK_B, BLOCK_K)`` fp32 row of
#: ``h_{t-1}`` on its way to the dot layout: both must fit the device's shared memory per block
#: (227 KB on an H100/H200 when unknown).  Largest resident slice by element size, forward and
#: backward, from the release data (kernels/NOTES.md "Tiers 2 and 3": 16-bit backward slices
#: over 32 KiB spill at 8 warps and cannot launch at 16).
RESIDENT_MAX_WEIGHT_BYTES: dict[int, int] = {int(k): v for k, v in releases.limits("resident_max_weight_bytes").items()}
RESIDENT_MAX_WEIGHT_BYTES_BWD: dict[int, int] = {
    int(k): v for k, v in releases.limits("resident_max_weight_bytes_bwd").items()
}
#: Shared memory per block when the device is not known (sm_90's opt-in maximum).
DEFAULT_SMEM_BYTES = 227 * 1024
#: Chunks of K a resident slice's dots are split into across warps (each at least 16 wide): a
#: shorter serial chain per step (kernels/NOTES.md, "Tiers 2 and 3").  fp64 (DMMA) is not split.
RESIDENT_SPLIT_K = 4
#: Chunk of the reduction dimension of streamed weights, by element size (fp32/fp64 dots hold
#: K-long rows per thread: narrower chunks).
BLOCK_K_STREAMED = {2: 64, 4: 16, 8: 16}
#: The streamed 16-bit backward (slices over :data:`RESIDENT_MAX_WEIGHT_BYTES_BWD`) reads chunks
#: this wide, each split in :data:`RESIDENT_SPLIT_K` across 8 warps: the widest that compiles
#: without spills (kernels/NOTES.md, "Tiers 2 and 3").
STREAMED_SPLIT_BLOCK_K = 256


def slice_weight_bytes(mode: str, hidden_size: int, dtype: torch.dtype) -> int:
    """On-chip bytes of one tier-2 program's resident ``W_hh`` slice (padded tiles)."""
    return cells.get(mode).G * pow2(hidden_size) * BLOCK_HS * element_size(dtype)


@dataclass(frozen=True)
class MultiConfig:
    """Compile-time choices of a tier-2/3 launch (never depends on T or B)."""

    resident: bool
    block_k: int
    num_warps: int
    num_stages: int
    maxnreg: int
    split_k: int = 1  # resident dots: K split in this many chunks across warps (common.mm_split)

    def override(self, hidden_size: int, dtype: torch.dtype, **changes: Any) -> MultiConfig:
        """This configuration with the kernel report's knobs: ``resident`` (the weight slice
        resident, K in one chunk, or streamed in :data:`BLOCK_K_STREAMED` chunks, unsplit), then
        ``num_warps`` and ``split_k``."""
        unknown = set(changes) - {"resident", "num_warps", "split_k"}
        if unknown:
            raise ValueError(f"tiers 2/3 have no {', '.join(sorted(unknown))} to override")
        cfg = self
        if "resident" in changes:
            if changes.pop("resident"):
                cfg = dataclasses.replace(cfg, resident=True, block_k=pow2(hidden_size))
            else:
                cfg = dataclasses.replace(cfg, resident=False, block_k=BLOCK_K_STREAMED[element_size(dtype)], split_k=1)
        return dataclasses.replace(cfg, **changes)

    #: The kernels' constexprs of the batch tile, the unit tile and the reduction (K) tile.
    TILE_CONSTEXPRS = ("BLOCK_B", "BLOCK_HS", "BLOCK_K")

    def tiles(self) -> dict[str, Any]:
        """The tiles as the kernel report's rows name them (units and batch rows are fixed)."""
        return dict(block_b=BLOCK_B, block_h=BLOCK_HS, block_p=self.block_k, resident=self.resident)

    def k_trips(self, hidden_size: int) -> int:
        """Passes over the program's ``W_hh`` slice per step: 1 resident, else one per K chunk."""
        return 1 if self.resident else -(-hidden_size // self.block_k)

    def on_chip_bytes(self, mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int:
        """Bytes of recurrent weights one program holds on chip (streamed slices: none)."""
        return slice_weight_bytes(mode, hidden_size, dtype) if self.resident else 0


def multi_config(mode: str, hidden_size: int, dtype: torch.dtype, tier: int, kernel: str = "fwd",
                 smem_bytes: int | None = None, precision: str = "ieee") -> MultiConfig:  # fmt: skip
    """Tile choices of a tier-2/3 launch of ``kernel`` (``"fwd"``/``"bwd"``) on a device with
    ``smem_bytes`` of shared memory per block, fp32 dots in ``precision`` (kernels/NOTES.md,
    "Tiers 2 and 3"):

    * tier 2 keeps each program's weight slice resident (:data:`RESIDENT_MAX_WEIGHT_BYTES`, the
      backward :data:`RESIDENT_MAX_WEIGHT_BYTES_BWD`, and the slice plus the ``h`` row within
      ``smem_bytes``; never where the resident build aborts the compiler) and splits its dots'
      K across warps (8 warps, :data:`RESIDENT_SPLIT_K` chunks); otherwise (and in tier 3) the
      slice is streamed from L2 in ``BLOCK_K`` chunks at 4 warps (16-bit backwards: 256-wide
      chunks split across 8 warps, :data:`STREAMED_SPLIT_BLOCK_K`);
    * fp32 in ``"tf32x3"`` (three tensor-core products: split operands live in registers) keeps
      each resident chunk of K at most 32 wide (64: the GRU H = 256 backward spills with triton
      3.6) and streams the slice from K = 1024 (resident, split in 8 or 16, the backward spills,
      and the forward with triton 3.6); streamed chunks stay 16 wide (32 spills the tier-2 LSTM
      forward);
    * ``maxnreg = 255`` (left alone, ptxas parks a few bytes in local memory inside the loop in
      about one config in ten); 2 pipeline stages, 3 for fp32/fp64 streamed builds, 1 for the
      fp64 streamed backward."""
    size = element_size(dtype)
    k_pad = pow2(hidden_size)
    x3 = dtype == torch.float32 and precision == "tf32x3"
    slice_bytes = slice_weight_bytes(mode, hidden_size, dtype)
    smem_needed = slice_bytes + BLOCK_B * k_pad * element_size(torch.float64 if size == 8 else torch.float32)
    limits = RESIDENT_MAX_WEIGHT_BYTES_BWD if kernel == "bwd" else RESIDENT_MAX_WEIGHT_BYTES
    resident = (
        tier == 2
        and slice_bytes <= limits[size]
        and smem_needed <= (smem_bytes or DEFAULT_SMEM_BYTES)
        and releases.compiler_abort(mode, dtype, 2) is None
        and not (x3 and k_pad > 512)
    )
    if not resident:
        if kernel == "bwd" and size == 2 and k_pad >= STREAMED_SPLIT_BLOCK_K:
            return MultiConfig(False, STREAMED_SPLIT_BLOCK_K, 8, 2, 255, RESIDENT_SPLIT_K)
        # pipeline stages: 2 for 16-bit, 3 for fp32/fp64 -- but 1 for the fp64 backward (the LSTM
        # one spills in the loop at 2 and 3 stages with triton 3.6)
        stages = 2 if size == 2 else 1 if (size == 8 and kernel == "bwd") else 3
        return MultiConfig(False, min(BLOCK_K_STREAMED[size], k_pad), 4, stages, 255, 1)
    split = 1 if size == 8 else RESIDENT_SPLIT_K
    if x3:
        split = max(split, k_pad // 32)
    return MultiConfig(True, k_pad, 8, 2, 255, max(1, min(split, k_pad // 16)))


def multi_unsupported(tier: int, mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype,
                      interpreted: bool = False, release: str | None = None) -> str | None:  # fmt: skip
    """Why tier 2/3 cannot run this layer (``None`` when it can; no limit depends on the Triton
    ``release``).  Tier 2's co-residency is checked at launch (it needs the compiled kernel); a
    tier-2 launch that does not fit runs as tier 3."""
    if dtype not in DTYPES:
        return f"dtype {dtype} is not supported (float16, bfloat16, float32, float64 are)"
    if proj_size:
        return f"tier {tier} does not run a projected LSTM (proj_size={proj_size}): only tier 1 does"
    cell = cells.get(mode)
    if cell.extended:
        return (f"tier {tier} does not run {mode}: its per-step row reductions (layer norm) need every hidden "
                f"unit of a row in one program, which only tier 1 has")  # fmt: skip
    nbytes = cells.get(mode).G * hidden_size * hidden_size * element_size(dtype)
    if interpreted and nbytes > INTERPRETER_MAX_WEIGHT_BYTES:
        return (
            f"tier {tier} in the interpreter runs at most {INTERPRETER_MAX_WEIGHT_BYTES // 2**20} MiB of recurrent "
            f"weights (CPU runs stay tractable); {mode} with hidden_size={hidden_size} in {dtype} has {nbytes // 1024} KiB"
        )
    return None



def describe(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> str:
    """What :func:`~.tiers.choose_tier` says when it picks tier 2."""
    fwd, bwd = (multi_config(mode, hidden_size, dtype, 2, k).resident for k in ("fwd", "bwd"))
    if fwd and bwd:
        how = "resident W_hh slices"
    elif fwd:
        how = "W_hh slices resident in the forward, streamed from L2 in the backward"
    else:  # the backward's limits are never above the forward's
        how = "W_hh slices streamed from L2"
    return f"tier 2 ({how}, {BLOCK_HS} units each)"


# ---------------------------------------------------------------------------------------------
# launches


def _consts(cell: cells.Cell, dtype: torch.dtype, cfg: MultiConfig, fp32_precision: str) -> dict[str, Any]:
    return dict(
        **cell.constexprs(),
        RESIDENT=cfg.resident, BLOCK_B=BLOCK_B, BLOCK_HS=BLOCK_HS, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
        PRECISION=precision(dtype, fp32_precision), ACC=tl_acc(dtype), UPCAST_DOT=upcast_dot(dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg,
    )  # fmt: skip


def forward_launch(call: RecurrenceCall, gx: torch.Tensor, cfg: MultiConfig) -> tuple[MultiLaunch | None, ForwardResult]:
    """The launch of :func:`multi_fwd` and its outputs.  ``h_n`` and ``c_n`` are the state
    buffers' views in fp32 (fp64): :func:`multi_fwd` converts them once the launch has run."""
    cell, T, B, H, dtype, dev = call.cell, call.T, call.B, call.H, call.dtype, gx.device
    if call.P != H:
        raise ValueError(f"tiers 2 and 3 need a square W_hh per gate (no projection), got {tuple(call.w_hh.shape)}")
    acc = acc_dtype(dtype)
    gx, w_hh = row_major(gx), call.w_hh.contiguous()
    hbuf = torch.empty((2, B, H), dtype=acc, device=dev)  # slot s % 2 holds h after step s; slot 1 starts as h0
    hbuf[1] = 0 if call.h0 is None else call.h0
    cbuf = None
    if cell.has_cell_state:
        cbuf = torch.zeros((B, H), dtype=acc, device=dev) if call.c0 is None else call.c0.to(acc, copy=True).contiguous()
    outputs = allocate(forward_shapes(call), lambda shape, dt: _runtime.empty(shape, dt, dev))
    res = ForwardResult(outputs["out"], hbuf[(T - 1) % 2 if T > 0 else 1], cbuf, outputs["saved"], None, outputs["cs"])
    if call.empty:
        return None, res
    bh = call.b_hh if cell.inner_bias else None
    out, saved, cs = res.out, res.saved, res.cs
    args = [
        gx, *strides(gx),
        w_hh, w_hh.stride(0), H * w_hh.stride(0),
        bh,
        call.lengths,
        hbuf, *strides(hbuf),
        cbuf, *strides(cbuf, 1),
        out, *strides(out),
        saved, *strides(saved),
        cs, *strides(cs),
    ]  # fmt: skip
    consts = dict(**flags(bh=bh), IS_VARLEN=call.lengths is not None, REVERSE=call.reverse, SAVE=call.saving,
                  STORE_C=cs is not None, **_consts(cell, dtype, cfg, call.precision))  # fmt: skip
    return MultiLaunch(_multi_fwd_kernel, ("multi_fwd_tier2", "multi_fwd_tier3"), args, consts, T, T, B, H,
                       FALLBACK_HINT), res  # fmt: skip


def multi_fwd(call: RecurrenceCall, gx: torch.Tensor, cfg: MultiConfig, *, tier: int = 2,
              cooperative: bool | None = None, max_spin: int = MAX_SPIN) -> ForwardResult:  # fmt: skip
    """Tier 2/3 forward of one layer/direction; arguments and result as
    :func:`fastrnn.kernels.tier1.recurrent_fwd` (no projection: ``P == H``), ``cfg`` from
    :func:`fastrnn.kernels.tiers.plan`.

    ``tier=2``: one persistent launch, cooperative unless ``cooperative=False`` (a plain launch:
    co-residency is then hoped for, not guaranteed, so the timeout flag is always read and a
    failed barrier raises :class:`~.grid.BarrierTimeout`); ``tier=3``: one launch per step.  In the
    interpreter both run per-step launches (tier 2 with its resident weights).

    Example::

        gx = torch.randn(5, 3, 4 * 40); w = torch.randn(4 * 40, 40)
        res = multi_fwd(RecurrenceCall("LSTM", 5, 3, w), gx, multi_config("LSTM", 40, gx.dtype, 3), tier=3)
    """
    _runtime.check_device(gx.device)
    launch, res = forward_launch(call, gx, cfg)
    if launch is not None:
        run(launch, tier == 2, gx.device, cooperative, max_spin)
    res.h_n = res.h_n.to(call.dtype)
    res.c_n = res.c_n.to(call.dtype) if res.c_n is not None else None
    return res


def backward_launch(call: RecurrenceCall, grads: Gradients, cfg: MultiConfig) -> tuple[MultiLaunch | None, BackwardResult]:
    """The launch of :func:`multi_bwd` and its outputs (``d_h0``/``d_c0`` are its state buffers)."""
    cell, T, B, H, dtype, dev = call.cell, call.T, call.B, call.H, call.dtype, grads.out.device
    acc = acc_dtype(dtype)
    d_out, h0, c0, w_hh = row_major(grads.d_out), row_major(call.h0), row_major(call.c0), call.w_hh.contiguous()
    d_cs = row_major(grads.d_cs) if cell.has_cell_state else None
    dhbuf = grads.d_hn.to(acc, copy=True).contiguous()
    dcbuf = None
    if cell.has_cell_state:
        d_cn = grads.d_cn
        dcbuf = d_cn.to(acc, copy=True).contiguous() if d_cn is not None else torch.zeros((B, H), dtype=acc, device=dev)
    shapes = backward_shapes(call)
    outputs = allocate({k: shapes[k] for k in ("d_gx", "d_gh_inner")}, lambda shape, dt: _runtime.empty(shape, dt, dev))
    res = BackwardResult(outputs["d_gx"], outputs["d_gh_inner"], None, dhbuf, dcbuf)
    if call.empty:
        return None, res
    h0 = h0 if cell.reads >= {"h_prev"} else None  # the backward reads h0 only as h_prev of step 0
    args = [
        d_out, *strides(d_out),
        grads.out, *strides(grads.out),
        grads.saved, *strides(grads.saved),
        h0, *strides(h0, 1),
        c0, *strides(c0, 1),
        w_hh, w_hh.stride(0), H * w_hh.stride(0),
        call.lengths,
        dhbuf, *strides(dhbuf, 1),
        dcbuf, *strides(dcbuf, 1),
        d_cs, *strides(d_cs),
        res.d_gx, *strides(res.d_gx),
        res.d_gh_inner, *strides(res.d_gh_inner),
    ]  # fmt: skip
    consts = dict(**flags(h0=h0, c0=c0, dcs=d_cs), IS_VARLEN=call.lengths is not None, REVERSE=call.reverse,
                  **_consts(cell, dtype, cfg, call.precision))  # fmt: skip
    return MultiLaunch(_multi_bwd_kernel, ("multi_bwd_tier2", "multi_bwd_tier3"), args, consts, T + 1, T, B, H,
                       FALLBACK_HINT), res  # fmt: skip


def multi_bwd(call: RecurrenceCall, grads: Gradients, cfg: MultiConfig, *, tier: int = 2,
              cooperative: bool | None = None, max_spin: int = MAX_SPIN) -> BackwardResult:  # fmt: skip
    """Tier 2/3 backward; arguments and result as :func:`fastrnn.kernels.tier1.recurrent_bwd`
    (no projection), ``tier``/``cooperative``/``max_spin`` as :func:`multi_fwd`."""
    launch, res = backward_launch(call, grads, cfg)
    if launch is not None:
        run(launch, tier == 2, grads.out.device, cooperative, max_spin)
    return res


def _register(number: int, name: str, rank: float, automatic: bool, compiled, barriers_per_step: int) -> None:
    def config(mode, hidden_size, proj_size, dtype, kernel, smem_bytes, precision):
        return multi_config(mode, hidden_size, dtype, number, kernel, smem_bytes, precision)

    tiers.register(
        tiers.Tier(
            number=number,
            name=name,
            rank=rank,
            config_type=MultiConfig,
            unsupported=functools.partial(multi_unsupported, number),
            config=config,
            describe=describe,
            forward=functools.partial(multi_fwd, tier=number),
            backward=functools.partial(multi_bwd, tier=number),
            forward_launch=forward_launch,
            backward_launch=backward_launch,
            compiled=compiled,
            automatic=automatic,
            barriers_per_step=barriers_per_step,
            device_sources=("cells.py", "common.py", "persistent.py"),
        )
    )


def _sync_meta(launch: MultiLaunch) -> torch.Tensor:
    """A stand-in for the barrier buffer of ``launch`` (the report compiles without running)."""
    return torch.empty(32 * (launch.n_tiles + 1), dtype=torch.int32, device="meta")


# tier 2: the whole loop in one cooperative launch (a grid barrier per step); falls back to tier 3
# at launch when the GPU cannot hold the grid.  Tier 3: the same body, one launch per step.
_register(2, "multi-program persistent", 2, True,
          lambda launch: (launch.kernel, *launch.persistent(_sync_meta(launch), launch.n_tiles)), 1)  # fmt: skip
_register(3, "per step", 3, False, lambda launch: (launch.kernel, *launch.step(_sync_meta(launch), 0)), 0)
