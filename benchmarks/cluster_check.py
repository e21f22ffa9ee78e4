"""``python -m benchmarks.cluster_check``: the first check of the CUDA cluster tier (tier 4) on an
H100/H200, in under five minutes (``--seconds``, default 285: the tests and the benchmark get what
the compile step leaves).

1. ``compile`` -- nvcc builds every configuration the tier serves (every cell, fp16 and bf16, H
   128-768, both directions and batch tiles) in parallel into the disk cache, and the kernel
   report's rows of the tier (registers, spills, shared memory, the SASS facts of a step) go to
   ``report.md``.
2. ``tests`` -- ``tests/test_cuda_tier.py``, whose ``gpu`` tests force the tier through the modules
   (every cell, fp16 and bf16, packed batches, both directions, h0/c0) against float64 within twice
   cuDNN's own error, in a subprocess under a time limit.
3. ``verify`` -- when every test passed and none of the ``gpu`` tests was skipped, the verification
   record of this GPU's compute capability and these sources goes to ``kernels/verified.json``
   (commit it: it is what makes the tier eligible on that architecture).
4. ``bench`` -- microseconds per step of LSTM/GRU/RNN, fp16 and bf16, B 16 and 64, H 128-512,
   T 1024, forward and forward+backward, plus the headline LSTM fp16 B16 H768, each beside
   ``torch.nn`` (cuDNN) in the same process, in a subprocess under a time limit.

The folder (default ``benchmarks/results/<gpu>-cluster-<date>/``) gets the logs, ``report.md``,
``bench.json``/``bench.md`` and ``summary.md``.  The exit status is 0 when every step passed.

Example (on a machine with the GPU, from the repository root)::

    pip install --no-deps --no-build-isolation -e . && python -m benchmarks.cluster_check
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: Seconds of the whole check (``--seconds``; ``python -m benchmarks.gpu_check`` gives it 300), and
#: the most the tests and the benchmark take of what is left when they start.
TOTAL_S = 285
TESTS_S = 150
BENCH_S = 120

T = 1024
BENCH_CELLS = (("LSTM", None), ("GRU", None), ("RNN", "tanh"))
BENCH_SIZES = (128, 256, 512)
BENCH_BATCHES = (16, 64)
HEADLINE = ("LSTM", None, "fp16", 16, 768)


def bench_rows() -> list[dict[str, Any]]:
    """The benchmark grid, the headline row first."""
    rows = [dict(family=HEADLINE[0], nonlinearity=HEADLINE[1], dtype=HEADLINE[2], B=HEADLINE[3], H=HEADLINE[4])]
    for family, nl in BENCH_CELLS:
        for dtype in ("fp16", "bf16"):
            for B in BENCH_BATCHES:
                for H in BENCH_SIZES:
                    rows.append(dict(family=family, nonlinearity=nl, dtype=dtype, B=B, H=H))
    return rows


# ---------------------------------------------------------------------------------------------
# Steps


def compile_step(out: Path, jobs: int) -> dict[str, Any]:
    """Compile every configuration (parallel nvcc) and write the tier's report rows."""
    from fastrnn.kernels import cluster

    start = time.monotonic()
    configs = cluster.report_configs(full=True)
    rows = cluster.report_rows(configs, jobs=jobs)
    (out / "report.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    (out / "report.md").write_text(cluster.format_rows(rows) + "\n")
    errors = [r["config"] for r in rows if r.get("error")]
    spills = [r["config"] for r in rows if not r.get("error") and (r["loop_spills"] or not r["shared_ok"])]
    status = "passed" if not errors and not spills else "failed"
    return dict(name="compile", status=status, seconds=round(time.monotonic() - start, 1),
                result=f"{len(rows)} configurations, {len(errors)} errors, {len(spills)} spilling or over shared memory",
                log="report.md")  # fmt: skip


def _subprocess(name: str, argv: list[str], timeout: float, out: Path, cwd: Path, env: dict | None = None) -> dict:
    log = out / f"{name}.log"
    start = time.monotonic()
    with open(log, "w") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        try:
            rc = subprocess.run(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                env={**os.environ, **(env or {})}).returncode  # fmt: skip
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout:.0f} s"
    return dict(name=name, status=status, seconds=round(time.monotonic() - start, 1), log=log.name)


