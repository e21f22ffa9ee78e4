"""Kernel report: compile the recurrence kernels (tier 1, and tiers 2/3 of ``multi.py``) for
sm_90 / sm_80 on a machine without a GPU.

Each configuration is compiled with Triton's own toolchain (``triton.compile`` of an
``ASTSource`` for a ``GPUTarget``) into a real cubin, which is then read with the CUDA tools that
ship inside Triton (``cuobjdump -res-usage`` and ``nvdisasm``):

* registers per thread, stack frame bytes and ptxas' spill store/load bytes,
* local-memory instructions in the SASS (``LDL``/``STL``), and how many sit inside a loop: ptxas
  sometimes parks a few bytes on the stack before/after the time loop (at register-occupancy
  cliffs), which costs nothing per step; local memory inside the loop is a real spill,
* shared memory (``compiled.metadata.shared``: static and dynamic, which cuobjdump does not show),
* tensor-core instructions (``HMMA``/``HGMMA``/``DMMA``/...), and the compile time.

The kernel arguments are not written down here a second time: the launchers build every launch
as data (:func:`~fastrnn.kernels.recurrent.forward_launch`, ``backward_launch`` and their tier-2/3
twins in ``multi.py``, with the configuration of :func:`~fastrnn.kernels.tiers.plan`); the report
asks them for it on ``meta`` tensors, so it sees exactly the positional arguments, flags
(``HAS_H0``, ``SAVE``, ...) and constexprs a real launch passes.  Triton's own binder then turns them into the
``signature``/``constexprs``/``attrs`` the JIT would use (its value-1 and divisible-by-16
specialisation, honouring the kernel's ``do_not_specialize``).

Command line (``python -m fastrnn.kernels.report --help``)::

    python -m fastrnn.kernels.report                       # heaviest variant, every cell/dtype
    python -m fastrnn.kernels.report --variants all --jobs 2
    python -m fastrnn.kernels.report --beyond-limit --num-warps 4 8 --hidden 128 256
    python -m fastrnn.kernels.report --tiers 2 3 --hidden 128 1024 --arch 90   # tiers 2 and 3

Compiling needs real ``JITFunction`` kernels, so :func:`compile_report` compiles in worker
subprocesses started with ``TRITON_INTERPRET=0`` (this process may interpret, see
:mod:`._runtime`); a compiler crash (LLVM assertions abort the process) then costs only the row
of its config.  Works with triton 3.6 and 3.9.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import os
import queue
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from . import cells, tiers
from .call import Gradients, RecurrenceCall
from .common import pow2

#: Shared memory one block may use (opt-in maximum), bytes.  H100: 227 KB; A100: 163 KB.
SHARED_LIMIT: dict[int, int] = {90: 227 * 1024, 80: 163 * 1024}

#: Cells of the report: name -> torch.nn mode string.  LSTMP is an LSTM with ``proj_size``.
CELLS: dict[str, str] = {
    "RNN_TANH": "RNN_TANH",
    "RNN_RELU": "RNN_RELU",
    "LSTM": "LSTM",
    "GRU": "GRU",
    "LSTMP": "LSTM",
}

#: Cells beyond torch.nn (``--cells LN_LSTM LN_GRU``): compiled on request, not by default
#: (``tests/test_kernel_report.py`` compiles them at their own limits in a sweep of their own).
#: Their launches carry the heaviest options: parameters and a per-step zoneout mask.
EXTRA_CELLS: dict[str, str] = {"LN_LSTM": "LN_LSTM", "LN_GRU": "LN_GRU"}

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}

#: The kernels of every tier: the forward and the backward.
KERNELS = ("fwd", "bwd")

_TENSOR_CORE_OPS = ("HGMMA", "HMMA", "DMMA", "IMMA", "QGMMA", "IGMMA", "UTCMMA")
_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s*(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(.*)$")
_SASS_LABEL = re.compile(r"^(\.L_x_\d+):")
_SASS_BRANCH_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_RES_USAGE = re.compile(r"Function\s+(\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass(frozen=True)
class KernelConfig:
    """One tier-1 kernel compile: which kernel, cell, dtype, size, variant and target.

    ``num_warps``/``block_b`` of ``None`` mean "what ``tiers.tier1_config`` picks" (the default); an
    integer overrides it, for exploring (the launcher itself is still what builds the call).
    ``proj_size`` is LSTMP's projection size (0: ``hidden_size // 2``); other cells ignore it.
    """

    kernel: str  # "fwd" or "bwd"
    cell: str  # key of CELLS
    dtype: str  # key of DTYPES
    hidden_size: int
    arch: int = 90  # compute capability: 90 (H100) or 80 (A100)
    varlen: bool = False  # per-sequence lengths (packed sequences)
    reverse: bool = False  # reverse direction of a bidirectional layer
    has_h0: bool = False  # initial state given (h0, and c0 for LSTM)
    save: bool = True  # forward saves what backward needs (training); False: inference
    batch: int = 64  # the launch's B (T is 8): only the strides of sizes not multiples of 16 depend on it
    num_warps: int | None = None
    block_b: int | None = None
    allow_tf32: bool = False
    proj_size: int = 0
    tier: int = 1  # 1: recurrent.py; 2 (persistent, grid barrier) or 3 (per step): multi.py
    split_k: int | None = None  # override the configuration's SPLIT_K
    resident: bool | None = None  # tiers 2/3: override the configuration's resident/streamed choice
    states: bool = False  # return_states: the forward stores every step's c_t, the backward reads its gradient

    @property
    def mode(self) -> str:
        """The registered mode of this cell (``torch.nn``'s mode string for its cells)."""
        return CELLS.get(self.cell) or EXTRA_CELLS[self.cell]

    @property
    def proj(self) -> int:
        """The LSTM projection size the layer has (0: none)."""
        if self.cell != "LSTMP":
            return 0
        proj = self.proj_size or max(1, self.hidden_size // 2)
        if not 0 < proj < self.hidden_size:
            raise ValueError(f"proj_size must be in (0, hidden_size), got {proj} for hidden_size {self.hidden_size}")
        return proj

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def variant(self) -> str:
        """Short name of the variant flags, e.g. ``varlen,rev,h0``."""
        flags = [f"tier{self.tier}"] if self.tier != 1 else []
        flags += [("varlen" if self.varlen else "dense"), ("rev" if self.reverse else "fwd")]
        if self.has_h0:
            flags.append("h0")
        if self.kernel == "fwd" and not self.save:
            flags.append("nosave")
        if self.allow_tf32:
            flags.append("tf32")
        if self.split_k:
            flags.append(f"split{self.split_k}")
        if self.resident is not None:
            flags.append("res" if self.resident else "stream")
        if self.states:
            flags.append("states")
        return ",".join(flags)

    def tier1_unsupported(self) -> str | None:
        """Why tier 1 refuses this size (``None``: it accepts it)."""
        return tiers.tier1_unsupported(self.mode, self.hidden_size, self.proj, self.torch_dtype)


def tier1_configs(
    cells: Sequence[str] = tuple(CELLS),
    dtypes: Sequence[str] = ("fp32", "bf16", "fp16", "fp64"),
    hidden_sizes: Sequence[int] = (32, 64, 128, 256),
    archs: Sequence[int] = (90, 80),
    kernels: Sequence[str] = ("fwd", "bwd"),
    variants: str = "heaviest",
    num_warps: Sequence[int | None] = (None,),
    block_b: Sequence[int | None] = (None,),
    beyond_limit: bool = False,
    batch: int = 64,
    proj_sizes: Sequence[int] = (0,),
    tf32: bool = False,
    split_k: Sequence[int | None] = (None,),
) -> list[KernelConfig]:
    """The configurations to compile.

    Args:
        variants: ``"heaviest"`` (varlen, reverse, with h0 and, forward, saving: the most live
            values), ``"default"`` (dense, forward, no h0), or ``"all"`` (every combination of
            dense/varlen, forward/reverse, with/without h0, plus inference forwards).
        num_warps, block_b: ``None`` is ``tiers.tier1_config``'s choice; integers override it.
        beyond_limit: also sizes that ``tier1_unsupported`` refuses (to find the spill frontier).
        proj_sizes: LSTMP projection sizes (0: ``hidden_size // 2``); sizes not below the hidden
            size are left out.
        tf32: also every fp32 config with ``allow_tf32=True`` (its ``tl.dot`` runs on tensor
            cores: another kernel, with its own register use).

    Example::

        cfgs = tier1_configs(cells=["LSTM"], dtypes=["bf16"], hidden_sizes=[64], archs=[90])
    """
    if variants == "heaviest":
        flag_sets = [(True, True, True, True)]
    elif variants == "default":
        flag_sets = [(False, False, False, True)]
    elif variants == "all":
        flag_sets = [(v, r, h, True) for v, r, h in itertools.product((False, True), repeat=3)]
        flag_sets.append((False, False, False, False))
    else:
        raise ValueError(f"variants must be 'heaviest', 'default' or 'all', got {variants!r}")
    out = []
    sizes = [(cell, h, p) for cell in cells for h in hidden_sizes for p in (proj_sizes if cell == "LSTMP" else (0,))]
    for (cell, hidden, proj), dtype, arch, kernel, (varlen, rev, h0, save), warps, bb, sk in itertools.product(
        dict.fromkeys(sizes), dtypes, archs, kernels, flag_sets, num_warps, block_b, split_k
    ):
        proj = (proj or max(1, hidden // 2)) if cell == "LSTMP" else 0
        if (kernel == "bwd" and not save) or proj >= hidden:
            continue  # inference has no backward; a projection is smaller than the hidden size
        cfg = KernelConfig(kernel, cell, dtype, hidden, arch, varlen, rev, h0, save, batch, warps, bb, proj_size=proj,
                           split_k=sk)  # fmt: skip
        if beyond_limit or cfg.tier1_unsupported() is None:
            out.append(cfg)
            if tf32 and dtype == "fp32":
                out.append(dataclasses.replace(cfg, allow_tf32=True))
    return list(dict.fromkeys(out))


def multi_configs(
    cells: Sequence[str] = ("RNN_TANH", "LSTM", "GRU"),
    dtypes: Sequence[str] = ("fp32", "bf16", "fp16", "fp64"),
    hidden_sizes: Sequence[int] = (128, 1024),
    archs: Sequence[int] = (90,),
    kernels: Sequence[str] = ("fwd", "bwd"),
    tiers: Sequence[int] = (2, 3),
    num_warps: Sequence[int | None] = (None,),
    batch: int = 64,
    split_k: Sequence[int | None] = (None,),
    resident: Sequence[bool | None] = (None,),
) -> list[KernelConfig]:
    """Tier-2/3 configurations (``multi.py``), heaviest variant; projected LSTMs have no tier 2/3.

    Example::

        cfgs = multi_configs(cells=["GRU"], dtypes=["bf16"], hidden_sizes=[1024], tiers=[2])
    """
    out = []
    for cell, dtype, hidden, arch, kernel, tier, warps, sk, res in itertools.product(
        cells, dtypes, hidden_sizes, archs, kernels, tiers, num_warps, split_k, resident
    ):
        if cell != "LSTMP":
            out.append(KernelConfig(kernel, cell, dtype, hidden, arch, True, True, True, True, batch, warps, tier=tier,
                                    split_k=sk, resident=res))  # fmt: skip
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# The launch, as the real launcher makes it


def _layer_tensors(cfg: KernelConfig, seq_len: int):
    """``meta`` tensors of one layer/direction as ``fastrnn.ops`` passes them for ``cfg``."""
    cell = cells.get(cfg.mode)
    H, P0, dt = cfg.hidden_size, cfg.proj, cfg.torch_dtype
    P, G, T, B = P0 or H, cell.G, seq_len, cfg.batch

    def new(*shape: int, dtype: torch.dtype = dt) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device="meta")

    return dict(
        new=new, T=T, B=B, H=H, P=P,
        gx=new(T, B, G * H), w_hh=new(G * H, P),
        h0=new(B, P) if cfg.has_h0 else None,
        c0=new(B, H) if (cfg.has_h0 and cell.has_cell_state) else None,
        lengths=new(B, dtype=torch.int64) if cfg.varlen else None,
        b_hh=new(G * H), w_hr=new(P, H) if P0 else None,
        d_cn=new(B, H) if cell.has_cell_state else None,
        d_cs=new(T, B, H) if (cfg.states and cell.has_cell_state) else None,
        ext=dict(params=new(len(cell.params) * H, dtype=torch.float64 if dt == torch.float64 else torch.float32),
                 zoneout=new(T, B, H)) if cell.extended else {},
    )  # fmt: skip


def launch_arguments(cfg: KernelConfig, seq_len: int = 8) -> tuple[object, tuple, dict]:
    """The kernel and the ``(args, kwargs)`` of the launch ``cfg`` describes, as the tier's
    launchers build it (its registered ``forward_launch``/``backward_launch``, on ``meta``
    tensors, with the launch configuration of :func:`fastrnn.kernels.tiers.plan`): the report
    compiles exactly what a real launch passes.  ``cfg.num_warps``/``block_b``/``split_k``/
    ``resident`` override the configuration's choice.  Tiers 2/3: the persistent launch (tier 2:
    ``USE_BARRIER``, cooperative) or one step (tier 3)."""
    t = _layer_tensors(cfg, seq_len)
    tier = tiers.get_tier(cfg.tier)
    config = tiers.plan(cfg.mode, cfg.hidden_size, cfg.proj, cfg.torch_dtype, cfg.tier, cfg.kernel,
                        SHARED_LIMIT.get(cfg.arch), cfg.allow_tf32).config  # fmt: skip
    if cfg.resident is not None:
        config = config.with_resident(cfg.resident, cfg.hidden_size, cfg.torch_dtype)
    overrides = dict(num_warps=cfg.num_warps, block_b=cfg.block_b, split_k=cfg.split_k)
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    call = RecurrenceCall(cfg.mode, t["T"], t["B"], t["w_hh"], t["h0"], t["c0"], t["lengths"], t["b_hh"], t["w_hr"],
                          cfg.reverse, cfg.save or cfg.kernel == "bwd", cfg.allow_tf32, cfg.states, **t["ext"])  # fmt: skip
    launch, fwd = tier.forward_launch(call, t["gx"], config)
    if cfg.kernel == "bwd":
        grads = Gradients(t["new"](t["T"], t["B"], t["P"]), t["new"](t["B"], t["P"]), t["d_cn"], t["d_cs"], fwd.out,
                          fwd.saved)  # fmt: skip
        launch, _ = tier.backward_launch(call, grads, config)
    kernel, args, kwargs = tier.compiled(launch)
    return kernel, tuple(args), kwargs


def compile_source(cfg: KernelConfig):
    """``(ASTSource, GPUTarget, options)`` for ``cfg``: what ``triton.compile`` takes.

    Uses Triton's own argument binder, so the signature, constexprs (including arguments equal
    to 1) and divisibility attributes are the ones the JIT would derive at launch time.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    kernel, args, kwargs = launch_arguments(cfg)
    if not isinstance(kernel, JITFunction):
        raise RuntimeError(
            "the kernels were built for Triton's interpreter; compile them in a process started "
            "with TRITON_INTERPRET=0 (compile_report does that for you)"
        )
    target = GPUTarget("cuda", cfg.arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), target, options.__dict__


def specialization_key(cfg: KernelConfig, seq_len: int = 8) -> str:
    """The key Triton's JIT caches the compiled kernel of this launch under (its binder's
    specialization of every argument, plus the launch options), for ``T = seq_len`` and
    ``B = cfg.batch``.  Two launches with equal keys share one compiled kernel, so counting the
    distinct keys while ``T`` and ``B`` vary counts the compiles, without compiling (works in an
    interpreting process too: the binder is built from the kernel's own ``do_not_specialize``).

    Example::

        keys = {specialization_key(dataclasses.replace(cfg, batch=b), t) for t in (1, 9) for b in (1, 33)}
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    kernel, args, kwargs = launch_arguments(cfg, seq_len)
    if not isinstance(kernel, JITFunction):  # triton.jit under TRITON_INTERPRET=1 keeps its options
        kernel = JITFunction(kernel.fn, **kernel.kwargs)
    backend = make_backend(GPUTarget("cuda", cfg.arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    _, specialization, options = binder(*args, **kwargs)
    return str(specialization) + str(options)


# ---------------------------------------------------------------------------------------------
# Reading the cubin


def nvidia_tool(name: str) -> str | None:
    """Path of a CUDA tool shipped with Triton (``ptxas``, ``cuobjdump``, ``nvdisasm``), or ``None``."""
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    return None


def missing_tools() -> list[str]:
    """The CUDA tools the report needs that are not available here (empty: all present)."""
    return [name for name in ("ptxas", "cuobjdump", "nvdisasm") if nvidia_tool(name) is None]


def analyse_cubin(cubin: bytes, kernel_name: str) -> dict:
    """Registers, stack, static shared/local memory and SASS opcode counts of one cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run(
            [nvidia_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run([nvidia_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout
    usage = {m.group(1): m.groups()[1:] for m in _RES_USAGE.finditer(res)}
    if kernel_name not in usage:
        raise RuntimeError(f"cuobjdump -res-usage shows no function {kernel_name}:\n{res}")
    regs, stack, static_shared, local = map(int, usage[kernel_name])
    ops, loop_local, loops = _sass_ops(sass)
    return dict(
        registers=regs,
        stack_bytes=stack,
        static_shared=static_shared,
        local_bytes=local,
        sass_ops=ops,
        loop_local_insts=loop_local,
        loops=loops,
    )


def _sass_ops(sass: str) -> tuple[dict[str, int], int, list[dict]]:
    """Opcode counts of ``nvdisasm -c`` output, the local-memory instructions (LDL/STL) that sit
    inside a loop (between a backward branch and its target, e.g. the time loop), and the loops:
    ``[{"start", "end", "mma"}]`` with the tensor-core instructions of each loop's own body
    (nested loops' instructions not included)."""
    ops: dict[str, int] = {}
    labels: dict[str, int] = {}
    insts: list[tuple[int, str, str]] = []
    pending: list[str] = []
    for line in sass.splitlines():
        if m := _SASS_LABEL.match(line):
            pending.append(m.group(1))
        elif m := _SASS_LINE.match(line):
            addr = int(m.group(1), 16)
            for label in pending:
                labels[label] = addr
            pending.clear()
            insts.append((addr, m.group(2), m.group(3)))
            ops[m.group(2)] = ops.get(m.group(2), 0) + 1
    loops = []
    for addr, op, rest in insts:
        if op == "BRA" and (t := _SASS_BRANCH_TARGET.search(rest)) and labels.get(t.group(1), addr + 1) <= addr:
            loops.append((labels[t.group(1)], addr))
    loop_local = sum(1 for addr, op, _ in insts if op in ("LDL", "STL") and any(a <= addr <= b for a, b in loops))
    loops = sorted(set(loops))
    info = []
    for a, b in loops:
        inner = [(c, d) for c, d in loops if a <= c and d <= b and (c, d) != (a, b)]
        own = [op for addr, op, _ in insts if a <= addr <= b and not any(c <= addr <= d for c, d in inner)]
        info.append(dict(start=a, end=b, mma=sum(1 for op in own if op in _TENSOR_CORE_OPS),
                         bars=sum(1 for op in own if op == "BAR"), inner=len(inner)))  # fmt: skip
    return ops, loop_local, info


# ---------------------------------------------------------------------------------------------
# What one step costs, from the compiled code

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


def _error_row(cfg: KernelConfig, error: str | None) -> dict:
    """The row's config part (tiles as ``tiers.tier1_config`` picks them, overrides applied)."""
    row = dict(
        dataclasses.asdict(cfg),
        mode=cfg.mode,
        P=cfg.proj_size,
        variant=cfg.variant,
        shared_limit=SHARED_LIMIT.get(cfg.arch),
        error=error,
        block_b=cfg.block_b,
        block_h=None,
        block_p=None,
        num_warps=cfg.num_warps,
    )
    if cfg.tier != 1:
        mc = tiers.multi_config(cfg.mode, cfg.hidden_size, cfg.torch_dtype, cfg.tier, cfg.kernel,
                                SHARED_LIMIT.get(cfg.arch))  # fmt: skip
        resident = mc.resident if cfg.resident is None else cfg.resident
        size = torch.empty((), dtype=cfg.torch_dtype).element_size()
        block_k = (
            mc.block_k
            if cfg.resident is None
            else (pow2(cfg.hidden_size) if resident else tiers.BLOCK_K_STREAMED[size])
        )
        row.update(block_b=tiers.BLOCK_B, block_h=tiers.BLOCK_HS, block_p=block_k,
                   num_warps=cfg.num_warps or mc.num_warps, resident=resident)  # fmt: skip
        return row
    try:
        lc = tiers.tier1_config(cfg.mode, cfg.hidden_size, cfg.proj, cfg.torch_dtype, cfg.allow_tf32)
    except Exception as exc:  # an invalid config: say so in the row
        row["error"] = row["error"] or f"{type(exc).__name__}: {exc}"
        return row
    row.update(
        P=cfg.proj,
        block_b=cfg.block_b or lc.block_b,
        block_h=lc.block_h,
        block_p=lc.block_p,
        num_warps=cfg.num_warps or lc.num_warps,
    )
    return row


def _compile_one(cfg: KernelConfig) -> dict:
    """Compile ``cfg`` and measure it; errors are reported in the row, not raised."""
    row = _error_row(cfg, None)
    if row["error"]:
        return row
    try:
        src, target, options = compile_source(cfg)
        names = src.fn.arg_names
        h_name, p_name = ("BLOCK_H", "BLOCK_P") if cfg.tier == 1 else ("BLOCK_HS", "BLOCK_K")
        row.update(
            num_warps=options["num_warps"],
            block_b=src.constants[(names.index("BLOCK_B"),)],
            block_h=src.constants[(names.index(h_name),)],
            block_p=src.constants[(names.index(p_name),)],
        )
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. triton 3.9's TRITON_DEFAULT_FP_FUSION notice
            compiled = triton.compile(src, target=target, options=options)
        row["compile_s"] = round(time.perf_counter() - start, 2)
        spills = _PTXAS_SPILLS.search(log.getvalue())
        row["spill_stores"], row["spill_loads"] = (
            (int(spills.group(2)), int(spills.group(3))) if spills else (None, None)
        )
        info = analyse_cubin(compiled.asm["cubin"], src.name)
        ops = info.pop("sass_ops")
        loops = info.pop("loops")
        row.update(info)
        k_trips = 1 if cfg.tier == 1 or row.get("resident") else -(-cfg.hidden_size // row["block_p"])
        row.update(step_profile(row, compiled.asm["ttir"], loops, k_trips, 1 if cfg.tier == 2 else 0))
        row["shared_bytes"] = compiled.metadata.shared
        row["local_insts"] = sum(n for op, n in ops.items() if op in ("LDL", "STL"))
        row["tensor_core_ops"] = {op: ops[op] for op in _TENSOR_CORE_OPS if op in ops}
        row["tensor_cores"] = bool(row["tensor_core_ops"])
        row["spills"] = bool(row["stack_bytes"] or row["local_insts"] or row["spill_stores"])
        row["loop_spills"] = row["loop_local_insts"] > 0  # local-memory traffic inside the time loop
        row["shared_ok"] = row["shared_limit"] is None or row["shared_bytes"] <= row["shared_limit"]
        row["regs_ok"] = registers_fit(row["registers"], row["num_warps"])
    except Exception as exc:  # a config that fails to compile is a finding of the report
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return row


def _serve() -> None:
    """Worker loop: one JSON config per stdin line -> one JSON row per line on the original stdout.

    Everything else written to stdout (by Triton, LLVM or ptxas) goes to stderr, so the result
    stream stays clean; a compile that kills the process (an LLVM assertion, say) is noticed by
    the parent, which reports it for that config and starts a fresh worker.
    """
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas -v output: spill store/load bytes
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # honest compile times, a ptxas log every time
    for line in sys.stdin:
        if line.strip():
            row = _compile_one(KernelConfig(**json.loads(line)))
            results.write(json.dumps(row) + "\n")
            results.flush()


class _Worker:
    """A ``python -m fastrnn.kernels.report --serve`` subprocess with ``TRITON_INTERPRET=0``."""

    def __init__(self) -> None:
        env = dict(os.environ, TRITON_INTERPRET="0")
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastrnn.kernels.report", "--serve"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def compile(self, cfg: KernelConfig, timeout: float | None) -> dict:
        self.proc.stdin.write(json.dumps(dataclasses.asdict(cfg)) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        if not ready:
            self.proc.kill()
        rc = self.proc.wait()
        self.log.seek(0)
        tail = [t for t in self.log.read().splitlines() if t.strip() and "Warning" not in t and "warn_once" not in t]
        why = f"timed out after {timeout} s" if not ready else f"compiler process died (exit {rc})"
        crash = next((t for t in reversed(tail) if "Assertion" in t or "Error" in t), tail[-1] if tail else "")
        crash = re.sub(r"^(?:\S+: )?\S*/([^/\s]+:\d+:)", r"\1", crash.strip())  # drop the build path
        return _error_row(cfg, f"{why}: {crash[:300]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self.log.close()


#: Registers of one SM (sm_80 and sm_90), allocated per warp in units of 256.
REGISTERS_PER_SM = 65536


def registers_fit(registers: int, num_warps: int) -> bool:
    """Whether one program of ``num_warps`` warps at ``registers`` per thread fits one SM's
    register file: a build over it compiles but cannot launch (``too many resources requested
    for launch``; with ``maxnreg = 255`` ptxas does not cap registers to the block size), e.g.
    16 warps allow at most 128 registers per thread."""
    per_warp = -(-registers * 32 // 256) * 256
    return per_warp * num_warps <= REGISTERS_PER_SM


def compile_report(configs: Sequence[KernelConfig], jobs: int = 1, timeout: float | None = None) -> list[dict]:
    """Compile every config and return one row (a dict) per config, in order.

    Each row holds the config's fields plus ``P`` (projection size), ``num_warps``,
    ``block_b/h/p``, ``registers``, ``stack_bytes``, ``spill_stores``/``spill_loads`` (ptxas),
    ``local_insts`` (LDL/STL count) and ``loop_local_insts`` (those inside a loop),
    ``spills`` (any stack/local memory) and ``loop_spills`` (local memory inside the time loop:
    the spills that cost every step), ``shared_bytes`` and ``shared_ok`` (against
    :data:`SHARED_LIMIT`), ``tensor_cores`` and ``tensor_core_ops``, ``compile_s`` and ``error``
    (``None`` when it compiled; else why not, e.g. a compiler crash or ``timeout`` seconds passed).

    The compiles run in ``jobs`` worker subprocesses started with ``TRITON_INTERPRET=0`` (so
    this works from a process whose kernels are interpreted, and a compiler crash only costs
    its own config).

    Example::

        rows = compile_report(tier1_configs(cells=["GRU"], dtypes=["fp16"], hidden_sizes=[64]))
        assert not any(r["loop_spills"] for r in rows)
    """
    configs = list(configs)
    if missing_tools():
        raise RuntimeError(f"CUDA tools missing from triton/backends/nvidia/bin: {', '.join(missing_tools())}")
    rows: list[dict | None] = [None] * len(configs)
    todo = queue.SimpleQueue()
    for item in enumerate(configs):
        todo.put(item)

    def drain() -> None:
        worker = None
        try:
            while True:
                try:
                    i, cfg = todo.get_nowait()
                except queue.Empty:
                    return
                worker = worker or _Worker()
                rows[i] = worker.compile(cfg, timeout)
                if worker.proc.poll() is not None:  # died: the next config gets a fresh one
                    worker.close()
                    worker = None
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=drain) for _ in range(max(1, min(jobs, len(configs))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rows


# ---------------------------------------------------------------------------------------------
# Output


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def format_table(rows: Sequence[dict], markdown: bool = False) -> str:
    """A readable table, one row per compiled kernel/config."""
    head = [
        "kernel",
        "cell",
        "dtype",
        "H",
        "P",
        "sm",
        "variant",
        "BLOCK_B",
        "warps",
        "W KiB",
        "regs",
        "stack B",
        "spill st/ld B",
        "LDL/STL (in loop)",
        "smem KiB",
        "TC",
        "step mma/bar",
        "loop loads (ahead)",
        "est us/step",
        "compile s",
        "status",
    ]
    lines = []
    for r in rows:
        if r.get("tier", 1) == 1:
            wbytes = tiers.weight_bytes(r["mode"], r["hidden_size"], r["P"], DTYPES[r["dtype"]])
        else:  # a program's resident W_hh slice; streamed weights are not held
            wbytes = tiers.slice_weight_bytes(r["mode"], r["hidden_size"], DTYPES[r["dtype"]]) if r["resident"] else 0
        base = [r["kernel"], r["cell"], r["dtype"], r["hidden_size"], r["P"] or "-", r["arch"], r["variant"]]
        if r["error"]:
            lines.append(
                base
                + [r.get("block_b", "-"), r.get("num_warps", "-"), _kib(wbytes)]
                + ["-"] * 10
                + [f"ERROR {r['error'][:100]}"]
            )
            continue
        status = []
        if r["loop_spills"]:
            status.append("SPILLS IN LOOP")
        elif r["spills"]:
            status.append("SPILLS (outside loops)")
        if not r["shared_ok"]:
            status.append("SMEM>LIMIT")
        if not r.get("regs_ok", True):
            status.append("REGS>SM")
        st = "-" if r["spill_stores"] is None else f"{r['spill_stores']}/{r['spill_loads']}"
        tc = ",".join(r["tensor_core_ops"]) if r["tensor_cores"] else "no"
        lines.append(
            base
            + [
                r["block_b"],
                r["num_warps"],
                _kib(wbytes),
                r["registers"],
                r["stack_bytes"],
                st,
                f"{r['local_insts']} ({r['loop_local_insts']})",
                _kib(r["shared_bytes"]),
                tc,
                f"{r.get('step_mma', '-')}/{r.get('step_bars', '-')}",
                f"{r.get('loop_loads', '-')} ({r.get('loads_ahead', '-')})",
                r.get("est_us", "-"),
                f"{r['compile_s']:.1f}",
                " ".join(status) or "ok",
            ]
        )
    cells = [[str(c) for c in line] for line in lines]
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(out)


#: What :func:`compare` checks per config: lower is better for each.
COMPARED = ("registers", "spill_stores", "spill_loads", "loop_local_insts", "local_insts", "shared_bytes")


def row_key(r: dict) -> tuple:
    """A row's identity across runs (kernel, cell, dtype, sizes, arch, variant, tier)."""
    return (r["kernel"], r["cell"], r["dtype"], r["hidden_size"], r.get("P") or 0, r["arch"], r["variant"],
            r.get("tier", 1))  # fmt: skip


def compare(baseline: list[dict], rows: list[dict]) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """``(worse, better, missing)`` of ``rows`` against ``baseline`` (an earlier ``--json``):
    ``(key, metric, before, after)`` for every :data:`COMPARED` metric that changed, and the keys
    of baseline rows this run did not compile (or that now fail)."""
    now = {row_key(r): r for r in rows}
    worse, better, missing = [], [], []
    for old in baseline:
        key = row_key(old)
        new = now.get(key)
        if old.get("error"):
            continue
        if new is None or new.get("error"):
            missing.append((key, new.get("error") if new else "not compiled"))
            continue
        for metric in COMPARED:
            a, b = old.get(metric) or 0, new.get(metric) or 0
            if b > a:
                worse.append((key, metric, a, b))
            elif b < a:
                better.append((key, metric, a, b))
    return worse, better, missing


def triton_minor() -> str:
    """``"3.9"``: the triton release the estimates of ``write_estimates`` are keyed by."""
    import triton

    return ".".join(triton.__version__.split(".")[:2])


def write_estimates(path: str, rows: list[dict]) -> None:
    """Merge this run's per-step estimates (``est_us`` by config) into ``path`` under this triton
    release (``{"3.9": {key: us}}``): the SASS, hence the estimate, differs between releases."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    est = {"/".join(map(str, row_key(r))): r["est_us"] for r in rows if not r["error"]}
    data[triton_minor()] = dict(sorted({**data.get(triton_minor(), {}), **est}.items()))
    with open(path, "w") as f:
        json.dump(dict(sorted(data.items())), f, indent=1)
        f.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; 1 when a config spills in its time loop, overflows shared memory or fails."""
    p = argparse.ArgumentParser(prog="python -m fastrnn.kernels.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS) + list(EXTRA_CELLS))
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--hidden", nargs="+", type=int, default=[32, 64, 128, 256])
    p.add_argument("--proj", nargs="+", type=int, default=[0], help="LSTMP proj_size (0: hidden // 2)")
    p.add_argument("--arch", nargs="+", type=int, default=[90, 80], choices=sorted(SHARED_LIMIT))
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--variants", default="heaviest", choices=["heaviest", "default", "all"])
    p.add_argument("--num-warps", nargs="+", type=int, default=None, help="override the configuration's warps")
    p.add_argument("--block-b", nargs="+", type=int, default=None, help="override tier1_config's BLOCK_B")
    p.add_argument("--split-k", nargs="+", type=int, default=None, help="override the configuration's SPLIT_K")
    p.add_argument("--resident", nargs="+", choices=("yes", "no"), default=None,
                   help="tiers 2/3: override the resident/streamed choice")  # fmt: skip
    p.add_argument("--beyond-limit", action="store_true", help="also sizes tier 1 refuses")
    p.add_argument("--tiers", nargs="+", type=int, default=[1], choices=[1, 2, 3],
                   help="kernel tiers to compile (2, 3: multi.py; projected LSTMs have none)")  # fmt: skip
    p.add_argument("--batch", type=int, default=64, help="batch size of the launch (with T = 8)")
    p.add_argument("--tf32", action="store_true", help="also fp32 with allow_tf32=True (tensor cores)")
    p.add_argument(
        "--states",
        action="store_true",
        help="also every config of a cell with a cell state with return_states (c_t stored, dc_t read)",
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--baseline", help="compare registers, spills and shared memory with an earlier --json file")
    p.add_argument("--estimates", help="write the per-step estimates (est_us by config) to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--timeout", type=float, default=None, help="seconds per compile (default: no limit)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # a compile_report worker
    a = p.parse_args(argv)

    if a.serve:
        _serve()
        return 0
    missing = missing_tools()
    if missing:
        print(f"cannot compile: {', '.join(missing)} not found in triton/backends/nvidia/bin", file=sys.stderr)
        return 2
    configs = []
    if 1 in a.tiers:
        configs += tier1_configs(
            a.cells,
            a.dtypes,
            a.hidden,
            a.arch,
            a.kernels,
            a.variants,
            a.num_warps or [None],
            a.block_b or [None],
            a.beyond_limit,
            a.batch,
            a.proj,
            a.tf32,
            a.split_k or [None],
        )
    if multi_tiers := [t for t in a.tiers if t != 1]:
        configs += multi_configs(
            a.cells,
            a.dtypes,
            a.hidden,
            a.arch,
            a.kernels,
            multi_tiers,
            a.num_warps or [None],
            a.batch,
            a.split_k or [None],
            [{"yes": True, "no": False}[r] for r in a.resident] if a.resident else [None],
        )
    if a.states:
        configs += [dataclasses.replace(c, states=True) for c in configs if cells.get(c.mode).has_cell_state]
    start = time.perf_counter()
    rows = compile_report(configs, jobs=a.jobs, timeout=a.timeout)
    limits = ", ".join(
        f"{name} {tiers.TIER1_MAX_WEIGHT_BYTES[dt] // 1024}/{tiers.TIER1_MAX_WEIGHT_BYTES_UNALIGNED[dt] // 1024}"
        for name, dt in DTYPES.items()
    )
    print(
        f"# fastrnn kernel report (tiers {' '.join(map(str, a.tiers))}): triton {triton.__version__}, tier-1 limits in KiB (H, P multiples "
        f"of 16 / other sizes): {limits}; {len(rows)} compiles in {time.perf_counter() - start:.0f} s "
        f"with {a.jobs} jobs"
    )
    print(format_table(rows, markdown=a.markdown))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if a.estimates:
        write_estimates(a.estimates, rows)
    if a.baseline:
        with open(a.baseline) as f:
            worse, better, missing = compare(json.load(f), rows)
        fmt = lambda k: "/".join(map(str, k))
        print(f"against {a.baseline}: {len(worse)} worse, {len(better)} better, {len(missing)} missing")
        for key, metric, before, after in worse:
            print(f"  WORSE  {fmt(key)}: {metric} {before} -> {after}")
        for key, metric, before, after in better:
            print(f"  better {fmt(key)}: {metric} {before} -> {after}")
        for key, why in missing:
            print(f"  MISSING {fmt(key)}: {why}")
    bad = [r for r in rows if r["error"] or r["loop_spills"] or not r["shared_ok"] or not r.get("regs_ok", True)]
    outside = [r for r in rows if not r["error"] and r["spills"] and not r["loop_spills"]]
    if outside:
        print(f"{len(outside)} of {len(rows)} configs keep a few bytes on the stack outside the time loop")
    if bad:
        print(
            f"{len(bad)} of {len(rows)} configs fail (spills in the time loop, shared memory over the limit, "
            "more registers than one SM holds for the program, or error)"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
