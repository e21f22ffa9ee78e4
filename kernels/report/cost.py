"""What one step of a compiled kernel costs, from its code: the time loop of the TTIR (which loads
are issued a step ahead of their use) and the SASS loops' tensor-core instructions and barriers,
summed at nominal latencies into a per-step estimate (:func:`step_profile`)."""

from __future__ import annotations

import re

_TTIR_DEF = re.compile(r"^\s*(%[\w]+)(?::\d+)?\s*=\s*([\w.]+)")
_TTIR_NAME = r"(?<![\w%])%{}(?![\w])"

#: Latencies of the step model (cycles at ~1.9 GHz, H100/H200 class; to be checked against a
#: measured per-step time on a GPU, kernels/NOTES.md): a dependent tensor-core instruction, a
#: CTA barrier (``bar.sync``: a layout conversion through shared memory, or the grid barrier's
#: local part), a global/L2 round trip a step waits on, one grid barrier.
CYCLES = {"mma": 32, "bar": 100, "round_trip": 700, "barrier": 1800}
CLOCK_GHZ = 1.9


def _time_loop_body(ttir: str) -> str:
    """The body of the kernel's outermost ``scf.for`` in TTIR (the time loop), or ''."""
    start = ttir.find("scf.for")
    if start < 0:
        return ""
    i = ttir.index("{", start)
    depth, j = 0, i
    while j < len(ttir):
        if ttir[j] == "{":
            depth += 1
        elif ttir[j] == "}":
            depth -= 1
            if depth == 0:
                return ttir[i + 1 : j]
        j += 1
    return ttir[i + 1 :]


def loads_ahead(ttir: str) -> tuple[int, int]:
    """``(loads, ahead)``: the ``tt.load`` ops inside the time loop, and how many of them are
    issued a step ahead of their use -- their value is only passed on to the next iteration
    (``scf.yield``), never consumed in the step that issues them."""
    body = _time_loop_body(ttir)
    lines = body.splitlines()
    loads, ahead = 0, 0
    for n, line in enumerate(lines):
        m = _TTIR_DEF.match(line)
        if not m or m.group(2) != "tt.load":
            continue
        loads += 1
        name = re.compile(_TTIR_NAME.format(re.escape(m.group(1)[1:])))
        users = [other for k, other in enumerate(lines) if k != n and name.search(other)]
        if users and all("scf.yield" in u for u in users):
            ahead += 1
    return loads, ahead


def step_profile(row: dict, ttir: str, loops: list[dict], k_trips: int, barriers: int) -> dict:
    """The per-step serial chain of a compiled kernel, estimated from its code: tensor-core
    instructions one warp issues per step and CTA barriers (``bar.sync``; inner loops' counted
    ``k_trips`` times: the streamed K chunks), global loads the step waits on (inside the time
    loop, not issued a step ahead), grid barriers; and ``est_us``, the sum at :data:`CYCLES`'
    latencies.  A model for comparing builds and catching regressions, not a prediction of the
    absolute time: it ignores the pointwise maths and counts overlapping mma as serial."""
    outer = max(loops, key=lambda lp: lp["end"] - lp["start"], default=None)
    mma = bars = 0
    if outer is not None:
        for lp in loops:
            if outer["start"] <= lp["start"] and lp["end"] <= outer["end"]:
                trips = k_trips if lp is not outer and lp["mma"] else 1
                mma += lp["mma"] * trips
                bars += lp["bars"] * trips
    loads, ahead = loads_ahead(ttir)
    waits = loads - ahead
    cycles = mma * CYCLES["mma"] + bars * CYCLES["bar"] + waits * CYCLES["round_trip"] + barriers * CYCLES["barrier"]
    return dict(step_mma=mma, step_bars=bars, loop_loads=loads, loads_ahead=ahead, step_waits=waits,
                step_barriers=barriers, est_us=round(cycles / (CLOCK_GHZ * 1e3), 2))  # fmt: skip
