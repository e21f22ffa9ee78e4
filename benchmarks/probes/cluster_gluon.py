"""Probe: a Gluon thread-block-cluster RNN step for sm_90, compiled on a CPU machine.

A persistent tanh RNN over one cluster of ``C`` CTAs (Gluon's ``num_ctas``: one Gluon program is
the whole cluster; a tensor's ``cga_layout`` says how it is spread over the CTAs):

* ``W_hh`` (H x H, fp16, torch's (out, in) orientation) lives in shared memory, split by output
  rows: CTA ``c`` holds rows ``[c*H/C, (c+1)*H/C)`` (``cga_layout`` bases along dim 0).  It is
  the A operand of the wgmma ``acc^T (H/C x B) = W_slice (H/C x H) @ h^T (H x B)``, so each CTA
  needs H/C >= 64 (one warpgroup's wgmma M).
* ``h^T`` (H x B, fp16) is replicated in every CTA's shared memory (``cga_layout`` of zero bases:
  the "multicast" layout), double-buffered (step ``t`` reads buffer ``t % 2``, writes the other).
* every step: ``acc = gx_t^T + W_slice @ h^T`` (wgmma), ``h_t[:, slice] = tanh(acc)``, store of
  the slice to ``out`` (global), then the exchange of ``h_t`` into every CTA's next buffer:

  ``async``   (3.9) ``hopper.async_store`` (PTX ``st.async.shared::cluster.mbarrier::complete_tx``)
              of the CTA's slice, broadcast to C x H x B, into a C x H x B gather buffer whose
              block d lives in CTA d (and is CTA d's h^T, via ``reinterpret``); each CTA waits on
              its own mbarrier (``mbarrier.expect`` of the whole h's bytes).  No cluster barrier
              per step.
  ``async_local`` the same ``hopper.async_store`` with the split ``h`` straight into the replicated
              buffer: compiles, but each CTA writes only its own copy (``mapa`` to its own rank) --
              no exchange; kept to show that the exchange has to be written in the layouts.
  ``convert`` ``ttgl.convert_layout`` of the split h to the replicated layout (the compiler moves
              it through distributed shared memory), a local store into the next buffer.
  ``store``   ``smem.store`` of the split h straight into the replicated buffer, then
              ``cluster.barrier()``: compiles, but like ``async_local`` stays local (no exchange).
  ``global``  the slice to a global scratch, ``cluster.barrier()``, the whole h loaded back (the
              fallback without distributed shared memory; same scheme as tier 2, without atomics).

Prints per build what the compiled code shows (time loop only): wgmma, DSMEM (``st.async``,
``ld/st.shared::cluster``, ``mapa``), cluster barriers (``barrier.cluster`` / SASS
``UCGABAR_ARV``/``UCGABAR_WAIT``), mbarrier waits (``SYNCS``), global traffic, membars,
registers/spills, shared memory, cluster dims -- or the exact error.

Usage::

    python benchmarks/probes/cluster_gluon.py                         # triton 3.9 (installed here)
    /opt/venv36/bin/python benchmarks/probes/cluster_gluon.py         # triton 3.6 (its own venv)
    python benchmarks/probes/cluster_gluon.py --modes async --hidden 256 --ctas 4 --dump /tmp/g
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton  # noqa: E402
from cluster_num_ctas import analyse, show  # noqa: E402  (same directory)
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as ttgl  # noqa: E402
from triton.experimental.gluon.language.nvidia import ampere, hopper  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import mbarrier  # noqa: E402

HAS_CLUSTER_API = hasattr(hopper, "cluster")  # triton >= 3.7-ish: hopper.cluster.barrier, async_store
MODES = ("async", "async_local", "convert", "store", "global")


def cga_bases(num_ctas: int, rank: int, dim: int | None = None) -> list[list[int]]:
    """CGA bases: CTA bit i on dimension ``dim`` (each CTA one contiguous block along it), or all
    zeros for ``dim=None`` (every CTA holds the whole tensor: the replicated/"multicast" layout)."""
    return [[(1 << i) if d == dim else 0 for d in range(rank)] for i in range(num_ctas.bit_length() - 1)]


def layouts(hidden: int, bb: int, num_ctas: int) -> dict:
    """Every layout of the kernel, built in Python and passed as constexpr arguments (the same code
    then compiles with triton 3.6, whose constexpr functions differ, and 3.9)."""
    C = num_ctas
    h_sl = ttgl.NVMMASharedLayout.get_default_for([hidden, bb], ttgl.float16, cga_layout=cga_bases(C, 2))
    return dict(
        # wgmma accumulator (H x BB) of one warpgroup, rows split over the CTAs
        ACC_L=ttgl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, bb, 16], cga_layout=cga_bases(C, 2, 0)
        ),
        REP_L=ttgl.BlockedLayout([1, 1], [32, 1], [4, 1], [0, 1], cga_layout=cga_bases(C, 2)),  # replicated
        V_L=ttgl.BlockedLayout([1, 1, 1], [1, 32, 1], [1, 4, 1], [2, 1, 0], cga_layout=cga_bases(C, 3, 1)),
        W_L=ttgl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0], cga_layout=cga_bases(C, 2, 0)),
        W_SL=ttgl.NVMMASharedLayout.get_default_for([hidden, hidden], ttgl.float16, cga_layout=cga_bases(C, 2, 0)),
        H_SL=h_sl,
        # (C x H x BB) gather target: CTA d holds block d, an H x BB tile swizzled like H_SL
        G_SL=ttgl.NVMMASharedLayout(
            swizzle_byte_width=h_sl.swizzle_byte_width, element_bitwidth=16, rank=3, cga_layout=cga_bases(C, 3, 0)
        ),
        BAR_L=mbarrier.MBarrierLayout(cga_layout=cga_bases(C, 1, 0)),  # one mbarrier in every CTA
    )


LAYOUT_ARGS = ("ACC_L", "REP_L", "V_L", "W_L", "W_SL", "H_SL", "G_SL", "BAR_L")


if HAS_CLUSTER_API:

    @gluon.jit
    def _cluster_barrier():
        if ttgl.num_ctas() > 1:
            hopper.cluster.barrier()

else:  # triton 3.6: no cluster barrier in Gluon; the PTX by hand

    @gluon.jit
    def _cluster_barrier():
        if ttgl.num_ctas() > 1:
            ttgl.inline_asm_elementwise(
                "barrier.cluster.arrive.aligned; barrier.cluster.wait.aligned; mov.u32 $0, 0;",
                "=r",
                [],
                dtype=ttgl.int32,
                is_pure=False,
                pack=1,
            )


#: CTA-wide barrier: ``ttgl.barrier()`` in 3.9, ``ttgl.thread_barrier()`` in 3.6.
_cta_barrier = getattr(ttgl, "barrier", None) or ttgl.thread_barrier

#: ``hopper.async_store`` (st.async into a CTA's shared memory); ``None`` in triton 3.6, which has no such op.
_async_store = getattr(hopper, "async_store", None)


@gluon.jit
def _step(
    t,
    W_s,
    h_cur,
    h_nxt,
    g_nxt,
    bar_nxt,
    phase,
    gx_ptr,
    out_ptr,
    scr_ptr,
    B,
    H: ttgl.constexpr,
    BB: ttgl.constexpr,
    MODE: ttgl.constexpr,
    ACC_L: ttgl.constexpr,
    REP_L: ttgl.constexpr,
    V_L: ttgl.constexpr,
):
    C: ttgl.constexpr = ttgl.num_ctas()
    j = ttgl.arange(0, H, layout=ttgl.SliceLayout(1, ACC_L))[:, None]  # hidden unit (row of acc^T)
    b = ttgl.arange(0, BB, layout=ttgl.SliceLayout(0, ACC_L))[None, :]  # sequence (column)
    gx = ttgl.load(gx_ptr + t * B * H + b * H + j)  # gx_t^T, this CTA's rows only (fp32)
    acc = hopper.warpgroup_mma(W_s, h_cur, gx)  # (H x B) split by rows: W_slice @ h^T
    e = ttgl.exp(-2.0 * ttgl.abs(acc))
    th = (1.0 - e) / (1.0 + e)
    hn = ttgl.where(acc < 0, -th, th).to(ttgl.float16)
    ttgl.store(out_ptr + t * B * H + b * H + j, hn)
    if MODE == "async":
        # all-gather written as one store whose layouts differ only in the CTA bases: the value
        # V[d, j, b] = h[j, b] (C x H x B) lives in the CTA that owns row j (CGA bases on dim 1,
        # replicated along d in registers); its destination G[d, j, b] lives in CTA d (bases on
        # dim 0).  G's per-CTA block (1 x H x B) is that CTA's h^T, the next step's wgmma B operand.
        h2 = ttgl.convert_layout(hn, ttgl.SliceLayout(0, V_L))  # same CTA owns the same rows: local
        v = ttgl.broadcast(ttgl.expand_dims(h2, 0), ttgl.full([C, H, BB], 0.0, ttgl.float16, V_L))[0]
        mbarrier.expect(bar_nxt, H * BB * 2)  # the whole h^T (every CTA's slice) arrives here
        _async_store(g_nxt, v, bar_nxt)  # st.async.shared::cluster, complete_tx on CTA d's barrier
        mbarrier.wait(bar_nxt, phase, deps=[g_nxt])
    elif MODE == "async_local":  # the same buffer written with the split h: each CTA's slice stays local
        mbarrier.expect(bar_nxt, H // C * BB * 2)
        _async_store(h_nxt, hn, bar_nxt)
        mbarrier.wait(bar_nxt, phase, deps=[h_nxt])
    elif MODE == "convert":
        h_nxt.store(ttgl.convert_layout(hn, REP_L))
        hopper.fence_async_shared()
        _cta_barrier()
    elif MODE == "store":
        h_nxt.store(hn)
        hopper.fence_async_shared()
        _cluster_barrier()
    else:  # global
        ttgl.store(scr_ptr + (t % 2) * H * BB + j * BB + b, hn)
        _cluster_barrier()
        jr = ttgl.arange(0, H, layout=ttgl.SliceLayout(1, REP_L))[:, None]
        br = ttgl.arange(0, BB, layout=ttgl.SliceLayout(0, REP_L))[None, :]
        h_nxt.store(ttgl.load(scr_ptr + (t % 2) * H * BB + jr * BB + br))
        hopper.fence_async_shared()
        _cta_barrier()


@gluon.jit
def cluster_rnn_fwd(
    w_ptr,
    gx_ptr,
    out_ptr,
    scr_ptr,
    T,
    B,
    H: ttgl.constexpr,
    BB: ttgl.constexpr,
    MODE: ttgl.constexpr,
    ACC_L: ttgl.constexpr,
    REP_L: ttgl.constexpr,
    V_L: ttgl.constexpr,
    W_L: ttgl.constexpr,
    W_SL: ttgl.constexpr,
    H_SL: ttgl.constexpr,
    G_SL: ttgl.constexpr,
    BAR_L: ttgl.constexpr,
):
    """out[t] = tanh(gx[t] + out[t-1] @ W^T), h_{-1} = 0; one cluster per BB sequences, T even."""
    C: ttgl.constexpr = ttgl.num_ctas()
    pid = ttgl.program_id(0)
    gx_ptr += pid * BB * H
    out_ptr += pid * BB * H
    scr_ptr += pid * 2 * H * BB
    # W_hh: loaded once, each CTA its own rows -> its own shared memory (resident for the whole loop)
    r = ttgl.arange(0, H, layout=ttgl.SliceLayout(1, W_L))[:, None]
    k = ttgl.arange(0, H, layout=ttgl.SliceLayout(0, W_L))[None, :]
    W_s = ttgl.allocate_shared_memory(ttgl.float16, [H, H], W_SL, ttgl.load(w_ptr + r * H + k))
    zero = ttgl.full([H, BB], 0.0, ttgl.float16, REP_L)
    if MODE == "async":  # h^T buffers as (C x H x B) gather targets, CTA d holds block d (its h^T)
        g_a = ttgl.allocate_shared_memory(ttgl.float16, [C, H, BB], G_SL)
        g_b = ttgl.allocate_shared_memory(ttgl.float16, [C, H, BB], G_SL)
        h_a = g_a.reinterpret(ttgl.float16, [H, BB], H_SL)
        h_b = g_b.reinterpret(ttgl.float16, [H, BB], H_SL)
        h_a.store(zero)
    else:
        h_a = ttgl.allocate_shared_memory(ttgl.float16, [H, BB], H_SL, zero)
        h_b = ttgl.allocate_shared_memory(ttgl.float16, [H, BB], H_SL, zero)
        g_a = h_a
        g_b = h_b
    # one mbarrier per h buffer in every CTA (what 3.9's mbarrier.allocate_mbarrier() builds; 3.6 has no helper)
    # (triton 3.6 refuses an mbarrier other than 1 x i64: "barrier allocation must be a descriptor of 1xi64 type")
    if MODE == "async" or MODE == "async_local":
        bar0 = ttgl.allocate_shared_memory(ttgl.int64, [C], BAR_L)
        bar1 = ttgl.allocate_shared_memory(ttgl.int64, [C], BAR_L)
        mbarrier.init(bar0, count=1)
        mbarrier.init(bar1, count=1)
    else:  # unused
        bar0 = W_s
        bar1 = W_s
    hopper.fence_async_shared()
    _cluster_barrier()  # every CTA's buffers and barriers exist before anyone writes into them
    for t in range(0, T, 2):
        ph = (t // 2) % 2
        _step(t, W_s, h_a, h_b, g_b, bar1, ph, gx_ptr, out_ptr, scr_ptr, B, H, BB, MODE, ACC_L, REP_L, V_L)
        _step(t + 1, W_s, h_b, h_a, g_a, bar0, ph, gx_ptr, out_ptr, scr_ptr, B, H, BB, MODE, ACC_L, REP_L, V_L)
    _cluster_barrier()  # no CTA exits while others may still write into its shared memory


def compile_gluon(mode: str, hidden: int, num_ctas: int, bb: int = 16):
    from triton.experimental.gluon._runtime import GluonASTSource

    lay = layouts(hidden, bb, num_ctas)
    src = GluonASTSource(
        cluster_rnn_fwd,
        signature={
            "w_ptr": "*fp16",
            "gx_ptr": "*fp32",
            "out_ptr": "*fp16",
            "scr_ptr": "*fp16",
            "T": "i32",
            "B": "i32",
            "H": "constexpr",
            "BB": "constexpr",
            "MODE": "constexpr",
            **{k: "constexpr" for k in LAYOUT_ARGS},
        },
        constexprs={"H": hidden, "BB": bb, "MODE": mode, **lay},
    )
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_ctas": num_ctas})


# ---------------------------------------------------------------------------------------------
# --parts: which piece of the kernel a release can build under num_ctas > 1 (small kernels)


@gluon.jit
def _part_blocked(x, y, H: ttgl.constexpr, BB: ttgl.constexpr, L: ttgl.constexpr):
    i = ttgl.arange(0, H, layout=ttgl.SliceLayout(1, L))[:, None]
    j = ttgl.arange(0, BB, layout=ttgl.SliceLayout(0, L))[None, :]
    ttgl.store(y + i * BB + j, ttgl.load(x + i * BB + j))


@gluon.jit
def _part_smem(x, y, H: ttgl.constexpr, L: ttgl.constexpr, S: ttgl.constexpr):
    i = ttgl.arange(0, H, layout=ttgl.SliceLayout(1, L))[:, None]
    j = ttgl.arange(0, H, layout=ttgl.SliceLayout(0, L))[None, :]
    s = ttgl.allocate_shared_memory(ttgl.float16, [H, H], S, ttgl.load(x + i * H + j))
    ttgl.store(y + i * H + j, s.load(L))


@gluon.jit
def _part_wgmma(
    x,
    y,
    M: ttgl.constexpr,
    H: ttgl.constexpr,
    BB: ttgl.constexpr,
    PER_CTA: ttgl.constexpr,
    ACC: ttgl.constexpr,
    W_L: ttgl.constexpr,
    W_SL: ttgl.constexpr,
    H_SL: ttgl.constexpr,
    REP: ttgl.constexpr,
):
    """wgmma (M x BB) = W (M x H) @ h^T (H x BB); PER_CTA: M rows per CTA, picked by the cluster rank."""
    row0 = 0
    if PER_CTA:
        row0 = (
            ttgl.inline_asm_elementwise(
                "mov.u32 $0, %cluster_ctarank;", "=r", [], dtype=ttgl.int32, is_pure=True, pack=1
            )
            * M
        )
    i = ttgl.arange(0, M, layout=ttgl.SliceLayout(1, W_L))[:, None]
    j = ttgl.arange(0, H, layout=ttgl.SliceLayout(0, W_L))[None, :]
    w = ttgl.allocate_shared_memory(ttgl.float16, [M, H], W_SL, ttgl.load(x + (row0 + i) * H + j))
    h = ttgl.allocate_shared_memory(ttgl.float16, [H, BB], H_SL, ttgl.full([H, BB], 0.0, ttgl.float16, REP))
    hopper.fence_async_shared()
    acc = hopper.warpgroup_mma(w, h, ttgl.full([M, BB], 0.0, ttgl.float32, ACC))
    a = ttgl.arange(0, M, layout=ttgl.SliceLayout(1, ACC))[:, None]
    b = ttgl.arange(0, BB, layout=ttgl.SliceLayout(0, ACC))[None, :]
    ttgl.store(y + (row0 + a) * BB + b, acc.to(ttgl.float16))


@gluon.jit
def _part_mma_v2(
    x, y, M: ttgl.constexpr, H: ttgl.constexpr, BB: ttgl.constexpr, MMA: ttgl.constexpr, L: ttgl.constexpr
):
    """Per-CTA HMMA (all layouts replicated, rows by cluster rank) and an inline-PTX cluster barrier."""
    rank = ttgl.inline_asm_elementwise(
        "mov.u32 $0, %cluster_ctarank;", "=r", [], dtype=ttgl.int32, is_pure=True, pack=1
    )
    i = ttgl.arange(0, M, layout=ttgl.SliceLayout(1, L))[:, None]
    j = ttgl.arange(0, H, layout=ttgl.SliceLayout(0, L))[None, :]
    a = ttgl.convert_layout(ttgl.load(x + (rank * M + i) * H + j), ttgl.DotOperandLayout(0, MMA, 2))
    b = ttgl.full([H, BB], 0.0, ttgl.float16, ttgl.DotOperandLayout(1, MMA, 2))
    acc = ampere.mma_v2(a, b, ttgl.full([M, BB], 0.0, ttgl.float32, MMA))
    ttgl.inline_asm_elementwise(
        "barrier.cluster.arrive.aligned; barrier.cluster.wait.aligned; mov.u32 $0, 0;",
        "=r",
        [],
        dtype=ttgl.int32,
        is_pure=False,
        pack=1,
    )
    ra = ttgl.arange(0, M, layout=ttgl.SliceLayout(1, MMA))[:, None]
    rb = ttgl.arange(0, BB, layout=ttgl.SliceLayout(0, MMA))[None, :]
    ttgl.store(y + (rank * M + ra) * BB + rb, acc.to(ttgl.float16))


if HAS_CLUSTER_API:

    @gluon.jit
    def _part_barrier(x, y, T, L: ttgl.constexpr, RELAXED: ttgl.constexpr):
        """A global exchange per step with ``hopper.cluster.barrier(relaxed=RELAXED)`` between store and load."""
        i = ttgl.arange(0, 128, layout=L)
        v = ttgl.load(x + i)
        for t in range(T):
            ttgl.store(y + t * 128 + i, v)
            hopper.cluster.barrier(relaxed=RELAXED)
            v = ttgl.load(y + t * 128 + (127 - i))


def _part_cases(num_ctas: int, hidden: int, bb: int) -> dict:
    """name -> (kernel, constexprs) of the pieces :func:`run_parts` compiles."""
    C, H, M = num_ctas, hidden, hidden // num_ctas
    lay = layouts(H, bb, C)
    z = cga_bases(C, 2)  # replicated layouts: per-CTA programming
    per_cta = dict(
        ACC=ttgl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, bb, 16], cga_layout=z),
        W_L=ttgl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0], cga_layout=z),
        W_SL=ttgl.NVMMASharedLayout.get_default_for([M, H], ttgl.float16, cga_layout=z),
        H_SL=lay["H_SL"],
        REP=lay["REP_L"],
    )
    mma2 = ttgl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[4, 1], instr_shape=[16, 8], cga_layout=z)
    barrier = {}
    if HAS_CLUSTER_API:
        L = ttgl.BlockedLayout([1], [32], [4], [0], cga_layout=cga_bases(C, 1))
        barrier = {
            f"cluster.barrier(relaxed={r}) in a loop": (_part_barrier, {"L": L, "RELAXED": r}) for r in (False, True)
        }
    return barrier | {
        "blocked load/store, rows split": (_part_blocked, {"H": H, "BB": bb, "L": lay["W_L"]}),
        "blocked load/store, replicated": (_part_blocked, {"H": H, "BB": bb, "L": lay["REP_L"]}),
        "NVMMA shared buffer, rows split": (_part_smem, {"H": H, "L": lay["W_L"], "S": lay["W_SL"]}),
        "wgmma, W rows split x h replicated": (
            _part_wgmma,
            {
                "M": H,
                "H": H,
                "BB": bb,
                "PER_CTA": False,
                "ACC": lay["ACC_L"],
                "W_L": lay["W_L"],
                "W_SL": lay["W_SL"],
                "H_SL": lay["H_SL"],
                "REP": lay["REP_L"],
            },
        ),
        "wgmma, per-CTA (replicated layouts)": (_part_wgmma, {"M": M, "H": H, "BB": bb, "PER_CTA": True, **per_cta}),
        "mma_v2 per-CTA + inline-PTX cluster barrier": (
            _part_mma_v2,
            {"M": M, "H": H, "BB": bb, "MMA": mma2, "L": per_cta["W_L"]},
        ),
    }


def run_parts(num_ctas: int, hidden: int = 256, bb: int = 16) -> None:
    """Compile the kernel's pieces one by one, each in its own process (an LLVM error aborts it)."""
    for name in _part_cases(num_ctas, hidden, bb):
        here = str(Path(__file__).resolve().parent)
        code = f"import sys; sys.path.insert(0, {here!r}); import cluster_gluon as g; g._one_part({num_ctas}, {hidden}, {bb}, {name!r})"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        err = [ln for ln in out.stderr.splitlines() if "LLVM ERROR" in ln or "error:" in ln or "Assertion" in ln]
        print(f"  C={num_ctas} {name}: {out.stdout.strip() or 'FAILED'}" + (f"  [{err[0][:200]}]" if err else ""))


