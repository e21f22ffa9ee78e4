"""``python -m benchmarks.host_overhead``: fastrnn's own host time per call, on the CPU.

A one-token decoder call does almost no arithmetic, so what a recurrent module costs there is
host time: the backend decision, argument checks, allocations, the custom op's dispatch and the
kernel launch.  This measures that time in-process (``time.perf_counter_ns`` over many calls,
the median of several repeats) for the calls that matter:

* ``decoder``: a one-token ``EmbeddingRNN`` step with its state (``B=1``, ``T=1``), the call a
  greedy decoder makes per token, against the same model on ``torch.nn`` modules
  (``nn.Embedding`` + ``nn.LSTM``);
* ``lstm``: an ``LSTM`` over ``T=1024`` steps, against ``torch.nn.LSTM``;

each with ``backend="auto"`` and ``"torch"`` (on the CPU both run ``torch.nn``'s code: the
difference to ``torch.nn`` is fastrnn's own time), and ``"triton"`` with the kernel launch
replaced by a no-op (Triton's interpreter would otherwise run the kernel on the CPU): everything
fastrnn does up to the launch, which is what a GPU call pays on the host besides Triton's
launcher.  The sizes are tiny (``H=8``) so that the arithmetic is a small part of each figure.

Run it before and after a change to the call path::

    python -m benchmarks.host_overhead            # a table, about 30 s
    python -m benchmarks.host_overhead --json out.json

The figures are the CPU's: a GPU adds its own launch costs (``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

V, E, H = 50, 8, 8


@dataclass
class Row:
    call: str  # "decoder" or "lstm"
    backend: str  # "auto", "torch", "triton (launch stubbed)" or "torch.nn"
    us: float  # median host time per call, microseconds
    over_torch_nn_us: float | None  # us minus the torch.nn row of the same call


def per_call_us(fn: Callable[[], object], *, calls: int, repeats: int = 7) -> float:
    """Median over ``repeats`` of the mean time of ``calls`` back-to-back calls, in microseconds of
    this thread's CPU time (``time.thread_time_ns``: what other processes on a busy machine do to the
    wall clock does not count; torch runs single-threaded here, see :func:`measure`)."""
    for _ in range(max(3, calls // 10)):  # warm-up: first-call caches, allocator
        fn()
    times = []
    for _ in range(repeats):
        start = time.thread_time_ns()
        for _ in range(calls):
            fn()
        times.append((time.thread_time_ns() - start) / calls / 1e3)
    return statistics.median(times)


@contextlib.contextmanager
def launches_stubbed():
    """Every kernel launch is a no-op (the outputs stay as allocated): every launch goes through
    :class:`fastrnn.kernels.common.Launch`."""
    from fastrnn.kernels import common

    real_run = common.Launch.run
    common.Launch.run = lambda self: None
    try:
        yield
    finally:
        common.Launch.run = real_run


def measure(quick: bool = False) -> list[Row]:
    import torch
    from torch import nn

    import fastrnn

    torch.manual_seed(0)
    torch.set_num_threads(1)
    calls = 200 if quick else 1000
    rows: list[Row] = []

    # -- one-token decoder step with its state -------------------------------------------------
    emb, lstm = nn.Embedding(V, E), nn.LSTM(E, H, batch_first=True)
    ids = torch.randint(0, V, (1, 1))
    with torch.no_grad():
        _, state = lstm(emb(ids))
    torch_nn = lambda: lstm(emb(ids), state)
    with torch.no_grad():
        base = per_call_us(torch_nn, calls=calls)
        rows.append(Row("decoder", "torch.nn", base, None))
        for backend in ("auto", "torch", "triton"):
            m = fastrnn.EmbeddingRNN.from_modules(emb, lstm, backend=backend)
            step = lambda m=m: m(ids, state)
            if backend == "triton":
                with launches_stubbed():
                    us = per_call_us(step, calls=calls)
                rows.append(Row("decoder", "triton (launch stubbed)", us, us - base))
            else:
                us = per_call_us(step, calls=calls)
                rows.append(Row("decoder", backend, us, us - base))

    # -- a long sequence: T=1024, training (forward only timed) ---------------------------------
    T = 1024
    ref = nn.LSTM(E, H)
    x = torch.randn(T, 1, E)
    long_calls = 20 if quick else 60
    with torch.no_grad():
        base = per_call_us(lambda: ref(x), calls=long_calls)
        rows.append(Row("lstm", "torch.nn", base, None))
        for backend in ("auto", "torch", "triton"):
            m = fastrnn.LSTM(E, H, backend=backend)
            m.load_state_dict(ref.state_dict())
            if backend == "triton":
                with launches_stubbed():
                    us = per_call_us(lambda m=m: m(x), calls=long_calls * 10)
                rows.append(Row("lstm", "triton (launch stubbed)", us, None))
            else:
                us = per_call_us(lambda m=m: m(x), calls=long_calls)
                rows.append(Row("lstm", backend, us, us - base))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| call | backend | host us per call | over torch.nn |", "|---|---|---|---|"]
    for r in rows:
        over = "" if r.over_torch_nn_us is None else f"{r.over_torch_nn_us:+.1f}"
        lines.append(f"| {r.call} | {r.backend} | {r.us:.1f} | {over} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        # the triton rows put CPU tensors through the kernels' path: that needs the interpreter flag
        # before fastrnn (and Triton) are imported
        os.environ["TRITON_INTERPRET"] = "1"
        if "fastrnn" in sys.modules or "triton" in sys.modules:
            print("run in a fresh process: TRITON_INTERPRET=1 must be set before fastrnn is imported", file=sys.stderr)
            return 2
    rows = measure(quick=a.quick)
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
