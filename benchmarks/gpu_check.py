"""``python -m benchmarks.gpu_check``: everything a GPU should check, in two calls of under ten
minutes each.

1. ``cluster`` -- the CUDA cluster tier's own check (``python -m benchmarks.cluster_check``: its
   build, its correctness tests against float64 -- which, when they pass, write its verification
   record to ``kernels/verified.json`` -- and benchmark rows with the tier forced), first, under
   five minutes.
2. ``tests`` -- the test suite with the kernels compiled for the GPU, the sweeps marked ``slow``
   included (``pytest -n N`` when pytest-xdist is installed), except the tests that could trip a
   device-side assertion.  ``tests/test_kernel_report.py`` is left out: it compiles for
   sm_90/sm_80 on the CPU and is the same on any machine (CI runs it).
3. ``isolated`` -- the tests marked ``device_assert`` (they feed bad token ids), each in a
   process of its own: a device-side assertion poisons the CUDA context of its process, which
   must cost one test, not every later test of a worker.
4. ``interpreter`` -- the default run's tests marked ``interpreter`` (CPU tensors through Triton's
   interpreter; the slow sweeps are CI's) in their own process with ``TRITON_INTERPRET=1``: a
   process either compiles the kernels or interprets them (``kernels/_runtime.py``).
5. ``bench`` -- the quick benchmark grid (``python -m benchmarks --quick``) capped in time.
6. ``table`` -- ``fastrnn/auto_table.json`` regenerated from the results (``python -m
   benchmarks.auto_table``), so that ``backend="auto"`` answers from this run once it is committed.
7. ``readme`` -- README.md's speed-up table regenerated from this run's quick grid (``python -m
   benchmarks.readme_table``): commit it with the results.

Each step runs as a subprocess under its own time limit, so a hang costs one step, never the run.
The folder (default ``benchmarks/results/<gpu>-check-<date>/``) gets every log, the benchmark
results and ``summary.md``/``summary.json`` with device, driver, CUDA, cuDNN, torch, triton,
commit and date, and per step its tests passed, failed and in error, apart.  The exit status is 0
when every step passed.  ``--part 1`` runs steps 1-4 (about 9 minutes), ``--part 2`` steps 5-7
(about 6 minutes); no ``--part``: all of them.

Example (on a machine with the GPU, from the repository root)::

    pip install --no-deps --no-build-isolation -e .
    python -m benchmarks.gpu_check --part 1 && python -m benchmarks.gpu_check --part 2
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Minutes of each part (``--part``): part 1 is the cluster tier's check (5 minutes at most), the
#: tests (the rest, but the isolated and interpreter tests' 1.5); part 2 the benchmark grid and the
#: tables.
PART_MINUTES = {1: 9.0, 2: 6.0}
CLUSTER_S = 300
ISOLATED_S = 60
INTERPRETER_S = 30
#: The steps of each part.
PARTS = {1: ("cluster", "tests", "isolated", "interpreter"), 2: ("bench", "table", "readme")}

#: Providers of the benchmark step: the kernels and cuDNN side by side (the slow loop/compile
#: references do not fit the time).
BENCH_PROVIDERS = "fastrnn,fastrnn_auto,cudnn"


@dataclass
class Step:
    """One subprocess of the check."""

    name: str
    argv: list[str]
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    what: str = ""


def _pytest_workers(cpus: int | None) -> list[str]:
    if importlib.util.find_spec("xdist") is None:
        return []
    return ["-n", str(max(1, min(12, cpus or 1)))]


def plan(out: Path, cpus: int | None = None, python: str = sys.executable,
         minutes: dict[int, float] | None = None) -> list[Step]:  # fmt: skip
    """The steps of the check, writing under ``out``; the limits of each part's steps add up to
    its minutes (:data:`PART_MINUTES`)."""
    minutes = {**PART_MINUTES, **(minutes or {})}
    tests_s = minutes[1] * 60 - CLUSTER_S - ISOLATED_S - INTERPRETER_S
    bench_minutes = max(0.5, minutes[2] - 1.0)  # the tables, start-up and reports
    pytest = [python, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    return [
        Step(
            "cluster",
            [python, "-m", "benchmarks.cluster_check", "--out", str(out / "cluster")],
            CLUSTER_S,
            what="the CUDA cluster tier: build, correctness against float64 (then its verification record), rows",
        ),
        Step(
            "tests",
            [
                *pytest,
                *_pytest_workers(cpus),
                "-m",
                "(slow or not slow) and not device_assert",  # the sweeps too: compiled, they are the 16-bit check
                "--ignore",
                "tests/test_kernel_report.py",
                "--ignore",
                "tests/test_cuda_tier.py",  # the cluster step ran it
                "--junitxml",
                str(out / "tests.xml"),
            ],
            tests_s,
            what="the test suite, kernels compiled for the GPU (the kernel report is a CPU check)",
        ),  # fmt: skip
        Step(
            "isolated",
            [python, "-m", "benchmarks.gpu_check", "--isolated", "device_assert", "--out", str(out)],
            ISOLATED_S,
            what="the tests that could trip a device-side assertion, each in a process of its own",
        ),
        Step(
            "interpreter",
            [*pytest, "-m", "interpreter and not slow", "--junitxml", str(out / "interpreter.xml")],
            INTERPRETER_S,
            env={"TRITON_INTERPRET": "1"},
            what="the interpreter tests (CPU tensors through Triton's interpreter) in their own process",
        ),
        Step(
            "bench",
            [
                python,
                "-m",
                "benchmarks",
                "--quick",
                "--providers",
                BENCH_PROVIDERS,
                "--max-minutes",
                f"{bench_minutes:.2f}",
                "--no-progress",
                "--out",
                str(out / "bench-quick"),
            ],
            bench_minutes * 60 + 30,
            what=f"the quick benchmark grid ({BENCH_PROVIDERS}), capped in time",
        ),  # fmt: skip
        Step(
            "table",
            [python, "-m", "benchmarks.auto_table"],
            15,
            what="fastrnn/auto_table.json regenerated from the committed and new results",
        ),  # fmt: skip
        Step(
            "readme",
            [python, "-m", "benchmarks.readme_table"],
            15,
            what="README.md's speed-up table regenerated from the newest quick-grid results (this run's)",
        ),
    ]


def _summary_counts(log: str) -> str:
    """pytest's final line (``3 failed, 400 passed ...``), or ''."""
    lines = re.findall(r"^=*\s*(\d+ (?:passed|failed|error|skipped|deselected).*?)\s*=*$", log, re.M)
    return lines[-1] if lines else ""


