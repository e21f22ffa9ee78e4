"""The import graph is the layer table of ARCHITECTURE.md: imports flow one way, down the layers;
there is no circle; and no private name (a leading underscore) crosses from one file to another.

Read from the source with ``ast`` (every import, at the top of a file or inside a function), so
nothing is imported to check it.  Each rule names the mutant it kills: an upward import (e.g.
``functional`` importing ``dispatch`` or ``modules`` again), a circle, a private name imported or
read across files (e.g. ``from .modules import _package``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Layers, lowest first (ARCHITECTURE.md, "Layers"): a module may import its own layer and lower.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("kernels", ("fastrnn.kernels", "fastrnn.errors", "fastrnn._version")),
    ("ops and reference", ("fastrnn.ops", "fastrnn.reference")),
    ("stack", ("fastrnn.functional",)),
    ("dispatch", ("fastrnn.auto", "fastrnn.dispatch")),
    (
        "modules",
        (
            "fastrnn.modules",
            "fastrnn.embedding",
            "fastrnn.layernorm",
            "fastrnn.convert",
            "fastrnn.haste",
            "fastrnn.check",
        ),
    ),  # fmt: skip
    ("application", ("fastrnn.seq2seq", "fastrnn.__main__", "fastrnn")),
]


def _module_name(path: Path) -> str:
    """The installed name of a source file (``kernels/`` is installed as ``fastrnn.kernels``)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["fastrnn", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _files(*folders: str) -> dict[str, Path]:
    return {_module_name(p): p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))}


PACKAGE = _files("fastrnn", "kernels")
MODULES = set(PACKAGE)


def _is_package(name: str) -> bool:
    return PACKAGE.get(name, Path()).name == "__init__.py"


def _resolve(current: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in module ``current``."""
    if not level:
        return module or ""
    base = current.split(".")
    base = base if _is_package(current) else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _project(name: str) -> str | None:
    """The project module ``name`` is, or lives in (``fastrnn.kernels.tiers.plan_layer`` ->
    ``fastrnn.kernels.tiers``); ``None`` outside the project."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(name: str, path: Path, text: str | None = None) -> list[tuple[str, str | None, int]]:
    """``(module imported, name imported from it or None, line)`` of every import in the file
    (or in ``text`` standing for it)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node.level, node.module)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (base, a.name, node.lineno))
    return out


def _layer(name: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (rank, p)
    assert best is not None, f"{name} is in no layer of LAYERS (add it to the table and to ARCHITECTURE.md)"
    return best[0]


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {n: set() for n in MODULES}
    for name, path in PACKAGE.items():
        for module, _, _ in _imports(name, path):
            target = _project(module)
            if target is not None and target != name:
                graph[name].add(target)
    return graph


def test_imports_flow_down_the_layers():
    wrong = []
    for name, path in PACKAGE.items():
        for module, _, line in _imports(name, path):
            target = _project(module)
            if target is None or target == name or target == "fastrnn":
                continue
            if _layer(target) > _layer(name):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({LAYERS[_layer(name)][0]}) imports {target} "
                             f"({LAYERS[_layer(target)][0]})")  # fmt: skip
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_package_init_is_imported_only_by_the_application():
    """``import fastrnn`` (the package) from inside it would import every layer: only the
    application layer may."""
    wrong = [
        f"{path.relative_to(ROOT)}:{line}"
        for name, path in PACKAGE.items()
        for module, _, line in _imports(name, path)
        if _project(module) == "fastrnn" and module == "fastrnn" and _layer(name) < len(LAYERS) - 1
    ]
    assert not wrong, wrong


def test_functional_and_ops_import_neither_dispatch_nor_modules():
    graph = _edges()
    for low in ("fastrnn.functional", "fastrnn.ops"):
        assert not graph[low] & {"fastrnn.dispatch", "fastrnn.modules", "fastrnn.auto"}, graph[low]


def test_no_circle():
    graph = _edges()
    graph.pop("fastrnn", None)  # the package's __init__ re-exports: it is imported last, by users
    for deps in graph.values():
        deps.discard("fastrnn")
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycle = stack[stack.index(m) :] + [m]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def _private_crossings(files: dict[str, Path]) -> list[str]:
    wrong = []
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}  # local name -> project module it is bound to
        for module, imported, line in _imports(name, path):
            target = _project(module)
            if target is None or target == name:
                continue
            if imported is not None and imported.startswith("_") and not imported.startswith("__"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported} from {target}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = _resolve(name, node.level, node.module)
                for a in node.names:
                    if f"{base}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{base}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODULES and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and f"{aliases[node.value.id]}.{node.attr}" not in MODULES  # a private module, not a name
                and aliases[node.value.id] != name
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    return wrong


def test_no_private_name_crosses_a_file():
    wrong = _private_crossings({**PACKAGE, **_files("benchmarks")})
    assert not wrong, "private names used across files:\n" + "\n".join(wrong)


def test_the_checks_see_what_they_check():
    """The readers above find what they look for: an upward import and a private import written
    into a file are both reported (so that an empty report means something)."""
    path = ROOT / "fastrnn" / "functional.py"
    name = "fastrnn.functional"
    probe = path.read_text() + "\nfrom .modules import _check_precision\nfrom . import dispatch\n"
    found = {(m, n) for m, n, _ in _imports(name, path, probe)}
    assert ("fastrnn.modules", "_check_precision") in found and ("fastrnn.dispatch", None) in found
    assert _layer("fastrnn.dispatch") > _layer(name) and _layer("fastrnn.modules") > _layer(name)
