"""Where results go: the run's environment, incremental storage, and the JSON/CSV/markdown reports.

Files in the output folder:

* ``rows.jsonl``: the source of truth, appended and fsync'ed after every row (a killed run keeps
  every row it finished).  Line ``{"type": "run", ...}`` opens each run (environment, machine
  figures, options); ``{"type": "row", ...}`` is one measured row; ``row_start`` (and
  ``row_abandoned`` on Ctrl-C/SIGTERM) let a resume tell a row that hung or was killed.
* ``results.json``: everything in one document (``env``, ``machine``, ``runs``, ``rows``, summary).
* ``results.csv``: one line per row and provider, every figure plus the environment columns.
* ``results.md``: a markdown table per (kind, cell, dtype), with summary and footnoted reasons.
* ``speedup_<mode>.png`` (``speedup_<kind>_<mode>.png`` for kinds other than ``rnn``): the plots
  (:mod:`benchmarks.plot`).

Reports are rewritten every few rows and at the end; ``python -m benchmarks --report-only --out
DIR`` rebuilds them from ``rows.jsonl``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from .cases import PROVIDER_LABELS

SCHEMA = "fastrnn-bench/1"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: CPU mode's bound on fastrnn's wrapper overhead (backend='auto' vs torch.nn), in percent.
OVERHEAD_TARGET_PCT = 5.0


# ---------------------------------------------------------------------------------------------
# Environment


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict[str, Any]:
    """Device, driver, CUDA/cuDNN/torch/triton/fastrnn versions, git commit and date of this run."""
    try:  # not `import triton`: fastrnn must be the first to import it (see benchmarks/__init__.py)
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    try:
        import fastrnn
        from fastrnn.auto import kernel_hash

        fastrnn_version, kernels = fastrnn.__version__, kernel_hash()
    except ImportError:
        fastrnn_version = kernels = None
    commit = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "commit_dirty": bool(status) if status is not None else None,
        "torch": torch.__version__,
        "triton": triton_version,
        "fastrnn": fastrnn_version,
        "kernel_hash": kernels,  # fastrnn.auto's shipped table trusts a run only for these kernel sources
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "device_type": device.type,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_sms=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            driver=_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        )
        if env["driver"]:
            env["driver"] = env["driver"].splitlines()[0].strip()
    else:
        env.update(gpu=None, driver=None, cudnn=None)
    return env


def device_slug(env: dict[str, Any]) -> str:
    """A folder name for the device: ``nvidia-h100-80gb-hbm3`` or ``cpu``."""
    name = env.get("gpu") or "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


# ---------------------------------------------------------------------------------------------
# Storage


def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """A results document (or a row) of any version, in this version's field names: a row's
    ``case.mode`` (what its timed call runs, before the field was named ``run``) becomes
    ``case.run``, and so do the summary's and the CPU overhead's.  In place; returns ``doc``."""
    for row in doc.get("rows", [doc] if "case" in doc else []):
        case = row.get("case", {})
        if "mode" in case and "run" not in case:
            case["run"] = case.pop("mode")
    for s in doc.get("summary", []) if isinstance(doc.get("summary"), list) else []:
        if "mode" in s and "run" not in s:
            s["run"] = s.pop("mode")
    ov = doc.get("cpu_overhead")
    if isinstance(ov, dict) and "by_mode" in ov:
        ov["by_run"] = ov.pop("by_mode")
    return doc


def load(path: Path) -> dict[str, Any]:
    """A results document (``results.json``, ``bench-quick-results.json``) in this version's field
    names (:func:`upgrade`)."""
    return upgrade(json.loads(Path(path).read_text()))


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], set[str]]:
    """``(runs, rows by key, keys of rows started)`` from a ``rows.jsonl``.

    A truncated last line (a killed run) is ignored.  A key that was started but has no row did
    not finish: the run was killed or hung on it.
    """
    runs: list[dict[str, Any]] = []
    rows: dict[str, dict[str, Any]] = {}
    started: set[str] = set()
    if not path.exists():
        return runs, rows, started
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = upgrade(json.loads(line))
        except json.JSONDecodeError:
            continue
        kind = rec.get("type")
        if kind == "run":
            runs.append(rec)
        elif kind == "run_end" and runs:
            runs[-1].update({k: v for k, v in rec.items() if k != "type"})
        elif kind == "row_start":
            started.add(rec["key"])
        elif kind == "row_abandoned":
            started.discard(rec["key"])
        elif kind == "row":
            rows[rec["key"]] = rec
    return runs, rows, started


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ResultStore:
    """Incremental results of a run in folder ``out`` (see module doc)."""

    def __init__(self, out: Path, run: dict[str, Any], *, resume: bool, planned: int) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out / "rows.jsonl"
        self.runs, self.rows, _ = read_jsonl(self.jsonl) if resume else ([], {}, set())
        if not resume and self.jsonl.exists():
            self.jsonl.unlink()
        run = dict(run, type="run")
        self.runs.append(run)
        self.planned = planned
        self._append(run)
        self._last_write = 0.0
        self._unwritten = 0

    def _append(self, rec: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def start(self, key: str) -> None:
        """Note that row ``key`` is being measured (a row that never finishes is known on resume)."""
        self._append({"type": "row_start", "key": key})

    def abandon(self, key: str) -> None:
        """Row ``key`` was interrupted (Ctrl-C, SIGTERM), not hung: a resume measures it again."""
        self._append({"type": "row_abandoned", "key": key})

    def add(self, row: dict[str, Any]) -> None:
        """Store one finished row (appended to ``rows.jsonl`` at once; reports every few rows)."""
        row = dict(row, type="row")
        self.rows[row["key"]] = row
        self._append(row)
        self._unwritten += 1
        if self._unwritten >= 10 or time.monotonic() - self._last_write > 20:
            self.write_reports()

    def finish(self, **info: Any) -> None:
        """Record how the run ended (``stopped``, ``rows_measured``...) and write the reports."""
        self.runs[-1].update(info)
        self._append({"type": "run_end", **info})
        self.write_reports()

    def document(self) -> dict[str, Any]:
        return build_document(self.runs, list(self.rows.values()), planned=self.planned)

    def write_reports(self) -> dict[str, Any]:
        doc = self.document()
        write_reports(doc, self.out)
        self._last_write = time.monotonic()
        self._unwritten = 0
        return doc


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def build_document(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]], *, planned: int | None = None
) -> dict[str, Any]:
    """The ``results.json`` document from the run records and rows."""
    first, last = runs[0], runs[-1]
    doc = {
        "schema": SCHEMA,
        "suite": last["suite"],
        "subject": last["subject"],
        "baseline": last["baseline"],
        "providers": last["providers"],
        "grid": last.get("grid"),
        "env": last["env"],
        "machine": first["machine"],
        "runs": [{k: v for k, v in r.items() if k not in ("machine", "type")} for r in runs],
        "rows_planned": planned if planned is not None else last.get("rows_planned"),
        "rows_measured": len(rows),
        "rows": rows,
    }
    doc["complete"] = doc["rows_planned"] is not None and len(rows) >= doc["rows_planned"]
    doc["summary"] = summarize(doc)
    if doc["suite"] == "cpu":
        doc["cpu_overhead"] = wrapper_overhead(rows, doc["subject"], doc["baseline"])
    return doc


# ---------------------------------------------------------------------------------------------
# Figures derived from rows


def _ok(row: dict[str, Any], provider: str) -> dict[str, Any] | None:
    res = row["results"].get(provider)
    return res if res and res.get("status") == "ok" else None


def _geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarize(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (kind, cell, dtype, run): rows, rows the subject ran, geomean/min/max speed-up."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in doc["rows"]:
        c = row["case"]
        groups.setdefault((c["kind"], c["cell"], c["dtype"], c["run"]), []).append(row)
    out = []
    for (kind, cell, dtype, run), rows in sorted(groups.items()):
        sp = [r["speedup"] for r in rows if r.get("speedup")]
        out.append(
            dict(
                kind=kind,
                cell=cell,
                dtype=dtype,
                run=run,
                rows=len(rows),
                subject_ran=sum(1 for r in rows if _ok(r, doc["subject"])),
                compared=len(sp),
                geomean_speedup=_geomean(sp),
                min_speedup=min(sp) if sp else None,
                max_speedup=max(sp) if sp else None,
            )
        )
    return out


def wrapper_overhead(rows: list[dict[str, Any]], subject: str, baseline: str) -> dict[str, Any]:
    """fastrnn's wrapper overhead over torch.nn (CPU mode), in percent.

    Per row, the subject/baseline time ratio: the median of the per-round ratios of the
    interleaved calls (``paired_ratio``; else the ratio of the medians).  ``pct``: the median over
    rows minus one (robust to a row disturbed by the rest of a shared machine); ``by_run``: the
    same per run (``fwd``/``fwdbwd``); ``geomean_pct``: the geometric mean instead; ``max_pct``: the worst row;
    ``median_us``: the median per-call difference of the medians, in microseconds.
    """
    ratios: list[float] = []
    by_run: dict[str, list[float]] = {}
    diffs = []
    for row in rows:
        s, b = _ok(row, subject), _ok(row, baseline)
        if s and b:
            r = row.get("paired_ratio") or s["median_ms"] / b["median_ms"]
            ratios.append(r)
            by_run.setdefault(row["case"]["run"], []).append(r)
            diffs.append((s["median_ms"] - b["median_ms"]) * 1e3)
    g = _geomean(ratios)
    pct = (statistics.median(ratios) - 1) * 100 if ratios else None
    return dict(
        rows=len(ratios),
        pct=pct,
        geomean_pct=(g - 1) * 100 if g is not None else None,
        by_run={m: (statistics.median(v) - 1) * 100 for m, v in sorted(by_run.items())},
        max_pct=(max(ratios) - 1) * 100 if ratios else None,
        median_us=sorted(diffs)[len(diffs) // 2] if diffs else None,
        target_pct=OVERHEAD_TARGET_PCT,
        within_target=(pct is not None and pct < OVERHEAD_TARGET_PCT),
    )


# ---------------------------------------------------------------------------------------------
# Reports

_CASE_COLS = ["kind", "cell", "dtype", "B", "H", "T", "layers", "bidir", "packed", "run"]
_FLOOR_COLS = ["bytes", "flops", "steps", "bw_floor_ms", "flop_floor_ms", "seq_floor_ms", "floor_ms", "floor_bound"]
_RES_COLS = ["status", "median_ms", "p20_ms", "p80_ms", "mean_ms", "min_ms", "reps", "peak_mib", "frac_of_floor"]
_ENV_COLS = ["gpu", "driver", "cuda", "cudnn", "torch", "triton", "fastrnn", "commit", "date"]


def write_reports(doc: dict[str, Any], out: Path) -> None:
    """Write ``results.json``, ``results.csv`` and ``results.md`` of ``doc`` into ``out``."""
    out = Path(out)
    _atomic_write(out / "results.json", json.dumps(doc, indent=1, default=_json_default) + "\n")
    _atomic_write(out / "results.csv", to_csv(doc))
    _atomic_write(out / "results.md", to_markdown(doc))


def to_csv(doc: dict[str, Any]) -> str:
    """One line per (row, provider) with case fields, floors, timings, speed-up and environment."""
    extra_keys = sorted({k for r in doc["rows"] for k in r["case"] if k not in _CASE_COLS})
    cols = (
        ["key"]
        + _CASE_COLS
        + extra_keys
        + ["tokens", "provider"]
        + _RES_COLS
        + ["speedup_vs_baseline", "max_abs_diff", "error", "note"]
        + _FLOOR_COLS
        + _ENV_COLS
        + ["step_source"]
    )
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    env = doc["env"]
    for row in doc["rows"]:
        for provider, res in row["results"].items():
            rec = {"key": row["key"], **row["case"], "tokens": row.get("tokens"), "provider": provider}
            rec.update({k: res.get(k) for k in _RES_COLS})
            rec["error"] = res.get("error") or res.get("reason")
            rec["note"] = res.get("note")
            rec["speedup_vs_baseline"] = row.get("speedup") if provider == doc["subject"] else None
            rec["max_abs_diff"] = row.get("max_abs_diff") if provider == doc["subject"] else None
            rec.update({k: row["floors"].get(k) for k in _FLOOR_COLS})
            rec.update({k: env.get(k) for k in _ENV_COLS})
            rec["step_source"] = doc["machine"].get("step_source")
            w.writerow(rec)
    return buf.getvalue()


def fmt_ms(v: float | None) -> str:
    """Milliseconds with about three significant digits."""
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    if v >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2g}"


def _fmt_x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _machine_line(m: dict[str, Any]) -> str:
    mm = ", ".join(f"{k} {v:.1f}" for k, v in m["matmul_tflops"].items())
    parts = [f"copy bandwidth {m['bandwidth_gbs']:.0f} GB/s", f"matmul TFLOP/s {mm} (fp32 with TF32 off)"]
    steps = [
        (label, m.get(key))
        for key, label in (
            ("grid_sync_us", "grid barrier"),
            ("graph_launch_us", "graph launch"),
            ("launch_us", "eager launch"),
            ("cpu_op_us", "tiny CPU op"),
        )
    ]
    parts.append(
        "per-step sync: "
        + ", ".join(f"{lab} {v:.2f} µs" for lab, v in steps if v is not None)
        + f" → step {m['step_us']:.2f} µs ({m['step_source']})"
    )
    return "; ".join(parts)


def overhead_line(ov: dict[str, Any]) -> str:
    """One line on fastrnn's CPU wrapper overhead."""
    if ov.get("pct") is None:
        return "fastrnn wrapper overhead: not measured (no row with both providers timed)"
    verdict = "within" if ov["within_target"] else "ABOVE"
    modes = ", ".join(f"{m} {v:+.1f}%" for m, v in ov.get("by_run", {}).items())
    return (
        f"fastrnn wrapper overhead (backend='auto' vs torch.nn, CPU): {ov['pct']:+.1f}% (median over "
        f"{ov['rows']} rows; {modes}; geomean {ov['geomean_pct']:+.1f}%, worst row {ov['max_pct']:+.1f}%, "
        f"{ov['median_us']:+.1f} µs per call); {verdict} the {ov['target_pct']:.0f}% target"
    )


