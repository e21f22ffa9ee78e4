"""Compiling: one configuration into a measured row (:func:`_compile_one`), in worker
subprocesses started with ``TRITON_INTERPRET=0`` (:func:`serve`, :class:`_Worker`), several at a
time (:func:`compile_report`), through an on-disk cache of the rows.

The cache keeps each compiled row under a key of the kernel sources
(:func:`fastrnn.kernels.sources.kernel_hash`), the report's own code that measures a row, the
Triton version and the configuration's ``repr``: a row is compiled again whenever any of them
changes.  It lives in ``$FASTRNN_REPORT_CACHE`` (default ``~/.cache/fastrnn/report/``); rows that
failed (a compiler error, crash or timeout) are never cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import io
import json
import os
import queue
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import triton

from .. import tiers
from ..sources import kernel_hash
from .configs import SHARED_LIMIT, KernelConfig, compile_source, launch_config
from .cost import step_profile
from .sass import TENSOR_CORE_OPS, analyse_cubin, missing_tools, ptxas_spills, registers_fit


def _error_row(cfg: KernelConfig, error: str | None) -> dict:
    """The row's config part: tiles, warps (and tiers 2/3: the resident choice) as the tier's
    configuration picks them, the config's overrides applied (:func:`.configs.launch_config`)."""
    row = dict(
        dataclasses.asdict(cfg),
        mode=cfg.mode,
        P=cfg.proj_size,
        variant=cfg.variant,
        shared_limit=SHARED_LIMIT.get(cfg.arch),
        error=error,
        block_b=cfg.block_b,
        block_h=None,
        block_p=None,
        num_warps=cfg.num_warps,
    )
    try:
        config = launch_config(cfg)
    except Exception as exc:  # an invalid config: say so in the row
        row["error"] = row["error"] or f"{type(exc).__name__}: {exc}"
        return row
    row.update(config.tiles(), P=cfg.proj, num_warps=cfg.num_warps or config.num_warps)
    row["block_b"] = cfg.block_b or row["block_b"]
    row["weight_bytes"] = config.on_chip_bytes(cfg.mode, cfg.hidden_size, cfg.proj, cfg.torch_dtype)
    return row


def _compile_one(cfg: KernelConfig) -> dict:
    """Compile ``cfg`` and measure it; errors are reported in the row, not raised."""
    row = _error_row(cfg, None)
    if row["error"]:
        return row
    try:
        src, target, options = compile_source(cfg)
        names = src.fn.arg_names
        config = launch_config(cfg)
        b_name, h_name, p_name = config.TILE_CONSTEXPRS
        row.update(
            num_warps=options["num_warps"],
            block_b=src.constants[(names.index(b_name),)],
            block_h=src.constants[(names.index(h_name),)],
            block_p=src.constants[(names.index(p_name),)],
        )
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. triton 3.9's TRITON_DEFAULT_FP_FUSION notice
            compiled = triton.compile(src, target=target, options=options)
        row["compile_s"] = round(time.perf_counter() - start, 2)
        row["spill_stores"], row["spill_loads"] = ptxas_spills(log.getvalue())
        info = analyse_cubin(compiled.asm["cubin"], src.name)
        ops = info.pop("sass_ops")
        loops = info.pop("loops")
        row.update(info)
        k_trips = config.k_trips(cfg.hidden_size)
        row.update(step_profile(row, compiled.asm["ttir"], loops, k_trips, tiers.get_tier(cfg.tier).barriers_per_step))
        row["shared_bytes"] = compiled.metadata.shared
        row["local_insts"] = sum(n for op, n in ops.items() if op in ("LDL", "STL"))
        row["tensor_core_ops"] = {op: ops[op] for op in TENSOR_CORE_OPS if op in ops}
        row["tensor_cores"] = bool(row["tensor_core_ops"])
        row["spills"] = bool(row["stack_bytes"] or row["local_insts"] or row["spill_stores"])
        row["loop_spills"] = row["loop_local_insts"] > 0  # local-memory traffic inside the time loop
        row["shared_ok"] = row["shared_limit"] is None or row["shared_bytes"] <= row["shared_limit"]
        row["regs_ok"] = registers_fit(row["registers"], row["num_warps"])
    except Exception as exc:  # a config that fails to compile is a finding of the report
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return row


