"""Facts about Triton releases, read from one data file (``kernels/releases.json``).

What a build compiles to depends on the Triton release: how many registers it needs, whether it
spills, whether the compiler aborts.  So the limits that :mod:`.tiers` applies, the compiler aborts
it avoids and the per-step estimates the kernel report holds are recorded per release, as data, in
``releases.json`` (its ``about`` entry says what each field is).  A release not listed there gets the
most conservative set: the smallest limit of every known release and every abort whose range is
still open.  The kernel report regenerates the estimates (``--estimates``) and is how the limits
are measured (``kernels/NOTES.md``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

PATH = Path(__file__).resolve().with_name("releases.json")

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def current() -> str:
    """The installed Triton's ``major.minor``, e.g. ``"3.9"``."""
    import triton

    return ".".join(triton.__version__.split(".")[:2])


def _key(release: str) -> tuple[int, ...]:
    return tuple(int(p) for p in release.split("."))


@functools.cache
def load() -> dict:
    """The parsed data file."""
    return json.loads(PATH.read_text())


def _smallest(values: list):
    """Element-wise minimum of equally shaped dicts / tuples / ints."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _smallest([v[k] for v in values if k in v]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(min(v[i] for v in values) for i in range(len(first)))
    return min(values)


@functools.cache
def _limits(release: str) -> dict:
    releases = load()["releases"]
    if release in releases:
        return releases[release]["limits"]
    return _smallest([r["limits"] for r in releases.values()])


def limits(name: str, release: str | None = None) -> dict:
    """The limit ``name`` of ``release`` (default: the installed one) as the data file holds it (each
    tier reads its own entries: the keys are its names, e.g. ``"tier1_max_weight_bytes"``); an
    unknown release gets the smallest of every known release's."""
    return _limits(release or current())[name]


def by_dtype(mapping: dict) -> dict:
    """A limit keyed by dtype name (``"float16"``) as keyed by ``torch.dtype``."""
    return {_DTYPES[k]: v for k, v in mapping.items()}


def known(release: str | None = None) -> bool:
    """Whether the data file has measurements for ``release`` (default: the installed one)."""
    return (release or current()) in load()["releases"]


def compiler_abort(mode: str, dtype: torch.dtype, tier: int, release: str | None = None) -> dict | None:
    """The recorded compiler abort for this build under ``release`` (default: installed), or
    ``None``.  An entry applies from its ``first`` release until (not including) ``fixed``; for a
    release the file does not know, every entry that is not fixed applies."""
    release = release or current()
    name = str(dtype).removeprefix("torch.")
    for entry in load()["compiler_aborts"]:
        if (entry["mode"], entry["dtype"], entry["tier"]) != (mode, name, tier):
            continue
        fixed = entry["fixed"]
        if not known(release):
            if fixed is None:
                return entry
            continue
        if _key(entry["first"]) <= _key(release) and (fixed is None or _key(release) < _key(fixed)):
            return entry
    return None


def step_estimates(release: str | None = None) -> dict[str, float]:
    """The kernel report's per-step estimates (microseconds by configuration key) for ``release``."""
    entry = load()["releases"].get(release or current())
    return dict(entry["step_estimates"]) if entry else {}


def write_step_estimates(estimates: dict[str, float], release: str | None = None) -> None:
    """Merge ``estimates`` into ``release``'s entry of the data file (the kernel report's
    ``--estimates``).  A release new to the file starts from the most conservative limits."""
    release = release or current()
    data = json.loads(PATH.read_text())
    releases = data["releases"]
    if release not in releases:
        releases[release] = {"limits": _smallest([r["limits"] for r in releases.values()]), "step_estimates": {}}
    merged = {**releases[release]["step_estimates"], **estimates}
    releases[release]["step_estimates"] = dict(sorted(merged.items()))
    data["releases"] = dict(sorted(releases.items(), key=lambda kv: _key(kv[0])))
    PATH.write_text(json.dumps(data, indent=1) + "\n")
    forget()


def forget() -> None:
    """Read the data file again on next use (after it was written, or :data:`PATH` replaced)."""
    load.cache_clear()
    _limits.cache_clear()