def headline_lines(doc: dict[str, Any]) -> list[str]:
    """The summary lines printed at the end of a run and at the top of ``results.md``."""
    sub, base = doc["subject"], doc["baseline"]
    lines = []
    if doc["suite"] == "cpu":
        lines.append(overhead_line(doc["cpu_overhead"]))
    head = [r for r in doc["rows"] if r.get("tier") == 0]
    for r in head:
        s, b = _ok(r, sub), _ok(r, base)
        if s and b:
            what = f"{_fmt_x(r['speedup'])} ({fmt_ms(s['median_ms'])} ms vs {fmt_ms(b['median_ms'])} ms)"
        else:
            bad = r["results"].get(sub) if not s else r["results"].get(base)
            what = "not compared: " + _short((bad or {}).get("error") or (bad or {}).get("reason") or "?", 160)
        lines.append(f"headline {r['key']}: speed-up over {PROVIDER_LABELS.get(base, base)} {what}")
    for s in doc["summary"]:
        g = s["geomean_speedup"]
        kind = "" if s["kind"] == "rnn" else f"[{s['kind']}] "
        lines.append(
            f"{kind}{s['cell']:>4} {s['dtype']} {s['run']:<6}: {s['subject_ran']}/{s['rows']} rows ran on "
            f"{PROVIDER_LABELS.get(sub, sub)}; speed-up over {PROVIDER_LABELS.get(base, base)} "
            + (f"geomean {g:.2f}× (min {s['min_speedup']:.2f}×, max {s['max_speedup']:.2f}×)" if g else "–")
        )
    return lines


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _cell(res: dict[str, Any] | None, notes: dict[str, int]) -> str:
    if res is None:
        return "–"
    if res.get("status") == "ok":
        return f"{fmt_ms(res['median_ms'])} [{fmt_ms(res['p20_ms'])}–{fmt_ms(res['p80_ms'])}]"
    reason = _short(res.get("error") or res.get("reason") or "?")
    n = notes.setdefault(reason, len(notes) + 1)
    return ("skip" if res.get("status") == "skipped" else "n/a") + f" [{n}]"


