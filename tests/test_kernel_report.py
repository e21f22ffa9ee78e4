"""The kernels compile for sm_90 and sm_80 on CPU without spills and within shared memory.

Compiles (Triton's own toolchain, no GPU) every cell and dtype at the largest hidden size tier 1
accepts, forward and backward, in the heaviest variant (varlen, reverse, with h0), plus a few
smaller sizes, the layer-norm cells at their own limits, and tiers 2/3; see ``kernels/report/``
and the measured table in ``kernels/NOTES.md``.  The compiles run in worker subprocesses with
``TRITON_INTERPRET=0`` (this process interprets).

The default run compiles one forward/backward pair per tier for sm_90 (:data:`DEFAULT_ROWS`); every
other configuration is marked ``slow`` (``python -m pytest -m slow``).  A test compiles only the
configurations the run selected, once, when the first of them is needed; compiled rows are kept in
the report's disk cache (``$FASTRNN_REPORT_CACHE``), so a second run with unchanged kernels
compiles nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import pytest

pytest.importorskip("triton", reason="triton is not installed: nothing to compile")

from fastrnn.kernels import persistent, releases, report, tier1, tiers  # noqa: E402
from fastrnn.kernels.report import pool  # noqa: E402

pytestmark = pytest.mark.skipif(
    bool(report.missing_tools()),
    reason=f"CUDA tools {report.missing_tools()} not shipped in triton/backends/nvidia/bin: cannot build cubins",
)

#: Seconds one compile may take: a clean tier-1 config takes 1-5 s; a spilling one can take 100 s.
COMPILE_TIMEOUT = 120


#: Shape families of the limit search: ``hidden(k)``, ``proj(k)`` for a padded hidden size 2**k.
#: Sizes that are multiples of 16 and others have separate limits (their strides compile to
#: different code); a projected LSTM is searched with a 16-wide, a half-size and an odd projection.
FAMILIES: dict[str, tuple] = {
    "aligned": (lambda h: h, lambda h: 0),
    "odd": (lambda h: h - 1, lambda h: 0),
    "proj16": (lambda h: h, lambda h: 16),
    "proj32": (lambda h: h, lambda h: 32),
    "proj-half": (lambda h: h, lambda h: h // 2),
    "proj8-odd": (lambda h: h - 1, lambda h: 8),
    "proj-odd": (lambda h: h, lambda h: h - 1),
}


def _limit_size(cell: str, dtype: str, family: str) -> tuple[int, int] | None:
    """``(hidden_size, proj_size)``: the largest of ``family`` tier 1 accepts (``None``: none)."""
    hidden, proj = FAMILIES[family]
    best = None
    for k in range(4, 11):
        h, p = hidden(2**k), proj(2**k) if cell == "LSTMP" else 0
        if (cell == "LSTMP") != family.startswith("proj") or (cell == "LSTMP" and not 0 < p < h):
            continue
        if report.KernelConfig("fwd", cell, dtype, h, proj_size=p).unsupported() is None:
            best = (h, p)
    return best


def _configs() -> list[report.KernelConfig]:
    out, seen = [], set()
    for cell, dtype, family in itertools.product(report.CELLS, report.DTYPES, FAMILIES):
        size = _limit_size(cell, dtype, family)
        if size is None or (cell, dtype, *size) in seen:
            continue  # never tier 1 (e.g. fp32 LSTM with triton 3.9), or already there
        seen.add((cell, dtype, *size))
        out += report.configs(
            [1], [cell], [dtype], [size[0]], archs=(90, 80), proj_sizes=(size[1],),
            precisions=("ieee", "tf32x3", "tf32") if dtype == "fp32" else ("ieee",),
        )  # fmt: skip
    # A few smaller sizes, default variant (dense, forward, no h0).
    for cell in ("RNN_TANH", "LSTM", "GRU"):
        out += report.configs([1], [cell], ["bf16", "fp32"], [16], archs=(90,), variants="default")
    return list(dict.fromkeys(out))


CONFIGS = _configs()

#: The rows the default run compiles: ``(tier, cell, dtype, hidden_size)``, heaviest variant,
#: sm_90, forward and backward -- one pair per tier (tier 1 also a layer-norm cell's); the
#: sweeps above and below are ``slow``.
DEFAULT_ROWS = {(1, "LSTM", "bf16", 128), (1, "LN_GRU", "bf16", 64), (2, "GRU", "bf16", 128), (3, "LSTM", "fp32", 1024)}


def _in_default_run(cfg: report.KernelConfig) -> bool:
    return (
        (cfg.tier, cfg.cell, cfg.dtype, cfg.hidden_size) in DEFAULT_ROWS
        and cfg.arch == 90
        and cfg.precision == "ieee"
        and not cfg.states
        and cfg.varlen
        and cfg.reverse
        and cfg.has_h0
    )


def _id(cfg: report.KernelConfig) -> str:
    proj = f"P{cfg.proj}-" if cfg.proj else ""
    return f"{cfg.kernel}-{cfg.cell}-{cfg.dtype}-H{cfg.hidden_size}-{proj}sm{cfg.arch}-{cfg.variant}"


def _params(configs: list[report.KernelConfig], ids: Callable[[report.KernelConfig], str] = _id) -> list:
    """``configs`` as parameters: those of :data:`DEFAULT_ROWS` in the default run, the rest slow."""
    return [pytest.param(c, id=ids(c), marks=() if _in_default_run(c) else pytest.mark.slow) for c in configs]


def _selected(session: pytest.Session) -> list[report.KernelConfig]:
    """The configurations of the tests this run selected (after ``-m``/``-k``), in order."""
    cfgs = (getattr(item, "callspec", None) for item in session.items)
    return list(
        dict.fromkeys(c.params["cfg"] for c in cfgs if isinstance(c and c.params.get("cfg"), report.KernelConfig))
    )


@pytest.fixture(scope="module")
def compiled(request) -> Callable[[report.KernelConfig], dict]:
    """``compiled(cfg)``: the report's row of ``cfg``.  The first call compiles every config the
    run selected and has not compiled yet (two worker processes: the CI runners have two cores),
    through the report's disk cache; nothing else is compiled."""
    rows: dict[report.KernelConfig, dict] = {}

    def row(cfg: report.KernelConfig) -> dict:
        if cfg not in rows:
            todo = list(dict.fromkeys([cfg] + [c for c in _selected(request.session) if c not in rows]))
            results = report.compile_report(todo, jobs=2, timeout=COMPILE_TIMEOUT)
            print("\n" + report.format_table(results))
            rows.update(zip(todo, results, strict=True))
        return rows[cfg]

    return row