def junit_counts(path: Path) -> dict[str, int] | None:
    """``{tests, failed, errors, skipped, passed}`` of a pytest JUnit XML file (failures and errors
    apart: an error is a test that could not run, e.g. a broken CUDA context), or ``None``."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts = dict(tests=n["tests"], failed=n["failures"], errors=n["errors"], skipped=n["skipped"])
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
    return counts


def run_isolated(marker: str, out: Path, python: str = sys.executable) -> int:
    """Run each test marked ``marker`` in a pytest process of its own (a device-side assertion
    poisons the process's CUDA context, so it must cost one test, not every later one on the
    worker), each with its own JUnit file under ``out/isolated/``; prints one line per test and the
    counts, failures and errors apart.  Returns 0 when every test passed or was skipped."""
    listed = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", "-m", marker, "-p", "no:cacheprovider"],
                            capture_output=True, text=True)  # fmt: skip
    ids = [line.strip() for line in listed.stdout.splitlines() if "::" in line]
    folder = out / "isolated"
    folder.mkdir(parents=True, exist_ok=True)
    total = dict(tests=0, failed=0, errors=0, skipped=0, passed=0)
    for i, test in enumerate(ids):
        xml = folder / f"{i:03d}.xml"
        rc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, test,
                             "--junitxml", str(xml)], capture_output=True, text=True).returncode  # fmt: skip
        counts = junit_counts(xml) or dict(tests=1, failed=0, errors=1, skipped=0, passed=0)  # died: an error
        for k in total:
            total[k] += counts[k]
        print(f"{'ok' if rc in (0, 5) else 'FAILED'} {test}", flush=True)
    print(f"{total['passed']} passed, {total['failed']} failed, {total['errors']} errors, {total['skipped']} skipped "
          f"({len(ids)} tests, one process each)")  # fmt: skip
    return 0 if total["failed"] == 0 and total["errors"] == 0 else 1


def run_step(step: Step, out: Path, cwd: Path) -> dict:
    """Run ``step``; its combined output goes to ``out/<name>.log``.  Returns its record."""
    log_path = out / f"{step.name}.log"
    env = {**os.environ, **step.env}
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(step.argv)}\n" + "".join(f"  ({k}={v})\n" for k, v in step.env.items()))
        log.flush()
        try:
            rc = subprocess.run(step.argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=step.timeout_s).returncode  # fmt: skip
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, f"timed out after {step.timeout_s:.0f} s"
    text = log_path.read_text(errors="replace")
    junit = next((Path(a) for a in step.argv if a.endswith(".xml")), None)
    return dict(
        name=step.name, what=step.what, argv=step.argv, env=step.env, status=status, returncode=rc,
        seconds=round(time.monotonic() - t0, 1), result=_summary_counts(text), log=log_path.name,
        counts=junit_counts(junit) if junit is not None else None,
    )  # fmt: skip


def _count(record: dict, key: str) -> str:
    counts = record.get("counts")
    return "" if not counts else str(counts[key])


def write_summary(out: Path, env: dict, records: list[dict]) -> str:
    """``summary.json`` and ``summary.md`` in ``out``; returns the markdown."""
    (out / "summary.json").write_text(json.dumps(dict(env=env, steps=records), indent=2) + "\n")
    keys = ("gpu", "driver", "cuda", "cudnn", "torch", "triton", "python", "fastrnn", "commit", "date")
    lines = [
        "# fastrnn GPU check (`python -m benchmarks.gpu_check`)",
        "",
        *[f"- {k}: {env.get(k)}" for k in keys],
        "",
        "| step | status | seconds | passed | failed | errors | result | what |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['name']} | {r['status']} | {r['seconds']} | {_count(r, 'passed')} | {_count(r, 'failed')} | "
            f"{_count(r, 'errors')} | {r['result']} | {r['what']} |"
            for r in records
        ],  # fmt: skip
        "",
        "Logs: " + ", ".join(f"`{r['log']}`" for r in records) + "; benchmark results in `bench-quick/`.",
    ]
    md = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="results folder (default benchmarks/results/<gpu>-check-<date>)")
    ap.add_argument("--part", type=int, choices=sorted(PARTS), help="run only this part's steps (module doc)")
    ap.add_argument("--only", action="append", choices=[n for part in PARTS.values() for n in part],
                    help="run only these steps")  # fmt: skip
    ap.add_argument("--dry-run", action="store_true", help="print the steps and exit")
    ap.add_argument("--isolated", metavar="MARKER", help=argparse.SUPPRESS)  # the isolated step's own run
    args = ap.parse_args(argv)
    if args.isolated:
        return run_isolated(args.isolated, Path(args.out or "."))

    import torch

    from .results import REPO_ROOT, device_slug, environment

    has_cuda = torch.cuda.is_available()
    env = environment(torch.device("cuda" if has_cuda else "cpu"))
    day = _dt.date.today().isoformat()
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / f"{device_slug(env)}-check-{day}"
    wanted = set(args.only or []) | set(PARTS.get(args.part, ()))
    steps = [s for s in plan(out.resolve(), os.cpu_count()) if not wanted or s.name in wanted]
    if args.dry_run:
        for s in steps:
            print(f"[{s.name}] {' '.join(f'{k}={v}' for k, v in s.env.items())} {' '.join(s.argv)} "
                  f"(limit {s.timeout_s:.0f} s)")  # fmt: skip
        return 0
    if not has_cuda:
        print("python -m benchmarks.gpu_check: no CUDA device here; this command is for a GPU machine "
              "(on CPU: python -m pytest, python -m benchmarks)", file=sys.stderr)  # fmt: skip
        return 2
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for s in steps:
        print(f"[{s.name}] {s.what} (limit {s.timeout_s:.0f} s) ...", flush=True)
        rec = run_step(s, out, REPO_ROOT)
        print(f"[{s.name}] {rec['status']} in {rec['seconds']} s {rec['result']}", flush=True)
        records.append(rec)
    print(write_summary(out, env, records))
    print(f"results: {out}")
    return 0 if all(r["status"] == "passed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
