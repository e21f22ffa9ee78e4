"""Which source files build the kernels, and one hash over them.

The hash keys everything that is only valid for one build of the kernels: ``fastrnn.auto``'s
measured choices (its device cache and the shipped table) and the kernel report's on-disk cache of
compiled rows.  It covers only the files that decide what a launch compiles to -- the cells'
maths, the shared jit helpers, the tier kernels and their launch configuration -- so that editing
the report, the benchmarks or a docstring elsewhere keeps measurements valid.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import textwrap
import tokenize
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: The kernel files that register a tier (:func:`fastrnn.kernels.tiers.register`): the registry
#: imports them on first use.  A new tier is one kernel file, its registration, and its name here.
TIER_MODULES: tuple[str, ...] = ("tier1", "persistent", "cluster")

#: The CUDA C++ device code of the tiers nvcc builds (relative to this package; the host-side
#: simulator that tests it, ``cuda/cluster_sim.hpp``, builds nothing that runs on a GPU).
CUDA_SOURCES: tuple[str, ...] = (
    "cuda/cluster_common.cuh",
    "cuda/cluster_kernel.cuh",
    "cuda/cluster_device.cuh",
    "cuda/cluster_entry.cu",
)

#: The files (relative to this package) whose contents decide what a kernel launch compiles to:
#: the cells' maths, the shared jit helpers, the call record, the tier choice, the release data,
#: every tier's kernel file, the multi-program runtime, the fused embedding's GEMM and the CUDA
#: sources.
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
    *CUDA_SOURCES,
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


@functools.cache
def device_code_hash(files: tuple[str, ...], root: Path = HERE) -> str:
    """16 hex digits of SHA-256 over the device code of ``files`` (relative to this package): of a
    Python file every function with a ``jit`` decorator, as its tokens without comments, layout and
    docstring (so formatting, comments, docstrings and host code do not count, and every change of
    a kernel's code does; the same on every Python version); any other file (a CUDA source) whole.
    What a launch's machine code is built from, with its launch configuration
    (:class:`~fastrnn.kernels.tiers.LayerPlan`): ``fastrnn.auto``'s shipped table applies a
    measurement only while both are the same.  File names do not count (a renamed file is the same
    code); ``root``: the folder the names are relative to (another checkout's kernels)."""
    parts = []
    for name in files:
        data = (root / name).read_bytes()
        if not name.endswith(".py"):
            parts.append(hashlib.sha256(data).hexdigest())
            continue
        text = data.decode()
        parts += [_code_tokens(text, node) for node in _jit_functions(ast.parse(text))]
    h = hashlib.sha256()
    for part in sorted(parts):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _jit_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    def is_jit(decorator: ast.expr) -> bool:
        return any(isinstance(n, (ast.Name, ast.Attribute)) and "jit" in getattr(n, "id", getattr(n, "attr", ""))
                   for n in ast.walk(decorator))  # fmt: skip

    return [n for n in tree.body if isinstance(n, ast.FunctionDef) and any(is_jit(d) for d in n.decorator_list)]


def _code_tokens(text: str, node: ast.FunctionDef) -> str:
    """The function ``node`` of ``text`` as its significant tokens: no comments, no layout, no
    docstring (the first string statement of its body)."""
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    doc = node.body[0] if node.body and isinstance(node.body[0], ast.Expr) else None
    if doc is None or not (isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
        doc = None
    lines = text.splitlines(keepends=True)[first - 1 : node.end_lineno]
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    out: list[str] = []
    prev_word = False
    for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent("".join(lines))).readline):
        line = tok.start[0] + first - 1
        if tok.type in skip or (
            doc is not None and doc.lineno <= line <= doc.end_lineno and tok.type == tokenize.STRING
        ):
            continue
        word = tok.type in (tokenize.NAME, tokenize.NUMBER)
        out.append((" " if word and prev_word else "") + tok.string)
        prev_word = word
    return "".join(out)
