"""The command line: ``python -m fastrnn.kernels.report --help``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

import triton

from .. import cells, releases, tiers
from .configs import CELLS, DTYPES, EXTRA_CELLS, KERNELS, SHARED_LIMIT, configs
from .pool import cache_dir, compile_report, serve
from .sass import missing_tools
from .tables import compare, format_table, write_estimates

DESCRIPTION = (
    "Kernel report: compile the recurrence kernels of the registered tiers for sm_90 / sm_80 on a machine without a "
    "GPU, and read registers, spills, shared memory, tensor-core instructions and a per-step estimate from the cubin."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; 1 when a config spills in its time loop, overflows shared memory or fails."""
    p = argparse.ArgumentParser(prog="python -m fastrnn.kernels.report", description=DESCRIPTION)
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS) + list(EXTRA_CELLS))
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--hidden", nargs="+", type=int, default=[32, 64, 128, 256])
    p.add_argument("--proj", nargs="+", type=int, default=[0], help="LSTMP proj_size (0: hidden // 2)")
    p.add_argument("--arch", nargs="+", type=int, default=[90, 80], choices=sorted(SHARED_LIMIT))
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--variants", default="heaviest", choices=["heaviest", "default", "all"])
    p.add_argument("--num-warps", nargs="+", type=int, default=None, help="override the configuration's warps")
    p.add_argument("--block-b", nargs="+", type=int, default=None, help="override the configuration's BLOCK_B")
    p.add_argument("--split-k", nargs="+", type=int, default=None, help="override the configuration's SPLIT_K")
    p.add_argument("--resident", nargs="+", choices=("yes", "no"), default=None,
                   help="override the resident/streamed choice (tiers that have one)")  # fmt: skip
    p.add_argument("--beyond-limit", action="store_true", help="also sizes the tier refuses")
    p.add_argument("--tiers", nargs="+", type=int, default=[1], choices=sorted(tiers.registered()),
                   help="kernel tiers to compile (the registered tiers)")  # fmt: skip
    p.add_argument("--batch", type=int, default=64, help="batch size of the launch (with T = 8)")
    p.add_argument("--precisions", nargs="+", default=["ieee"], choices=list(tiers.PRECISIONS),
                   help="fp32 dot precisions to compile (tf32, tf32x3: tensor cores)")  # fmt: skip
    p.add_argument("--tf32", action="store_true", help="also fp32 with TF32 dots (as --precisions ieee tf32)")
    p.add_argument(
        "--states",
        action="store_true",
        help="also every config of a cell with a cell state with return_states (c_t stored, dc_t read)",
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--baseline", help="compare registers, spills and shared memory with an earlier --json file")
    p.add_argument(
        "--estimates",
        action="store_true",
        help="merge the per-step estimates (est_us by config) into kernels/releases.json under this triton release",
    )
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument(
        "--limits-table",
        action="store_true",
        help="print the tier-1 size limits per cell, dtype and release (docs/tiers.md) and exit; compiles nothing",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds per compile (default: no limit)")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help=f"compile every config again and keep nothing (cache: $FASTRNN_REPORT_CACHE, here {cache_dir()})",
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # a compile_report worker
    p.add_argument("--import", dest="imports", action="append", default=[], help=argparse.SUPPRESS)  # its imports
    a = p.parse_args(argv)

    if a.serve:
        serve(a.imports)
        return 0
    if a.limits_table:
        from .limits import table

        print(table())
        return 0
    missing = missing_tools()
    if missing:
        print(f"cannot compile: {', '.join(missing)} not found in triton/backends/nvidia/bin", file=sys.stderr)
        return 2
    precisions = list(dict.fromkeys([*a.precisions, *(["tf32"] if a.tf32 else [])]))
    resident = [{"yes": True, "no": False}[r] for r in a.resident] if a.resident else [None]
    rows_to_compile = configs(
        a.tiers, a.cells, a.dtypes, a.hidden, a.arch, a.kernels, a.variants, a.num_warps or [None], a.block_b or [None],
        a.beyond_limit, a.batch, a.proj, precisions, a.split_k or [None], resident,
    )  # fmt: skip
    if a.states:
        rows_to_compile += [
            dataclasses.replace(c, states=True) for c in rows_to_compile if cells.get(c.mode).has_cell_state
        ]
    start = time.perf_counter()
    rows = compile_report(rows_to_compile, jobs=a.jobs, timeout=a.timeout, cache=not a.no_cache)
    known = "" if releases.known() else " (not in kernels/releases.json: the smallest known limits apply)"
    print(
        f"# fastrnn kernel report (tiers {' '.join(map(str, a.tiers))}): triton {triton.__version__}{known}; "
        f"{len(rows)} configs ({sum(1 for r in rows if r.get('cached'))} from the cache) in "
        f"{time.perf_counter() - start:.0f} s with {a.jobs} jobs"
    )
    print(format_table(rows, markdown=a.markdown))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if a.estimates:
        write_estimates(rows)
    if a.baseline:
        with open(a.baseline) as f:
            worse, better, missing = compare(json.load(f), rows)
        fmt = lambda k: "/".join(map(str, k))
        print(f"against {a.baseline}: {len(worse)} worse, {len(better)} better, {len(missing)} missing")
        for key, metric, before, after in worse:
            print(f"  WORSE  {fmt(key)}: {metric} {before} -> {after}")
        for key, metric, before, after in better:
            print(f"  better {fmt(key)}: {metric} {before} -> {after}")
        for key, why in missing:
            print(f"  MISSING {fmt(key)}: {why}")
    bad = [r for r in rows if r["error"] or r["loop_spills"] or not r["shared_ok"] or not r.get("regs_ok", True)]
    outside = [r for r in rows if not r["error"] and r["spills"] and not r["loop_spills"]]
    if outside:
        print(f"{len(outside)} of {len(rows)} configs keep a few bytes on the stack outside the time loop")
    if bad:
        print(
            f"{len(bad)} of {len(rows)} configs fail (spills in the time loop, shared memory over the limit, "
            "more registers than one SM holds for the program, or error)"
        )
    return 1 if bad else 0