def _one_part(num_ctas: int, hidden: int, bb: int, name: str) -> None:
    from triton.experimental.gluon._runtime import GluonASTSource

    fn, ce = _part_cases(num_ctas, hidden, bb)[name]
    sig = {"x": "*fp16", "y": "*fp16", **({"T": "i32"} if "RELAXED" in ce else {}), **{k: "constexpr" for k in ce}}
    c = triton.compile(
        GluonASTSource(fn, sig, ce), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_ctas": num_ctas}
    )
    ptx = c.asm["ptx"]
    keys = ("wgmma.mma_async", "mma.sync", "barrier.cluster.arrive", "shared::cluster", "reqnctapercluster")
    r = analyse(c)
    sass = {k: r["ops"].get(k, 0) for k in ("MEMBAR.ALL.GPU", "UCGABAR_ARV") if r["ops"].get(k)}
    print(f"OK, shared {c.metadata.shared} B, ptx { ({k: ptx.count(k) for k in keys if ptx.count(k)}) }, sass {sass}")


GLUON_WATCH = (
    "LDG",
    "STG",
    "LDS",
    "STS",
    "LD",
    "ST",
    "LDL",
    "STL",
    "STAS",
    "MAPA",
    "UCGABAR_ARV",
    "UCGABAR_WAIT",
    "BAR",
    "SYNCS",
    "ATOM",
    "ATOMG",
    "RED",
    "REDG",
    "MEMBAR",
    "FENCE",
    "HGMMA",
    "WARPGROUP",
    "CCTL",
    "CGAERRBAR",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256])
    ap.add_argument("--ctas", type=int, nargs="+", default=[4])
    ap.add_argument(
        "--pairs", nargs="+", metavar="HxC", help="(hidden, num_ctas) pairs instead of the product, e.g. 256x4 1024x16"
    )
    ap.add_argument("--dump", help="directory for ttgir/ptx/sass of every build")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--parts", action="store_true", help="compile the kernel's pieces one by one (which op fails)")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.parts:
        print(f"triton {triton.__version__}, target sm_90: the pieces, H={a.hidden[0]}")
        for n in a.ctas:
            run_parts(n, a.hidden[0])
        return
    if not a.one:
        print(f"triton {triton.__version__}, target sm_90, hopper.cluster API: {HAS_CLUSTER_API}")
        pairs = (
            [tuple(map(int, p.split("x"))) for p in a.pairs] if a.pairs else [(h, n) for h in a.hidden for n in a.ctas]
        )
        for mode in a.modes:
            for hidden, n in pairs:
                if True:
                    cmd = [sys.executable, __file__, "--one", mode, str(hidden), str(n)]
                    cmd += ["--dump", a.dump] if a.dump else []
                    try:
                        out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                    except subprocess.TimeoutExpired:
                        print(f"  {mode} H={hidden} C={n}: TIMEOUT")
                        continue
                    print(out.stdout.rstrip())
                    if out.returncode:
                        err = [
                            ln
                            for ln in out.stderr.splitlines()
                            if "Assertion" in ln or "error" in ln.lower() or "Error" in ln
                        ]
                        print(f"  {mode} H={hidden} C={n}: process exit {out.returncode}: {' | '.join(err[-3:])[:800]}")
        return
    mode, hidden, n = a.one[0], int(a.one[1]), int(a.one[2])
    label = f"gluon {mode} H={hidden} B=16 fp16 C={n}"
    try:
        c = compile_gluon(mode, hidden, n)
    except Exception as e:  # noqa: BLE001 -- a failing build is a finding
        msg = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        err = [ln for ln in msg if "error" in ln.lower() or "Error" in ln or "failed" in ln] or msg[-3:]
        print(f"  {label}: FAILED {type(e).__name__}: {' | '.join(err[-4:])[:900]}")
        return
    r = analyse(c)
    show(label, r, GLUON_WATCH)
    if a.dump:
        d = Path(a.dump)
        d.mkdir(parents=True, exist_ok=True)
        stem = label.replace(" ", "_").replace("=", "")
        for ext in ("ttgir", "ptx", "sass"):
            (d / f"{stem}.{ext}").write_text(r[ext])


if __name__ == "__main__":
    main()