def _junit_counts(path: Path) -> dict[str, Any]:
    """Tests, failures, errors, and the skipped ``gpu`` tests (by name) of a junit file."""
    if not path.exists():
        return dict(tests=0, failures=0, errors=0, gpu_skipped=["(no junit file)"])
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    skipped_gpu = [case.get("name") for case in suite.iter("testcase")
                   if case.get("name", "").startswith("test_gpu") and case.find("skipped") is not None]  # fmt: skip
    ran_gpu = [case.get("name") for case in suite.iter("testcase") if case.get("name", "").startswith("test_gpu")]
    return dict(tests=int(suite.get("tests", 0)), failures=int(suite.get("failures", 0)),
                errors=int(suite.get("errors", 0)), gpu_tests=len(ran_gpu), gpu_skipped=skipped_gpu)  # fmt: skip


def tests_step(out: Path, root: Path, limit_s: float = TESTS_S) -> dict[str, Any]:
    junit = out / "tests.xml"
    argv = [sys.executable, "-m", "pytest", "tests/test_cuda_tier.py", "-q", "-rfEs", "-p", "no:cacheprovider",
            "--junitxml", str(junit)]  # fmt: skip
    rec = _subprocess("tests", argv, limit_s, out, root)
    counts = _junit_counts(junit)
    rec.update(counts)
    if rec["status"] == "passed" and (counts["gpu_skipped"] or not counts.get("gpu_tests")):
        rec["status"] = "failed"
        rec["why"] = f"gpu tests skipped: {', '.join(counts['gpu_skipped'][:3]) or 'none ran'}"
    rec["result"] = f"{counts['tests']} tests, {counts['failures']} failed, {counts['errors']} errors"
    return rec


def verify_step(tests: dict[str, Any], env: dict[str, Any], out: Path | None = None) -> dict[str, Any]:
    """Write the verification record when the tests passed; a copy of the file goes to ``out`` (the
    results folder, which is what comes back from a remote GPU: commit it as
    ``kernels/verified.json``)."""
    import shutil

    from fastrnn.kernels import cluster

    if tests["status"] != "passed":
        return dict(name="verify", status="skipped", seconds=0.0, result="the tests did not pass: no record written")
    record = cluster.record_verification(0, torch=env.get("torch"), cuda=env.get("cuda"), driver=env.get("driver"),
                                         commit=env.get("commit"))  # fmt: skip
    if out is not None:
        shutil.copy(cluster.VERIFIED_PATH, out / "verified.json")
    return dict(name="verify", status="passed", seconds=0.0,
                result=f"kernels/verified.json: {record['gpu']} {record['capability']} {record['kernel_hash']}")  # fmt: skip


def bench_step(out: Path, root: Path, limit_s: float = BENCH_S) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.cluster_check", "--bench-only", "--out", str(out),
            "--bench-seconds", f"{max(10.0, limit_s - 20):.0f}"]  # fmt: skip
    rec = _subprocess("bench", argv, limit_s, out, root)
    path = out / "bench.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    rec["result"] = f"{sum(1 for r in rows if r.get('fastrnn_us') is not None)} of {len(rows)} rows measured"
    return rec


# ---------------------------------------------------------------------------------------------
# The benchmark (run in its own process: --bench-only)


def _measure(fn, device) -> float:
    from benchmarks.timing import TimingConfig, time_cuda

    cfg = TimingConfig(rep_ms=40.0, warmup_ms=10.0, min_reps=3, max_reps=15, max_s=1.5, flush_l2=False)
    return time_cuda(fn, cfg, device).median_ms


