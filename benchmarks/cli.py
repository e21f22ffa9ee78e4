"""``python -m benchmarks``: sweep a grid of rows and compare providers side by side.

On a CUDA machine the GPU suite runs (``fastrnn`` triton backend vs ``cudnn`` = ``torch.nn`` on
CUDA, plus the ``loop`` and ``compile`` references); without one, a line says so and the CPU
comparison runs (``fastrnn`` with ``backend='auto'`` vs ``torch.nn``: fastrnn's wrapper overhead)
and the command exits 0.  See ``benchmarks/README.md`` for the options and the output files.
"""

from __future__ import annotations

import argparse
import gc
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from . import cases, grids
from .cases import KINDS, PROVIDER_LABELS, SUITES, Case, Suite
from .floors import measure_machine, row_floors, set_strict_fp32
from .results import (
    REPO_ROOT,
    ResultStore,
    build_document,
    device_slug,
    environment,
    headline_lines,
    read_jsonl,
    to_markdown,
    write_reports,
)
from .timing import TimingConfig, paired_ratio, peak_memory_mib, time_cpu_interleaved, time_cuda

#: Default time cap of a GPU run (``--max-minutes``): no new row starts after it, so a run stays
#: short and every prefix of the grid is useful.  ``--resume`` continues where a capped run stopped.
DEFAULT_GPU_MAX_MINUTES = 7.0

#: Timing settings by ``torch.device.type`` (the first GPU run found this keyed "gpu", looked up
#: as "cuda": the suite did not start on any GPU; ``timing_config`` is now tested for both).
TIMING = {
    "cuda": TimingConfig(rep_ms=100.0, warmup_ms=25.0, min_reps=5, max_reps=50, max_s=3.0),
    "cpu": TimingConfig(rep_ms=60.0, warmup_ms=15.0, min_reps=15, max_reps=400, max_s=2.0, flush_l2=False),
}


def timing_config(device: torch.device, rep_ms: float | None = None) -> TimingConfig:
    """The timing settings for ``device`` (CUDA or CPU), with ``rep_ms`` replaced when given."""
    if device.type not in TIMING:
        raise ValueError(f"no timing settings for {device.type} devices (known: {', '.join(TIMING)})")
    cfg = TIMING[device.type]
    return TimingConfig(**{**cfg.__dict__, "rep_ms": rep_ms}) if rep_ms else cfg


def _recorded(step, result: dict[str, Any]) -> None:
    """What a step says about itself goes into its result: ``note`` (which backend ran, why) and
    ``kernels`` (:func:`fastrnn.kernels.tiers.kernel_identity` of the kernels that ran: the shipped
    ``auto`` table applies the row only to the very same kernels)."""
    for name in ("note", "kernels"):
        if getattr(step, name, None):
            result[name] = getattr(step, name)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks``."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="fastrnn vs cuDNN (and PyTorch loop references) side by side over a grid of rows. "
        "Without a GPU: the CPU comparison (fastrnn backend='auto' vs torch.nn).",
    )
    g = ap.add_argument_group("what to run")
    g.add_argument(
        "--quick",
        action="store_true",
        help="the quick GPU grid (124 rnn rows, 8 fused-embedding, 16 layer-norm and return_states) for a first look",
    )
    g.add_argument("--grid", choices=None, help="grid by name: full (GPU default), quick, cpu (CPU default), smoke")
    g.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="TERMS",
        help="keep rows matching every term: a substring of the row key "
        "(rnn/LSTM/fp16/B16/H768/T1024/L1/uni/dense/fwd) or FIELD=V[,V..], FIELD!=V, FIELD<V, "
        "FIELD>=V... over kind cell dtype B H T layers bidir packed run; repeatable",
    )
    g.add_argument("--providers", help="comma list of providers (default: the suite's): " + ", ".join(PROVIDER_LABELS))
    g.add_argument(
        "--slow-providers",
        choices=("core", "all", "none"),
        default="core",
        help="where the slow loop/compile references run: core = headline and per-cell core rows "
        "(tier <= 1; with --quick only their fp16 rows: a torch.compile per cell, dtype and grad mode "
        "is the slow part), all, none",
    )
    g.add_argument(
        "--only-comparable",
        action="store_true",
        help="skip the other providers on rows fastrnn cannot run (covers the comparable rows of a big grid faster)",
    )
    g.add_argument("--limit", type=int, help="run at most this many rows (after filtering)")
    g.add_argument("--list", action="store_true", help="print the selected rows and exit")
    g.add_argument("--suite", choices=sorted(SUITES), help="force a suite (gpu on --device cpu: development only)")
    g.add_argument("--device", help="cuda (default when available) or cpu")
    g = ap.add_argument_group("how")
    g.add_argument("--seed", type=int, default=0, help="base seed; each row's seed derives from it and the row key")
    g.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help=f"stop starting rows this many minutes after start-up (GPU default {DEFAULT_GPU_MAX_MINUTES:g}; "
        "0: no cap; a run always measures at least one row); results are kept and --resume continues",
    )
    g.add_argument("--rep-ms", type=float, help="measured time to aim for per provider and row (ms)")
    g.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (CPU suite default 1: steadier on a shared "
        "machine; both providers run the same aten code, so the comparison does not depend on it)",
    )
    g.add_argument("--no-grid-sync", action="store_true", help="skip the grid barrier probe (GPU)")
    g = ap.add_argument_group("output")
    g.add_argument("--out", help="output folder (default benchmarks/results/<device>[-<grid>])")
    g.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in --out/rows.jsonl and measure only the missing ones",
    )
    g.add_argument(
        "--retry-unfinished",
        action="store_true",
        help="with --resume: measure again the rows an earlier run started but never finished "
        "(by default they are recorded as failed, so that a row which hangs cannot stop every resume)",
    )
    g.add_argument("--report-only", action="store_true", help="rebuild reports and plot from --out/rows.jsonl")
    g.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    g.add_argument("--no-host-overhead", action="store_true",
                   help="CPU: skip the host time per call rows (python -m benchmarks.host_overhead) that end a "
                        "run of the whole grid (a run with --filter or --limit has none)")  # fmt: skip
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g.add_argument("--quiet", action="store_true", help="print only the summary lines, not the tables")
    return ap


