"""Machine figures measured once per run, and the time floors of every row.

Measured (:func:`measure_machine`):

* ``bandwidth_gbs``: a large device-to-device copy (512 MiB on a GPU, 64 MiB on the CPU);
  bytes read + written over the best time of several.
* ``matmul_tflops[dtype]``: a square matmul (8192 on a GPU, 1024 on the CPU) in each dtype of
  the run, fp32 with TF32 off; ``2*n^3`` over the best time of several.
* the minimal cost of one *dependent step* of a recurrence, three ways on a GPU:
  ``launch_us``: a 1-element kernel launched back to back from Python (the eager per-step floor);
  ``graph_launch_us``: the same kernels replayed from one CUDA graph (launch gaps only, no Python);
  ``grid_sync_us``: a persistent Triton kernel, one program per SM, looping over tier 2's grid
  barrier (``fastrnn.kernels.persistent.grid_barrier``: atomic counter, release/acquire) per step:
  the per-step floor of any kernel that spreads a step over the whole GPU.  It runs in a subprocess with a timeout, so a barrier that cannot
  complete costs a line in the notes, not the run.
  ``step_us`` = the smallest of the GPU figures measured; on the CPU it is one tiny aten op
  (dispatch overhead), ``cpu_op_us``.
* ``cta_sync_us``: one program looping over a CTA barrier (``bar.sync``) and a dependent FMA per
  step, and ``smem_per_sm``, the shared memory of one SM;
* ``cta_step_us``: one program (one warp) running the smallest dependent step of a recurrence on
  tensor cores: a 16 x 16 fp16 state times a resident 16 x 16 weight tile (one ``tl.dot``), tanh,
  and the state back into the dot's operand layout for the next step.  Every on-chip recurrence
  step contains this chain (a matrix product, an activation, the new state where the next
  product reads it): the per-step floor of a recurrence whose whole step fits one SM.

Floors of a row (:func:`row_floors`): ``bw`` = bytes / bandwidth, ``flop`` = FLOPs / matmul
throughput of the row's dtype, ``seq`` = dependent steps x the per-step floor -- when one
layer's ``W_hh`` fits one SM's shared memory (a single program can run the step: no grid barrier
to charge; tier 1 and cuDNN's small-layer kernels do) ``cta_step_us`` (a machine record without it:
``cta_sync_us``, a barrier alone, which a real step far exceeds), else ``step_us``; ``floor`` is
the largest and ``bound`` names it.  A provider's ``frac_of_floor`` = floor / its median time (1 = at the floor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .cases import DTYPES, Cost

GRID_SYNC_TIMEOUT_S = 120


def _best_cuda_ms(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return min(times)


def _best_cpu_ms(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def set_strict_fp32() -> None:
    """fp32 matmuls and cuDNN in full fp32: TF32 off (the benchmark's fp32 rows never use TF32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")


def measure_machine(device: torch.device, dtypes: list[str], *, grid_sync: bool = True) -> dict[str, Any]:
    """Bandwidth, matmul throughput per dtype, and per-step cost on ``device`` (see module doc)."""
    set_strict_fp32()
    if device.type == "cuda":
        return _measure_cuda(device, dtypes, grid_sync)
    return _measure_cpu(dtypes)


def _measure_cuda(device: torch.device, dtypes: list[str], grid_sync: bool) -> dict[str, Any]:
    notes: dict[str, str] = {}
    n = 128 * 2**20  # 512 MiB of fp32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = _best_cuda_ms(lambda: dst.copy_(src), reps=10)
    bandwidth = 2 * n * 4 / (t * 1e-3) / 1e9
    src = dst = None  # free before the matmuls
    tflops = {}
    for name in dtypes:
        dt = DTYPES[name]
        m = 8192
        a = torch.randn(m, m, device=device).to(dt)
        b = torch.randn(m, m, device=device).to(dt)
        t = _best_cuda_ms(lambda a=a, b=b: a @ b, reps=5 if dt == torch.float32 else 10)
        tflops[name] = 2 * m**3 / (t * 1e-3) / 1e12
        del a, b
    torch.cuda.empty_cache()

    buf = torch.zeros(1, device=device)
    n_launch = 500

    def many():
        for _ in range(n_launch):
            buf.add_(1)

    launch_us = _best_cuda_ms(many, reps=5) * 1e3 / n_launch

    graph_launch_us = None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            many()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            many()
        graph_launch_us = _best_cuda_ms(g.replay, reps=10) * 1e3 / n_launch
    except Exception as e:  # recorded: the figure is then missing from the floor
        notes["graph_launch_us"] = f"CUDA graph capture failed: {type(e).__name__}: {e}"

    grid_sync_us = cta_sync_us = cta_step_us = None
    if grid_sync:
        grid_sync_us, note, cta_sync_us, cta_step_us = _grid_sync_subprocess()
        if note:
            notes["grid_sync_us"] = note
    else:
        notes["grid_sync_us"] = "not measured (--no-grid-sync)"

    measured = {
        name: v
        for name, v in (("grid_sync_us", grid_sync_us), ("graph_launch_us", graph_launch_us), ("launch_us", launch_us))
        if v is not None
    }
    source = min(measured, key=measured.get)
    return dict(
        device=torch.cuda.get_device_name(device),
        bandwidth_gbs=bandwidth,
        matmul_tflops=tflops,
        launch_us=launch_us,
        graph_launch_us=graph_launch_us,
        grid_sync_us=grid_sync_us,
        cta_sync_us=cta_sync_us,
        cta_step_us=cta_step_us,
        smem_per_sm=getattr(torch.cuda.get_device_properties(device), "shared_memory_per_multiprocessor", None),
        step_us=measured[source],
        step_source=source,
        notes=notes,
    )


def _measure_cpu(dtypes: list[str]) -> dict[str, Any]:
    n = 16 * 2**20  # 64 MiB of fp32
    src = torch.randn(n)
    dst = torch.empty_like(src)
    t = _best_cpu_ms(lambda: dst.copy_(src), reps=5)
    bandwidth = 2 * n * 4 / (t * 1e-3) / 1e9
    src = dst = None
    tflops = {}
    for name in dtypes:
        dt = DTYPES[name]
        m = 1024 if dt in (torch.float32, torch.float64) else 512
        a = torch.randn(m, m).to(dt)
        b = torch.randn(m, m).to(dt)
        t = _best_cpu_ms(lambda a=a, b=b: a @ b, reps=3)
        tflops[name] = 2 * m**3 / (t * 1e-3) / 1e12
    buf = torch.zeros(1)
    k = 2000

    def many():
        for _ in range(k):
            buf.add_(1)

    op_us = _best_cpu_ms(many, reps=3) * 1e3 / k
    return dict(
        device="cpu",
        bandwidth_gbs=bandwidth,
        matmul_tflops=tflops,
        cpu_op_us=op_us,
        step_us=op_us,
        step_source="cpu_op_us",
        notes={},
    )


def step_floor_us(cost: Cost, machine: dict[str, Any]) -> tuple[float, str]:
    """``(per-step floor in us, its source)`` of a row: see the module doc."""
    smem = machine.get("smem_per_sm")
    if smem and 0 < cost.recurrent_bytes <= smem:
        for name in ("cta_step_us", "cta_sync_us"):
            if machine.get(name) is not None:
                return machine[name], name
    return machine["step_us"], machine.get("step_source", "step_us")


def row_floors(cost: Cost, machine: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The floors (ms) of one row, see module doc."""
    bw_ms = cost.bytes / (machine["bandwidth_gbs"] * 1e9) * 1e3
    tf = machine["matmul_tflops"].get(dtype)
    flop_ms = cost.flops / (tf * 1e12) * 1e3 if tf else None
    step_us, step_source = step_floor_us(cost, machine)
    seq_ms = cost.steps * step_us * 1e-3
    cands = {"bw": bw_ms, "flop": flop_ms, "seq": seq_ms}
    bound = max((k for k, v in cands.items() if v is not None), key=lambda k: cands[k])
    return dict(
        bytes=cost.bytes,
        flops=cost.flops,
        steps=cost.steps,
        bw_floor_ms=bw_ms,
        flop_floor_ms=flop_ms,
        seq_floor_ms=seq_ms,
        seq_step_source=step_source,
        floor_ms=cands[bound],
        floor_bound=bound,
    )


# ---------------------------------------------------------------------------------------------
# The grid barrier probe.  It runs in a child process (``python -m benchmarks.floors
# --grid-sync``) so that a barrier which cannot complete is killed by a timeout.


def _grid_sync_kernel():
    """The probe kernels (:mod:`benchmarks.step_probes`, imported here: Triton only on demand)."""
    from . import step_probes

    return step_probes.grid_sync_loop_kernel, step_probes.cta_loop_kernel, step_probes.cta_step_kernel


def grid_sync_probe(device: torch.device | None = None) -> dict[str, Any]:
    """Per-step cost of tier 2's grid barrier in a persistent kernel (microseconds), one 4-warp
    program per SM; GPU only."""
    from fastrnn.kernels.persistent import MAX_SPIN

    device = device or torch.device("cuda")
    kernel, cta_kernel, step_kernel = _grid_sync_kernel()
    nprog = torch.cuda.get_device_properties(device).multi_processor_count
    sync = torch.zeros(64, dtype=torch.int32, device=device)

    def run(steps: int) -> float:
        def launch():
            sync.zero_()
            kernel[(nprog,)](sync, steps, MAX_SPIN, NUM_PROGRAMS=nprog, num_warps=4, launch_cooperative_grid=True)

        return _best_cuda_ms(launch, reps=5)

    s1, s2 = 200, 2200
    t1, t2 = run(s1), run(s2)
    if int(sync[0].item()) != s2 * nprog or int(sync[32].item()) != 0:
        raise RuntimeError(
            f"barrier counter ended at {int(sync[0].item())} (expected {s2 * nprog}), flag {int(sync[32].item())}"
        )
    x = torch.zeros(128, device=device)
    c1 = _best_cuda_ms(lambda: cta_kernel[(1,)](x, s1, num_warps=4), reps=5)
    c2 = _best_cuda_ms(lambda: cta_kernel[(1,)](x, s2, num_warps=4), reps=5)
    h = torch.randn(16, 16, device=device).half()
    w = (torch.randn(16, 16, device=device) / 4).half()
    d1 = _best_cuda_ms(lambda: step_kernel[(1,)](h, w, s1, num_warps=1), reps=5)
    d2 = _best_cuda_ms(lambda: step_kernel[(1,)](h, w, s2, num_warps=1), reps=5)
    return {"grid_sync_us": (t2 - t1) * 1e3 / (s2 - s1), "programs": nprog, "cta_sync_us": (c2 - c1) * 1e3 / (s2 - s1),
            "cta_step_us": (d2 - d1) * 1e3 / (s2 - s1)}  # fmt: skip


def _grid_sync_subprocess() -> tuple[float | None, str | None, float | None, float | None]:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.floors", "--grid-sync"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=GRID_SYNC_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return None, f"grid barrier probe timed out after {GRID_SYNC_TIMEOUT_S} s", None, None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"grid barrier probe failed (rc={proc.returncode}): {tail[0]}", None, None
    result = json.loads(lines[-1])
    note = f"{result['programs']} programs (one per SM), cooperative launch"
    return float(result["grid_sync_us"]), note, result.get("cta_sync_us"), result.get("cta_step_us")


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.floors [--grid-sync]``: print the machine figures as JSON."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.floors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid-sync", action="store_true", help="run only the grid barrier probe (GPU)")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    args = ap.parse_args(argv)
    if args.grid_sync:
        print(json.dumps(grid_sync_probe()))
        return 0
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    print(json.dumps(measure_machine(device, args.dtypes.split(",")), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
