"""``python -m benchmarks.auto_table``: generate ``fastrnn/auto_table.json`` from committed results.

``backend="auto"`` (:mod:`fastrnn.auto`) answers from this table on a GPU the benchmark suite has
run on.  The table is generated, never edited by hand: ``tests/test_auto_table.py`` regenerates it
from the committed results and compares.

Input: every GPU-suite results document under ``benchmarks/results/``, at any depth
(``results.json`` or ``bench-quick-results.json`` whose suite is ``gpu``).  Each row that both
``fastrnn`` and ``cudnn`` measured becomes one shape class (cell, dtype, layers, direction,
packed, fused embedding, H, size buckets, training) with both times and peak memories, and the
identity of the kernels that ran it (``kernels``: :func:`fastrnn.kernels.tiers.kernel_identity`,
their launch plan and device code, recorded by the benchmark with each row).  ``fastrnn.auto``
uses an entry only while the kernels that would run the class are those very kernels; a row
without a recorded identity is left out.  Per GPU and class the most recent run counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fastrnn.auto import TABLE_PATH, ShapeClass, bucket
from fastrnn.modules import resolve

from .results import load

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
DTYPES = {"fp16": "torch.float16", "bf16": "torch.bfloat16", "fp32": "torch.float32", "fp64": "torch.float64"}


def result_documents(root: Path = RESULTS) -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(root.rglob("*.json")):
        if path.name not in ("results.json", "bench-quick-results.json"):
            continue
        doc = load(path)
        if doc.get("suite") == "gpu" and doc.get("env", {}).get("gpu"):
            docs.append((path, doc))
    return docs


def row_class(row: dict[str, Any]) -> ShapeClass | None:
    c = row["case"]
    if c.get("kind") not in ("rnn", "embed") or c.get("dtype") not in DTYPES:
        return None
    try:
        mode = resolve(c["cell"]).mode  # a family: "RNN" is tanh
    except ValueError:
        return None
    return ShapeClass(
        mode, DTYPES[c["dtype"]], int(c["layers"]), bool(c["bidir"]), bool(c["packed"]),
        c["kind"] == "embed", int(c["H"]), 0, bucket(int(c["B"]), 2), bucket(int(c["T"]), 4), c["run"] == "fwdbwd",
    )  # fmt: skip


def generate(docs: list[tuple[Path, dict[str, Any]]], root: Path = REPO_ROOT) -> dict[str, Any]:
    """The table document for ``docs``: per GPU every class measured with a recorded kernel
    identity, the most recent run's where several measured it (see the module doc)."""
    by_gpu: dict[str, list[tuple[Path, dict]]] = {}
    for path, doc in docs:
        by_gpu.setdefault(doc["env"]["gpu"], []).append((path, doc))
    devices = {}
    for gpu, runs in sorted(by_gpu.items()):
        runs.sort(key=lambda pd: pd[1]["env"].get("date", ""))
        classes: dict[str, dict] = {}
        run_files = []
        for path, doc in runs:
            used = False
            for row in doc["rows"]:
                cls = row_class(row)
                res = row.get("results", {})
                fast, cudnn = res.get("fastrnn", {}), res.get("cudnn", {})
                if cls is None or fast.get("status") != "ok" or cudnn.get("status") != "ok" or not fast.get("kernels"):
                    continue
                c = row["case"]
                classes[cls.key()] = {
                    "triton_ms": round(fast["median_ms"], 5),
                    "torch_ms": round(cudnn["median_ms"], 5),
                    "triton_peak_mib": fast.get("peak_mib"),
                    "torch_peak_mib": cudnn.get("peak_mib"),
                    "tokens": int(c["B"]) * int(c["T"]),
                    "kernels": fast["kernels"],
                }
                used = True
            if used:
                run_files.append(str(path.relative_to(root)))
        if not classes:
            continue
        env = runs[-1][1]["env"]
        devices[gpu] = {
            "commit": env.get("commit"),
            "date": env.get("date"),
            "versions": {k: env.get(k) for k in ("torch", "triton", "cuda", "cudnn", "driver")},
            "sms": env.get("gpu_sms"),
            "sources": run_files,
            "classes": dict(sorted(classes.items())),
        }
    return {
        "generated_by": "python -m benchmarks.auto_table (from the committed benchmark results; do not edit)",
        "devices": devices,
    }


def render(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.auto_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the shipped table differs from the results")
    args = ap.parse_args(argv)
    text = render(generate(result_documents()))
    if args.check:
        same = TABLE_PATH.exists() and TABLE_PATH.read_text() == text
        print("fastrnn/auto_table.json is up to date" if same else "fastrnn/auto_table.json differs: regenerate it")
        return 0 if same else 1
    TABLE_PATH.write_text(text)
    n = {gpu: len(d["classes"]) for gpu, d in json.loads(text)["devices"].items()}
    print(f"wrote {TABLE_PATH.relative_to(REPO_ROOT)}: " + ", ".join(f"{g}: {k} classes" for g, k in n.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
