"""The report's output: the table of rows, comparing a run with a baseline (an earlier
``--json``), and the per-step estimates (``kernels/releases.json``)."""

from __future__ import annotations

from collections.abc import Sequence

from .. import releases


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def format_table(rows: Sequence[dict], markdown: bool = False) -> str:
    """A readable table, one row per compiled kernel/config."""
    head = [
        "kernel",
        "cell",
        "dtype",
        "H",
        "P",
        "sm",
        "variant",
        "BLOCK_B",
        "warps",
        "W KiB",
        "regs",
        "stack B",
        "spill st/ld B",
        "LDL/STL (in loop)",
        "smem KiB",
        "TC",
        "step mma/bar",
        "CTA waits/step",
        "loop loads (ahead)",
        "est us/step",
        "compile s",
        "status",
    ]
    lines = []
    for r in rows:
        wbytes = r.get("weight_bytes") or 0  # on chip per program (streamed tier-2/3 slices: none)
        base = [r["kernel"], r["cell"], r["dtype"], r["hidden_size"], r["P"] or "-", r["arch"], r["variant"]]
        if r["error"]:
            lines.append(
                base
                + [r.get("block_b", "-"), r.get("num_warps", "-"), _kib(wbytes)]
                + ["-"] * 11
                + [f"ERROR {r['error'][:100]}"]
            )
            continue
        status = []
        if r["loop_spills"]:
            status.append("SPILLS IN LOOP")
        elif r["spills"]:
            status.append("SPILLS (outside loops)")
        if not r["shared_ok"]:
            status.append("SMEM>LIMIT")
        if not r.get("regs_ok", True):
            status.append("REGS>SM")
        st = "-" if r["spill_stores"] is None else f"{r['spill_stores']}/{r['spill_loads']}"
        tc = ",".join(r["tensor_core_ops"]) if r["tensor_cores"] else "no"
        lines.append(
            base
            + [
                r["block_b"],
                r["num_warps"],
                _kib(wbytes),
                r["registers"],
                r["stack_bytes"],
                st,
                f"{r['local_insts']} ({r['loop_local_insts']})",
                _kib(r["shared_bytes"]),
                tc,
                f"{r.get('step_mma', '-')}/{r.get('step_bars', '-')}",
                _waits(r),
                f"{r.get('loop_loads', '-')} ({r.get('loads_ahead', '-')})",
                r.get("est_us", "-"),
                f"{r['compile_s']:.1f}",
                " ".join(status) or "ok",
            ]
        )
    cells = [[str(c) for c in line] for line in lines]
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(out)


def _waits(r: dict) -> str:
    """What a step waits for from other CTAs: grid barriers (tiers 2/3) or, in a cluster, mbarrier
    waits and cluster barriers read from the SASS (``"1+0"``)."""
    if "waits_per_step" in r:
        return f"{r['waits_per_step']}+{r.get('cluster_barriers_per_step', 0)} (cluster)"
    return f"{r.get('step_barriers', 0)} (grid)" if r.get("step_barriers") else "0"


#: What :func:`compare` checks per config: lower is better for each.
COMPARED = ("registers", "spill_stores", "spill_loads", "loop_local_insts", "local_insts", "shared_bytes")


def row_key(r: dict) -> tuple:
    """A row's identity across runs (kernel, cell, dtype, sizes, arch, variant, tier)."""
    return (r["kernel"], r["cell"], r["dtype"], r["hidden_size"], r.get("P") or 0, r["arch"], r["variant"],
            r.get("tier", 1))  # fmt: skip


def compare(baseline: list[dict], rows: list[dict]) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """``(worse, better, missing)`` of ``rows`` against ``baseline`` (an earlier ``--json``):
    ``(key, metric, before, after)`` for every :data:`COMPARED` metric that changed, and the keys
    of baseline rows this run did not compile (or that now fail)."""
    now = {row_key(r): r for r in rows}
    worse, better, missing = [], [], []
    for old in baseline:
        key = row_key(old)
        new = now.get(key)
        if old.get("error"):
            continue
        if new is None or new.get("error"):
            missing.append((key, new.get("error") if new else "not compiled"))
            continue
        for metric in COMPARED:
            a, b = old.get(metric) or 0, new.get(metric) or 0
            if b > a:
                worse.append((key, metric, a, b))
            elif b < a:
                better.append((key, metric, a, b))
    return worse, better, missing


def triton_minor() -> str:
    """``"3.9"``: the triton release the estimates are keyed by (:func:`fastrnn.kernels.releases.current`)."""
    return releases.current()


def write_estimates(rows: list[dict]) -> None:
    """Merge this run's per-step estimates (``est_us`` by config) into ``kernels/releases.json``
    under this triton release: the SASS, hence the estimate, differs between releases."""
    est = {"/".join(map(str, row_key(r))): r["est_us"] for r in rows if not r["error"]}
    releases.write_step_estimates(est)
