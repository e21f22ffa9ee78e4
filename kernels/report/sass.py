"""Reading a compiled kernel: the CUDA tools shipped inside Triton (``cuobjdump -res-usage``,
``nvdisasm``) on its cubin, ptxas' spill line, and the SASS itself (opcode counts, loops, local
memory inside a loop); whether a program's registers fit one SM."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton

#: Tensor-core instructions (every arch the report targets).
TENSOR_CORE_OPS = ("HGMMA", "HMMA", "DMMA", "IMMA", "QGMMA", "IGMMA", "UTCMMA")
_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s*(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(.*)$")
_SASS_LABEL = re.compile(r"^(\.L_x_\d+):")
_SASS_BRANCH_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_RES_USAGE = re.compile(r"Function\s+(\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")

#: Registers of one SM (sm_80 and sm_90), allocated per warp in units of 256.
REGISTERS_PER_SM = 65536


def nvidia_tool(name: str) -> str | None:
    """Path of a CUDA tool shipped with Triton (``ptxas``, ``cuobjdump``, ``nvdisasm``), or ``None``."""
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    return None


def missing_tools() -> list[str]:
    """The CUDA tools the report needs that are not available here (empty: all present)."""
    return [name for name in ("ptxas", "cuobjdump", "nvdisasm") if nvidia_tool(name) is None]


def resource_usage(res_usage: str, kernel_name: str) -> tuple[int, int, int, int]:
    """``(registers, stack bytes, static shared bytes, local bytes)`` of ``kernel_name`` from
    ``cuobjdump -res-usage`` output."""
    usage = {m.group(1): tuple(map(int, m.groups()[1:])) for m in _RES_USAGE.finditer(res_usage)}
    if kernel_name not in usage:
        raise RuntimeError(f"cuobjdump -res-usage shows no function {kernel_name}:\n{res_usage}")
    return usage[kernel_name]


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
    regs, stack, static_shared, local = resource_usage(res, kernel_name)
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


def sass_instructions(sass: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, int]]]:
    """``nvdisasm -c`` output as ``[(address, opcode, operands)]`` and its loops: the sorted
    ``(start, end)`` address ranges from each backward branch to its target."""
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
    loops = set()
    for addr, op, rest in insts:
        if op == "BRA" and (t := _SASS_BRANCH_TARGET.search(rest)) and labels.get(t.group(1), addr + 1) <= addr:
            loops.add((labels[t.group(1)], addr))
    return insts, sorted(loops)


def _sass_ops(sass: str) -> tuple[dict[str, int], int, list[dict]]:
    """Opcode counts of ``nvdisasm -c`` output, the local-memory instructions (LDL/STL) that sit
    inside a loop (between a backward branch and its target, e.g. the time loop), and the loops:
    ``[{"start", "end", "mma"}]`` with the tensor-core instructions of each loop's own body
    (nested loops' instructions not included)."""
    insts, loops = sass_instructions(sass)
    ops: dict[str, int] = {}
    for _, op, _ in insts:
        ops[op] = ops.get(op, 0) + 1
    loop_local = sum(1 for addr, op, _ in insts if op in ("LDL", "STL") and any(a <= addr <= b for a, b in loops))
    info = []
    for a, b in loops:
        inner = [(c, d) for c, d in loops if a <= c and d <= b and (c, d) != (a, b)]
        own = [op for addr, op, _ in insts if a <= addr <= b and not any(c <= addr <= d for c, d in inner)]
        info.append(dict(start=a, end=b, mma=sum(1 for op in own if op in TENSOR_CORE_OPS),
                         bars=sum(1 for op in own if op == "BAR"), inner=len(inner)))  # fmt: skip
    return ops, loop_local, info


def ptxas_spills(log: str) -> tuple[int | None, int | None]:
    """``(spill store bytes, spill load bytes)`` from ptxas' ``-v`` output (``None``: no such line)."""
    spills = _PTXAS_SPILLS.search(log)
    return (int(spills.group(2)), int(spills.group(3))) if spills else (None, None)


def registers_fit(registers: int, num_warps: int) -> bool:
    """Whether one program of ``num_warps`` warps at ``registers`` per thread fits one SM's
    register file: a build over it compiles but cannot launch (``too many resources requested
    for launch``; with ``maxnreg = 255`` ptxas does not cap registers to the block size), e.g.
    16 warps allow at most 128 registers per thread."""
    per_warp = -(-registers * 32 // 256) * 256
    return per_warp * num_warps <= REGISTERS_PER_SM