@pytest.mark.parametrize("cfg", _params(CONFIGS))
def test_compiles_without_spills_within_shared_memory(cfg: report.KernelConfig, compiled) -> None:
    _assert_compiled_clean(compiled(cfg), cfg, cfg.dtype in ("bf16", "fp16") or cfg.precision != "ieee")


def _assert_compiled_clean(row: dict, cfg: report.KernelConfig, tensor_cores: bool) -> None:
    """Compiled, no local memory inside a loop, shared memory within the arch's limit, one
    program's registers within one SM's register file (else it cannot launch), tensor-core instructions where ``tensor_cores``; tier 1: every load inside the time loop
    issued a step ahead of its use (the step never waits for an L2 round trip); tiers 2/3: the
    per-step estimate no higher than the committed one (``kernels/releases.json``)."""
    table = report.format_table([row])
    assert row["error"] is None, f"compile failed:\n{table}\n{row['error']}"
    # ptxas may park a few bytes on the stack outside the time loop at register-occupancy cliffs
    # (128/168 registers; executed once per program, reported in the table); any local-memory
    # access inside the loop is a spill that costs every step.
    assert not row["loop_spills"], f"spills inside the time loop (LDL/STL in the loop body):\n{table}"
    assert row["shared_bytes"] <= report.SHARED_LIMIT[cfg.arch], f"shared memory over the sm_{cfg.arch} limit:\n{table}"
    assert row["regs_ok"], (
        f"{row['registers']} registers x {row['num_warps']} warps exceed one SM (cannot launch):\n{table}"
    )
    if tensor_cores:
        assert row["tensor_cores"], f"no tensor-core instructions in a {cfg.dtype} kernel:\n{table}"
    if cfg.tier == 1:
        assert row["loop_loads"] > 0 and row["loads_ahead"] == row["loop_loads"], (
            f"a load inside the time loop is consumed in the step that issues it:\n{table}"
        )
    else:
        budget, slack, source = _step_budget(cfg)
        assert row["est_us"] <= budget * slack, f"the per-step estimate grew from {budget} us ({source}):\n{table}"


