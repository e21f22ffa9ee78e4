"""``python -m benchmarks.annotate_kernels RESULTS.json``: record in a results document which kernels
its ``fastrnn`` rows ran, for a document written before the benchmark recorded it itself.

``fastrnn.auto``'s shipped table applies a measurement only to the very kernels that made it: the
same launch plan and the same device code (:func:`fastrnn.kernels.tiers.kernel_identity`, which
the benchmark records as ``results.fastrnn.kernels``).  An older document lacks it; this finds it
from the commit that made the document (``env.commit``, read from git):

1. the plan each ``rnn`` row's ``fastrnn`` provider ran there (that commit's tier choice and launch
   configurations; fp32 rows ran with TF32 off, IEEE dots) and that commit's device-code hash
   (:func:`fastrnn.kernels.sources.device_code_hash` over its files): the row's identity then;
2. whether the kernels this checkout would run for the row are the same machine code: both
   commits' forward and backward launches (heaviest variant: variable lengths, reverse, initial
   states) are compiled for sm_90 with the installed Triton and their PTX compared, without its
   source locations and debug sections (which name the source files).  Equal PTX and an equal
   plan make the row's ``kernels`` this checkout's identity, with ``kernels_measured`` and
   ``kernels_same_as`` saying how that was established; otherwise ``kernels`` is the old identity,
   which no current kernel has, and ``fastrnn.auto`` will not use the row.

Needs git history of the document's commit and Triton's CUDA tools (no GPU).  Writes the document
in place (``--out`` elsewhere); then ``python -m benchmarks.auto_table``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

#: What runs in a subprocess with either commit's package first on ``sys.path``: the plan and the
#: PTX hashes of each requested layer, as JSON on stdout.
_WORKER = r"""
import hashlib, json, re, sys, warnings
import torch, triton
from fastrnn.kernels import sources, tiers, report

DT = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
MODES = {"RNN": "RNN_TANH", "LSTM": "LSTM", "GRU": "GRU"}
SMEM = 227 * 1024  # sm_90's shared memory per block (opt-in)

def plan(mode, H, dtype, precision):
    tier, _ = tiers.choose_tier(mode, H, 0, DT[dtype])
    if hasattr(tiers, "plan_layer"):
        p = tiers.plan_layer(mode, H, 0, DT[dtype], tier, SMEM, precision)
        return tier, p.forward, p.backward, tiers.kernel_identity(p)
    fwd = tiers.plan(mode, H, 0, DT[dtype], tier, "fwd", SMEM, False).config
    bwd = tiers.plan(mode, H, 0, DT[dtype], tier, "bwd", SMEM, False).config
    return tier, fwd, bwd, None

def fields(cfg):
    import dataclasses
    return ",".join(f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg))

def ptx_hash(cfg):
    src, target, options = report.compile_source(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ptx = triton.compile(src, target=target, options=options).asm["ptx"]
    ptx = re.split(r"\n\s*\.section\s*\.debug", ptx)[0]  # the debug sections name the source files
    lines = [l for l in ptx.splitlines() if not re.match(r"\s*(\.loc|\.file|//)", l)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]

out = []
for cell, dtype, H, precision in json.loads(sys.argv[1]):
    mode = MODES[cell]
    tier, fwd, bwd, identity = plan(mode, H, dtype, precision)
    files = ("cells.py", "common.py", {1: "recurrent.py", 2: "multi.py", 3: "multi.py"}[tier])
    if hasattr(tiers, "plan_layer"):
        files = tiers.get_tier(tier).device_sources
    kw = dict(allow_tf32=False) if not hasattr(report.KernelConfig, "precision") else dict(precision=precision)
    ptx = [ptx_hash(report.KernelConfig(k, mode, dtype, H, 90, True, True, True, True, 64, tier=tier, **kw))
           for k in ("fwd", "bwd")]
    out.append(dict(tier=tier, fwd=fields(fwd), bwd=fields(bwd), identity=identity, files=list(files), ptx=ptx))
print(json.dumps(out))
"""


def _old_package(commit: str, into: Path) -> Path:
    """``commit``'s ``fastrnn`` package, laid out as installed (``kernels/`` as ``fastrnn/kernels``)."""
    tree = into / "src"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit, "fastrnn", "kernels"], cwd=REPO_ROOT, check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    (tree / "kernels").rename(tree / "fastrnn" / "kernels")
    return tree


def _run_worker(layers: list, path: Path | None) -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="0")
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    cwd = path if path is not None else REPO_ROOT
    res = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(layers)], cwd=cwd, env=env, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def annotate(doc: dict, log=print) -> dict:
    from fastrnn.kernels.sources import device_code_hash

    commit = doc["env"]["commit"]
    layers = sorted({
        (r["case"]["cell"], r["case"]["dtype"], int(r["case"]["H"]))
        for r in doc["rows"]
        if r["case"].get("kind") == "rnn" and r["results"].get("fastrnn", {}).get("status") == "ok"
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        old_root = _old_package(commit, Path(tmp))
        log(f"compiling {len(layers)} layers at {commit[:8]} and here (forward and backward each)")
        old = _run_worker([(c, d, h, "ieee") for c, d, h in layers], old_root)
        precision = {"fp32": "tf32x3"}  # what a module with TF32 off runs now (docs/numerics.md)
        new = _run_worker([(c, d, h, precision.get(d, "ieee")) for c, d, h in layers], None)
        kernels_dir = old_root / "fastrnn" / "kernels"
        verdicts = {}
        for layer, o, n in zip(layers, old, new, strict=True):
            old_id = f"{o['tier']}|ieee|{o['fwd']}|{o['bwd']}@{device_code_hash(tuple(o['files']), kernels_dir)}"
            same = o["tier"] == n["tier"] and (o["fwd"], o["bwd"]) == (n["fwd"], n["bwd"]) and o["ptx"] == n["ptx"]
            verdicts[layer] = (old_id, n["identity"] if same else None)
    for row in doc["rows"]:
        c = row["case"]
        fast = row["results"].get("fastrnn", {})
        key = (c["cell"], c["dtype"], int(c.get("H", 0)))
        if c.get("kind") != "rnn" or key not in verdicts or fast.get("status") != "ok":
            continue
        old_id, now = verdicts[key]
        fast["kernels_measured"] = old_id
        if now is not None:
            fast["kernels"] = now
            fast["kernels_same_as"] = (
                f"the same plan and PTX of the forward and backward launches (heaviest variant, sm_90, triton "
                f"{_triton()}) at commit {commit[:8]} and at this identity's sources"
            )
        else:
            fast["kernels"] = old_id
    return doc


def _triton() -> str:
    import triton

    return triton.__version__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.annotate_kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    doc = json.loads(a.results.read_text())
    annotate(doc)
    n = sum(1 for r in doc["rows"] if r["results"].get("fastrnn", {}).get("kernels_same_as"))
    m = sum(1 for r in doc["rows"] if r["results"].get("fastrnn", {}).get("kernels"))
    (a.out or a.results).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{m} rows annotated, {n} of them measured kernels that are this checkout's (same plan and PTX)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
