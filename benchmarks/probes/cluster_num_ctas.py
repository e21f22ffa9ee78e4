"""Probe: what Triton's ``num_ctas`` launch option builds for a persistent RNN on sm_90 (CPU only).

Compiles, for ``GPUTarget("cuda", 90, 32)`` on a machine without a GPU:

* the tier-1 forward (``tier1._recurrent_fwd_kernel``, the launch the report builds for
  ``KernelConfig("fwd", CELL, DTYPE, H)``) and optionally its backward, with ``num_ctas`` 1, 2,
  4, 8, 16;
* a toy persistent loop: ``W`` (K x N, fp16) loaded once before the loop, ``h @ W`` (``tl.dot``)
  every step, ``h`` re-loaded from global memory after each step's store (the exchange).

and prints per build: registers/stack/spills, shared memory, cluster dims (``metadata``), the
time loop's SASS op counts (global ``LDG``/``STG``, shared ``LDS``/``STS``/``LDSM``, cluster
``MAPA``/``UCGABAR_*``/``*.CLUSTER`` ops, tensor-core ops, ``BAR``, ``ATOM``/``RED``), the
TTGIR's CTA layout (``CTAsPerCGA``/``CTASplitNum``) of W's shared buffer and of the dot operands,
and the PTX's cluster instructions (``barrier.cluster``, ``mapa``, ``shared::cluster``).

Usage::

    python benchmarks/probes/cluster_num_ctas.py                      # triton installed here (3.9)
    /opt/venv36/bin/python benchmarks/probes/cluster_num_ctas.py      # triton 3.6 (its own venv)
    python benchmarks/probes/cluster_num_ctas.py --cell LSTM --dtype fp16 --hidden 64 --bwd --ctas 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compiled JITFunctions, not the interpreter
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root (fastrnn)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s*(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]*)?(.*)$")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
#: SASS opcodes (with modifiers) that tell where data moves; counted per loop body.
WATCH = (
    "LDG",
    "STG",
    "LDS",
    "STS",
    "LDSM",
    "LD",
    "ST",
    "LDL",
    "STL",
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
    "HMMA",
    "WARPGROUP",
    "CCTL",
    "ERRBAR",
)
PTX_WATCH = (
    "barrier.cluster.arrive",
    "barrier.cluster.wait",
    "mapa",
    "shared::cluster",
    "%cluster_ctarank",
    "%cluster_nctarank",
    "st.async",
    "multicast",
    "mbarrier",
    "ld.shared",
    "st.shared",
    "ld.global",
    "st.global",
    "atom.",
    "red.global",
    "red.shared",
    "wgmma.mma_async",
    "fence.proxy.async",
)


def tool(name: str, *args: str) -> str:
    return subprocess.run([str(TOOLS / name), *args], capture_output=True, text=True, check=True).stdout


def sass_loops(sass: str) -> list[dict]:
    """The innermost-first loops of ``nvdisasm -c`` output: [{start, end, ops}] with each loop's own
    opcode counts (``OP`` and ``OP.MODIFIERS``) -- nested loops' instructions excluded."""
    labels, insts, pending = {}, [], []
    for line in sass.splitlines():
        if m := _LABEL.match(line):
            pending.append(m.group(1))
        elif m := _SASS_LINE.match(line):
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending.clear()
            insts.append((addr, m.group(2), m.group(3) or "", m.group(4)))
    loops = sorted(
        {
            (labels[t.group(1)], a)
            for a, op, _, rest in insts
            if op == "BRA" and (t := _TARGET.search(rest)) and labels.get(t.group(1), a + 1) <= a
        }
    )
    out = []
    for a, b in loops:
        inner = [(c, d) for c, d in loops if a <= c and d <= b and (c, d) != (a, b)]
        ops: dict[str, int] = {}
        for addr, op, mod, _ in insts:
            if a <= addr <= b and not any(c <= addr <= d for c, d in inner):
                for key in (op, op + mod):
                    ops[key] = ops.get(key, 0) + 1
        out.append(dict(start=a, end=b, n=sum(1 for x in insts if a <= x[0] <= b), inner=len(inner), ops=ops))
    return out


