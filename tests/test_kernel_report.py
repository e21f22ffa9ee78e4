"""The tier-1 kernels compile for sm_90 and sm_80 on CPU without spills and within shared memory.

Compiles (Triton's own toolchain, no GPU) every cell and dtype at the largest hidden size tier 1
accepts, forward and backward, in the heaviest variant (varlen, reverse, with h0), plus a few
smaller sizes; see ``kernels/report.py`` and the measured table in ``kernels/NOTES.md``.  The
compiles run in worker subprocesses with ``TRITON_INTERPRET=0`` (this process interprets).
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="triton is not installed: nothing to compile")

import triton  # noqa: E402

from fastrnn.kernels import recurrent, report  # noqa: E402

pytestmark = pytest.mark.skipif(
    bool(report.missing_tools()),
    reason=f"CUDA tools {report.missing_tools()} not shipped in triton/backends/nvidia/bin: cannot build cubins",
)

#: Seconds one compile may take: a clean tier-1 config takes 1-5 s; a spilling one can take 100 s.
COMPILE_TIMEOUT = 120


def _limit_hidden(cell: str, dtype: str, proj: str = "") -> int | None:
    """Largest power-of-two hidden size tier 1 accepts for this cell and dtype (``None``: none).

    For LSTMP, ``proj`` picks the projection: ``"small"`` (8, padded to 16) or ``"large"``
    (``hidden_size - 1``, padded to ``hidden_size``).
    """

    def cfg(h: int) -> report.KernelConfig:
        p = {"": 0, "small": 8, "large": h - 1}[proj] if cell == "LSTMP" else 0
        return report.KernelConfig("fwd", cell, dtype, h, proj_size=p)

    best = None
    for h in (16, 32, 64, 128, 256, 512, 1024):
        if cfg(h).tier1_unsupported() is None:
            best = h
    return best


def _configs() -> list[report.KernelConfig]:
    out, seen = [], set()
    for cell in report.CELLS:
        for dtype in report.DTYPES:
            for proj in ("small", "large") if cell == "LSTMP" else ("",):
                h = _limit_hidden(cell, dtype, proj)
                p = {"": 0, "small": 8, "large": (h or 0) - 1}[proj]
                if h is None or (cell, dtype, h, max(16, triton.next_power_of_2(p))) in seen:
                    continue  # never tier 1 (e.g. fp64 projected LSTM), or the same padded tiles
                seen.add((cell, dtype, h, max(16, triton.next_power_of_2(p))))
                out += report.tier1_configs([cell], [dtype], [h], archs=(90, 80), proj_sizes=(p,))
    # A few smaller sizes, default variant (dense, forward, no h0).
    for cell in ("RNN_TANH", "LSTM", "GRU"):
        out += report.tier1_configs([cell], ["bf16", "fp32"], [16], archs=(90,), variants="default")
    return list(dict.fromkeys(out))


CONFIGS = _configs()


def _id(cfg: report.KernelConfig) -> str:
    proj = f"P{cfg.proj}-" if cfg.proj else ""
    return f"{cfg.kernel}-{cfg.cell}-{cfg.dtype}-H{cfg.hidden_size}-{proj}sm{cfg.arch}-{cfg.variant}"


@pytest.fixture(scope="module")
def rows() -> dict[report.KernelConfig, dict]:
    """Compile every config once (two worker processes: the CI runners have two cores)."""
    results = report.compile_report(CONFIGS, jobs=2, timeout=COMPILE_TIMEOUT)
    print("\n" + report.format_table(results))
    return dict(zip(CONFIGS, results, strict=True))


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_compiles_without_spills_within_shared_memory(cfg: report.KernelConfig, rows) -> None:
    row = rows[cfg]
    table = report.format_table([row])
    assert row["error"] is None, f"compile failed:\n{table}\n{row['error']}"
    # ptxas may park a few bytes on the stack outside the time loop at register-occupancy cliffs
    # (128/168 registers; executed once per program, reported in the table); any local-memory
    # access inside the loop is a spill that costs every step.
    assert not row["loop_spills"], f"spills inside the time loop (LDL/STL in the loop body):\n{table}"
    assert row["shared_bytes"] <= report.SHARED_LIMIT[cfg.arch], f"shared memory over the sm_{cfg.arch} limit:\n{table}"
    if cfg.dtype in ("bf16", "fp16"):
        assert row["tensor_cores"], f"no tensor-core instructions in a {cfg.dtype} kernel:\n{table}"


def test_launch_arguments_are_the_launchers() -> None:
    """The report compiles what the launcher passes: every kernel argument, launch_config's tiles."""
    for kernel in report.KERNELS:
        cfg = report.KernelConfig(kernel, "LSTMP", "bf16", 64, varlen=True, reverse=True, has_h0=True)
        fn, args, kwargs = report.launch_arguments(cfg)
        names = list(fn.arg_names)
        assert set(kwargs) - {"num_warps"} == set(names[len(args) :])  # positional, then constexprs
        lc = recurrent.launch_config("LSTM", cfg.batch, 64, 32, cfg.torch_dtype)
        assert (kwargs["BLOCK_B"], kwargs["BLOCK_H"], kwargs["BLOCK_P"], kwargs["num_warps"]) == (
            lc.block_b,
            lc.block_h,
            lc.block_p,
            lc.num_warps,
        )
        assert kwargs["HAS_H0"] and kwargs["IS_VARLEN"] and kwargs["REVERSE"] and kwargs["HAS_PROJ"]
        assert args[names.index("T")] == 8 and args[names.index("B")] == cfg.batch


def test_compile_errors_are_reported_not_raised() -> None:
    """Configs that cannot be built come back as rows with ``error`` set, in order."""
    bad = [
        report.KernelConfig("fwd", "GRU", "fp16", 32, num_warps=3),  # Triton: not a power of two
        report.KernelConfig("fwd", "LSTMP", "bf16", 32, proj_size=40),  # proj_size >= hidden_size
    ]
    rows = report.compile_report(bad, timeout=COMPILE_TIMEOUT)
    assert [r["cell"] for r in rows] == ["GRU", "LSTMP"]
    assert all(r["error"] for r in rows), rows
    assert "proj_size" in rows[1]["error"]
    assert "ERROR" in report.format_table(rows)