# ---------------------------------------------------------------------------------------------
# One row


def _error(e: BaseException) -> dict[str, Any]:
    msg = " ".join(str(e).split())
    if len(msg) > 600:
        msg = msg[:599] + "…"
    return {"status": "error", "error": f"{type(e).__name__}: {msg}"}


def _cuda_broken(device: torch.device) -> str | None:
    """``None`` while the CUDA context still works, else why not (a sticky error ends the run)."""
    if device.type != "cuda":
        return None
    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _as_tensor(out: Any) -> torch.Tensor | None:
    return out.detach() if isinstance(out, torch.Tensor) else None


def measure_row(
    case: Case,
    *,
    suite: Suite,
    providers: list[str],
    device: torch.device,
    machine: dict[str, Any],
    cfg: TimingConfig,
    base_seed: int,
    run_slow: bool,
    only_comparable: bool = False,
) -> tuple[dict[str, Any], str | None]:
    """Measure every provider on ``case``.

    Returns ``(row record, fatal)``: ``fatal`` is set when the CUDA context broke (the run must end).
    A provider that raises gets ``{"status": "error", "error": "Type: message"}`` in its cell.
    With ``only_comparable``, a row the subject (fastrnn) cannot run skips the other providers.
    """
    kind = KINDS[case.kind]
    t0 = time.perf_counter()
    paired = None  # CPU: median per-round subject/baseline time ratio
    seed = case.seed(base_seed)
    cost = kind.cost(case, seed)
    floors = row_floors(cost, machine, case.dtype)
    results: dict[str, dict[str, Any]] = {}
    fatal = None
    outputs: dict[str, torch.Tensor | None] = {}
    compare = case.run == "fwd"
    try:
        wl = kind.setup(case, device, seed)
    except Exception as e:
        wl = None
        err = _error(e)
        err["error"] = "setup failed: " + err["error"]
        results = {p: dict(err) for p in providers}
        _free(device)
        fatal = _cuda_broken(device)
    steps: dict[str, Any] = {}
    if wl is not None:
        for p in providers:
            if p not in kind.providers:
                results[p] = {"status": "skipped", "reason": f"no {p!r} provider for kind {case.kind!r}"}
            elif p in suite.slow and not run_slow:
                results[p] = {
                    "status": "skipped",
                    "reason": "slow reference: runs on headline/core rows only "
                    "(--slow-providers all runs it everywhere)",
                }
            else:
                try:
                    steps[p] = kind.providers[p](case, wl, device)
                except Exception as e:
                    results[p] = _error(e)

    def subject_failed() -> bool:
        return only_comparable and results.get(suite.subject, {}).get("status") in ("error", "skipped")

    if subject_failed():
        steps = {}  # the subject could not even be built: nothing to compare with
    if device.type == "cuda":
        for p, step in steps.items():
            if p != suite.subject and subject_failed():
                break
            try:
                timing = time_cuda(step, cfg, device)
                res: dict[str, Any] = {"status": "ok", **timing.as_dict(), "peak_mib": peak_memory_mib(step, device)}
                if compare and p in (suite.subject, suite.baseline):
                    outputs[p] = _as_tensor(step())
            except Exception as e:
                res = _error(e)
                _free(device)
                fatal = _cuda_broken(device)
            _recorded(step, res)
            results[p] = res
            if fatal:
                break
    else:
        ready = {}
        for p, step in steps.items():
            if p != suite.subject and subject_failed():
                break
            try:
                out = step()  # first call: compilation, lazy init; never timed
                ready[p] = step
                if compare and p in (suite.subject, suite.baseline):
                    outputs[p] = _as_tensor(out)
            except Exception as e:
                results[p] = _error(e)
        samples: dict[str, list[float]] = {}
        try:
            for p, timing in time_cpu_interleaved(ready, cfg, samples).items():
                results[p] = {"status": "ok", **timing.as_dict(), "peak_mib": None}
        except Exception as e:
            for p in ready:
                results[p] = _error(e)
        if suite.subject in samples and suite.baseline in samples:
            paired = paired_ratio(samples[suite.subject], samples[suite.baseline])
        for p, step in steps.items():
            if p in results:
                _recorded(step, results[p])
    for p in providers:
        if p not in results and subject_failed():
            results[p] = {"status": "skipped", "reason": f"{suite.subject} cannot run this row (--only-comparable)"}
        results.setdefault(p, {"status": "error", "error": "not run: the CUDA context broke earlier in this row"})
        res = results[p]
        if res["status"] == "ok" and res["median_ms"] > 0:
            res["frac_of_floor"] = floors["floor_ms"] / res["median_ms"]
    sub, base = results.get(suite.subject), results.get(suite.baseline)
    speedup = None
    if sub and base and sub["status"] == "ok" and base["status"] == "ok":
        speedup = base["median_ms"] / sub["median_ms"]
    max_abs_diff: float | str | None = None
    a, b = outputs.get(suite.subject), outputs.get(suite.baseline)
    if a is not None and b is not None and a.shape == b.shape:
        d = float((a.float() - b.float()).abs().max().item())
        max_abs_diff = d if math.isfinite(d) else str(d)  # "nan"/"inf" stay valid JSON
    row = {
        "key": case.key,
        "case": case.fields(),
        "tier": kind.tier(case),
        "seed": seed,
        "tokens": cost.tokens,
        "floors": floors,
        "results": {p: results[p] for p in providers},
        "speedup": speedup,
        "max_abs_diff": max_abs_diff,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    if paired is not None:
        row["paired_ratio"] = paired
    del wl, steps, outputs
    _free(device)
    return row, fatal


def unfinished_row(
    case: Case, providers: list[str], machine: dict[str, Any], base_seed: int, why: str
) -> dict[str, Any]:
    """A row record for ``case`` whose every provider failed with ``why`` (nothing measured)."""
    kind = KINDS[case.kind]
    seed = case.seed(base_seed)
    cost = kind.cost(case, seed)
    return {
        "key": case.key,
        "case": case.fields(),
        "tier": kind.tier(case),
        "seed": seed,
        "tokens": cost.tokens,
        "floors": row_floors(cost, machine, case.dtype),
        "results": {p: {"status": "error", "error": why} for p in providers},
        "speedup": None,
        "max_abs_diff": None,
        "elapsed_s": 0.0,
        "unfinished": True,
    }


# ---------------------------------------------------------------------------------------------
# The run


def _default_out(env: dict[str, Any], grid_name: str) -> Path:
    suffix = "" if grid_name in ("full", "cpu") else f"-{grid_name}"
    return REPO_ROOT / "benchmarks" / "results" / f"{device_slug(env)}{suffix}"


def _print_report(doc: dict[str, Any], out: Path, quiet: bool, plots: list[Path]) -> None:
    if not quiet and doc["rows_measured"] <= 100:
        md = to_markdown(doc)
        print(md[md.index("## ", md.index("## Summary") + 1) :] if "## Summary" in md else md)
    for line in headline_lines(doc):
        print(line)
    files = ["results.md", "results.json", "results.csv", "rows.jsonl"] + [p.name for p in plots]
    print(f"results: {out}/ ({', '.join(files)})")


class _NoBar:
    """Stands in for tqdm when it is disabled or not installed."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, disabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    if disabled:
        return _NoBar()
    # Not a terminal (a log, a remote runner keeping the tail of the output): update rarely.
    every = 1.0 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, unit="row", mininterval=every, maxinterval=max(every, 10.0), file=sys.stderr)


def _plot(out: Path, doc: dict[str, Any]) -> list[Path]:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print(
            f"plot skipped: matplotlib is not installed (pip install matplotlib; then python -m benchmarks.plot {out})"
        )
        return []
    try:
        from .plot import plot_document

        return plot_document(doc, out)
    except Exception as e:  # a plot must never cost the measurements
        print(f"plot failed ({type(e).__name__}: {e}); retry with: python -m benchmarks.plot {out}/results.json")
        return []


def report_only(args: argparse.Namespace) -> int:
    """``--report-only``: rebuild the reports and the plot from ``--out/rows.jsonl``."""
    if not args.out:
        print("--report-only needs --out DIR", file=sys.stderr)
        return 2
    out = Path(args.out)
    runs, rows, _ = read_jsonl(out / "rows.jsonl")
    if not runs:
        print(f"no runs in {out / 'rows.jsonl'}", file=sys.stderr)
        return 2
    doc = build_document(runs, list(rows.values()))
    write_reports(doc, out)
    plots = [] if args.no_plot else _plot(out, doc)
    _print_report(doc, out, args.quiet, plots)
    return 0


class _Stop(BaseException):
    pass


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (see module doc); returns the exit status.

    Global torch settings the run changes (CPU threads, TF32 flags) are restored on return, so
    that calling it in-process (tests) leaves no trace.
    """
    args = build_parser().parse_args(argv)
    if args.report_only:
        return report_only(args)
    saved = (
        torch.get_num_threads(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    try:
        return _run(args, argv)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.set_num_threads(saved[0])
            torch.backends.cuda.matmul.allow_tf32 = saved[1]
            torch.backends.cudnn.allow_tf32 = saved[2]
            torch.set_float32_matmul_precision(saved[3])


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    t_start = time.monotonic()

    has_cuda = torch.cuda.is_available()
    device = torch.device(args.device) if args.device else torch.device("cuda" if has_cuda else "cpu")
    if device.type == "cuda" and not has_cuda:
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    suite = SUITES[args.suite or ("gpu" if device.type == "cuda" else "cpu")]
    grid_name = args.grid or (("quick" if args.quick else "full") if suite.name == "gpu" else "cpu")
    if grid_name not in grids.grid_names():
        print(f"unknown grid {grid_name!r}; known: {', '.join(grids.grid_names())}", file=sys.stderr)
        return 2
    try:
        rows = cases.select(grids.grid(grid_name), args.filter)
    except ValueError as e:
        print(f"bad --filter: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        rows = rows[: args.limit]
    providers = args.providers.split(",") if args.providers else list(suite.providers)
    unknown = [p for p in providers if p not in PROVIDER_LABELS]
    if unknown:
        print(f"unknown provider(s) {unknown}; known: {', '.join(PROVIDER_LABELS)}", file=sys.stderr)
        return 2
    if args.list:
        try:
            for r in rows:
                print(f"{grids.tier(r)} {r.key}")
            print(f"{len(rows)} rows")
        except BrokenPipeError:  # `| head`
            sys.stdout = None
        return 0
    if not rows:
        print("no rows selected (check --filter)", file=sys.stderr)
        return 2
    if not has_cuda and args.suite is None and args.device is None:
        print(
            "No CUDA GPU found: running the CPU comparison (fastrnn backend='auto' vs torch.nn on the CPU) "
            "instead of the GPU suite.",
            flush=True,
        )

    set_strict_fp32()
    torch.manual_seed(args.seed)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    env = environment(device)
    out = Path(args.out) if args.out else _default_out(env, grid_name)
    prev_runs, prev_rows, prev_started = read_jsonl(out / "rows.jsonl") if args.resume else ([], {}, set())
    if prev_runs and prev_runs[0]["suite"] != suite.name:
        print(f"--resume: {out} holds a {prev_runs[0]['suite']!r} run, this is {suite.name!r}", file=sys.stderr)
        return 2
    if prev_runs and prev_runs[0]["env"].get("gpu") != env.get("gpu"):
        print(f"note: resuming results measured on {prev_runs[0]['env'].get('gpu')} on {env.get('gpu')}")
    dtypes = sorted({r.dtype for r in rows})
    if prev_runs:
        machine = prev_runs[0]["machine"]  # one set of floors for every row of the folder
        missing = [d for d in dtypes if d not in machine["matmul_tflops"]]
        if missing:
            machine["matmul_tflops"].update(measure_machine(device, missing, grid_sync=False)["matmul_tflops"])
    else:
        machine = measure_machine(device, dtypes, grid_sync=not args.no_grid_sync)

    cfg = timing_config(device, args.rep_ms)
    max_minutes = args.max_minutes
    if max_minutes is None:
        max_minutes = DEFAULT_GPU_MAX_MINUTES if suite.name == "gpu" else 0.0

    def measured(key: str) -> bool:
        return key in prev_rows and not (args.retry_unfinished and prev_rows[key].get("unfinished"))

    hung = set() if args.retry_unfinished else (prev_started - set(prev_rows))
    unfinished = [r for r in rows if r.key in hung]
    todo = [r for r in rows if not measured(r.key) and r.key not in hung]
    planned = len({r.key for r in rows} | set(prev_rows))
    config = {k: v for k, v in vars(args).items()}
    config.update(max_minutes=max_minutes, timing=cfg.__dict__, device=str(device))
    run = dict(
        suite=suite.name,
        subject=suite.subject,
        baseline=suite.baseline,
        providers=providers,
        grid=grid_name,
        env=env,
        machine=machine,
        config=config,
        rows_planned=planned,
        started=env["date"],
        argv=sys.argv[1:] if argv is None else list(argv),
    )
    store = ResultStore(out, run, resume=args.resume, planned=planned)

    for case in unfinished:  # killed or hung there before: record it instead of hanging again
        store.add(
            unfinished_row(
                case,
                providers,
                machine,
                args.seed,
                "did not finish in an earlier run (killed, timed out or hung); --retry-unfinished measures it again",
            )
        )

    def _sigterm(signum, frame):
        raise _Stop("terminated (SIGTERM)")

    try:
        old = signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not the main thread: leave signals alone
        old = None
    stopped = None
    done = 0
    in_flight = None
    bar = _progress(len(todo), disabled=args.no_progress)
    try:
        for case in todo:
            if max_minutes and done and (time.monotonic() - t_start) / 60 >= max_minutes:
                stopped = f"--max-minutes {max_minutes:g} reached; continue with --resume --out {out}"
                break
            bar.set_postfix_str(case.key, refresh=False)
            store.start(case.key)
            in_flight = case.key
            run_slow = args.slow_providers == "all" or (
                args.slow_providers == "core"
                and grids.tier(case) <= 1
                and (grid_name != "quick" or case.dtype == "fp16" or grids.tier(case) == 0)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row, fatal = measure_row(
                    case,
                    suite=suite,
                    providers=providers,
                    device=device,
                    machine=machine,
                    cfg=cfg,
                    base_seed=args.seed,
                    run_slow=run_slow,
                    only_comparable=args.only_comparable,
                )
            store.add(row)
            in_flight = None
            done += 1
            bar.update(1)
            if fatal:
                stopped = (
                    f"the CUDA context broke on {case.key} ({fatal}); rows so far are saved, "
                    f"--resume --out {out} continues after it"
                )
                break
    except (KeyboardInterrupt, _Stop) as e:
        stopped = f"interrupted ({e or 'Ctrl-C'}); continue with --resume --out {out}"
        if in_flight:  # interrupted, not hung: --resume measures it again
            store.abandon(in_flight)
    finally:
        bar.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        store.finish(stopped=stopped, rows_measured_this_run=done, elapsed_s=round(time.monotonic() - t_start, 1))
    doc = store.document()
    plots = [] if args.no_plot else _plot(out, doc)
    _print_report(doc, out, args.quiet, plots)
    whole_grid = not (args.filter or args.limit)
    if suite.name == "cpu" and whole_grid and not stopped and not args.no_host_overhead:
        print(host_overhead(out))
    if stopped:
        print(f"stopped early: {stopped}")
    return 0


def host_overhead(out: Path) -> str:
    """fastrnn's own host time per call (``python -m benchmarks.host_overhead --quick``, in a fresh
    process: its kernel rows need Triton's interpreter flag set before fastrnn is imported), written
    to ``out/host_overhead.json``; returns its table, or why it failed."""
    import subprocess

    path = out / "host_overhead.json"
    res = subprocess.run([sys.executable, "-m", "benchmarks.host_overhead", "--quick", "--json", str(path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    if res.returncode:
        return f"host time per call: not measured ({(res.stderr or res.stdout).strip()[-300:]})"
    return "fastrnn's host time per call (CPU thread time; `python -m benchmarks.host_overhead`):\n" + res.stdout
