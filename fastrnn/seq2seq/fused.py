"""Fused Triton kernels of the static decoding step (:mod:`fastrnn.seq2seq.static`), used on CUDA.

Why these: counted per decoded token (``B`` sources, ``R`` rows each), the step's operations are
the decoder's cells (three launches per layer on CUDA: two GEMMs and ``torch``'s fused cell),
the output layer, attention (on torch ops: a query GEMM, then scores, mask, softmax and
context: 4-8 launches) and the search's own bookkeeping (log-softmax, argmax, masks, counters:
about a dozen launches for greedy decoding; top-``K``, candidates, the greedy row, back-pointers
and the stopping rule: about fifty for beam search).  Each launch costs a few microseconds of
GPU time even inside a CUDA graph, so the bookkeeping and attention are fused here:

* :func:`attend_kernel`: one step's attention, one program per row: scores against the keys
  (Luong ``dot``; ``general`` with ``W`` folded into the keys once per call; additive scores
  ``v . tanh(W_q q + W_k k)`` for ``concat`` and Bahdanau, ``W_k k`` projected once per call),
  masked online softmax and the context; it writes ``[ctx; h]``, the output layer's input.
* :func:`row_stats_kernel` + :func:`greedy_select_kernel` / :func:`beam_select_kernel`: the
  search's step in two launches.  The first splits every row of logits into chunks (enough
  programs to fill the GPU) and writes per chunk its maximum, the sum of ``exp`` (for the
  log-softmax), its argmax and, for beam search, its top-``K`` tokens other than ``<eos>``.  The
  second runs one program per source: log-softmax normaliser per row, then greedy decoding's
  argmax and bookkeeping, or beam search's whole step (finished candidates, the best ``K`` of
  the ``K x V`` extensions -- the best ``K`` of the rows' chunks' top-``K``, since a row adds
  one constant to all its tokens --, the greedy row, back-pointers, the stopping rule).
* :func:`backtrace_kernel`: the best hypotheses from the back-pointers, once per call (one
  program per source instead of four launches per output token).

Every kernel is tested against the torch ops it replaces (``tests/test_seq2seq_static.py``, in
Triton's interpreter on the CPU).  Ties: the kernels take the smallest index among equal
values (flattened ``row * V + token`` for the top-``K``), and compare logits where the torch ops
compare log-probabilities, so a tie within rounding can resolve the other way.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

# (importing fastrnn has already imported _runtime, which decides compiled vs interpreted kernels)
from fastrnn.kernels import _runtime

from .data import EOS, PAD
from .search import Hypotheses

#: Logit columns per program of :func:`row_stats_kernel` (smaller for a small vocabulary).
CHUNK = 1024
#: Elements of one register tile of :func:`attend_kernel` (rows of keys x features).
ATTEND_TILE = 8192


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@triton.jit
def _tanh(x):
    # tanh from exp (no libdevice in the interpreter); exact at the saturated ends
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -y, y)


@triton.jit
def attend_kernel(
    q_ptr, s_q,  # (N, D) the query rows (the top layer's output)
    keys_ptr, sk_b, sk_s,  # (B, S, D) keys to score against (dot/general), or unused
    qa_ptr, s_qa,  # (N, A) W_q q (additive), or unused
    pk_ptr, spk_b, spk_s,  # (B, S, A) W_k k + b (additive), or unused
    v_ptr,  # (A,) the additive score's v
    mem_ptr, sm_b, sm_s,  # (B, S, KD) values (the encoder's outputs)
    mask_ptr, s_mask,  # (B, S) uint8, 1 at real tokens
    out_ptr, s_out,  # (N, KD + D): context, then (COPY_Q) the query
    S, D, A, KD, R,
    ADDITIVE: tl.constexpr, COPY_Q: tl.constexpr, BLOCK_S: tl.constexpr,
    D_PAD: tl.constexpr, A_PAD: tl.constexpr, K_PAD: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    b = n // R
    ks = tl.arange(0, K_PAD)
    kv = ks < KD
    d = tl.arange(0, D_PAD)
    dv = d < D
    q = tl.load(q_ptr + n * s_q + d, mask=dv, other=0.0).to(tl.float32)
    a = tl.arange(0, A_PAD)
    av = a < A
    if ADDITIVE:
        qa = tl.load(qa_ptr + n * s_qa + a, mask=av, other=0.0).to(tl.float32)
        vv = tl.load(v_ptr + a, mask=av, other=0.0).to(tl.float32)
    acc = tl.zeros([K_PAD], dtype=tl.float32)
    m_run = tl.max(tl.full([BLOCK_S], float("-inf"), tl.float32), 0)
    l_run = tl.sum(tl.zeros([BLOCK_S], dtype=tl.float32), 0)
    for s0 in range(0, S, BLOCK_S):
        ss = s0 + tl.arange(0, BLOCK_S)
        sv = ss < S
        real = tl.load(mask_ptr + b * s_mask + ss, mask=sv, other=0) != 0
        if ADDITIVE:
            pk = tl.load(
                pk_ptr + b * spk_b + ss[:, None] * spk_s + a[None, :], mask=sv[:, None] & av[None, :], other=0.0
            )
            sc = tl.sum(_tanh(qa[None, :] + pk.to(tl.float32)) * vv[None, :], 1)
        else:
            kq = tl.load(
                keys_ptr + b * sk_b + ss[:, None] * sk_s + d[None, :], mask=sv[:, None] & dv[None, :], other=0.0
            )
            sc = tl.sum(kq.to(tl.float32) * q[None, :], 1)
        sc = tl.where(real, sc, float("-inf"))
        m_new = tl.maximum(m_run, tl.max(sc, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_run - m_safe)
        p = tl.exp(sc - m_safe)
        l_run = l_run * alpha + tl.sum(p, 0)
        mem = tl.load(mem_ptr + b * sm_b + ss[:, None] * sm_s + ks[None, :], mask=sv[:, None] & kv[None, :], other=0.0)
        acc = acc * alpha + tl.sum(p[:, None] * mem.to(tl.float32), 0)
        m_run = m_new
    ctx = acc / l_run
    tl.store(out_ptr + n * s_out + ks, ctx.to(out_ptr.dtype.element_ty), mask=kv)
    if COPY_Q:
        tl.store(out_ptr + n * s_out + KD + d, q.to(out_ptr.dtype.element_ty), mask=dv)


@triton.jit
def row_stats_kernel(
    logits_ptr, s_row,  # (N, V)
    stats_ptr,  # (N, C, 2) fp32: the chunk's max, sum of exp(x - max)
    arg_ptr,  # (N, C) int32: the chunk's argmax (a vocabulary index)
    cval_ptr, cidx_ptr,  # (N, C, TOPK) fp32 / int32: the chunk's top-TOPK other than <eos>
    t_ptr,  # (1,) int64: the search's step counter, advanced here once (program (0, 0))
    V, C,
    EOS: tl.constexpr, CHUNK: tl.constexpr, TOPK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    c = tl.program_id(1)
    j = tl.arange(0, CHUNK)
    offs = c * CHUNK + j
    valid = offs < V
    x = tl.load(logits_ptr + row * s_row + offs, mask=valid, other=float("-inf")).to(tl.float32)
    m = tl.max(x, 0)
    se = tl.sum(tl.where(valid, tl.exp(x - m), 0.0), 0)
    at = row * C + c
    tl.store(stats_ptr + at * 2, m)
    tl.store(stats_ptr + at * 2 + 1, se)
    tl.store(arg_ptr + at, c * CHUNK + tl.argmax(x, 0, tie_break_left=True))
    if TOPK > 0:
        y = tl.where(offs == EOS, float("-inf"), x)
        for k in tl.static_range(TOPK):
            i = tl.argmax(y, 0, tie_break_left=True)
            tl.store(cval_ptr + at * TOPK + k, tl.max(y, 0))
            tl.store(cidx_ptr + at * TOPK + k, c * CHUNK + i)
            y = tl.where(j == i, float("-inf"), y)
    if (row == 0) & (c == 0):
        tl.store(t_ptr, tl.load(t_ptr) + 1)


@triton.jit
def _row_normaliser(stats_ptr, row, C, cs, cv):
    """``(max, log-sum-exp, chunk of the max)`` of one row from its chunks' statistics."""
    m = tl.load(stats_ptr + (row * C + cs) * 2, mask=cv, other=float("-inf"))
    se = tl.load(stats_ptr + (row * C + cs) * 2 + 1, mask=cv, other=0.0)
    big = tl.max(m, 0)
    lse = big + tl.log(tl.sum(se * tl.exp(m - big), 0))
    return big, lse, tl.argmax(m, 0, tie_break_left=True)