def bench(out: Path, budget_s: float = BENCH_S - 20) -> list[dict[str, Any]]:
    """Time every row of :func:`bench_rows` for tier 4 and cuDNN; rows are printed as they finish and
    ``bench.json``/``bench.md`` rewritten after each."""
    import torch

    import fastrnn
    from fastrnn.kernels import _runtime, cells, cluster, tiers

    os.environ["FASTRNN_TIER"] = str(cluster.NUMBER)
    dev = torch.device("cuda")
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    start = time.monotonic()
    done: list[dict[str, Any]] = []
    print(f"{'cell':9s} {'dtype':5s} {'B':>3s} {'H':>4s} {'kind':7s} {'tier4 us/step':>13s} {'cuDNN us/step':>13s}"
          f" {'ratio':>6s}", flush=True)  # fmt: skip
    for row in bench_rows():
        if time.monotonic() - start > budget_s:
            done.append(dict(row, kind="-", skipped="out of time"))
            continue
        mode = cells.family_mode(row["family"], row["nonlinearity"])
        dtype = dtypes[row["dtype"]]
        why = tiers.tier_unsupported(cluster.NUMBER, mode, row["H"], 0, dtype)
        fast_cls = getattr(fastrnn, row["family"])
        ref_cls = getattr(torch.nn, row["family"])
        kw = {"nonlinearity": row["nonlinearity"]} if row["nonlinearity"] else {}
        torch.manual_seed(0)
        ref = ref_cls(row["H"], row["H"], **kw).to(dev, dtype)
        fast = fast_cls(row["H"], row["H"], **kw, backend="triton").to(dev, dtype)
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(T, row["B"], row["H"], device=dev, dtype=dtype)
        g = torch.randn(T, row["B"], row["H"], device=dev, dtype=dtype)
        for kind in ("fwd", "fwdbwd"):
            rec = dict(row, kind=kind, mode=mode, T=T)
            xi = x if kind == "fwd" else x.detach().requires_grad_()
            if why is None:
                before = _runtime.LAUNCHES.get("cluster_fwd", 0)
                try:
                    rec["fastrnn_us"] = _us_per_step(functools.partial(_call, fast, xi, g, kind), dev)
                    if _runtime.LAUNCHES.get("cluster_fwd", 0) == before:
                        rec["fastrnn_error"] = "tier 4 did not run"
                        rec.pop("fastrnn_us")
                except Exception as exc:  # noqa: BLE001 -- a row's failure is recorded, the grid goes on
                    rec["fastrnn_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            else:
                rec["fastrnn_error"] = why
            rec["cudnn_us"] = _us_per_step(functools.partial(_call, ref, xi, g, kind), dev)
            done.append(rec)
            f_us, c_us = rec.get("fastrnn_us"), rec.get("cudnn_us")
            ratio = f"{f_us / c_us:.2f}" if f_us and c_us else "-"
            print(f"{mode:9s} {row['dtype']:5s} {row['B']:3d} {row['H']:4d} {kind:7s} "
                  f"{f_us if f_us is not None else rec.get('fastrnn_error', '-')[:40]!s:>13s} {c_us!s:>13s} {ratio:>6s}",
                  flush=True)  # fmt: skip
            _write_bench(out, done)
    return done


def _call(module, x, g, kind: str):
    """One forward (``"fwd"``, no autograd) or forward+backward (``"fwdbwd"``) of ``module``."""
    import torch

    if kind == "fwd":
        with torch.no_grad():
            return module(x)
    out = module(x)[0]
    out.backward(g)
    return out


def _us_per_step(fn, device) -> float:
    return round(_measure(fn, device) * 1000 / T, 3)


def _write_bench(out: Path, rows: list[dict[str, Any]]) -> None:
    (out / "bench.json").write_text(json.dumps(dict(T=T, rows=rows), indent=1) + "\n")
    lines = ["| cell | dtype | B | H | T | kind | tier 4 us/step | cuDNN us/step | tier 4 / cuDNN |", "|" + "---|" * 9]
    for r in rows:
        f_us, c_us = r.get("fastrnn_us"), r.get("cudnn_us")
        ratio = f"{f_us / c_us:.2f}" if f_us and c_us else "-"
        lines.append(f"| {r.get('mode', r['family'])} | {r['dtype']} | {r['B']} | {r['H']} | {T} | {r.get('kind')} | "
                     f"{f_us if f_us is not None else r.get('fastrnn_error', r.get('skipped', '-'))} | {c_us or '-'} | "
                     f"{ratio} |")  # fmt: skip
    (out / "bench.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cluster_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="results folder (default benchmarks/results/<gpu>-cluster-<date>)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel nvcc processes")
    ap.add_argument("--only", action="append", choices=("compile", "tests", "bench"), help="run only these steps")
    ap.add_argument("--seconds", type=float, default=TOTAL_S, help="time for the whole check")
    ap.add_argument("--bench-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bench-seconds", type=float, default=BENCH_S - 20, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    started = time.monotonic()
    left = lambda: args.seconds - (time.monotonic() - started)

    import torch

    from .results import REPO_ROOT, device_slug, environment

    if not torch.cuda.is_available():
        print("python -m benchmarks.cluster_check: no CUDA device here; this command is for an H100/H200 "
              "(on CPU: python -m pytest tests/test_cuda_tier.py)", file=sys.stderr)  # fmt: skip
        return 2
    env = environment(torch.device("cuda"))
    day = _dt.date.today().isoformat()
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / f"{device_slug(env)}-cluster-{day}"
    out.mkdir(parents=True, exist_ok=True)
    if args.bench_only:
        bench(out, args.bench_seconds)
        return 0
    steps = args.only or ["compile", "tests", "bench"]
    records = []
    if "compile" in steps:
        print("[compile] every configuration, nvcc in parallel, and the report rows ...", flush=True)
        records.append(compile_step(out, args.jobs))
        print(f"[compile] {records[-1]['status']} in {records[-1]['seconds']} s: {records[-1]['result']}", flush=True)
    if "tests" in steps:
        limit = max(30.0, min(TESTS_S, left() - 45))
        print(f"[tests] tests/test_cuda_tier.py (limit {limit:.0f} s) ...", flush=True)
        tests = tests_step(out, REPO_ROOT, limit)
        records.append(tests)
        print(
            f"[tests] {tests['status']} in {tests['seconds']} s: {tests['result']} {tests.get('why', '')}", flush=True
        )
        records.append(verify_step(tests, env, out))
        print(f"[verify] {records[-1]['status']}: {records[-1]['result']}", flush=True)
    if "bench" in steps:
        limit = max(20.0, min(BENCH_S, left() - 5))
        print(f"[bench] tier 4 beside cuDNN, T = {T} (limit {limit:.0f} s) ...", flush=True)
        records.append(bench_step(out, REPO_ROOT, limit))
        print(f"[bench] {records[-1]['status']} in {records[-1]['seconds']} s: {records[-1]['result']}", flush=True)
        bench_md = out / "bench.md"
        if bench_md.exists():
            print(bench_md.read_text())
    keys = ("gpu", "compute_capability", "driver", "cuda", "torch", "triton", "fastrnn", "commit", "date")
    md = ["# fastrnn cluster tier check (`python -m benchmarks.cluster_check`)", "",
          *[f"- {k}: {env.get(k)}" for k in keys], "", "| step | status | seconds | result |", "|---|---|---|---|",
          *[f"| {r['name']} | {r['status']} | {r['seconds']} | {r.get('result', '')} {r.get('why', '')} |"
            for r in records]]  # fmt: skip
    (out / "summary.md").write_text("\n".join(md) + "\n")
    (out / "summary.json").write_text(json.dumps(dict(env=env, steps=records), indent=2, default=str) + "\n")
    print("\n".join(md))
    print(f"results: {out}")
    return 0 if all(r["status"] in ("passed", "skipped") for r in records if r["name"] != "verify") else 1


if __name__ == "__main__":
    sys.exit(main())