def to_markdown(doc: dict[str, Any]) -> str:
    """The ``results.md`` report (see module doc)."""
    env, m = doc["env"], doc["machine"]
    sub, base = doc["subject"], doc["baseline"]
    L = PROVIDER_LABELS
    out = ["# fastrnn benchmarks", ""]
    dev = env.get("gpu") or f"CPU ({env.get('cpu')}, {env.get('cpu_threads')} threads)"
    if env.get("gpu"):
        dev += f" — driver {env.get('driver')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}"
    out.append(f"- device: {dev}")
    out.append(
        f"- versions: torch {env['torch']}, triton {env['triton']}, fastrnn {env['fastrnn']}, Python {env['python']}"
    )
    dirty = " (with uncommitted changes)" if env.get("commit_dirty") else ""
    out.append(f"- commit: {env.get('commit')}{dirty}; date {env['date']}")
    out.append(
        f"- suite: {doc['suite']}, grid {doc.get('grid')}; providers: "
        + ", ".join(L.get(p, p) for p in doc["providers"])
        + f"; speed-up = {L.get(base, base)} time / {L.get(sub, sub)} time (above 1: {L.get(sub, sub)} is faster)"
    )
    state = "complete" if doc["complete"] else "INCOMPLETE"
    last = doc["runs"][-1]
    stop = f" (stopped: {last['stopped']})" if last.get("stopped") else ""
    out.append(f"- rows: {doc['rows_measured']} of {doc['rows_planned']} measured, {state}{stop}")
    out.append(f"- machine: {_machine_line(m)}")
    for k, v in (m.get("notes") or {}).items():
        out.append(f"  - {k}: {v}")
    out += ["", "## Summary", ""]
    out += [f"- {ln}" for ln in headline_lines(doc)]
    out += [
        "",
        "Times are per call in ms: median [p20–p80].  floor = max(bytes / bandwidth, FLOPs / matmul "
        "throughput, dependent steps × per-step sync) in ms, its bound in parentheses; %floor = floor / median "
        "(100% = at the floor).  peak = memory allocated during one call beyond parameters and inputs (MiB).",
        "",
    ]
    providers = doc["providers"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in doc["rows"]:
        c = row["case"]
        groups.setdefault((c["kind"], c["cell"], c["dtype"]), []).append(row)
    has_peak = any(res.get("peak_mib") is not None for r in doc["rows"] for res in r["results"].values())
    for (kind, cell, dtype), rows in sorted(groups.items()):
        out += [f"## {cell} {dtype}" + (f" ({kind})" if kind != "rnn" else ""), ""]
        hdr = ["B", "H", "T", "L", "dir", "input", "run"] + [L.get(p, p) for p in providers] + ["speed-up"]
        if has_peak:
            hdr += [f"peak {L.get(sub, sub)}", f"peak {L.get(base, base)}"]
        hdr += ["floor ms", f"{L.get(sub, sub)} %floor", f"{L.get(base, base)} %floor"]
        out.append("| " + " | ".join(hdr) + " |")
        out.append("|" + "|".join("---:" if i < 3 else "---" for i in range(len(hdr))) + "|")
        notes: dict[str, int] = {}
        rows = sorted(
            rows,
            key=lambda r: (
                r["case"]["T"],
                r["case"]["layers"],
                r["case"]["bidir"],
                r["case"]["packed"],
                r["case"]["run"],
                r["case"]["B"],
                r["case"]["H"],
            ),
        )
        for r in rows:
            c, f = r["case"], r["floors"]
            s, b = _ok(r, sub), _ok(r, base)
            cells = [
                str(c["B"]),
                str(c["H"]),
                str(c["T"]),
                str(c["layers"]),
                "bi" if c["bidir"] else "uni",
                "packed" if c["packed"] else "dense",
                c["run"],
            ]
            cells += [_cell(r["results"].get(p), notes) for p in providers]
            cells.append(_fmt_x(r.get("speedup")))
            if has_peak:
                cells += [f"{x['peak_mib']:.0f}" if x and x.get("peak_mib") is not None else "–" for x in (s, b)]
            cells += [
                f"{fmt_ms(f['floor_ms'])} ({f['floor_bound']})",
                _fmt_pct(s.get("frac_of_floor") if s else None),
                _fmt_pct(b.get("frac_of_floor") if b else None),
            ]
            out.append("| " + " | ".join(cells) + " |")
        if notes:
            out.append("")
            out += [f"[{n}] {text}  " for text, n in notes.items()]
        out.append("")
    return "\n".join(out)