@triton.jit
def greedy_select_kernel(
    stats_ptr, arg_ptr, C,
    y_ptr, finished_ptr, lengths_ptr, scores_ptr, tokens_ptr, s_tok, t_ptr,
    EOS: tl.constexpr, PAD: tl.constexpr, C_PAD: tl.constexpr,
):  # fmt: skip
    """Greedy decoding's step for one source (see ``GreedySearch.advance``)."""
    b = tl.program_id(0)
    cs = tl.arange(0, C_PAD)
    big, lse, cbest = _row_normaliser(stats_ptr, b, C, cs, cs < C)
    tok = tl.load(arg_ptr + b * C + cbest).to(tl.int64)
    t = tl.load(t_ptr) - 1  # row_stats_kernel advanced it
    fin = tl.load(finished_ptr + b) != 0
    y = tl.where(fin, PAD, tok)
    tl.store(scores_ptr + b, tl.load(scores_ptr + b) + tl.where(fin, 0.0, big - lse))
    tl.store(lengths_ptr + b, tl.load(lengths_ptr + b) + tl.where(fin, 0, 1))
    tl.store(tokens_ptr + b * s_tok + t, y)
    tl.store(finished_ptr + b, (fin | (y == EOS)).to(tl.uint8))
    tl.store(y_ptr + b, y)