def test_launch_arguments_are_the_launchers() -> None:
    """The report compiles what the launcher builds: every kernel argument, tier1_config's tiles."""
    for kernel in report.KERNELS:
        cfg = report.KernelConfig(kernel, "LSTMP", "bf16", 64, varlen=True, reverse=True, has_h0=True)
        fn, args, kwargs = report.launch_arguments(cfg)
        names = list(fn.arg_names)
        assert set(kwargs) - {"num_warps"} == set(names[len(args) :])  # positional, then constexprs
        lc = tier1.tier1_config("LSTM", 64, 32, cfg.torch_dtype)
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


def test_compiled_rows_are_cached_by_kernel_source_triton_and_config(tmp_path, monkeypatch) -> None:
    """A row comes back from the disk cache without compiling (no worker is started) until the
    kernel sources, the Triton version, the config or the modules the workers import change; failed rows are never kept;
    ``cache=False`` neither reads nor writes it."""
    monkeypatch.setenv("FASTRNN_REPORT_CACHE", str(tmp_path / "cache"))
    assert report.cache_dir() == tmp_path / "cache"
    cfg = report.KernelConfig("fwd", "GRU", "bf16", 64, arch=90)
    other = dataclasses.replace(cfg, arch=80)
    row = dict(pool._error_row(cfg, None), registers=99)
    pool._store(cfg, row)
    pool._store(other, dict(pool._error_row(other, None), error="RuntimeError: boom"))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{report.cache_key(cfg)}.json"]

    def no_worker(*imports):
        raise AssertionError("a cached row was compiled again")

    monkeypatch.setattr(pool, "_Worker", no_worker)
    (got,) = report.compile_report([cfg])
    assert got == dict(row, cached=True)
    with pytest.raises(AssertionError, match="compiled again"):
        report.compile_report([cfg], cache=False)
    with pytest.raises(AssertionError, match="compiled again"):
        report.compile_report([other])  # its failed row was not kept

    key = report.cache_key(cfg)
    assert report.cache_key(dataclasses.replace(cfg, has_h0=True)) != key
    assert report.cache_key(cfg, imports=["new_cell_def"]) != key  # a module a worker imports first
    monkeypatch.setattr(pool, "kernel_hash", lambda: "0" * 16)
    assert report.cache_key(cfg) != key
    monkeypatch.undo()
    monkeypatch.setattr(pool.triton, "__version__", "0.0.0")
    assert report.cache_key(cfg) != key


