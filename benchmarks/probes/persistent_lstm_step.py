"""GPU probe: what does one persistent LSTM step cost, and what in it costs? (results on an H200:
benchmarks/results/nvidia-h200-2026-11-30/toy-persistent-step.txt)

Toy forward only: grid of H/16 programs (16 hidden units x 4 gates each), cooperative launch,
one grid barrier per step, h exchanged through a ping-pong buffer in global memory. Checked
against a torch reference (fp32 math on the same fp16 inputs), then timed with CUDA events.
  python benchmarks/probes/persistent_lstm_step.py            (GPU)
  python benchmarks/probes/persistent_lstm_step.py compile    (CPU: compile for sm_90 only, print resources)
"""

import sys

import torch
import triton
import triton.language as tl


@triton.jit
def _barrier(counter_ptr, target, max_spin):
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < target) & (spins < max_spin):
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    tl.debug_barrier()


@triton.jit
def _wtile(W, H, g, units, kk):
    # (K_PAD, 16) tile: w[k, u] = W[g*H + units[u], k], zero for k >= H
    return tl.load(W + (g * H + units[None, :]).to(tl.int64) * H + kk[:, None], mask=(kk < H)[:, None], other=0.0)


@triton.jit
def toy_lstm_fwd(
    W,
    GX,
    HBUF,
    OUT,
    SYNC,
    T,
    H,
    max_spin,
    B: tl.constexpr,
    K_PAD: tl.constexpr,
    RESIDENT: tl.constexpr,
    PREFETCH: tl.constexpr,
    BARRIER: tl.constexpr = 1,
    SPLIT: tl.constexpr = 1,
):
    j = tl.program_id(0)
    P = tl.num_programs(0)
    units = j * 16 + tl.arange(0, 16)
    kk = tl.arange(0, K_PAD)
    rb = tl.arange(0, B)
    if RESIDENT:
        wi = _wtile(W, H, 0, units, kk)
        wf = _wtile(W, H, 1, units, kk)
        wg = _wtile(W, H, 2, units, kk)
        wo = _wtile(W, H, 3, units, kk)
    c = tl.zeros((B, 16), tl.float32)
    G4 = 4 * H
    gx_row = GX + rb[:, None].to(tl.int64) * G4 + units[None, :]
    gi = tl.load(gx_row + 0 * H).to(tl.float32)
    gf = tl.load(gx_row + 1 * H).to(tl.float32)
    gg = tl.load(gx_row + 2 * H).to(tl.float32)
    go = tl.load(gx_row + 3 * H).to(tl.float32)
    for t in range(T):
        if BARRIER:
            if t > 0:
                _barrier(SYNC, P * t, max_spin)
        hp = tl.load(
            HBUF + (t % 2) * B * H + rb[:, None] * H + kk[None, :],
            mask=(kk < H)[None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        if PREFETCH:  # next step's input projection, issued before this step's math
            nxt = GX + (t + 1).to(tl.int64) * B * G4 + rb[:, None].to(tl.int64) * G4 + units[None, :]
            ok = t + 1 < T
            ni = tl.load(nxt + 0 * H, mask=ok, other=0.0)
            nf = tl.load(nxt + 1 * H, mask=ok, other=0.0)
            ng = tl.load(nxt + 2 * H, mask=ok, other=0.0)
            no = tl.load(nxt + 3 * H, mask=ok, other=0.0)
        if SPLIT > 1:  # split-K across warps: a batched dot over SPLIT K-chunks, then a sum
            h3 = tl.permute(tl.reshape(hp, (B, SPLIT, K_PAD // SPLIT)), (1, 0, 2))
            ai = tl.sum(tl.dot(h3, tl.reshape(wi, (SPLIT, K_PAD // SPLIT, 16))), axis=0)
            af = tl.sum(tl.dot(h3, tl.reshape(wf, (SPLIT, K_PAD // SPLIT, 16))), axis=0)
            ag = tl.sum(tl.dot(h3, tl.reshape(wg, (SPLIT, K_PAD // SPLIT, 16))), axis=0)
            ao = tl.sum(tl.dot(h3, tl.reshape(wo, (SPLIT, K_PAD // SPLIT, 16))), axis=0)
        elif RESIDENT:
            ai = tl.dot(hp, wi)
            af = tl.dot(hp, wf)
            ag = tl.dot(hp, wg)
            ao = tl.dot(hp, wo)
        else:
            ai = tl.dot(hp, _wtile(W, H, 0, units, kk))
            af = tl.dot(hp, _wtile(W, H, 1, units, kk))
            ag = tl.dot(hp, _wtile(W, H, 2, units, kk))
            ao = tl.dot(hp, _wtile(W, H, 3, units, kk))
        i = tl.sigmoid(ai + gi)
        f = tl.sigmoid(af + gf)
        g = 2 * tl.sigmoid(2 * (ag + gg)) - 1
        o = tl.sigmoid(ao + go)
        c = f * c + i * g
        h = (o * (2 * tl.sigmoid(2 * c) - 1)).to(tl.float16)
        tl.store(HBUF + ((t + 1) % 2) * B * H + rb[:, None] * H + units[None, :], h)
        tl.store(OUT + t.to(tl.int64) * B * H + rb[:, None] * H + units[None, :], h)
        if PREFETCH:
            gi, gf, gg, go = ni.to(tl.float32), nf.to(tl.float32), ng.to(tl.float32), no.to(tl.float32)
        else:
            nxt = GX + (t + 1).to(tl.int64) * B * G4 + rb[:, None].to(tl.int64) * G4 + units[None, :]
            ok = t + 1 < T
            gi = tl.load(nxt + 0 * H, mask=ok, other=0.0).to(tl.float32)
            gf = tl.load(nxt + 1 * H, mask=ok, other=0.0).to(tl.float32)
            gg = tl.load(nxt + 2 * H, mask=ok, other=0.0).to(tl.float32)
            go = tl.load(nxt + 3 * H, mask=ok, other=0.0).to(tl.float32)


def run(*a, **k):
    try:
        _run(*a, **k)
    except Exception as e:  # noqa: BLE001
        print("FAILED", a, k, type(e).__name__, str(e)[:300], flush=True)


def _run(H, B, T, resident, prefetch, warps, check=False, barrier=1, split=1):
    dev = "cuda"
    torch.manual_seed(0)
    W = (torch.randn(4 * H, H, device=dev) / H**0.5).half()
    GX = torch.randn(T, B, 4 * H, device=dev).half()
    HBUF = torch.zeros(2, B, H, device=dev, dtype=torch.float16)
    OUT = torch.empty(T, B, H, device=dev, dtype=torch.float16)
    P = H // 16
    K_PAD = triton.next_power_of_2(H)

    def go():
        SYNC = torch.zeros(32, device=dev, dtype=torch.int32)
        HBUF.zero_()
        toy_lstm_fwd[(P,)](
            W,
            GX,
            HBUF,
            OUT,
            SYNC,
            T,
            H,
            1 << 22,
            B=B,
            K_PAD=K_PAD,
            RESIDENT=resident,
            PREFETCH=prefetch,
            BARRIER=barrier,
            SPLIT=split,
            num_warps=warps,
            launch_cooperative_grid=True,
        )

    go()
    torch.cuda.synchronize()
    err = None
    if check:
        h = torch.zeros(B, H, device=dev)
        c = torch.zeros(B, H, device=dev)
        Wf = W.float()
        ref = []
        for t in range(T):
            a = h.half().float() @ Wf.t() + GX[t].float()
            i, f, g, o = a.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            ref.append(h)
        err = (OUT.float() - torch.stack(ref)).abs().max().item()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(5):
        s.record()
        go()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ms = sorted(ts)[2]
    print(
        f"H={H} B={B} T={T} programs={P} warps={warps} resident={resident} prefetch={prefetch} "
        f"barrier={barrier} split={split}: "
        f"{ms:.3f} ms, {ms / T * 1000:.2f} us/step" + (f", max err vs torch {err:.2e}" if err is not None else ""),
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "compile":
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        for res in (1, 0):
            src = ASTSource(
                fn=toy_lstm_fwd,
                signature={
                    "W": "*fp16",
                    "GX": "*fp16",
                    "HBUF": "*fp16",
                    "OUT": "*fp16",
                    "SYNC": "*i32",
                    "T": "i32",
                    "H": "i32",
                    "max_spin": "i32",
                    "B": "constexpr",
                    "K_PAD": "constexpr",
                    "RESIDENT": "constexpr",
                    "PREFETCH": "constexpr",
                    "BARRIER": "constexpr",
                    "SPLIT": "constexpr",
                },
                constexprs={
                    "B": 16,
                    "K_PAD": 1024,
                    "RESIDENT": res,
                    "PREFETCH": 1,
                    "BARRIER": 1,
                    "SPLIT": 8 if res else 1,
                },
            )
            c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
            ttgir = c.asm["ttgir"]
            loop = ttgir.split("scf.for", 1)[1]
            print(
                "resident",
                res,
                "shared",
                c.metadata.shared,
                "loads in loop",
                loop.count("tt.load"),
                "local_alloc before loop",
                ttgir.split("scf.for", 1)[0].count("ttg.local_alloc"),
            )
        sys.exit(0)
    run(768, 16, 1024, 1, 1, 4, check=True, split=2)
    run(768, 16, 1024, 1, 1, 4, check=True, split=8)
    run(768, 16, 1024, 1, 1, 4, barrier=0, split=4)
    run(768, 16, 1024, 1, 1, 2, check=True, split=4)
    run(512, 16, 1024, 1, 1, 4, check=True, split=4)
    run(256, 16, 1024, 1, 1, 4, check=True, split=4)
    run(1024, 16, 1024, 1, 1, 4, check=True, split=4)
