"""Which source files build the kernels, and one hash over them.

The hash keys everything that is only valid for one build of the kernels: ``fastrnn.auto``'s
measured choices (its device cache and the shipped table) and the kernel report's on-disk cache of
compiled rows.  It covers only the files that decide what a launch compiles to -- the cells'
maths, the shared jit helpers, the tier kernels and their launch configuration -- so that editing
the report, the benchmarks or a docstring elsewhere keeps measurements valid.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: The kernel files that register a tier (:func:`fastrnn.kernels.tiers.register`): the registry
#: imports them on first use.  A new tier is one kernel file, its registration, and its name here.
TIER_MODULES: tuple[str, ...] = ("tier1", "persistent", "cluster")

#: The files (relative to this package) whose contents decide what a kernel launch compiles to:
#: the cells' maths, the shared jit helpers, the call record, the tier choice, the release data,
#: every tier's kernel file, the multi-program runtime and the fused embedding's GEMM.
KERNEL_SOURCES: tuple[str, ...] = (
    "cells.py",
    "common.py",
    "call.py",
    "tiers.py",
    "releases.py",
    "releases.json",
    *(f"{name}.py" for name in TIER_MODULES),
    "grid.py",
    "embedding.py",
)


def source_bytes(name: str, data: bytes) -> bytes:
    """What of a source file the hash covers: all of it, except the release data's per-step
    estimates (the kernel report's predictions, rewritten by ``--estimates``: they describe the
    kernels, they do not build them)."""
    if name != "releases.json":
        return data
    content = json.loads(data)
    for release in content.get("releases", {}).values():
        release.pop("step_estimates", None)
    return json.dumps(content, sort_keys=True).encode()


@functools.cache
def kernel_hash() -> str:
    """16 hex digits of SHA-256 over :data:`KERNEL_SOURCES` (name and :func:`source_bytes` of each
    file present)."""
    h = hashlib.sha256()
    for name in sorted(KERNEL_SOURCES):
        path = HERE / name
        if path.exists():
            h.update(name.encode() + b"\0" + source_bytes(name, path.read_bytes()))
    return h.hexdigest()[:16]