def test_command_line_has_no_cache(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--help"])
    assert exit_info.value.code == 0
    assert "--no-cache" in capsys.readouterr().out


SEQ_LENS, BATCHES = (1, 2, 7, 100), (1, 2, 3, 4, 16, 33, 64)


def _variants(cfg: report.KernelConfig) -> dict[str, list[tuple[int, int]]]:
    """Compiled variants Triton's JIT makes of ``cfg``'s kernel as T and B vary: key -> [(T, B)]."""
    keys: dict[str, list[tuple[int, int]]] = {}
    for T, B in itertools.product(SEQ_LENS, BATCHES):
        keys.setdefault(report.specialization_key(dataclasses.replace(cfg, batch=B), T), []).append((T, B))
    return keys


@pytest.mark.parametrize("kernel", list(report.KERNELS))
@pytest.mark.parametrize(
    "cell,dtype,hidden,proj",
    [("RNN_TANH", "fp32", 64, 0), ("GRU", "bf16", 16, 0), ("LSTM", "fp64", 32, 0), ("LSTMP", "fp16", 64, 32)],
)
def test_one_compiled_variant_whatever_T_and_B(kernel, cell, dtype, hidden, proj) -> None:
    """H and P multiples of 16: every stride is a multiple of 16 for every T and B, and T and B
    themselves are not specialised, so Triton's JIT keys every launch alike (one compile)."""
    for varlen, h0 in ((False, False), (True, True)):
        cfg = report.KernelConfig(kernel, cell, dtype, hidden, varlen=varlen, reverse=varlen, has_h0=h0, proj_size=proj)
        assert len(_variants(cfg)) == 1, _variants(cfg)


@pytest.mark.parametrize(
    "cell,hidden,proj,classes",
    [
        # s_gx_t = B*H, s_out_t = B*P, ...: a multiple of 16 for B % 16 == 0, and 1 at B = 1 for H = 1
        ("RNN_TANH", 3, 0, [{16, 64}, {1, 2, 3, 4, 33}]),
        ("RNN_TANH", 1, 0, [{16, 64}, {2, 3, 4, 33}, {1}]),
        # gx 3H = 30: B*30 % 16 == 0 iff B % 8 == 0; saved 4H = 40: B*40 % 16 == 0 iff B is even
        ("GRU", 10, 0, [{16, 64}, {2, 4}, {1, 3, 33}]),
        ("LSTM", 24, 0, [{2, 4, 16, 64}, {1, 3, 33}]),  # 4H = 96 is aligned; B*24 (out), B*120 (saved) iff B even
        ("LSTMP", 20, 5, [{16, 64}, {4}, {1, 2, 3, 33}]),  # B*5 (out) iff B % 16 == 0, B*20 (m), B*100 (saved) B % 4
    ],
)
def test_other_sizes_compile_a_few_variants_by_batch_alignment(cell, hidden, proj, classes) -> None:
    """Sizes that are not multiples of 16: the batch size picks one of a few variants (by how
    many factors of two it has), the sequence length none."""
    cfg = report.KernelConfig("fwd", cell, "fp32", hidden, varlen=True, reverse=True, has_h0=True, proj_size=proj)
    variants = _variants(cfg)
    got = sorted((sorted({b for _, b in v}) for v in variants.values()), key=lambda b: -b[-1])
    assert got == sorted((sorted(c) for c in classes), key=lambda b: -b[-1])
    for runs in variants.values():  # T never splits a variant
        assert {(t, b) for t in SEQ_LENS for b in {b for _, b in runs}} == set(runs)


# ---------------------------------------------------------------------------------------------
# Cells beyond torch.nn (layer norm; tier 1 only): at their own limits, heaviest variant with
# return_states, and the default variant of fp32 (triton 3.9's LLVM aborted the 8-warp fp32
# LN_LSTM backward at H = 32 in the dense variants only, never in the heaviest).


def _extended_configs() -> list[report.KernelConfig]:
    out = []
    for cell, dtype, family in itertools.product(report.EXTRA_CELLS, report.DTYPES, ("aligned", "odd")):
        size = _limit_size(cell, dtype, family)
        if size is None:
            continue  # no compiled tier 1 (fp64 LN_LSTM)
        precisions = ("ieee", "tf32x3", "tf32") if dtype == "fp32" else ("ieee",)
        cfgs = report.configs([1], [cell], [dtype], [size[0]], archs=(90, 80), precisions=precisions)
        if dtype == "fp32":
            cfgs += report.configs([1], [cell], [dtype], [size[0]], archs=(90,), variants="default",
                                   precisions=precisions)  # fmt: skip
        out += cfgs + [dataclasses.replace(c, states=True) for c in cfgs if c.cell == "LN_LSTM"]
    return list(dict.fromkeys(out))


EXTENDED_CONFIGS = _extended_configs()


def _ext_id(cfg: report.KernelConfig) -> str:
    return _id(cfg) + ("-states" if cfg.states else "")


@pytest.mark.parametrize("cfg", _params(EXTENDED_CONFIGS, _ext_id))
def test_layer_norm_cells_compile_without_spills(cfg: report.KernelConfig, compiled) -> None:
    _assert_compiled_clean(compiled(cfg), cfg, cfg.dtype in ("bf16", "fp16"))


def test_layer_norm_limits_are_searched() -> None:
    """The extended configs cover both cells, a 16-bit limit of H = 64 and fp32's H = 32 LN_LSTM."""
    sizes = {(c.cell, c.dtype, c.hidden_size) for c in EXTENDED_CONFIGS}
    assert {("LN_LSTM", "fp16", 64), ("LN_LSTM", "fp32", 32), ("LN_GRU", "bf16", 64), ("LN_GRU", "fp32", 64)} <= sizes
    assert not any(c.dtype == "fp64" and c.cell == "LN_LSTM" for c in EXTENDED_CONFIGS)  # never tier 1
    assert any(c.states for c in EXTENDED_CONFIGS)


# ---------------------------------------------------------------------------------------------
# Tiers 2 and 3 (kernels/persistent.py): every cell and dtype, resident (H=128) and streamed (H=1024)
# weight slices, the persistent kernel with its grid barrier (tier 2) and the per-step one
# (tier 3), heaviest variant, sm_90 (the H100/H200 arch; sm_80 is reported in NOTES.md).

MULTI_CONFIGS = report.configs([2, 3], ("RNN_TANH", "LSTM", "GRU"), hidden_sizes=(128, 1024), archs=(90,),
                               precisions=("ieee", "tf32x3"))  # fmt: skip

#: Per-step estimates of the tier-2/3 configs above (``report.step_profile``), committed: a
#: kernel change that lengthens a step's serial chain fails here.  Regenerate after an intended
#: change with ``python -m fastrnn.kernels.report --tiers 2 3 --hidden 128 1024 --arch 90
#: --estimates`` (into ``kernels/releases.json``) and say why in kernels/NOTES.md.
#: Keyed by triton release (the SASS differs between them): this release's figures are held to
#: 5%; a release with none committed is held to 25% over the largest committed one.
STEP_ESTIMATES: dict[str, dict[str, float]] = {r: releases.step_estimates(r) for r in releases.load()["releases"]}


def _step_budget(cfg: report.KernelConfig) -> tuple[float, float, str]:
    """``(committed estimate, allowed factor, where it comes from)`` for ``cfg``."""
    key, minor = _key(cfg), report.triton_minor()
    if minor in STEP_ESTIMATES:
        budget = STEP_ESTIMATES[minor].get(key)
        assert budget is not None, (
            f"no committed step estimate for {key}: regenerate the estimates in kernels/releases.json"
        )
        return budget, 1.05, f"triton {minor}"
    known = {v: est[key] for v, est in STEP_ESTIMATES.items() if key in est}
    assert known, f"no committed step estimate for {key}: regenerate the estimates in kernels/releases.json"
    version = max(known, key=known.get)
    return known[version], 1.25, f"triton {version}; none committed for {minor}"


def _key(cfg: report.KernelConfig) -> str:
    return "/".join(map(str, report.row_key(dict(dataclasses.asdict(cfg), variant=cfg.variant, P=cfg.proj))))


@pytest.mark.parametrize("cfg", _params(MULTI_CONFIGS))
def test_tier2_and_tier3_compile_without_spills(cfg: report.KernelConfig, compiled) -> None:
    _assert_compiled_clean(compiled(cfg), cfg, cfg.dtype in ("bf16", "fp16", "fp64"))


def test_default_run_compiles_every_tier() -> None:
    """The default run's rows exist in the sweeps: a forward and a backward of every registered
    tier (and of a layer-norm cell), sm_90."""
    default = [c for c in CONFIGS + EXTENDED_CONFIGS + MULTI_CONFIGS if _in_default_run(c)]
    got = {(c.tier, c.cell, c.dtype, c.hidden_size, c.kernel) for c in default}
    assert got == {(*row, kernel) for row in DEFAULT_ROWS for kernel in report.KERNELS}, got
    triton_tiers = {n for n, t in tiers.registered().items() if t.compiled is not None}  # the others report alone
    assert {c.tier for c in default} == triton_tiers
    assert len(default) == 2 * len(DEFAULT_ROWS)


def test_multi_launch_arguments_are_the_launchers() -> None:
    """Tier 2 compiles the persistent launch (barrier, cooperative), tier 3 one step of it."""
    for tier in (2, 3):
        cfg = report.KernelConfig("bwd", "GRU", "bf16", 128, varlen=True, reverse=True, has_h0=True, tier=tier)
        fn, args, kwargs = report.launch_arguments(cfg)
        names = list(fn.arg_names)
        assert fn is persistent._multi_bwd_kernel
        options = {"num_warps", "num_stages", "maxnreg", "launch_cooperative_grid"}  # launch options, not arguments
        assert set(kwargs) - options == set(names[len(args) :])
        assert kwargs["USE_BARRIER"] == (tier == 2) and kwargs.get("launch_cooperative_grid", False) == (tier == 2)
        assert kwargs["RESIDENT"] == (tier == 2)  # a 6 KiB bf16 slice stays on chip in tier 2
        assert args[names.index("J_END")] == (9 if tier == 2 else 1)  # T + 1 iterations, or one


def test_registers_fit_one_sm() -> None:
    """A program's registers must fit one SM's 64K (allocated per warp in units of 256): 16 warps
    allow 128 a thread, 8 warps 255 -- with ``maxnreg = 255`` ptxas does not cap a 16-warp build."""
    assert report.registers_fit(128, 16) and not report.registers_fit(129, 16)
    assert report.registers_fit(255, 8) and report.registers_fit(255, 4)
    assert not report.registers_fit(206, 16)