@triton.jit
def beam_select_kernel(
    logits_ptr, s_row, stats_ptr, arg_ptr, cval_ptr, cidx_ptr, C, V,
    score_ptr, alive_ptr, tokens_ptr, parents_ptr, s_step,
    best_ptr, best_raw_ptr, best_step_ptr, best_row_ptr, best_len_ptr, best_eos_ptr, done_ptr,
    y_ptr, rows_ptr, t_ptr, pen_rank_ptr, pen_bound_ptr,
    K: tl.constexpr, R_PAD: tl.constexpr, C_PAD: tl.constexpr, TOPK: tl.constexpr, CAND_PAD: tl.constexpr,
    EOS: tl.constexpr, PAD: tl.constexpr,
):  # fmt: skip
    """Beam search's step for one source (see ``BeamSearch.advance``): rows ``b * R .. b * R + K``."""
    b = tl.program_id(0)
    R: tl.constexpr = K + 1
    G: tl.constexpr = K
    t = tl.load(t_ptr) - 1  # row_stats_kernel advanced it
    rs = tl.arange(0, R_PAD)
    rv = rs < R
    first = b * R
    cs = tl.arange(0, C_PAD)
    cv = cs < C
    # every row's log-softmax normaliser
    at = (first + rs)[:, None] * C + cs[None, :]
    m = tl.load(stats_ptr + at * 2, mask=rv[:, None] & cv[None, :], other=float("-inf"))
    se = tl.load(stats_ptr + at * 2 + 1, mask=rv[:, None] & cv[None, :], other=0.0)
    big = tl.where(rv, tl.max(m, 1), 0.0)
    lse = tl.where(rv, big + tl.log(tl.where(rv, tl.sum(se * tl.exp(m - big[:, None]), 1), 1.0)), 0.0)
    score = tl.load(score_ptr + first + rs, mask=rv, other=float("-inf"))
    # every live row ending here: finished candidates of length t + 1
    x_eos = tl.load(logits_ptr + (first + rs) * s_row + EOS, mask=rv, other=0.0).to(tl.float32)
    ended = tl.where(rv, score + (x_eos - lse), float("-inf"))
    rank_r = tl.where(rv, ended / tl.load(pen_rank_ptr + t), float("-inf"))
    rank = tl.max(rank_r, 0)
    row = tl.argmax(rank_r, 0, tie_break_left=True)
    raw = tl.sum(tl.where(rs == row, ended, 0.0), 0)
    best = tl.load(best_ptr + b)
    best_step = tl.load(best_step_ptr + b)
    done = tl.load(done_ptr + b) != 0
    take = ((rank > best) | (best_step < -1)) & (tl.load(done_ptr + b) == 0)
    best = tl.where(take, rank, best)
    best_step = tl.where(take, t - 1, best_step)
    tl.store(best_ptr + b, best)
    tl.store(best_raw_ptr + b, tl.where(take, raw, tl.load(best_raw_ptr + b)))
    tl.store(best_row_ptr + b, tl.where(take, row.to(tl.int64), tl.load(best_row_ptr + b)))
    tl.store(best_step_ptr + b, best_step)
    tl.store(best_len_ptr + b, tl.where(take, t + 1, tl.load(best_len_ptr + b)))
    tl.store(best_eos_ptr + b, tl.where(take, 1, tl.load(best_eos_ptr + b)).to(tl.uint8))
    # the greedy row: its argmax (<eos> included); it stops at <eos>
    g_big, g_lse, g_chunk = _row_normaliser(stats_ptr, first + G, C, cs, cv)
    g_tok = tl.load(arg_ptr + (first + G) * C + g_chunk).to(tl.int64)
    alive = (tl.load(alive_ptr + b) != 0) & (g_tok != EOS)
    g_score = tl.where(alive, tl.sum(tl.where(rs == G, score, 0.0), 0) + (g_big - g_lse), float("-inf"))
    g_tok = tl.where(alive, g_tok, PAD)
    tl.store(alive_ptr + b, alive.to(tl.uint8))
    # the K best extensions of the beams by another token than <eos>: the best of the chunks' best
    PER_ROW = C * TOPK
    j = tl.arange(0, CAND_PAD)
    jv = j < K * PER_ROW
    jr = j // PER_ROW
    val = tl.load(cval_ptr + first * PER_ROW + j, mask=jv, other=float("-inf"))
    tok = tl.load(cidx_ptr + first * PER_ROW + j, mask=jv, other=0).to(tl.int64)
    pick = jr[:, None] == rs[None, :]
    row_score = tl.sum(tl.where(pick, score[None, :], 0.0), 1)
    row_lse = tl.sum(tl.where(pick, lse[None, :], 0.0), 1)
    total = tl.where(jv, row_score + (val - row_lse), float("-inf"))
    flat = jr.to(tl.int64) * V + tok
    new_score = tl.where(rs == G, g_score, float("-inf"))
    new_tok = tl.where(rs == G, g_tok, PAD).to(tl.int64)
    new_parent = tl.where(rs == G, G, 0).to(tl.int64)
    big_flat = K * V
    for k in tl.static_range(K):
        v = tl.max(total, 0)
        f = tl.min(tl.where(total == v, flat, big_flat), 0)
        new_score = tl.where(rs == k, v, new_score)
        new_tok = tl.where(rs == k, f % V, new_tok)
        new_parent = tl.where(rs == k, f // V, new_parent)
        total = tl.where(flat == f, float("-inf"), total)
        flat = tl.where(flat == f, big_flat, flat)
    tl.store(score_ptr + first + rs, new_score, mask=rv)
    tl.store(tokens_ptr + t * s_step + first + rs, new_tok, mask=rv)
    tl.store(parents_ptr + t * s_step + first + rs, new_parent, mask=rv)
    tl.store(rows_ptr + first + rs, first + new_parent, mask=rv)
    tl.store(y_ptr + first + rs, new_tok, mask=rv)
    # the stopping rule: the best rank a live row can still reach
    reach = tl.max(tl.where(rv, new_score, float("-inf")), 0) / tl.load(pen_bound_ptr + t)
    tl.store(done_ptr + b, (done | ((best_step > -2) & (best >= reach))).to(tl.uint8))


@triton.jit
def backtrace_kernel(
    tokens_ptr, parents_ptr, s_step, R,
    best_row_ptr, best_step_ptr, best_len_ptr, best_eos_ptr,
    out_ptr, s_out, n,
    EOS: tl.constexpr, PAD: tl.constexpr,
):  # fmt: skip
    """One source's best hypothesis from the back-pointers (``out`` is filled with ``<pad>``)."""
    b = tl.program_id(0)
    ptr = tl.load(best_row_ptr + b)
    last_step = tl.load(best_step_ptr + b)
    for i in range(0, n):
        t = n - 1 - i
        on = last_step >= t
        at = t * s_step + b * R + ptr
        tl.store(out_ptr + b * s_out + t, tl.where(on, tl.load(tokens_ptr + at), PAD))
        ptr = tl.where(on, tl.load(parents_ptr + at), ptr)
    if tl.load(best_eos_ptr + b) != 0:
        tl.store(out_ptr + b * s_out + tl.load(best_len_ptr + b) - 1, EOS)


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


class StepKernels:
    """The fused kernels of one :class:`~fastrnn.seq2seq.static.StaticStep` and their scratch buffers."""

    def __init__(self, st: Any) -> None:
        self.st = st
        w, dev = st.w, st.device
        N = st.B * st.R
        self.V = V = w.out_w.shape[0]
        self.chunk = min(CHUNK, _pow2(V))
        self.C = C = -(-V // self.chunk)
        self.topk = st.K
        f32, i32 = torch.float32, torch.int32
        self.stats = torch.zeros(N, C, 2, dtype=f32, device=dev)
        self.arg = torch.zeros(N, C, dtype=i32, device=dev)
        self.cval = torch.zeros(N, C, max(self.topk, 1), dtype=f32, device=dev)
        self.cidx = torch.zeros(N, C, max(self.topk, 1), dtype=i32, device=dev)
        self.cat = self.kq = None
        if w.attention is not None:
            H, KD = w.hidden_size, st.memory.shape[-1]
            self.key_size = KD
            self.cat = torch.zeros(N, KD + H, dtype=w.dtype, device=dev)
            if w.attention == "general":
                self.kq = torch.zeros(st.B, st.S, H, dtype=w.dtype, device=dev)
            elif w.attention == "dot":
                self.kq = st.memory
            self.qa = torch.zeros(N, w.add_q.shape[0], dtype=w.dtype, device=dev) if w.add_q is not None else None

    @torch.no_grad()
    def prepare(self) -> None:
        """Per call: ``general``'s ``W`` folded into the keys (``score = h . (W^T k)``)."""
        st = self.st
        if st.w.attention == "general":
            torch.matmul(st.memory, st.w.att_w, out=self.kq)

    @torch.no_grad()
    def attend(self, out: torch.Tensor) -> torch.Tensor:
        """The context of ``out (N, H)``, written into ``cat[:, :K]`` (and ``out`` into ``cat[:, K:]``
        for Luong attention, whose readout takes the same ``h``); returns that context."""
        st, w = self.st, self.st.w
        N, H, KD = out.shape[0], out.shape[1], self.key_size
        additive = w.add_q is not None
        if additive:
            torch.matmul(out, w.add_q.t(), out=self.qa)
        S = st.S
        A = w.add_q.shape[0] if additive else 1
        keys = self.kq if not additive else st.memory
        pk = st.pk if additive else st.memory
        qa = self.qa if additive else out
        v = w.add_v.reshape(-1) if additive else out
        widest = max(_pow2(H), _pow2(KD), _pow2(A))
        block_s = max(1, min(64, ATTEND_TILE // widest, _pow2(S)))
        attend_kernel[(N,)](
            out, out.stride(0), keys, keys.stride(0), keys.stride(1), qa, qa.stride(0), pk, pk.stride(0),
            pk.stride(1), v, st.memory, st.memory.stride(0), st.memory.stride(1), _u8(st.mask),
            st.mask.stride(0), self.cat, self.cat.stride(0), S, H, A, KD, st.R,
            ADDITIVE=additive, COPY_Q=w.attention != "bahdanau", BLOCK_S=block_s, D_PAD=_pow2(H),
            A_PAD=_pow2(A), K_PAD=_pow2(KD),
        )  # fmt: skip
        _runtime.count_launch("seq2seq.attend")
        return self.cat[:, :KD]

    def readout_input(self, out: torch.Tensor) -> torch.Tensor:
        """``[ctx; out]`` for the combine layer (Bahdanau's ``out`` is the feed cell's, copied in)."""
        if self.st.w.attention == "bahdanau":
            self.cat[:, self.key_size :].copy_(out)
        return self.cat

    @torch.no_grad()
    def select(self, logits: torch.Tensor) -> None:
        """The search's step on ``logits (N, V)`` (see ``GreedySearch``/``BeamSearch.advance``)."""
        st, search = self.st, self.st.search
        N, V, C = logits.shape[0], self.V, self.C
        row_stats_kernel[(N, C)](
            logits, logits.stride(0), self.stats, self.arg, self.cval, self.cidx, search.t, V, C,
            EOS=EOS, CHUNK=self.chunk, TOPK=self.topk,
        )  # fmt: skip
        _runtime.count_launch("seq2seq.row_stats")
        if not st.K:
            greedy_select_kernel[(st.B,)](
                self.stats, self.arg, C, search.y, _u8(search.finished), search.lengths, search.scores,
                search.tokens, search.tokens.stride(0), search.t, EOS=EOS, PAD=PAD, C_PAD=_pow2(C),
            )  # fmt: skip
            _runtime.count_launch("seq2seq.greedy_select")
            return
        K = st.K
        beam_select_kernel[(st.B,)](
            logits, logits.stride(0), self.stats, self.arg, self.cval, self.cidx, C, V,
            search.score, _u8(search.greedy_alive), search.tokens, search.parents, search.tokens.stride(0),
            search.best, search.best_raw, search.best_step, search.best_row, search.best_len,
            _u8(search.best_eos), _u8(search.done), search.y, search.rows, search.t, search.pen_rank,
            search.pen_bound, K=K, R_PAD=_pow2(K + 1), C_PAD=_pow2(C), TOPK=K, CAND_PAD=_pow2(K * C * K),
            EOS=EOS, PAD=PAD,
        )  # fmt: skip
        _runtime.count_launch("seq2seq.beam_select")

    @torch.no_grad()
    def backtrace(self, steps: int) -> Hypotheses:
        """The best hypothesis per source (after ``BeamSearch``'s final offer), in one launch."""
        search = self.st.search
        B = search.B
        width = int(search.best_len.max())  # the one host sync
        out = torch.full((B, width), PAD, dtype=torch.int64, device=search.score.device)
        backtrace_kernel[(B,)](
            search.tokens, search.parents, search.tokens.stride(0), search.R, search.best_row, search.best_step,
            search.best_len, _u8(search.best_eos), out, out.stride(0), min(width, steps), EOS=EOS, PAD=PAD,
        )  # fmt: skip
        _runtime.count_launch("seq2seq.backtrace")
        return Hypotheses(out, search.best_len.clone(), search.best_raw.clone())


__all__ = [
    "StepKernels",
    "attend_kernel",
    "row_stats_kernel",
    "greedy_select_kernel",
    "beam_select_kernel",
    "backtrace_kernel",
]
