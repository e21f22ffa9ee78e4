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
              of the CTA's slice into the replicated buffer of every CTA; each CTA waits on its own
              mbarrier (``mbarrier.expect`` of the whole h's bytes).  No cluster barrier per step.
  ``convert`` ``ttgl.convert_layout`` of the split h to the replicated layout (the compiler moves
              it through distributed shared memory), a local store into the next buffer.
  ``store``   ``smem.store`` of the split h straight into the replicated buffer (the compiler's
              lowering of a store whose CTA layouts differ), then ``cluster.barrier()``.
  ``global``  the slice to a global scratch, ``cluster.barrier()``, the whole h loaded back (the
              fallback without distributed shared memory; same scheme as tier 2, without atomics).

Prints per build what the compiled code shows (time loop only): wgmma, DSMEM (``st.async``,
``ld/st.shared::cluster``, ``mapa``), cluster barriers (``barrier.cluster`` / SASS
``UCGABAR_ARV``/``UCGABAR_WAIT``), mbarrier waits (``SYNCS``), global traffic, membars,
registers/spills, shared memory, cluster dims -- or the exact error.

Usage::

    python kernels/probes/cluster_gluon.py                         # triton 3.9 (installed here)
    /opt/venv36/bin/python kernels/probes/cluster_gluon.py         # triton 3.6 (its own venv)
    python kernels/probes/cluster_gluon.py --modes async --hidden 256 --ctas 4 --dump /tmp/g
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
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as ttgl  # noqa: E402
from triton.experimental.gluon.language.nvidia import hopper  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import mbarrier  # noqa: E402

from cluster_num_ctas import analyse, show  # noqa: E402  (same directory)

HAS_CLUSTER_API = hasattr(hopper, "cluster")  # triton >= 3.7-ish: hopper.cluster.barrier, async_store
MODES = ("async", "convert", "store", "global")
CLUSTER_API = ttgl.constexpr(HAS_CLUSTER_API)


@gluon.constexpr_function
def split_rows(num_ctas, rank):
    """CGA bases putting CTA bit i on dim 0 (each CTA a contiguous block of rows)."""
    num_ctas = getattr(num_ctas, "value", num_ctas)
    return [[1 << i] + [0] * (rank - 1) for i in range((num_ctas).bit_length() - 1)]


@gluon.constexpr_function
def replicated(num_ctas, rank):
    """CGA bases of zeros: every CTA holds the whole tensor (multicast)."""
    num_ctas = getattr(num_ctas, "value", num_ctas)
    return [[0] * rank for _ in range((num_ctas).bit_length() - 1)]


@gluon.jit
def _cluster_barrier():
    if ttgl.num_ctas() > 1:
        if CLUSTER_API:
            hopper.cluster.barrier()
        else:  # triton 3.6: no cluster barrier in Gluon; the PTX by hand
            ttgl.inline_asm_elementwise("barrier.cluster.arrive.aligned; barrier.cluster.wait.aligned; mov.u32 $0, 0;",
                                        "=r", [], dtype=ttgl.int32, is_pure=False, pack=1)


@gluon.jit
def _step(t, W_s, h_cur, h_nxt, bar_nxt, phase, gx_ptr, out_ptr, scr_ptr, B, H: ttgl.constexpr,
          BB: ttgl.constexpr, MODE: ttgl.constexpr):
    C: ttgl.constexpr = ttgl.num_ctas()
    acc_l: ttgl.constexpr = ttgl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BB, 16],
                                                        cga_layout=split_rows(C, 2))
    rep_l: ttgl.constexpr = ttgl.BlockedLayout([1, 1], [32, 1], [4, 1], [0, 1], cga_layout=replicated(C, 2))
    j = ttgl.arange(0, H, layout=ttgl.SliceLayout(1, acc_l))[:, None]  # hidden unit (row of acc^T)
    b = ttgl.arange(0, BB, layout=ttgl.SliceLayout(0, acc_l))[None, :]  # sequence (column)
    gx = ttgl.load(gx_ptr + t * B * H + b * H + j)  # gx_t^T, this CTA's rows only (fp32)
    acc = hopper.warpgroup_mma(W_s, h_cur, gx)  # (H x B) split by rows: W_slice @ h^T
    e = ttgl.exp(-2.0 * ttgl.abs(acc))
    th = (1.0 - e) / (1.0 + e)
    hn = ttgl.where(acc < 0, -th, th).to(ttgl.float16)
    ttgl.store(out_ptr + t * B * H + b * H + j, hn)
    if MODE == "async":
        mbarrier.expect(bar_nxt, H * BB * 2)  # the whole h^T arrives in every CTA
        hopper.async_store(h_nxt, hn, bar_nxt)  # st.async to every CTA's replicated buffer
        mbarrier.wait(bar_nxt, phase, deps=[h_nxt])
    elif MODE == "convert":
        h_nxt.store(ttgl.convert_layout(hn, rep_l))
        hopper.fence_async_shared()
        ttgl.barrier()
    elif MODE == "store":
        h_nxt.store(hn)
        hopper.fence_async_shared()
        _cluster_barrier()
    else:  # global
        ttgl.store(scr_ptr + (t % 2) * H * BB + j * BB + b, hn)
        _cluster_barrier()
        jr = ttgl.arange(0, H, layout=ttgl.SliceLayout(1, rep_l))[:, None]
        br = ttgl.arange(0, BB, layout=ttgl.SliceLayout(0, rep_l))[None, :]
        h_nxt.store(ttgl.load(scr_ptr + (t % 2) * H * BB + jr * BB + br))
        hopper.fence_async_shared()
        ttgl.barrier()


