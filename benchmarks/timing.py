"""Timers: CUDA events on a GPU, ``time.perf_counter`` on the CPU; both exclude warm-up.

GPU (:func:`time_cuda`): one untimed first call (Triton/Inductor compilation, cuDNN plans, lazy
init), a timed estimate, warm-up calls for ``warmup_ms``, then ``n`` calls each between its own
pair of CUDA events, with L2 flushed before each (a 256 MiB buffer is zeroed outside the events).
The events measure the GPU stream's wall time, so a provider whose CPU-side launches cannot keep
the GPU busy (the Python step loop) is charged for the gaps, as it should be.

CPU (:func:`time_cpu_interleaved`): providers are timed in alternation (one call of each per
round, starting provider rotated), so slow drifts of a shared 2-core machine hit all of them alike;
garbage collection is paused while timing.

``n`` aims at ``rep_ms`` of measured time, clamped to ``[min_reps, max_reps]``, and lowered (never
below 3) when one call is so slow that ``min_reps`` calls would pass ``max_s``.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class TimingConfig:
    """How long to measure each provider of a row."""

    rep_ms: float = 150.0
    warmup_ms: float = 40.0
    min_reps: int = 5
    max_reps: int = 100
    max_s: float = 4.0
    flush_l2: bool = True


@dataclass(frozen=True)
class Timing:
    """Per-call times of one provider on one row, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    mean_ms: float
    min_ms: float
    reps: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(samples_ms: list[float]) -> Timing:
    """Median, 20th/80th percentiles (inclusive interpolation), mean and min of ``samples_ms``."""
    if not samples_ms:
        raise ValueError("no samples")
    med = statistics.median(samples_ms)
    if len(samples_ms) >= 2:
        q = statistics.quantiles(samples_ms, n=5, method="inclusive")
        p20, p80 = q[0], q[3]
    else:
        p20 = p80 = med
    return Timing(med, p20, p80, statistics.fmean(samples_ms), min(samples_ms), len(samples_ms))


def _reps(est_ms: float, cfg: TimingConfig) -> int:
    n = int(cfg.rep_ms / max(est_ms, 1e-6))
    n = max(cfg.min_reps, min(cfg.max_reps, n))
    if est_ms * n > cfg.max_s * 1e3:
        n = max(3, int(cfg.max_s * 1e3 / max(est_ms, 1e-6)))
    return n


_L2_FLUSH: dict[torch.device, torch.Tensor] = {}


def _l2_flush_buffer(device: torch.device) -> torch.Tensor:
    if device not in _L2_FLUSH:
        _L2_FLUSH[device] = torch.empty(64 * 2**20, dtype=torch.int32, device=device)  # 256 MiB > any L2
    return _L2_FLUSH[device]


def time_cuda(
    fn: Callable[[], object], cfg: TimingConfig = TimingConfig(), device: torch.device | None = None
) -> Timing:
    """Time ``fn`` (which launches work on the current CUDA stream) with CUDA events.

    Returns the per-call :class:`Timing` of ``n`` calls after warm-up (see module doc).
    """
    device = device or torch.device("cuda", torch.cuda.current_device())
    flush = _l2_flush_buffer(device) if cfg.flush_l2 else None
    fn()  # first call: compilation and lazy initialisation, never timed
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    est = start.elapsed_time(end)
    t_warm = time.perf_counter()
    while (time.perf_counter() - t_warm) * 1e3 < cfg.warmup_ms:
        fn()
        torch.cuda.synchronize(device)
    n = _reps(est, cfg)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        if flush is not None:
            flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return summarize([s.elapsed_time(e) for s, e in zip(starts, ends)])


def time_cpu_interleaved(
    fns: dict[str, Callable[[], object]],
    cfg: TimingConfig = TimingConfig(),
    samples_out: dict[str, list[float]] | None = None,
) -> dict[str, Timing]:
    """Time CPU callables in alternation with ``time.perf_counter`` (see module doc).

    Every callable must already have run once (the caller handles failures).  Returns one
    :class:`Timing` per name; ``samples_out`` (if given) receives the per-call samples, in rounds:
    sample ``i`` of every name was taken in the same round, back to back.
    """
    names = list(fns)
    if not names:
        return {}
    est = {}
    for name in names:
        t0 = time.perf_counter()
        fns[name]()
        est[name] = (time.perf_counter() - t0) * 1e3
    t_warm = time.perf_counter()
    while (time.perf_counter() - t_warm) * 1e3 < cfg.warmup_ms:
        for name in names:
            fns[name]()
    n = _reps(sum(est.values()), cfg)
    samples: dict[str, list[float]] = {name: [] for name in names}
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(n):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                t0 = time.perf_counter()
                fns[name]()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        if was_enabled:
            gc.enable()
    if samples_out is not None:
        samples_out.update(samples)
    return {name: summarize(s) for name, s in samples.items()}


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios ``a[i] / b[i]`` of interleaved samples.

    Noise from the rest of the machine tends to hit both calls of a round alike, so this is a
    steadier estimate of ``a/b`` than the ratio of the medians.
    """
    return statistics.median(x / y for x, y in zip(a, b) if y > 0)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Memory allocated during one call of ``fn`` beyond what was allocated before it (MiB).

    Uses ``torch.cuda.max_memory_allocated``; parameters and inputs (allocated before) are not
    counted, the output and everything transient (workspace, activations, gradients) are.
    ``None`` off CUDA.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return (peak - base) / 2**20