def serve(imports: Sequence[str] = ()) -> None:
    """Worker loop: one JSON config per stdin line -> one JSON row per line on the original stdout.
    ``imports``: modules imported first (e.g. one that registers a cell outside fastrnn).

    Everything else written to stdout (by Triton, LLVM or ptxas) goes to stderr, so the result
    stream stays clean; a compile that kills the process (an LLVM assertion, say) is noticed by
    the parent, which reports it for that config and starts a fresh worker.
    """
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas -v output: spill store/load bytes
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # honest compile times, a ptxas log every time
    for name in imports:
        importlib.import_module(name)
    for line in sys.stdin:
        if line.strip():
            row = _compile_one(KernelConfig(**json.loads(line)))
            results.write(json.dumps(row) + "\n")
            results.flush()


class _Worker:
    """A ``python -m fastrnn.kernels.report --serve`` subprocess with ``TRITON_INTERPRET=0``."""

    def __init__(self, imports: Sequence[str] = ()) -> None:
        env = dict(os.environ, TRITON_INTERPRET="0")
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastrnn.kernels.report", "--serve", *(f"--import={name}" for name in imports)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def compile(self, cfg: KernelConfig, timeout: float | None) -> dict:
        self.proc.stdin.write(json.dumps(dataclasses.asdict(cfg)) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        if not ready:
            self.proc.kill()
        rc = self.proc.wait()
        self.log.seek(0)
        tail = [t for t in self.log.read().splitlines() if t.strip() and "Warning" not in t and "warn_once" not in t]
        why = f"timed out after {timeout} s" if not ready else f"compiler process died (exit {rc})"
        crash = next((t for t in reversed(tail) if "Assertion" in t or "Error" in t), tail[-1] if tail else "")
        crash = re.sub(r"^(?:\S+: )?\S*/([^/\s]+:\d+:)", r"\1", crash.strip())  # drop the build path
        return _error_row(cfg, f"{why}: {crash[:300]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# The disk cache

#: The report's files whose code decides what a row holds (besides the kernels themselves).
_REPORT_SOURCES = ("configs.py", "sass.py", "cost.py", "pool.py")


def cache_dir() -> Path:
    """Where compiled rows are kept: ``$FASTRNN_REPORT_CACHE``, else ``~/.cache/fastrnn/report``."""
    env = os.environ.get("FASTRNN_REPORT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastrnn" / "report"


@functools.cache
def _report_hash() -> str:
    h = hashlib.sha256()
    for name in _REPORT_SOURCES:
        h.update(name.encode() + b"\0" + (Path(__file__).with_name(name)).read_bytes())
    return h.hexdigest()[:16]


def _module_source(name: str) -> bytes:
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec is not None else None
    return Path(origin).read_bytes() if origin and os.path.isfile(origin) else b""


def cache_key(cfg: KernelConfig, imports: Sequence[str] = ()) -> str:
    """The name ``cfg``'s row is cached under: a hash of the kernel sources, the report's code,
    the Triton version, ``repr(cfg)`` and the name and source of each module in ``imports``."""
    h = hashlib.sha256("\n".join((kernel_hash(), _report_hash(), triton.__version__, repr(cfg))).encode())
    for name in imports:
        h.update(b"\0" + name.encode() + b"\0" + _module_source(name))
    return h.hexdigest()[:32]


def _cached(cfg: KernelConfig, imports: Sequence[str] = ()) -> dict | None:
    try:
        row = json.loads((cache_dir() / f"{cache_key(cfg, imports)}.json").read_text())
    except (OSError, ValueError):
        return None
    return dict(row, cached=True)


def _store(cfg: KernelConfig, row: dict, imports: Sequence[str] = ()) -> None:
    """Keep a compiled row (written whole, then renamed: readers never see half a file)."""
    if row["error"]:
        return
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
            json.dump(row, f)
        os.replace(f.name, directory / f"{cache_key(cfg, imports)}.json")
    except OSError as exc:  # a read-only or full disk costs the cache, not the report
        warnings.warn(f"kernel report: cannot write the cache in {directory}: {exc}", stacklevel=2)


# ---------------------------------------------------------------------------------------------
# Several at a time


def compile_report(
    configs: Sequence[KernelConfig],
    jobs: int = 1,
    timeout: float | None = None,
    cache: bool = True,
    imports: Sequence[str] = (),
) -> list[dict]:
    """Compile every config and return one row (a dict) per config, in order.

    Each row holds the config's fields plus ``P`` (projection size), ``num_warps``,
    ``block_b/h/p``, ``registers``, ``stack_bytes``, ``spill_stores``/``spill_loads`` (ptxas),
    ``local_insts`` (LDL/STL count) and ``loop_local_insts`` (those inside a loop),
    ``spills`` (any stack/local memory) and ``loop_spills`` (local memory inside the time loop:
    the spills that cost every step), ``shared_bytes`` and ``shared_ok`` (against
    :data:`SHARED_LIMIT`), ``regs_ok`` (:func:`registers_fit`), ``tensor_cores`` and
    ``tensor_core_ops``, the step model's fields (:func:`step_profile`), ``compile_s``,
    ``cached`` (read from the disk cache: ``compile_s`` is then the first compile's) and
    ``error`` (``None`` when it compiled; else why not, e.g. a compiler crash or ``timeout``
    seconds passed).

    The compiles run in ``jobs`` worker subprocesses started with ``TRITON_INTERPRET=0`` (so
    this works from a process whose kernels are interpreted, and a compiler crash only costs
    its own config).  ``imports``: modules each worker imports before compiling (a cell
    registered outside fastrnn: its module registers it).  ``cache``: read and keep rows in
    :func:`cache_dir` (:func:`cache_key`).  A tier not built by Triton (CUDA C++) makes its rows
    itself, with the same keys (:attr:`~fastrnn.kernels.tiers.Tier.report_rows`, its own build
    cache).

    Example::

        rows = compile_report(configs([1], cells=["GRU"], dtypes=["fp16"], hidden_sizes=[64]))
        assert not any(r["loop_spills"] for r in rows)
    """
    configs = list(configs)
    imports = list(imports)
    rows: list[dict | None] = [None] * len(configs)
    own: dict[int, list[int]] = {}  # tiers not built by Triton: they compile and read their rows themselves
    for i, cfg in enumerate(configs):
        if tiers.get_tier(cfg.tier).report_rows is not None:
            own.setdefault(cfg.tier, []).append(i)
    for number, indices in own.items():
        made = tiers.get_tier(number).report_rows([configs[i] for i in indices], jobs=jobs)
        for i, row in zip(indices, made, strict=True):
            rows[i] = row
    todo = queue.SimpleQueue()
    for i, cfg in enumerate(configs):
        if rows[i] is None and cache:
            rows[i] = _cached(cfg, imports)
        if rows[i] is None:
            todo.put((i, cfg))
    if todo.empty():
        return rows
    if missing_tools():
        raise RuntimeError(f"CUDA tools missing from triton/backends/nvidia/bin: {', '.join(missing_tools())}")

    failures: list[BaseException] = []

    def drain() -> None:
        worker = None
        try:
            while not failures:
                try:
                    i, cfg = todo.get_nowait()
                except queue.Empty:
                    return
                worker = worker or _Worker(imports)
                rows[i] = dict(worker.compile(cfg, timeout), cached=False)
                if cache:
                    _store(cfg, rows[i], imports)
                if worker.proc.poll() is not None:  # died: the next config gets a fresh one
                    worker.close()
                    worker = None
        except BaseException as exc:  # e.g. no worker could be started: raised in the caller
            failures.append(exc)
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=drain) for _ in range(max(1, min(jobs, todo.qsize())))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return rows