def whole_ops(sass: str) -> dict[str, int]:
    ops: dict[str, int] = {}
    for line in sass.splitlines():
        if m := _SASS_LINE.match(line):
            for key in (m.group(2), m.group(2) + (m.group(3) or "")):
                ops[key] = ops.get(key, 0) + 1
    return ops


def analyse(compiled, kernel_name: str | None = None) -> dict:
    """Registers, spills, shared memory, cluster dims, loop ops, TTGIR layouts, PTX cluster ops."""
    md = compiled.metadata
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        Path(path).write_bytes(compiled.asm["cubin"])
        res = tool("cuobjdump", "-res-usage", path)
        sass = tool("nvdisasm", "-c", path)
        elf = tool("cuobjdump", "-elf", path)
    usage = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", res)
    ptx = compiled.asm["ptx"]
    ttgir = compiled.asm["ttgir"]
    cluster = {
        k: getattr(md, k) for k in ("num_ctas", "cluster_dims", "ctas_per_cga", "cluster_dims_x") if hasattr(md, k)
    }
    ptx_cluster = {k: ptx.count(k) for k in PTX_WATCH if ptx.count(k)}
    reqnctapercluster = re.findall(r"\.(reqnctapercluster|explicitcluster|maxclusterrank)\s*([0-9, ]*)", ptx)
    elf_cluster = sorted(set(re.findall(r"(EIATTR_\w*CLUSTER\w*|EIATTR_\w*CTA\w*)", elf)))
    layouts = sorted(
        set(re.findall(r"CTAsPerCGA = \[[^\]]*\], CTASplitNum = \[[^\]]*\], CTAOrder = \[[^\]]*\]", ttgir))
    )
    return dict(
        regs=int(usage.group(1)) if usage else None,
        stack=int(usage.group(2)) if usage else None,
        shared=md.shared,
        cluster=cluster,
        ptx_cluster=ptx_cluster,
        ptx_cluster_directives=reqnctapercluster,
        elf_cluster=elf_cluster,
        cta_layouts=layouts,
        loops=sass_loops(sass),
        ops=whole_ops(sass),
        ttgir=ttgir,
        ptx=ptx,
        sass=sass,
    )


def show(name: str, r: dict, watch=WATCH) -> None:
    print(f"  {name}: regs {r['regs']} stack {r['stack']} shared {r['shared']} B  cluster {r['cluster']}")
    print(f"    ptx directives {r['ptx_cluster_directives']}  ptx ops {r['ptx_cluster']}  elf {r['elf_cluster']}")
    for lay in r["cta_layouts"]:
        print(f"    ttgir CTA layout: {lay}")
    for lp in r["loops"]:
        ops = {k: v for k, v in sorted(lp["ops"].items()) if k.split(".")[0] in watch and v}
        print(f"    loop {lp['start']:#x}-{lp['end']:#x} ({lp['n']} insts, {lp['inner']} inner): {ops}")


# ---------------------------------------------------------------------------------------------
# The toy: a resident W used as the dot's B operand in a persistent loop


@triton.jit
def toy_kernel(W, GX, H, T, K: tl.constexpr, N: tl.constexpr, BB: tl.constexpr):
    rk = tl.arange(0, K)
    rn = tl.arange(0, N)
    rb = tl.arange(0, BB)
    w = tl.load(W + rk[:, None] * N + rn[None, :])  # (K, N), loaded once: resident
    h = tl.zeros((BB, K), dtype=tl.float16)
    for t in range(T):
        gx = tl.load(GX + t * BB * N + rb[:, None] * N + rn[None, :])
        acc = tl.dot(h, w, acc=gx)
        hn = tl.sigmoid(acc)
        tl.store(H + t * BB * N + rb[:, None] * N + rn[None, :], hn.to(tl.float16))
        h = tl.load(H + t * BB * N + rb[:, None] * N + rk[None, :])  # the exchange: K == N


