"""Tier 4: the recurrence on a Hopper thread-block cluster, in CUDA C++.

One cluster of ``C`` CTAs (1-16; 16 is a non-portable size that H100/H200 allow) runs a tile of
``BT`` sequences (8 or 16).  CTA ``rank`` owns hidden units ``[rank*U, (rank+1)*U)``, ``U = H/C``,
and every gate row of them: its slice of ``W_hh`` is loaded once and stays on chip for the whole
sequence, in the warps' registers (as ``mma.sync`` A fragments) and, past the register budget, in
shared memory in the same fragment order.  Each step every CTA computes its slice of the gates
(``mma.sync`` m16n8k16, fp32 accumulation), runs the cell on its (unit, sequence) pairs, writes
``out`` and the saved tensors, and pushes its slice of ``h_t`` into the other of two buffers in
every CTA's shared memory (``st.async`` with completion on that CTA's mbarrier, expect-tx): one
mbarrier wait per step, no cluster barrier and no global memory for ``h`` inside the loop.  The
backward is the same kernel shape with ``W_hh``'s columns of the CTA's units (``K = G*H``): each
step's gate gradients (``dpre``, 16-bit like the Triton tiers' dots) are all-gathered instead of
``h``.  ``kernels/NOTES.md`` section 8 has the design, the resources per configuration and the
predicted step times; ``kernels/cuda/`` the sources.

**How it is built and launched.**  ``nvcc -cubin -arch=sm_90a`` compiles ``cuda/cluster_entry.cu``
for one configuration (``-D`` macros: cell, dtype, direction, sizes, warps) at first use; the cubin
is cached on disk by the hash of the sources, the configuration and the nvcc version
(``$FASTRNN_CUDA_CACHE``, default ``~/.cache/fastrnn/cuda``), loaded with the CUDA driver API
(``cuModuleLoadData``) and launched with ``cuLaunchKernelEx`` and the cluster-dimension attribute
(``CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED`` for 16) on torch's current stream, through
ctypes.  Why not ``torch.utils.cpp_extension``: the kernel includes no header at all (neither
torch's nor the CUDA runtime's), so the cubin the CPU checks compile and read is byte for byte the
one a GPU runs; nothing is linked against a torch build (a CPU-only torch cannot build CUDA
extensions, and torch 2.11 and 2.13 need no ABI match); a configuration compiles in about a second
instead of a C++ extension's minute.  nvcc (CUDA >= 12.8, the one that ships sm_90a with st.async)
is needed at first use of a configuration; NVRTC is not used.  Without a CUDA device of compute
capability 9.0 or without nvcc the tier is unavailable and says why in one line.

**When it runs.**  Automatically (ranked between tier 1 and tier 2) on a GPU where it is verified,
else only when forced (``FASTRNN_TIER=4``): the GPU check (``python -m benchmarks.cluster_check``)
writes ``kernels/verified.json`` (:func:`record_verification`) when the tier's correctness tests
pass there, and :func:`verification`, the tier's :attr:`~.tiers.Tier.verified`, reads it for a
device.

**The host simulator.**  ``cuda/cluster_sim.hpp`` runs the kernel body itself on the host (every
thread of every CTA of a cluster as a user-level context, in lockstep, with a model of ldmatrix,
mma.sync, st.async and the mbarriers written from the PTX ISA): :func:`simulator` builds it with
the host compiler for a list of configurations; ``tests/test_cuda_tier.py`` checks it against
``fastrnn.reference`` in float64.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import _runtime, cells, sources, tiers
from .call import Gradients, RecurrenceCall, allocate, backward_shapes, forward_shapes
from .common import BackwardResult, ForwardResult, Launch, row_major, run_backward, run_forward

#: This tier's number (``FASTRNN_TIER=4``).
NUMBER = 4

HERE = Path(__file__).resolve().parent
CUDA_DIR = HERE / "cuda"
#: The files (relative to the package) the tier's device code is built from.
DEVICE_SOURCES = sources.CUDA_SOURCES
#: The CUDA folder's files, in the order their hash takes them: the device code and the host-side
#: simulator that runs it in the tests.
CUDA_SOURCES = (*(Path(name).name for name in DEVICE_SOURCES), "cluster_sim.hpp")

#: Cells of the tier (``Cell<...>`` in cluster_common.cuh) and storage dtypes.
CELL_IDS = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
DTYPE_IDS = {"fp16": 0, "bf16": 1}
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}

ARCH = "sm_90a"
#: Shared memory one block may use on sm_90 (opt-in maximum), and what every cluster kernel has
#: reserved besides (``.nv.shared.<kernel>``: 1 KiB; counted against the limit to be safe).
SMEM_LIMIT = 227 * 1024
RESERVED_SMEM = 1024
#: Registers of one SM (16384 per sub-partition; a CTA's warps are spread over the four), and a
#: thread's maximum.
SM_REGISTERS = 65536


def register_cap(num_warps: int) -> int:
    """The registers a thread of a one-CTA-per-SM kernel of ``num_warps`` warps may have: its
    sub-partition holds ceil(num_warps / 4) of them (ptxas' limit under ``__launch_bounds__``:
    168 for 9-12 warps, 128 for 13-16), at most 255, in steps of 8."""
    return min(255, SM_REGISTERS // 4 // (-(-num_warps // 4) * 32) // 8 * 8)


#: Cluster sizes, largest first: any number of CTAs up to 16 (above 8 non-portable, which H100 and
#: H200 allow).
CLUSTER_SIZES = tuple(range(16, 0, -1))
#: Warps per CTA the layouts take: any count that splits the tiles evenly (a K of 11 k-steps takes
#: 11 warps of one k-step each, not one warp of 11).
WARP_COUNTS = tuple(range(1, 17))
#: Registers a thread keeps for everything but its A fragments, by direction: a base plus a share
#: per (unit, sequence) pair it owns (:func:`_work_registers` adds the accumulators).  ptxas takes
#: whatever the launch bounds allow, so this is a headroom rule, not a count, fitted so that every
#: size the tier takes compiles with no local memory in the time loop (kernels/NOTES.md section 8;
#: ``tests/test_cuda_tier.py -m slow`` checks them all).
WORK_REGISTERS = {"fwd": (64, 12), "bwd": (64, 20)}


# ---------------------------------------------------------------------------------------------
# The launch configuration


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass(frozen=True)
class ClusterConfig:
    """One compiled kernel of the tier: the ``Cfg<...>`` template of ``cluster_common.cuh``.

    The properties below mirror that struct (sizes, shared-memory layout); the simulator checks that
    they agree (``tests/test_cuda_tier.py``).
    """

    mode: str
    dtype: str  # "fp16" or "bf16" (a string: a configuration is ints, bools and strings)
    kernel: str  # "fwd" or "bwd"
    hidden_size: int
    cluster: int  # CTAs per cluster
    batch_tile: int  # sequences per cluster: 8 or 16
    num_warps: int
    warps_m: int  # warps across the rows' m-tiles (the rest split K)
    kreg: int  # k-steps of A in registers per warp (the rest in shared memory)
    acc_sets: int  # independent accumulator sets over k-steps
    reduce: bool = False  # backward: reduce-scatter fp32 partial sums instead of all-gathering dpre

    TILE_CONSTEXPRS = ("FR_BT", "FR_C", "FR_NW")
    ARCHS = (90,)  # sm_90a: thread-block clusters, distributed shared memory

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    # -- the Cfg mirror
    @property
    def G(self) -> int:
        return cells.get(self.mode).G

    @property
    def S(self) -> int:
        return cells.get(self.mode).S

    @property
    def U(self) -> int:
        return self.hidden_size // self.cluster

    @property
    def fwd(self) -> bool:
        return self.kernel == "fwd"

    @property
    def direction(self) -> int:
        """``Cfg``'s DIR: 0 forward, 1 backward all-gather, 2 backward reduce-scatter."""
        return 0 if self.fwd else 2 if self.reduce else 1

    @property
    def M(self) -> int:
        return (self.G * self.U, self.U, self.hidden_size)[self.direction]

    @property
    def K(self) -> int:
        return (self.hidden_size, self.G * self.hidden_size, self.G * self.U)[self.direction]

    @property
    def GP(self) -> int:
        return 1 if self.fwd else self.G

    @property
    def MT(self) -> int:
        return self.M // 16

    @property
    def KS(self) -> int:
        return self.K // 16

    @property
    def NT(self) -> int:
        return self.batch_tile // 8

    @property
    def WK(self) -> int:
        return self.num_warps // self.warps_m

    @property
    def MTW(self) -> int:
        return self.MT // self.warps_m

    @property
    def KSW(self) -> int:
        return self.KS // self.WK

    @property
    def KSM(self) -> int:
        return self.KSW - self.kreg

    @property
    def threads(self) -> int:
        return self.num_warps * 32

    @property
    def pairs(self) -> int:
        return self.U * self.batch_tile

    @property
    def pairs_per_thread(self) -> int:
        return -(-self.pairs // self.threads)

    @property
    def exchange_bytes(self) -> int:
        """Bytes every CTA receives per step: the whole gathered vector of the tile (16-bit), or the
        C fp32 partial sums of its own units (reduce-scatter)."""
        if self.reduce:
            return self.cluster * self.batch_tile * self.U * 4
        return self.batch_tile * self.K * 2

    def layout(self) -> dict[str, int]:
        """Shared-memory offsets and sizes in bytes (``Cfg::OFF_*``)."""
        ldv, ldm = self.K + 8, self.M + 4
        v_bytes = self.exchange_bytes if self.reduce else self.batch_tile * ldv * 2
        off_red = _align(128 + 2 * v_bytes, 128)
        red_bytes = self.WK * self.batch_tile * ldm * 4
        off_stage = _align(off_red + red_bytes, 128)
        stage_bytes = self.batch_tile * (ldv if self.reduce else self.GP * self.U) * 2
        off_w = _align(off_stage + stage_bytes, 128)
        w_bytes = self.num_warps * self.MTW * self.KSM * 32 * 16
        return dict(off_bar=0, off_v=128, v_bytes=v_bytes, off_red=off_red, red_bytes=red_bytes, off_stage=off_stage,
                    stage_bytes=stage_bytes, off_w=off_w, w_bytes=w_bytes, smem=_align(off_w + w_bytes, 128))  # fmt: skip

    @property
    def smem_bytes(self) -> int:
        """Dynamic shared memory of a CTA."""
        return self.layout()["smem"]

    @property
    def register_fragment_bytes(self) -> int:
        """Bytes of ``W_hh`` a CTA keeps in registers."""
        return self.num_warps * self.MTW * self.kreg * 32 * 16

    def defines(self) -> list[str]:
        """The ``-D`` macros of ``cluster_entry.cu``."""
        values = dict(FR_CELL=CELL_IDS[self.mode], FR_DT=DTYPE_IDS[self.dtype], FR_DIR=self.direction,
                      FR_H=self.hidden_size, FR_C=self.cluster, FR_BT=self.batch_tile, FR_NW=self.num_warps,
                      FR_WM=self.warps_m, FR_KREG=self.kreg, FR_AS=self.acc_sets)  # fmt: skip
        return [f"-D{k}={v}" for k, v in values.items()]

    def template_args(self) -> str:
        """``Cfg<...>``'s arguments (the simulator's instantiation)."""
        return ", ".join(d.split("=", 1)[1] for d in self.defines())

    def name(self) -> str:
        return (f"{self.mode}-{self.dtype}-{self.kernel}-H{self.hidden_size}-C{self.cluster}"
                f"-BT{self.batch_tile}-W{self.num_warps}x{self.warps_m}-R{self.kreg}-A{self.acc_sets}"
                + ("-RS" if self.reduce else ""))  # fmt: skip

    def with_batch_tile(self, batch_tile: int) -> ClusterConfig:
        """The same layer with another batch tile (its warps and register split chosen again)."""
        if batch_tile == self.batch_tile:
            return self
        return choose_config(self.mode, self.hidden_size, self.torch_dtype, self.kernel, batch_tile)

    def override(self, hidden_size: int, dtype: torch.dtype, **changes: Any) -> ClusterConfig:
        """This configuration with the kernel report's knobs applied: ``block_b`` (the batch tile,
        8 or 16) and ``num_warps`` (the layout with that many warps); other knobs raise."""
        unknown = set(changes) - {"block_b", "num_warps"}
        if unknown:
            raise ValueError(f"the cluster tier has no {', '.join(sorted(unknown))} (it takes block_b, num_warps)")
        bt = changes.get("block_b") or self.batch_tile
        nw = changes.get("num_warps")
        options = layouts(self.mode, hidden_size, dtype, self.kernel, bt)
        if nw is not None:
            options = [cfg for cfg in options if cfg.num_warps == nw]
        if not options:
            raise ValueError(f"no cluster-tier layout of {self.mode} H={hidden_size} with {changes}")
        return min(options, key=lambda cfg: (predict_step(cfg)["cycles"], cfg.num_warps))

    # -- the kernel report's view of a configuration
    def tiles(self) -> dict[str, Any]:
        return dict(block_b=self.batch_tile, cluster=self.cluster, num_warps=self.num_warps)

    def k_trips(self, hidden_size: int) -> int:
        return 1

    def on_chip_bytes(self, mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int:
        """Bytes of recurrent weights one CTA holds (registers and shared memory)."""
        return self.M * self.K * 2

    def check(self) -> None:
        """Raise if this configuration breaks a rule of ``Cfg`` (the static_asserts)."""
        rules = [
            (self.mode in CELL_IDS, f"cell {self.mode} is not in the cluster tier"),
            (self.dtype in DTYPE_IDS, f"dtype {self.dtype} is not in the cluster tier"),
            (self.hidden_size % self.cluster == 0 and self.U % 16 == 0, "units per CTA must be a multiple of 16"),
            (self.batch_tile in (8, 16), "batch tile of 8 or 16"),
            (self.num_warps % self.warps_m == 0 and self.MT % self.warps_m == 0 and self.KS % self.WK == 0,
             "warps must split the tiles evenly"),
            (0 <= self.kreg <= self.KSW, "register k-steps within the warp's k-steps"),
            (1 <= self.acc_sets <= 4, "1 to 4 accumulator sets"),
            (self.cluster in CLUSTER_SIZES, "cluster of 1 to 16 CTAs"),
            (not self.reduce or not self.fwd, "the reduce-scatter exchange is the backward's"),
        ]  # fmt: skip
        for ok, why in rules:
            if not ok:
                raise ValueError(f"{self.name()}: {why}")


# ---------------------------------------------------------------------------------------------
# Choosing a configuration: the cluster size from the weights, the warps from a step model

#: The step model (cycles of one SM at the H200's clock); every figure is an assumption to be
#: calibrated on a GPU.  ``kernels/NOTES.md`` section 8 explains each.
STEP_MODEL = dict(
    clock_ghz=1.98,
    hmma_issue=6.4,  # cycles per mma.sync m16n8k16 per SM sub-partition (~63% of the dense fp16 peak)
    hmma_latency=33,  # cycles from an mma to a dependent one
    smem_bytes_per_cycle=128,
    dsmem_bytes_per_cycle=64,  # assumed st.async bandwidth out of one SM
    exchange_latency=450,  # st.async + complete_tx + the waiting warps' wake-up (assumed)
    cta_barrier=40,  # __syncthreads with its shared-memory round trip
    mufu_per_cycle=16,
    alu_per_cycle=128,
    calibration=1.3,  # earlier SASS-based estimates ran ~30% under measurement
)

#: MUFU operations and other arithmetic per (unit, sequence) pair of a step, per cell and direction.
_PAIR_OPS = {
    ("RNN_TANH", "fwd"): (2, 24), ("RNN_RELU", "fwd"): (0, 12), ("LSTM", "fwd"): (10, 90), ("GRU", "fwd"): (6, 60),
    ("RNN_TANH", "bwd"): (0, 20), ("RNN_RELU", "bwd"): (0, 16), ("LSTM", "bwd"): (2, 70), ("GRU", "bwd"): (0, 50),
}  # fmt: skip
#: The dependent chain of a pair's cell maths (cycles).
_PAIR_LATENCY = {"RNN_TANH": 90, "RNN_RELU": 30, "LSTM": 260, "GRU": 220}


def predict_step(cfg: ClusterConfig) -> dict[str, float]:
    """The step model's parts (cycles) and its prediction (``us``, calibrated) for ``cfg``."""
    m = STEP_MODEL
    per_warp = cfg.MTW * cfg.KSW * cfg.NT
    warps_per_smsp = -(-cfg.num_warps // 4)
    issue = per_warp * warps_per_smsp * m["hmma_issue"]
    chain = -(-cfg.KSW // cfg.acc_sets) * m["hmma_latency"] + m["hmma_latency"]
    smem = cfg.num_warps * (cfg.MTW * cfg.KSM * 512 + cfg.KSW * cfg.NT * 256) / m["smem_bytes_per_cycle"]
    mma = max(issue, chain, smem)
    mufu, alu = _PAIR_OPS[(cfg.mode, cfg.kernel)]
    # a pair's reads of the product: G x WK partial sums (forward), WK (all-gather backward), C
    # received partial sums (reduce-scatter; its push sums the WK blocks: another pass over them)
    per_pair = cfg.G * cfg.WK if cfg.fwd else (cfg.cluster if cfg.reduce else cfg.WK)
    reads = cfg.pairs * per_pair * 4 / m["smem_bytes_per_cycle"]
    if cfg.reduce:
        reads += cfg.batch_tile * cfg.M * cfg.WK * 4 / m["smem_bytes_per_cycle"]
    cell = max(_PAIR_LATENCY[cfg.mode] * cfg.pairs_per_thread, cfg.pairs * mufu / m["mufu_per_cycle"],
               cfg.pairs * alu / m["alu_per_cycle"]) + reads  # fmt: skip
    push = cfg.exchange_bytes / m["dsmem_bytes_per_cycle"]
    cycles = mma + cell + push + m["exchange_latency"] + 2 * m["cta_barrier"]
    us = cycles * m["calibration"] / (m["clock_ghz"] * 1000)
    return dict(mma=mma, issue=issue, chain=chain, smem=smem, cell=cell, push=push, cycles=cycles, us=round(us, 3))


def cluster_size(hidden_size: int) -> int | None:
    """CTAs per cluster: the largest of 16 ... 1 that leaves each CTA a multiple of 16 units (the
    most SMs per sequence tile: H = 256 takes 16, H = 176 11, H = 336 7; ``None``: ``hidden_size``
    is not a multiple of 16)."""
    for c in CLUSTER_SIZES:
        if hidden_size % (16 * c) == 0:
            return c
    return None


def _work_registers(kernel: str, pairs_per_thread: int, accumulators: int, cap: int) -> int:
    """Registers a thread keeps besides its A fragments: :data:`WORK_REGISTERS`, in the forward the
    accumulators beyond the 16 its base counts (the backward's base was fitted with them), and 8
    more where ptxas' cap is below 255 (less room to schedule)."""
    base, per_pair = WORK_REGISTERS[kernel]
    extra = max(0, accumulators - 16) if kernel == "fwd" else 0
    return base + per_pair * pairs_per_thread + extra + (8 if cap < 255 else 0)


def layouts(mode: str, hidden_size: int, dtype: torch.dtype, kernel: str, batch_tile: int = 16,
            smem_limit: int = SMEM_LIMIT) -> list[ClusterConfig]:  # fmt: skip
    """Every warp layout of this layer that fits one SM (registers by :data:`WORK_REGISTERS`, shared
    memory within ``smem_limit``), as many k-steps in registers as the budget allows; the backward
    in both of its exchanges (all-gather and reduce-scatter)."""
    c = cluster_size(hidden_size)
    if c is None or mode not in CELL_IDS or dtype not in DTYPE_NAMES:
        return []
    G, U = cells.get(mode).G, hidden_size // c
    shapes = (
        {False: (G * U, hidden_size)} if kernel == "fwd" else {False: (U, G * hidden_size), True: (hidden_size, G * U)}
    )
    out = []
    for reduce, (M, K) in shapes.items():
        for nw in WARP_COUNTS:
            for wm in _divisors(M // 16):
                if nw % wm or (K // 16) % (nw // wm):
                    continue
                mtw, ksw = (M // 16) // wm, (K // 16) // (nw // wm)
                pp = -(-U * batch_tile // (nw * 32))
                acc = 2 if ksw >= 4 and mtw * batch_tile // 8 < 4 else 1
                cap = register_cap(nw)
                budget = cap - _work_registers(kernel, pp, 4 * acc * mtw * batch_tile // 8, cap)
                if budget < 0:  # the pairs' own state alone exceeds the registers
                    continue
                kreg = min(ksw, budget // (4 * mtw))
                cfg = ClusterConfig(mode, DTYPE_NAMES[dtype], kernel, hidden_size, c, batch_tile, nw, wm, kreg, acc,
                                    reduce)  # fmt: skip
                if cfg.smem_bytes + RESERVED_SMEM <= smem_limit:
                    out.append(cfg)
    return out


@functools.cache
def choose_config(mode: str, hidden_size: int, dtype: torch.dtype, kernel: str, batch_tile: int = 16,
                  smem_limit: int = SMEM_LIMIT) -> ClusterConfig:  # fmt: skip
    """The layout of :func:`layouts` with the shortest predicted step."""
    options = layouts(mode, hidden_size, dtype, kernel, batch_tile, smem_limit)
    if not options:
        raise ValueError(f"no cluster-tier layout of {mode} H={hidden_size} {dtype} {kernel} fits one SM")
    return min(options, key=lambda cfg: (predict_step(cfg)["cycles"], cfg.num_warps))


# ---------------------------------------------------------------------------------------------
# What the tier runs


def _static_reason(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> str | None:
    if mode not in CELL_IDS:
        return f"the cluster tier runs {', '.join(CELL_IDS)}, not {mode}"
    if proj_size:
        return "the cluster tier does not run projected LSTMs (proj_size)"
    if dtype not in DTYPE_NAMES:
        return f"the cluster tier runs float16 and bfloat16, not {dtype}"
    if cluster_size(hidden_size) is None:
        return f"the cluster tier needs hidden_size a multiple of 16, got {hidden_size}"
    for kernel in ("fwd", "bwd"):
        if not layouts(mode, hidden_size, dtype, kernel, 8):
            c = cluster_size(hidden_size)
            G = cells.get(mode).G
            kib = G * hidden_size * hidden_size * 2 // c // 1024
            return (f"{mode} with hidden_size={hidden_size} needs {kib} KiB of W_hh per CTA at {c} CTAs, more than "
                    f"the registers and {SMEM_LIMIT // 1024} KiB of shared memory of one SM hold")  # fmt: skip
    return None


def supported_sizes(mode: str, dtype: torch.dtype, up_to: int = 4096) -> list[int]:
    """Every hidden size the tier runs for this cell and dtype (a projection never)."""
    return [h for h in range(16, up_to + 1, 16) if _static_reason(mode, h, 0, dtype) is None]


SIZES_BEGIN, SIZES_END = "<!-- cluster-sizes:begin -->", "<!-- cluster-sizes:end -->"


def sizes_table() -> str:
    """The hidden sizes of every cell as docs/tiers.md shows them (generated, never typed)."""
    lines = [SIZES_BEGIN, "| tier 4: hidden sizes (float16 and bfloat16) | |", "|---|---|"]
    families: dict[tuple[int, ...], list[str]] = {}
    for mode in CELL_IDS:
        sizes = supported_sizes(mode, torch.float16)
        if sizes != supported_sizes(mode, torch.bfloat16):
            raise AssertionError(f"{mode}: fp16 and bf16 take different sizes")
        families.setdefault(tuple(sizes), []).append(mode)
    for sizes, modes in families.items():
        prefix = 0
        while prefix < len(sizes) and sizes[prefix] == 16 * (prefix + 1):
            prefix += 1
        rest = ", ".join(map(str, sizes[prefix:]))
        text = f"every multiple of 16 up to {sizes[prefix - 1]}" + (f"; {rest}" if rest else "")
        lines.append(f"| {', '.join(modes)} | {text} |")
    return "\n".join([*lines, SIZES_END])


def nvcc_path() -> str | None:
    """The nvcc that builds the kernels: ``$FASTRNN_NVCC``, else ``nvcc`` on ``PATH``, else
    ``$CUDA_HOME/bin/nvcc``; ``None`` when there is none."""
    return _nvcc_path(os.environ.get("FASTRNN_NVCC", ""), os.environ.get("PATH", ""), os.environ.get("CUDA_HOME", ""))


@functools.cache
def _nvcc_path(explicit: str, path: str, cuda_home: str) -> str | None:
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("nvcc", path=path)
    if found:
        return found
    candidate = Path(cuda_home) / "bin" / "nvcc" if cuda_home else None
    return str(candidate) if candidate is not None and os.access(candidate, os.X_OK) else None


def device_unsupported(device: torch.device | None = None) -> str | None:
    """Why ``device`` (``None``: the current CUDA device) cannot run the tier at all, whatever the
    layer: no nvcc to build the kernels, no CUDA device, or not compute capability 9.0 (the tier's
    :attr:`~.tiers.Tier.device_unsupported`; the kernel report, which compiles without a GPU, does
    not ask it)."""
    if nvcc_path() is None:
        return ("the cluster tier compiles its CUDA kernels at first use and found no nvcc "
                "(PATH, $FASTRNN_NVCC or $CUDA_HOME/bin)")  # fmt: skip
    if not torch.cuda.is_available():
        return "the cluster tier needs a CUDA GPU of compute capability 9.0 (H100/H200); there is no CUDA device"
    index = _device_index(torch.device(device or "cuda"))
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) != (9, 0):
        return (f"the cluster tier needs compute capability 9.0 (sm_90a: H100/H200); "
                f"{torch.cuda.get_device_name(index)} is {major}.{minor}")  # fmt: skip
    return None


def unsupported(
    mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, interpreted: bool = False, release: Any = None
) -> str | None:
    """Why the cluster tier cannot run this layer (``None``: it can), in one line (``release``: a
    Triton release's limits, which do not apply to this tier); what the machine lacks is
    :func:`device_unsupported`'s.

    Example::

        unsupported("LSTM", 256, 0, torch.float16)  # None
        unsupported("LSTM", 100, 0, torch.float16)  # 'the cluster tier needs hidden_size a multiple of 16, got 100'
    """
    why = _static_reason(mode, hidden_size, proj_size, dtype)
    if why:
        return why
    if interpreted:
        return "the cluster tier runs compiled CUDA kernels only, not Triton's interpreter (CPU tensors)"
    return None


def describe(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> str:
    c = cluster_size(hidden_size)
    return f"tier 4: W_hh split over a cluster of {c} CTAs ({hidden_size // c} hidden units each), h through DSMEM"


def config(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, kernel: str = "fwd",
           smem_bytes: int | None = None, precision: Any = None) -> ClusterConfig:  # fmt: skip
    """The launch configuration (batch tile 16; a launch with 8 or fewer sequences per free cluster
    takes 8: :func:`batch_tile_for`).  ``precision`` (of fp32 dots) does not apply: 16-bit only."""
    why = _static_reason(mode, hidden_size, proj_size, dtype)
    if why:
        raise ValueError(why)
    limit = SMEM_LIMIT if smem_bytes is None else min(SMEM_LIMIT, smem_bytes)
    try:
        return choose_config(mode, hidden_size, dtype, kernel, 16, limit)
    except ValueError:  # no layout of 16 sequences fits one SM (e.g. LSTM H = 768 backward): 8
        return choose_config(mode, hidden_size, dtype, kernel, 8, limit)


# ---------------------------------------------------------------------------------------------
# The build: nvcc to a cubin, cached on disk


def cache_dir() -> Path:
    """Where compiled cubins (and simulators) are kept: ``$FASTRNN_CUDA_CACHE`` or
    ``~/.cache/fastrnn/cuda``."""
    return Path(os.environ.get("FASTRNN_CUDA_CACHE") or Path.home() / ".cache" / "fastrnn" / "cuda")


@functools.cache
def _tool_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def _cuda_sources_digest(directory: Path | None = None) -> bytes:
    h = hashlib.sha256()
    for name in CUDA_SOURCES:
        h.update(name.encode() + b"\0" + (Path(directory or CUDA_DIR) / name).read_bytes())
    return h.digest()


@functools.cache
def sources_hash() -> str:
    """16 hex digits of SHA-256 over the CUDA sources and this file: the tier's sources, which the
    verification record names (read once a process)."""
    h = hashlib.sha256(_cuda_sources_digest())
    h.update(b"cluster.py\0" + Path(__file__).read_bytes())
    return h.hexdigest()[:16]


NVCC_FLAGS = ("-cubin", f"-arch={ARCH}", "-O3", "-std=c++17", "-Xptxas", "-v")


@dataclass(frozen=True)
class Build:
    """A compiled configuration: its cubin and what ptxas said."""

    cubin: bytes
    ptxas_log: str
    path: Path
    seconds: float
    cached: bool


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def compile_cubin(cfg: ClusterConfig, nvcc: str | None = None) -> Build:
    """The cubin of ``cfg`` (compiled now, or from the disk cache)."""
    cfg.check()
    nvcc = nvcc or nvcc_path()
    if nvcc is None:
        raise RuntimeError("fastrnn cluster tier: no nvcc found (PATH, $FASTRNN_NVCC or $CUDA_HOME/bin)")
    key = hashlib.sha256(
        _cuda_sources_digest() + "\0".join([*cfg.defines(), *NVCC_FLAGS, _tool_version(nvcc)]).encode()
    ).hexdigest()[:24]
    path = cache_dir() / f"{cfg.name()}-{key}.cubin"
    log_path = path.with_suffix(".log")
    if path.exists() and log_path.exists():
        return Build(path.read_bytes(), log_path.read_text(), path, 0.0, True)
    import time

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kernel.cubin"
        argv = [nvcc, *NVCC_FLAGS, f"-I{CUDA_DIR}", *cfg.defines(), str(CUDA_DIR / "cluster_entry.cu"), "-o", str(out)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed for {cfg.name()}:\n{proc.stderr[-4000:]}")
        cubin = out.read_bytes()
    seconds = time.perf_counter() - start
    _atomic_write(path, cubin)
    _atomic_write(log_path, proc.stderr.encode())
    return Build(cubin, proc.stderr, path, seconds, False)


# ---------------------------------------------------------------------------------------------
# The host simulator


class Params(ctypes.Structure):
    """``fr::Params`` of ``cluster_common.cuh`` (checked against the C++ layout by the tests)."""

    _fields_ = [
        ("x", ctypes.c_void_p), ("s_x_t", ctypes.c_int64), ("s_x_b", ctypes.c_int64),
        ("w", ctypes.c_void_p), ("bias", ctypes.c_void_p),
        ("h0", ctypes.c_void_p), ("s_h0_b", ctypes.c_int64),
        ("c0", ctypes.c_void_p), ("s_c0_b", ctypes.c_int64),
        ("lengths", ctypes.c_void_p),
        ("d_hn", ctypes.c_void_p), ("s_dhn_b", ctypes.c_int64),
        ("d_cn", ctypes.c_void_p), ("s_dcn_b", ctypes.c_int64),
        ("d_cs", ctypes.c_void_p), ("s_dcs_t", ctypes.c_int64), ("s_dcs_b", ctypes.c_int64),
        ("out_in", ctypes.c_void_p), ("s_oi_t", ctypes.c_int64), ("s_oi_b", ctypes.c_int64),
        ("saved_in", ctypes.c_void_p),
        ("out", ctypes.c_void_p), ("h_n", ctypes.c_void_p), ("c_n", ctypes.c_void_p), ("saved", ctypes.c_void_p),
        ("cs", ctypes.c_void_p),
        ("d_gx", ctypes.c_void_p), ("d_ghi", ctypes.c_void_p), ("d_h0", ctypes.c_void_p), ("d_c0", ctypes.c_void_p),
        ("status", ctypes.c_void_p),
        ("T", ctypes.c_int32), ("B", ctypes.c_int32), ("reverse", ctypes.c_int32), ("pad_", ctypes.c_int32),
    ]  # fmt: skip


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _stride(t: torch.Tensor | None, dim: int) -> int:
    return 0 if t is None else t.stride(dim)


def _bits(t: torch.Tensor | None) -> torch.Tensor | None:
    """A 16-bit tensor as its raw bits (what the kernel reads), on the same storage."""
    return None if t is None else t.view(torch.int16)


def forward_params(call: RecurrenceCall, gx: torch.Tensor, res: ForwardResult, lengths: torch.Tensor | None,
                   status: torch.Tensor | None = None) -> Params:  # fmt: skip
    """The kernel arguments of a forward launch (tensors as prepared by :func:`forward_launch`)."""
    bias = call.b_hh if cells.get(call.mode).inner_bias else None
    return Params(
        x=_ptr(gx), s_x_t=gx.stride(0), s_x_b=gx.stride(1), w=_ptr(call.w_hh), bias=_ptr(bias),
        h0=_ptr(call.h0), s_h0_b=_stride(call.h0, 0), c0=_ptr(call.c0), s_c0_b=_stride(call.c0, 0),
        lengths=_ptr(lengths), out=_ptr(res.out), h_n=_ptr(res.h_n), c_n=_ptr(res.c_n), saved=_ptr(res.saved),
        cs=_ptr(res.cs), status=_ptr(status), T=call.T, B=call.B, reverse=int(call.reverse),
    )  # fmt: skip


def backward_params(call: RecurrenceCall, grads: Gradients, res: BackwardResult, lengths: torch.Tensor | None,
                    status: torch.Tensor | None = None) -> Params:  # fmt: skip
    """The kernel arguments of a backward launch."""
    return Params(
        x=_ptr(grads.d_out), s_x_t=grads.d_out.stride(0), s_x_b=grads.d_out.stride(1), w=_ptr(call.w_hh),
        h0=_ptr(call.h0), s_h0_b=_stride(call.h0, 0), c0=_ptr(call.c0), s_c0_b=_stride(call.c0, 0),
        lengths=_ptr(lengths), d_hn=_ptr(grads.d_hn), s_dhn_b=grads.d_hn.stride(0), d_cn=_ptr(grads.d_cn),
        s_dcn_b=_stride(grads.d_cn, 0), d_cs=_ptr(grads.d_cs), s_dcs_t=_stride(grads.d_cs, 0),
        s_dcs_b=_stride(grads.d_cs, 1), out_in=_ptr(grads.out), s_oi_t=grads.out.stride(0),
        s_oi_b=grads.out.stride(1), saved_in=_ptr(grads.saved), d_gx=_ptr(res.d_gx), d_ghi=_ptr(res.d_gh_inner),
        d_h0=_ptr(res.d_h0), d_c0=_ptr(res.d_c0), status=_ptr(status), T=call.T, B=call.B,
        reverse=int(call.reverse),
    )  # fmt: skip


def host_compiler() -> str | None:
    """The C++ compiler that builds the simulator (``$CXX``, else g++ or c++ on ``PATH``)."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Simulator:
    """The host simulator built for a list of configurations (:func:`simulator`)."""

    def __init__(self, lib: ctypes.CDLL, configs: Sequence[ClusterConfig], path: Path):
        self.lib, self.configs, self.path = lib, list(configs), path
        lib.frsim_params_layout.argtypes = [ctypes.POINTER(ctypes.c_long)]
        for i in range(len(self.configs)):
            fn = getattr(lib, f"frsim_run_{i}")
            fn.argtypes = [ctypes.POINTER(Params), ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_int,
                           ctypes.POINTER(ctypes.c_long)]  # fmt: skip
            fn.restype = ctypes.c_int
            getattr(lib, f"frsim_smem_{i}").restype = ctypes.c_int

    def inject_timeout(self, cta: int = -1, wait: int = -1) -> None:
        """From the next run on, every thread of CTA ``cta`` finds its ``wait``-th mbarrier wait
        (1-based) timed out; ``-1``: no injection."""
        self.lib.frsim_inject_timeout(ctypes.c_int(cta), ctypes.c_long(wait))

    def params_layout(self) -> list[int]:
        """``[sizeof(Params), offsetof(field) ...]`` of the C++ struct."""
        out = (ctypes.c_long * 64)()
        n = self.lib.frsim_params_layout(out)
        return list(out[:n])

    def smem_bytes(self, cfg: ClusterConfig) -> int:
        return getattr(self.lib, f"frsim_smem_{self.configs.index(cfg)}")()

    def run(self, cfg: ClusterConfig, params: Params, clusters: int, seed: int = 0) -> int:
        """Run the kernel of ``cfg`` on host tensors; returns the number of context switches.  Raises
        ``RuntimeError`` with the simulator's finding (deadlock, race, out-of-range access)."""
        err = ctypes.create_string_buffer(512)
        switches = ctypes.c_long(0)
        rc = getattr(self.lib, f"frsim_run_{self.configs.index(cfg)}")(
            ctypes.byref(params), clusters, seed, err, len(err), ctypes.byref(switches)
        )
        if rc != 0:
            raise RuntimeError(f"cluster simulator ({cfg.name()}): {err.value.decode()}")
        return switches.value


_SIM_LOCK = threading.Lock()


def simulator(configs: Iterable[ClusterConfig], header_dir: Path | None = None, cxx: str | None = None) -> Simulator:
    """Build (or load from the cache) the host simulator of ``configs``.  ``header_dir``: take the
    CUDA headers from there instead of ``kernels/cuda`` (the tests compile mutated copies)."""
    configs = list(dict.fromkeys(configs))
    cxx = cxx or host_compiler()
    if cxx is None:
        raise RuntimeError("fastrnn cluster simulator: no C++ compiler (g++) found")
    src_dir = Path(header_dir) if header_dir is not None else CUDA_DIR
    lines = ['#include "cluster_sim.hpp"', "FR_SIM_LAYOUT()"]
    for i, cfg in enumerate(configs):
        cfg.check()
        lines.append(f"FR_SIM_CONFIG({i}, {cfg.template_args()})")
    text = "\n".join(lines) + "\n"
    flags = ["-std=c++17", "-O1", "-fPIC", "-shared", "-w"]
    h = hashlib.sha256(text.encode() + "\0".join([*flags, _tool_version(cxx)]).encode())
    for name in CUDA_SOURCES:
        h.update((src_dir / name).read_bytes())
    path = cache_dir() / f"sim-{h.hexdigest()[:24]}.so"
    with _SIM_LOCK:
        if not path.exists():
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "sim.cpp"
                src.write_text(text)
                out = Path(tmp) / "sim.so"
                proc = subprocess.run([cxx, *flags, f"-I{src_dir}", str(src), "-o", str(out)], capture_output=True,
                                      text=True)  # fmt: skip
                if proc.returncode != 0:
                    raise RuntimeError(f"building the cluster simulator failed:\n{proc.stderr[-4000:]}")
                _atomic_write(path, out.read_bytes())
        return Simulator(ctypes.CDLL(str(path)), configs, path)


# ---------------------------------------------------------------------------------------------
# The CUDA driver, through ctypes


class CudaError(RuntimeError):
    """A CUDA driver call failed."""


class ExchangeTimeout(RuntimeError):
    """A cluster's exchange did not complete in time (the outputs are NaN); raised only when
    ``FASTRNN_CLUSTER_CHECK=1`` asks the launcher to read the kernel's status (one host sync)."""


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: id, 4 bytes of padding, a 64-byte union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint * 16)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [
        ("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
        ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
        ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_LaunchAttribute)), ("numAttrs", ctypes.c_uint),
    ]  # fmt: skip


CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14
CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4
KERNEL_NAME = b"fastrnn_cluster"


class _Driver:
    """The few driver API calls the tier makes (``libcuda.so.1``)."""

    def __init__(self, library: str = "libcuda.so.1") -> None:
        try:
            self.lib = ctypes.CDLL(library)
        except OSError as exc:
            raise CudaError(f"the CUDA driver library {library} could not be loaded: {exc}") from None
        self.call("cuInit", ctypes.c_uint(0))
        self._contexts: dict[int, ctypes.c_void_p] = {}

    def call(self, name: str, *args) -> None:
        fn = getattr(self.lib, name)
        fn.restype = ctypes.c_int
        rc = fn(*args)
        if rc != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(rc, ctypes.byref(text))
            raise CudaError(f"{name} failed: {text.value.decode() if text.value else 'error'} ({rc})")

    def context(self, device_index: int) -> ctypes.c_void_p:
        """The device's primary context (the one torch's runtime uses)."""
        if device_index not in self._contexts:
            dev = ctypes.c_int()
            self.call("cuDeviceGet", ctypes.byref(dev), ctypes.c_int(device_index))
            ctx = ctypes.c_void_p()
            self.call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
            self._contexts[device_index] = ctx
        return self._contexts[device_index]

    @contextlib.contextmanager
    def current(self, device_index: int):
        self.call("cuCtxPushCurrent_v2", self.context(device_index))
        try:
            yield
        finally:
            self.call("cuCtxPopCurrent_v2", ctypes.byref(ctypes.c_void_p()))


@functools.cache
def _driver() -> _Driver:
    return _Driver()


def _launch_config(cfg: ClusterConfig, grid: int, stream: int) -> tuple[_LaunchConfig, _LaunchAttribute]:
    attr = _LaunchAttribute()
    attr.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    attr.value[0], attr.value[1], attr.value[2] = cfg.cluster, 1, 1
    lc = _LaunchConfig(grid, 1, 1, cfg.threads, 1, 1, cfg.smem_bytes, ctypes.c_void_p(stream), ctypes.pointer(attr), 1)
    return lc, attr


class ClusterKernel:
    """A configuration's kernel on one device.  ``kernel[grid](params, keep)`` launches it on torch's
    current stream (the shape :class:`~.common.Launch` runs); ``keep`` holds the tensors behind the
    params until the launch is queued."""

    def __init__(self, cfg: ClusterConfig, device_index: int):
        self.cfg, self.device_index = cfg, device_index
        self._function: ctypes.c_void_p | None = None
        self._lock = threading.Lock()

    def function(self) -> ctypes.c_void_p:
        with self._lock:
            if self._function is None:
                build = compile_cubin(self.cfg)
                drv = _driver()
                with drv.current(self.device_index):
                    module, fn = ctypes.c_void_p(), ctypes.c_void_p()
                    self._image = ctypes.create_string_buffer(build.cubin, len(build.cubin))
                    drv.call("cuModuleLoadData", ctypes.byref(module), self._image)
                    drv.call("cuModuleGetFunction", ctypes.byref(fn), module, KERNEL_NAME)
                    drv.call("cuFuncSetAttribute", fn, ctypes.c_int(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES),
                             ctypes.c_int(self.cfg.smem_bytes))  # fmt: skip
                    if self.cfg.cluster > 8:
                        drv.call("cuFuncSetAttribute", fn,
                                 ctypes.c_int(CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED), ctypes.c_int(1))  # fmt: skip
                self._module, self._function = module, fn
            return self._function

    def max_active_clusters(self) -> int:
        """How many clusters of this kernel the device runs at once (``cuOccupancyMaxActiveClusters``)."""
        fn = self.function()
        lc, attr = _launch_config(self.cfg, self.cfg.cluster, 0)
        n = ctypes.c_int()
        with _driver().current(self.device_index):
            _driver().call("cuOccupancyMaxActiveClusters", ctypes.byref(n), fn, ctypes.byref(lc))
        return n.value

    def __getitem__(self, grid: tuple[int, ...]):
        return functools.partial(self.launch, grid)

    def launch(
        self, grid: tuple[int, ...], params: Params, keep: Any = None, status: torch.Tensor | None = None
    ) -> None:
        fn = self.function()
        stream = torch.cuda.current_stream(self.device_index).cuda_stream
        lc, attr = _launch_config(self.cfg, grid[0], stream)
        args = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(params), ctypes.c_void_p))
        with _driver().current(self.device_index):
            _driver().call("cuLaunchKernelEx", ctypes.byref(lc), fn, args, None)
        if status is not None:
            torch.cuda.synchronize(self.device_index)
            if int(status.item()) != 0:
                raise ExchangeTimeout(f"{self.cfg.name()}: a cluster exchange timed out; the outputs are NaN")


_KERNELS: dict[tuple[ClusterConfig, int], ClusterKernel] = {}
_ACTIVE_CLUSTERS: dict[tuple[ClusterConfig, int], int] = {}


def kernel(cfg: ClusterConfig, device_index: int) -> ClusterKernel:
    """The (lazily compiled and loaded) kernel of ``cfg`` on a device."""
    key = (cfg, device_index)
    if key not in _KERNELS:
        _KERNELS[key] = ClusterKernel(cfg, device_index)
    return _KERNELS[key]


def batch_tile_for(cfg: ClusterConfig, batch: int, device_index: int) -> ClusterConfig:
    """Tiles of 8 sequences (half the work per CTA) when the device runs all of the batch's clusters
    at once, else the configuration's own 16 (a layer with no layout of 16 always takes 8)."""
    if cfg.batch_tile == 8:
        return cfg
    small = cfg.with_batch_tile(8)
    if batch <= 8:
        return small
    key = (small, device_index)
    if key not in _ACTIVE_CLUSTERS:
        _ACTIVE_CLUSTERS[key] = kernel(small, device_index).max_active_clusters()
    return small if -(-batch // 8) <= _ACTIVE_CLUSTERS[key] else cfg


def _checking() -> bool:
    return os.environ.get("FASTRNN_CLUSTER_CHECK", "0") not in ("", "0")


def _check_call(call: RecurrenceCall) -> None:
    if call.mode not in CELL_IDS or call.w_hr is not None or call.params is not None or call.zoneout is not None:
        raise ValueError(f"the cluster tier runs {', '.join(CELL_IDS)} without projection, parameters or zoneout")
    if call.device.type != "cuda":
        raise RuntimeError("the cluster tier runs on CUDA tensors only")


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def forward_launch(call: RecurrenceCall, gx: torch.Tensor, cfg: ClusterConfig) -> tuple[Launch | None, ForwardResult]:
    """The launch of one layer/direction's forward and its (allocated, unwritten) outputs; no launch
    when there is nothing to compute."""
    res = ForwardResult(**allocate(forward_shapes(call), lambda shape, dt: _runtime.empty(shape, dt, gx.device)))
    if call.empty:
        return None, res
    _check_call(call)
    dev = _device_index(gx.device)
    cfg = batch_tile_for(cfg, call.B, dev)
    gx = row_major(gx)
    bias = call.b_hh.contiguous() if call.b_hh is not None and call.cell.inner_bias else None
    lengths = call.lengths.to(device=gx.device, dtype=torch.int64).contiguous() if call.lengths is not None else None
    call = dataclasses.replace(call, w_hh=call.w_hh.contiguous(), h0=row_major(call.h0), c0=row_major(call.c0),
                               b_hh=bias)  # fmt: skip
    status = torch.zeros(1, dtype=torch.int32, device=gx.device) if _checking() else None
    params = forward_params(call, gx, res, lengths, status)
    keep = (gx, call, lengths, res)
    grid = (cfg.cluster * -(-call.B // cfg.batch_tile),)
    return Launch(kernel(cfg, dev), grid, (params, keep, status), {}, "cluster_fwd"), res


def forward(call: RecurrenceCall, gx: torch.Tensor, cfg: ClusterConfig) -> ForwardResult:
    """Run one layer/direction's forward: ``out`` (T, B, H), ``h_n``, ``c_n`` and what the call asks
    for (the saved tensors, every step's ``c_t``), as :func:`~.call.forward_shapes` states them."""
    return run_forward(*forward_launch(call, gx, cfg), call)


def backward_launch(call: RecurrenceCall, grads: Gradients, cfg: ClusterConfig) -> tuple[Launch | None, BackwardResult]:
    """The launch of the reverse-time pass and its (allocated, unwritten) outputs."""
    dev_t = grads.out.device
    res = BackwardResult(**allocate(backward_shapes(call), lambda shape, dt: _runtime.empty(shape, dt, dev_t)))
    if call.empty:
        return None, res
    _check_call(call)
    dev = _device_index(dev_t)
    cfg = batch_tile_for(cfg, call.B, dev)
    lengths = call.lengths.to(device=dev_t, dtype=torch.int64).contiguous() if call.lengths is not None else None
    d_cs = row_major(grads.d_cs) if call.cell.has_cell_state else None
    grads = dataclasses.replace(grads, d_out=row_major(grads.d_out), d_hn=row_major(grads.d_hn),
                                d_cn=row_major(grads.d_cn), d_cs=d_cs, out=row_major(grads.out),
                                saved=grads.saved.contiguous() if grads.saved is not None else None)  # fmt: skip
    call = dataclasses.replace(call, w_hh=call.w_hh.contiguous(), h0=row_major(call.h0), c0=row_major(call.c0))
    status = torch.zeros(1, dtype=torch.int32, device=dev_t) if _checking() else None
    params = backward_params(call, grads, res, lengths, status)
    keep = (grads, call, lengths, res)
    grid = (cfg.cluster * -(-call.B // cfg.batch_tile),)
    return Launch(kernel(cfg, dev), grid, (params, keep, status), {}, "cluster_bwd"), res


def backward(call: RecurrenceCall, grads: Gradients, cfg: ClusterConfig) -> BackwardResult:
    """The reverse-time pass: ``d_gx`` (T, B, G*H), GRU's ``d_gh_inner``, ``d_h0``, ``d_c0`` in fp32,
    zero at padding (:func:`~.call.backward_shapes`); weight gradients stay GEMMs in ``fastrnn.ops``."""
    return run_backward(*backward_launch(call, grads, cfg), grads)


# ---------------------------------------------------------------------------------------------
# The kernel report's rows: resources and SASS facts of each configuration


def cuda_tool(name: str) -> str | None:
    """A CUDA binary tool (``cuobjdump``, ``nvdisasm``): beside nvcc, else the copy Triton ships."""
    nvcc = nvcc_path()
    if nvcc is not None and os.access(Path(nvcc).parent / name, os.X_OK):
        return str(Path(nvcc).parent / name)
    from .report.sass import nvidia_tool

    return nvidia_tool(name)


def step_facts(sass: str) -> dict[str, Any]:
    """What one step of the time loop (the outermost loop with tensor-core instructions) executes,
    read from the SASS: instruction counts, local-memory traffic, and the mbarrier waits (try-wait
    instructions grouped by the barrier address they poll: one wait, however the compiler splits its
    spin loop)."""
    from .report.sass import sass_instructions

    insts, loops = sass_instructions(sass)
    with_mma = [(s, e) for s, e in loops if any(s <= a <= e and op == "HMMA" for a, op, _ in insts)]
    if not with_mma:
        return dict(time_loop=None)
    start, end = max(with_mma, key=lambda se: se[1] - se[0])
    body = [(op, operands) for a, op, operands in insts if start <= a <= end]
    count = lambda *ops: sum(1 for op, _ in body if op in ops)
    # SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R54+URZ], R52: opcode SYNCS, the rest in the operands
    try_waits = [operands for op, operands in body if op == "SYNCS" and "PHASECHK" in operands]
    polled = {operands.split("[", 1)[1].split("]", 1)[0] for operands in try_waits}
    return dict(
        time_loop=(start, end),
        hmma=count("HMMA"),
        ldsm=count("LDSM"),
        mbarrier_waits=len(polled),
        try_wait_insts=len(try_waits),
        expect_tx=sum(1 for op, operands in body if op == "SYNCS" and "ARRIVE" in operands),
        cta_barriers=count("BAR"),
        cluster_barriers=count("UCGABAR_ARV", "UCGABAR_WAIT"),
        st_async=count("STAS"),
        mufu=count("MUFU"),
        global_loads=count("LDG"),
        global_stores=count("STG"),
        loop_local_insts=count("LDL", "STL"),
    )


def analyse(cfg: ClusterConfig, build: Build) -> dict[str, Any]:
    """Registers, stack, spills, shared memory and the time loop's SASS facts of one build."""
    cuobjdump, nvdisasm = cuda_tool("cuobjdump"), cuda_tool("nvdisasm")
    if cuobjdump is None or nvdisasm is None:
        raise RuntimeError("the cluster tier's report needs cuobjdump and nvdisasm (beside nvcc, or Triton's copies)")
    from .report.sass import ptxas_spills, resource_usage, sass_instructions

    res = subprocess.run([cuobjdump, "-res-usage", str(build.path)], capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([nvdisasm, "-c", str(build.path)], capture_output=True, text=True, check=True).stdout
    regs, stack, static_shared, local = resource_usage(res, KERNEL_NAME.decode())
    spill_stores, spill_loads = ptxas_spills(build.ptxas_log)
    ops = [op for _, op, _ in sass_instructions(sass)[0]]
    return dict(
        registers=regs,
        stack_bytes=stack,
        local_bytes=local,
        static_shared=static_shared,
        spill_stores=spill_stores,
        spill_loads=spill_loads,
        local_insts=sum(op in ("LDL", "STL") for op in ops),
        cluster_dims=".reqnctapercluster" in sass or None,
        **step_facts(sass),
    )


def report_configs(full: bool = False, every_size: bool = False) -> list[ClusterConfig]:
    """The configurations the report compiles: fp16 LSTM, GRU and tanh RNN at H 128-768 (176 and
    336: clusters of 11 and 7 CTAs), both directions, both batch tiles; ``full``: every cell and
    both dtypes; ``every_size``: also every hidden size the tier takes (fp16, the three cells: bf16
    and relu compile to the same resources)."""
    modes = tuple(CELL_IDS) if full else ("RNN_TANH", "GRU", "LSTM")
    dtypes = tuple(DTYPE_NAMES) if full else (torch.float16,)
    wanted = [(mode, dtype, hidden) for mode in modes for dtype in dtypes for hidden in (128, 176, 256, 336, 512, 768)]
    if every_size:
        wanted += [(mode, torch.float16, hidden) for mode in ("RNN_TANH", "GRU", "LSTM")
                   for hidden in supported_sizes(mode, torch.float16)]  # fmt: skip
    out: list[ClusterConfig] = []
    for mode, dtype, hidden in wanted:
        if _static_reason(mode, hidden, 0, dtype):
            continue
        for kernel_ in ("fwd", "bwd"):
            for bt in (8, 16):
                if layouts(mode, hidden, dtype, kernel_, bt):
                    out.append(choose_config(mode, hidden, dtype, kernel_, bt))
    return list(dict.fromkeys(out))


def report_row(cfg: ClusterConfig) -> dict[str, Any]:
    """One configuration as a kernel-report row (the keys of ``fastrnn.kernels.report``'s rows, plus the
    cluster's own: ``cluster``, ``waits_per_step``, ``cluster_barriers_per_step``, ...)."""
    import time

    row: dict[str, Any] = dict(
        tier=NUMBER, kernel=cfg.kernel, cell=cfg.mode, dtype=cfg.dtype, hidden_size=cfg.hidden_size, P=0,
        arch=90, variant=f"tier4,bt{cfg.batch_tile},c{cfg.cluster}", block_b=cfg.batch_tile, num_warps=cfg.num_warps,
        cluster=cfg.cluster, config=cfg.name(), weight_bytes=cfg.M * cfg.K * 2,
        register_weight_bytes=cfg.register_fragment_bytes, smem_weight_bytes=cfg.layout()["w_bytes"],
        shared_limit=SMEM_LIMIT, exchange_bytes=cfg.exchange_bytes, reduce=cfg.reduce, error=None,
    )  # fmt: skip
    start = time.perf_counter()
    try:
        build = compile_cubin(cfg)
        facts = analyse(cfg, build)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return row
    row.update(facts)
    row["compile_s"] = round(build.seconds if not build.cached else time.perf_counter() - start, 2)
    row["shared_bytes"] = facts["static_shared"] + cfg.smem_bytes
    row["shared_ok"] = row["shared_bytes"] <= SMEM_LIMIT
    row["regs_ok"] = facts["registers"] <= register_cap(cfg.num_warps)
    row["spills"] = bool(facts["stack_bytes"] or facts["local_insts"] or facts["spill_stores"])
    row["loop_spills"] = facts.get("loop_local_insts", 0) > 0
    row["tensor_core_ops"] = {"HMMA": facts.get("hmma", 0)}
    row["tensor_cores"] = facts.get("hmma", 0) > 0
    row["step_mma"] = cfg.MTW * cfg.KSW * cfg.NT  # mma.sync per warp per step
    row["step_bars"] = facts.get("cta_barriers")
    row["waits_per_step"] = facts.get("mbarrier_waits")
    # the design: one mbarrier wait and two __syncthreads a step; a cluster of one CTA exchanges
    # through its own shared memory (st.async needs two CTAs): no wait, a third __syncthreads
    row["planned_waits"] = 1 if cfg.cluster > 1 else 0
    row["planned_cta_barriers"] = 2 if cfg.cluster > 1 else 3
    row["cluster_barriers_per_step"] = facts.get("cluster_barriers")
    row["loop_loads"] = facts.get("global_loads")
    row["loads_ahead"] = "-"
    row["est_us"] = predict_step(cfg)["us"]
    return row


def _as_cluster_config(cfg: Any) -> ClusterConfig:
    """A :class:`ClusterConfig`, or the kernel report's row description (``kernel``, ``cell`` or
    ``mode``, ``dtype`` as "fp16"/"bf16", ``hidden_size``, ``block_b``) turned into this tier's
    configuration of that layer."""
    if isinstance(cfg, ClusterConfig):
        return cfg
    mode = getattr(cfg, "mode", None) or cfg.cell
    dtype = TORCH_DTYPES[cfg.dtype] if isinstance(cfg.dtype, str) else cfg.dtype
    bt = getattr(cfg, "block_b", None) or 16
    if not layouts(mode, cfg.hidden_size, dtype, cfg.kernel, bt):
        bt = 8
    return choose_config(mode, cfg.hidden_size, dtype, cfg.kernel, bt)


def report_rows(configs: Iterable[Any] | None = None, jobs: int = 2) -> list[dict[str, Any]]:
    """Rows of the kernel report for ``configs`` (:class:`ClusterConfig`, or the report's own row
    descriptions; default :func:`report_configs`), compiled with ``jobs`` nvcc processes at once
    (cached on disk: a second run reads the cubins)."""
    from concurrent.futures import ThreadPoolExecutor

    configs = [_as_cluster_config(c) for c in configs] if configs is not None else report_configs()
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(report_row, configs))


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (kernels/NOTES.md section 8)."""
    head = ["cell", "dtype", "H", "kernel", "BT", "C", "warps", "W KiB/CTA (regs+smem)", "regs", "stack/spill B",
            "smem KiB", "LDL/STL in loop", "waits/step", "cluster bar/step", "bar.sync/step", "HMMA/step/warp",
            "exchange KiB in/step", "pred us/step"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['cell']} | {r['dtype']} | {r['hidden_size']} | {r['kernel']} | {r['block_b']} | "
                         f"{r['cluster']} | {r['num_warps']} | | ERROR {r['error'][:60]} |" + " |" * 9)  # fmt: skip
            continue
        w = f"{r['weight_bytes'] / 1024:.0f} ({r['register_weight_bytes'] / 1024:.0f}+{r['smem_weight_bytes'] / 1024:.0f})"
        kernel_ = r["kernel"] + (" (reduce)" if r.get("reduce") else " (gather)" if r["kernel"] == "bwd" else "")
        cells_ = [r["cell"], r["dtype"], r["hidden_size"], kernel_, r["block_b"], r["cluster"], r["num_warps"], w,
                  r["registers"], f"{r['stack_bytes']}/{r['spill_stores']}", f"{r['shared_bytes'] / 1024:.1f}",
                  r["loop_local_insts"], r["waits_per_step"], r["cluster_barriers_per_step"], r["step_bars"],
                  r["step_mma"], f"{r['exchange_bytes'] / 1024:.1f}", r["est_us"]]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells_) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The verification record: the tier turns automatic on a GPU architecture only after its
# correctness tests passed there on these very sources

VERIFIED_PATH = HERE / "verified.json"


def _capability(device: torch.device | int | None) -> tuple[str, str]:
    """``(name, "major.minor")`` of a CUDA device."""
    index = device if isinstance(device, int) else _device_index(torch.device(device or "cuda"))
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def load_verified(path: Path | None = None) -> list[dict[str, Any]]:
    """The records of the verification file (none when it does not exist)."""
    path = Path(path) if path is not None else VERIFIED_PATH
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("records", []))


def verification(device: torch.device | int | None = None, path: Path | None = None,
                 capability: str | None = None) -> tuple[bool, str]:  # fmt: skip
    """``(verified, why)``: whether a GPU of ``device``'s compute capability passed the tier's
    correctness tests with these sources (:func:`sources_hash`).  ``capability`` (``"9.0"``) instead
    of a device: ask without one.  The tier's :attr:`~.tiers.Tier.verified`: until this is true
    for a GPU, the tier runs there only when forced."""
    if capability is None:
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        _, capability = _capability(device)
    current = sources_hash()
    records = [r for r in load_verified(path) if r.get("tier") == NUMBER]
    same = [r for r in records if r.get("capability") == capability]
    for r in same:
        if r.get("kernel_hash") == current:
            return True, (f"tier {NUMBER} verified on {r.get('gpu')} (compute capability {capability}) on "
                          f"{r.get('date')}, sources {current}")  # fmt: skip
    if same:
        return False, (f"tier {NUMBER} was verified on compute capability {capability} with other sources "
                       f"({', '.join(sorted({str(r.get('kernel_hash')) for r in same}))}; now {current})")  # fmt: skip
    return False, f"tier {NUMBER} has not been verified on compute capability {capability}"


def record_verification(device: torch.device | int | None = None, path: Path | None = None,
                        gpu: str | None = None, capability: str | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """Add (or replace) the record of this tier, these sources and ``device``'s compute capability
    to the verification file; returns the record.  Called by the GPU check after the tier's
    correctness tests passed."""
    if gpu is None or capability is None:
        gpu, capability = _capability(device)
    path = Path(path) if path is not None else VERIFIED_PATH
    record = dict(tier=NUMBER, name=TIER_NAME, kernel_hash=sources_hash(), gpu=gpu, capability=capability,
                  date=datetime.date.today().isoformat(), **extra)  # fmt: skip
    doc = json.loads(path.read_text()) if path.exists() else {}
    records = [r for r in doc.get("records", [])
               if not (r.get("tier") == NUMBER and r.get("capability") == capability)]  # fmt: skip
    doc["records"] = [*records, record]
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return record


# ---------------------------------------------------------------------------------------------
# Registration: automatic (between tier 1 and tier 2) on a GPU where it is verified, else forced
# only (FASTRNN_TIER=4)

TIER_NAME = "thread-block cluster (CUDA)"

tiers.register(
    tiers.Tier(
        number=NUMBER,
        name=TIER_NAME,
        rank=1.5,
        config_type=ClusterConfig,
        unsupported=unsupported,
        device_unsupported=device_unsupported,
        config=config,
        describe=describe,
        forward=forward,
        backward=backward,
        forward_launch=forward_launch,
        backward_launch=backward_launch,
        report_rows=report_rows,
        device_sources=DEVICE_SOURCES,
        verified=verification,
        barriers_per_step=0,
    )
)
