"""Probe: does a weight tile loaded once before a time loop stay on chip for the whole loop?

Compiles a toy persistent step (h @ W + gx -> sigmoid -> store, T steps) for sm_90 on a CPU
machine and prints, from the compiled code: registers, spills, shared memory, tensor-core
instructions, and which ops sit inside the loop (TTGIR). Usage (no GPU needed):

    python benchmarks/probes/resident_weights.py K N BB TRANS WARPS      e.g.  1024 64 16 0 8

TRANS=0: W (K, N) is the B operand of tl.dot(h, W); TRANS=1: W^T (N, K) is the A operand of
tl.dot(W^T, h^T) (wgmma on sm_90). K, N, BB are powers of two (mask the rest in real code).
"""

import os
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


@triton.jit
def step_kernel(W, GX, H, T, K: tl.constexpr, N: tl.constexpr, BB: tl.constexpr, TRANS: tl.constexpr):
    rk = tl.arange(0, K)
    rn = tl.arange(0, N)
    rb = tl.arange(0, BB)
    if TRANS:
        w = tl.load(W + rn[:, None] * K + rk[None, :])  # (N, K), loaded once
    else:
        w = tl.load(W + rk[:, None] * N + rn[None, :])  # (K, N), loaded once
    h = tl.zeros((BB, K), dtype=tl.float16)
    for t in range(T):
        gx = tl.load(GX + t * BB * N + rb[:, None] * N + rn[None, :])
        if TRANS:
            acc = tl.trans(tl.dot(w, tl.trans(h)))
        else:
            acc = tl.dot(h, w)
        g = tl.sigmoid(acc + gx)
        tl.store(H + t * BB * N + rb[:, None] * N + rn[None, :], g.to(tl.float16))
        h = tl.load(H + t * BB * N + rb[:, None] * N + (rk[None, :] % N))  # stands in for the h exchange


K, N, BB, TRANS, WARPS = (int(a) for a in sys.argv[1:6])
src = ASTSource(
    fn=step_kernel,
    signature={
        "W": "*fp16",
        "GX": "*fp32",
        "H": "*fp16",
        "T": "i32",
        "K": "constexpr",
        "N": "constexpr",
        "BB": "constexpr",
        "TRANS": "constexpr",
    },
    constexprs={"K": K, "N": N, "BB": BB, "TRANS": TRANS},
)
c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": WARPS})
tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
path = tempfile.mktemp(suffix=".cubin")
with open(path, "wb") as f:
    f.write(c.asm["cubin"])
res = subprocess.run([f"{tools}/cuobjdump", "-res-usage", path], capture_output=True, text=True).stdout
sass = subprocess.run([f"{tools}/nvdisasm", path], capture_output=True, text=True).stdout
print(f"triton {triton.__version__}:", " ".join(l.strip() for l in res.splitlines() if "REG" in l))
print("shared memory (metadata):", c.metadata.shared, "bytes")
print("SASS:", {op: sass.count(op) for op in ("HGMMA", "HMMA", "LDSM", "LDL", "STL")})
ttgir = c.asm["ttgir"]
head, loop = ttgir.split("scf.for", 1)
loop = loop.split("scf.yield", 1)[0]
print("before the loop: local_alloc x", head.count("ttg.local_alloc"))
print(
    "inside the loop:", {op: loop.count(op) for op in ("tt.load", "ttg.local_alloc", "tt.dot", "ttng.warp_group_dot")}
)