def compile_toy(num_ctas: int, K: int = 256, BB: int = 64, warps: int = 4):
    src = ASTSource(
        fn=toy_kernel,
        signature={
            "W": "*fp16",
            "GX": "*fp32",
            "H": "*fp16",
            "T": "i32",
            "K": "constexpr",
            "N": "constexpr",
            "BB": "constexpr",
        },
        constexprs={"K": K, "N": K, "BB": BB},
    )
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_ctas": num_ctas})


def compile_tier1(kernel: str, cell: str, dtype: str, hidden: int, num_ctas: int):
    from fastrnn.kernels.report import KernelConfig, compile_source

    src, target, options = compile_source(KernelConfig(kernel, cell, dtype, hidden))
    options = dict(options, num_ctas=num_ctas)
    return triton.compile(src, target=target, options=options), src.fn.__name__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="LSTM")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--ctas", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--bwd", action="store_true", help="also the tier-1 backward")
    ap.add_argument("--no-toy", action="store_true")
    ap.add_argument("--no-tier1", action="store_true")
    ap.add_argument("--toy-k", type=int, default=128)
    ap.add_argument("--toy-bb", type=int, default=16)
    ap.add_argument("--dump", help="directory for ttgir/ptx/sass of every build")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per build")
    ap.add_argument("--in-process", action="store_true", help="compile in this process (no subprocess per build)")
    ap.add_argument("--one", nargs=2, metavar=("WHAT", "NUM_CTAS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    print(f"triton {triton.__version__}, target sm_90")
    builds = []
    if not a.no_toy:
        builds += [("toy", n) for n in a.ctas]
    if not a.no_tier1:
        builds += [(k, n) for k in (("fwd", "bwd") if a.bwd else ("fwd",)) for n in a.ctas]
    if a.one:
        builds = [(a.one[0], int(a.one[1]))]
    elif not a.in_process:  # one subprocess per build: an LLVM assertion aborts only that build
        for what, n in builds:
            cmd = [sys.executable, __file__, "--one", what, str(n)] + [x for x in sys.argv[1:] if x != "--in-process"]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            except subprocess.TimeoutExpired:
                print(f"  {what} num_ctas={n}: TIMEOUT after {a.timeout} s")
                continue
            lines = [ln for ln in out.stdout.splitlines() if not ln.startswith("triton ")]
            print("\n".join(lines))
            if out.returncode:
                err = [ln for ln in out.stderr.splitlines() if "Assertion" in ln or "error:" in ln or "Error" in ln]
                print(f"  {what} num_ctas={n}: process exit {out.returncode}: {' | '.join(err[-3:])[:700]}")
        return
    for what, n in builds:
        label = f"toy K=N={a.toy_k} BB={a.toy_bb}" if what == "toy" else f"tier1 {what} {a.cell} {a.dtype} H={a.hidden}"
        label += f" num_ctas={n}"
        try:
            c = (
                compile_toy(n, a.toy_k, a.toy_bb)
                if what == "toy"
                else compile_tier1(what, a.cell, a.dtype, a.hidden, n)[0]
            )
        except Exception as e:  # noqa: BLE001 -- a failing build is a finding
            msg = str(e).strip().splitlines()
            err = [ln for ln in msg if "error" in ln.lower() or "Assertion" in ln or "failed" in ln] or msg[:3]
            print(f"  {label}: FAILED {type(e).__name__}: {' | '.join(err[-4:])[:700]}")
            continue
        r = analyse(c)
        show(label, r)
        if a.dump:
            d = Path(a.dump)
            d.mkdir(parents=True, exist_ok=True)
            stem = label.replace(" ", "_").replace("=", "")
            for ext in ("ttgir", "ptx", "sass"):
                (d / f"{stem}.{ext}").write_text(r[ext])


if __name__ == "__main__":
    main()