@gluon.jit
def cluster_rnn_fwd(w_ptr, gx_ptr, out_ptr, scr_ptr, T, B, H: ttgl.constexpr, BB: ttgl.constexpr,
                    MODE: ttgl.constexpr):
    """out[t] = tanh(gx[t] + out[t-1] @ W^T), h_{-1} = 0; one cluster per BB sequences, T even."""
    C: ttgl.constexpr = ttgl.num_ctas()
    pid = ttgl.program_id(0)
    gx_ptr += pid * BB * H
    out_ptr += pid * BB * H
    scr_ptr += pid * 2 * H * BB
    w_l: ttgl.constexpr = ttgl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0], cga_layout=split_rows(C, 2))
    w_sl: ttgl.constexpr = ttgl.NVMMASharedLayout.get_default_for([H, H], ttgl.float16, cga_layout=split_rows(C, 2))
    h_sl: ttgl.constexpr = ttgl.NVMMASharedLayout.get_default_for([H, BB], ttgl.float16,
                                                                   cga_layout=replicated(C, 2))
    rep_l: ttgl.constexpr = ttgl.BlockedLayout([1, 1], [32, 1], [4, 1], [0, 1], cga_layout=replicated(C, 2))
    # W_hh: loaded once, each CTA its own rows -> its own shared memory (resident for the whole loop)
    r = ttgl.arange(0, H, layout=ttgl.SliceLayout(1, w_l))[:, None]
    k = ttgl.arange(0, H, layout=ttgl.SliceLayout(0, w_l))[None, :]
    W_s = ttgl.allocate_shared_memory(ttgl.float16, [H, H], w_sl, ttgl.load(w_ptr + r * H + k))
    zero = ttgl.full([H, BB], 0.0, ttgl.float16, rep_l)
    h_a = ttgl.allocate_shared_memory(ttgl.float16, [H, BB], h_sl, zero)
    h_b = ttgl.allocate_shared_memory(ttgl.float16, [H, BB], h_sl, zero)
    bars = mbarrier.allocate_mbarrier(batch=2)
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)
    hopper.fence_async_shared()
    _cluster_barrier()  # every CTA's buffers and barriers exist before anyone writes into them
    for t in range(0, T, 2):
        ph = (t // 2) % 2
        _step(t, W_s, h_a, h_b, bars.index(1), ph, gx_ptr, out_ptr, scr_ptr, B, H, BB, MODE)
        _step(t + 1, W_s, h_b, h_a, bars.index(0), ph, gx_ptr, out_ptr, scr_ptr, B, H, BB, MODE)
    _cluster_barrier()  # no CTA exits while others may still write into its shared memory


def compile_gluon(mode: str, hidden: int, num_ctas: int, bb: int = 16):
    src = gluon._runtime.GluonASTSource(
        cluster_rnn_fwd,
        signature={"w_ptr": "*fp16", "gx_ptr": "*fp32", "out_ptr": "*fp16", "scr_ptr": "*fp16", "T": "i32",
                   "B": "i32", "H": "constexpr", "BB": "constexpr", "MODE": "constexpr"},
        constexprs={"H": hidden, "BB": bb, "MODE": mode},
    )
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_ctas": num_ctas})


GLUON_WATCH = ("LDG", "STG", "LDS", "STS", "LD", "ST", "STAS", "MAPA", "UCGABAR_ARV", "UCGABAR_WAIT", "BAR", "SYNCS",
               "ATOM", "ATOMG", "RED", "REDG", "MEMBAR", "FENCE", "HGMMA", "WARPGROUP", "CCTL", "CGAERRBAR")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256])
    ap.add_argument("--ctas", type=int, nargs="+", default=[4])
    ap.add_argument("--dump", help="directory for ttgir/ptx/sass of every build")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.one:
        print(f"triton {triton.__version__}, target sm_90, hopper.cluster API: {HAS_CLUSTER_API}")
        for mode in a.modes:
            for hidden in a.hidden:
                for n in a.ctas:
                    cmd = [sys.executable, __file__, "--one", mode, str(hidden), str(n)]
                    cmd += ["--dump", a.dump] if a.dump else []
                    try:
                        out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                    except subprocess.TimeoutExpired:
                        print(f"  {mode} H={hidden} C={n}: TIMEOUT")
                        continue
                    print(out.stdout.rstrip())
                    if out.returncode:
                        err = [ln for ln in out.stderr.splitlines()
                               if "Assertion" in ln or "error" in ln.lower() or "Error" in ln]
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
