"""The benchmark suite on the CPU: the CI-sized run end to end, and the parts it is built from.

The end-to-end test runs ``python -m benchmarks`` in a subprocess with CUDA hidden, exactly as
CI and a user without a GPU would, and checks every output file for real figures.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import cases, grids  # noqa: E402
from benchmarks.cases import CPU_SUITE, GPU_SUITE, Case, compile_filter  # noqa: E402
from benchmarks.cli import main, measure_row, timing_config  # noqa: E402
from benchmarks.loop import loop_stack  # noqa: E402
from benchmarks.rnn import KIND  # noqa: E402
from benchmarks.timing import TimingConfig  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

#: Rows of the CPU grid: rnn 30, lnrnn 4 and states 2 (benchmarks/beyond.py), seq2seq 4.
CPU_ROWS = 40

FAKE_MACHINE = {
    "bandwidth_gbs": 10.0,
    "matmul_tflops": {"fp32": 0.1, "fp64": 0.05},
    "step_us": 2.0,
    "step_source": "cpu_op_us",
}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One CPU-mode run of ``python -m benchmarks`` (the CI command), with CUDA hidden."""
    out = tmp_path_factory.mktemp("bench_cpu")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("FASTRNN_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--out", str(out), "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def test_cpu_mode_says_so_in_one_line_and_reports_the_overhead(cpu_run):
    _, stdout = cpu_run
    lines = stdout.splitlines()
    assert lines[0].startswith("No CUDA GPU found: running the CPU comparison")
    assert sum("No CUDA GPU" in ln for ln in lines) == 1
    overhead = [ln for ln in lines if ln.startswith("fastrnn wrapper overhead")]
    assert len(overhead) == 1 and f"% (median over {CPU_ROWS} rows; fwd " in overhead[0]
    # and fastrnn's own host time per call, the decoder step's included (benchmarks/host_overhead.py)
    host = json.loads((cpu_run[0] / "host_overhead.json").read_text())
    calls = {(r["call"], r["backend"]) for r in host}
    assert {("decoder", "auto"), ("decoder", "torch.nn"), ("decoder", "triton (launch stubbed)")} <= calls
    assert all(r["us"] > 0 for r in host) and "fastrnn's host time per call" in stdout


def test_cpu_mode_json(cpu_run):
    out, _ = cpu_run
    doc = json.loads((out / "results.json").read_text())
    assert doc["suite"] == "cpu" and doc["subject"] == "fastrnn_auto" and doc["baseline"] == "torch_nn"
    planned = len(grids.grid("cpu"))
    assert doc["rows_planned"] == planned == doc["rows_measured"] == len(doc["rows"]) == CPU_ROWS
    assert doc["complete"] is True
    env = doc["env"]
    assert env["torch"] == torch.__version__ and env["device_type"] == "cpu" and env["date"]
    assert env["cpu_threads"] == 1
    m = doc["machine"]
    assert m["bandwidth_gbs"] > 0 and m["matmul_tflops"]["fp32"] > 0 and m["step_us"] > 0
    keys = set()
    for row in doc["rows"]:
        keys.add(row["key"])
        assert Case.from_fields(row["case"]).key == row["key"]
        f = row["floors"]
        assert f["bytes"] > 0 and f["flops"] > 0 and f["steps"] >= row["case"]["T"]
        assert f["floor_ms"] == max(v for v in (f["bw_floor_ms"], f["flop_floor_ms"], f["seq_floor_ms"]))
        assert f["floor_bound"] in ("bw", "flop", "seq")
        for provider in ("fastrnn_auto", "torch_nn"):
            res = row["results"][provider]
            assert res["status"] == "ok", res
            assert 0 < res["p20_ms"] <= res["median_ms"] <= res["p80_ms"]
            assert res["min_ms"] <= res["median_ms"] and res["reps"] >= 15
            assert 0 < res["frac_of_floor"] == pytest.approx(f["floor_ms"] / res["median_ms"])
        assert row["speedup"] == pytest.approx(
            row["results"]["torch_nn"]["median_ms"] / row["results"]["fastrnn_auto"]["median_ms"]
        )
        assert "torch" in row["results"]["fastrnn_auto"]["note"]  # explain(): auto picked torch on CPU
        if row["case"]["run"] == "fwd":
            # backend='auto' on CPU runs torch.nn's own code: bit-identical outputs
            assert row["max_abs_diff"] == 0.0
    assert len(keys) == CPU_ROWS
    ov = doc["cpu_overhead"]
    assert ov["rows"] == CPU_ROWS and isinstance(ov["pct"], float) and math.isfinite(ov["pct"])
    assert set(ov["by_run"]) == {"fwd", "fwdbwd"} and math.isfinite(ov["geomean_pct"])
    for row in doc["rows"]:  # interleaved samples: the per-round ratio the overhead is built from
        assert row["paired_ratio"] > 0
    assert isinstance(ov["median_us"], float) and ov["target_pct"] == 5.0
    # A sanity bound, loose enough for a noisy shared CI machine: an 'auto' that stopped calling
    # torch's own code (the interpreter, an extra copy) would be far above it.
    assert -25.0 < ov["pct"] < 25.0


def test_cpu_mode_csv_markdown_plot_jsonl(cpu_run):
    out, stdout = cpu_run
    with open(out / "results.csv") as f:
        recs = list(csv.DictReader(f))
    assert len(recs) == 2 * CPU_ROWS  # rows x 2 providers
    for rec in recs:
        assert rec["provider"] in ("fastrnn_auto", "torch_nn") and rec["status"] == "ok"
        assert float(rec["median_ms"]) > 0 and float(rec["floor_ms"]) > 0
        assert rec["torch"] == torch.__version__ and rec["date"]
    assert {"gpu", "driver", "cuda", "triton", "commit", "bw_floor_ms", "flop_floor_ms", "seq_floor_ms"} <= set(recs[0])
    md = (out / "results.md").read_text()
    for cell in ("LSTM", "GRU", "RNN"):
        assert f"## {cell} fp32" in md
    assert "fastrnn wrapper overhead" in md
    table_rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert len(table_rows) == CPU_ROWS
    if HAS_MATPLOTLIB:
        for name in ("speedup_fwd.png", "speedup_fwdbwd.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:  # the run says so instead of failing
        assert "plot skipped: matplotlib is not installed" in stdout
    lines = [json.loads(ln) for ln in (out / "rows.jsonl").read_text().splitlines()]
    assert [ln["type"] for ln in lines].count("row") == CPU_ROWS and lines[0]["type"] == "run"


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (pip install -e '.[bench]')")
def test_plot_entry_point(cpu_run, tmp_path):
    from benchmarks.plot import main as plot_main

    out, _ = cpu_run
    assert plot_main([str(out / "results.json"), "--out", str(tmp_path)]) == 0
    # one per mode, and per mode of every other case kind (benchmarks/plot.py)
    kinds = ("", "lnrnn_", "states_", "seq2seq_")
    expected = [f"speedup_{kind}{mode}.png" for kind in kinds for mode in ("fwd", "fwdbwd")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)


def test_time_cap_then_resume(tmp_path):
    """A capped run keeps what it measured; --resume measures only the rest with the same floors."""
    args = ["--device", "cpu", "--filter", "LSTM B=8 H=128", "--out", str(tmp_path), "--no-progress", "--quiet"]
    args += ["--no-plot", "--rep-ms", "5"]
    threads = torch.get_num_threads()
    assert main(args + ["--max-minutes", "0.00001"]) == 0
    assert torch.get_num_threads() == threads  # global settings restored
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["rows_planned"] == 2 and doc["rows_measured"] == 1 and doc["complete"] is False
    assert "--max-minutes" in doc["runs"][-1]["stopped"]
    first = doc["rows"][0]["key"]
    assert main(args + ["--resume"]) == 0
    doc2 = json.loads((tmp_path / "results.json").read_text())
    assert doc2["rows_measured"] == 2 and doc2["complete"] is True and len(doc2["runs"]) == 2
    assert doc2["machine"] == doc["machine"]
    assert doc2["rows"][0]["key"] == first and doc2["rows"][0] == doc["rows"][0]
    assert main(["--report-only", "--out", str(tmp_path), "--no-plot", "--quiet"]) == 0


def test_a_row_that_never_finished_is_not_retried_by_default(tmp_path):
    """A row a killed (or hung) run started is recorded as failed on --resume, unless asked to retry."""
    args = ["--device", "cpu", "--filter", "cell=RNN B=1 H=32", "--out", str(tmp_path), "--no-progress", "--quiet"]
    args += ["--no-plot", "--rep-ms", "5"]
    assert main(args + ["--limit", "1"]) == 0
    second = cases.select(grids.grid("cpu"), ["cell=RNN B=1 H=32"])[1].key
    with open(tmp_path / "rows.jsonl", "a") as f:  # what a run killed in the middle of that row leaves
        f.write(json.dumps({"type": "row_start", "key": second}) + "\n")
    assert main(args + ["--resume"]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    row = next(r for r in doc["rows"] if r["key"] == second)
    assert row["unfinished"] and all(
        res["status"] == "error" and "did not finish" in res["error"] for res in row["results"].values()
    )
    assert main(args + ["--resume", "--retry-unfinished"]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    row = next(r for r in doc["rows"] if r["key"] == second)
    assert "unfinished" not in row and all(res["status"] == "ok" for res in row["results"].values())
    assert doc["rows_measured"] == 2 and doc["complete"]


def test_a_provider_that_raises_is_recorded_not_fatal():
    """fastrnn's tier-1 kernels cannot hold an fp32 LSTM with H=1024 (not even in the
    interpreter, whose limit is 4 MiB of weights): that cell records the reason."""
    case = Case("rnn", "LSTM", "fp32", B=2, H=1024, T=3)
    cfg = TimingConfig(rep_ms=1.0, warmup_ms=0.0, min_reps=3, max_reps=3, flush_l2=False)
    row, fatal = measure_row(
        case,
        suite=GPU_SUITE,
        providers=["fastrnn", "cudnn", "loop"],
        device=torch.device("cpu"),
        machine=FAKE_MACHINE,
        cfg=cfg,
        base_seed=0,
        run_slow=True,
    )
    assert fatal is None
    assert row["results"]["fastrnn"]["status"] == "error"
    assert row["results"]["fastrnn"]["error"].startswith("BackendUnavailable:")
    assert "hidden_size=1024" in row["results"]["fastrnn"]["error"]
    assert row["results"]["cudnn"]["status"] == "ok" and row["results"]["loop"]["status"] == "ok"
    assert row["speedup"] is None and row["results"]["cudnn"]["median_ms"] > 0
    row, fatal = measure_row(
        case,
        suite=GPU_SUITE,
        providers=["fastrnn", "cudnn", "loop"],
        device=torch.device("cpu"),
        machine=FAKE_MACHINE,
        cfg=cfg,
        base_seed=0,
        run_slow=True,
        only_comparable=True,
    )
    assert fatal is None and row["results"]["fastrnn"]["status"] == "error"
    assert [row["results"][p]["status"] for p in ("cudnn", "loop")] == ["skipped", "skipped"]
    assert "--only-comparable" in row["results"]["cudnn"]["reason"]


def test_timing_config_for_every_device_type():
    """The device-keyed timing table, for the device type only a GPU run has (a KeyError here
    once kept the suite from starting on every GPU)."""
    gpu, cpu = timing_config(torch.device("cuda")), timing_config(torch.device("cpu"))
    assert gpu.flush_l2 and not cpu.flush_l2 and gpu.max_reps < cpu.max_reps
    assert timing_config(torch.device("cuda", 0), rep_ms=7.0).rep_ms == 7.0
    with pytest.raises(ValueError, match="no timing settings for mps"):
        timing_config(torch.device("mps"))


@pytest.mark.interpreter
def test_gpu_suite_code_on_cpu_triton_interpreter():
    """The GPU suite's providers on tiny CPU shapes (kernels in Triton's interpreter): outputs agree."""
    case = Case("rnn", "GRU", "fp32", B=3, H=8, T=4, packed=True)
    cfg = TimingConfig(rep_ms=1.0, warmup_ms=0.0, min_reps=3, max_reps=3, flush_l2=False)
    row, fatal = measure_row(
        case,
        suite=GPU_SUITE,
        providers=["fastrnn", "cudnn", "loop"],
        device=torch.device("cpu"),
        machine=FAKE_MACHINE,
        cfg=cfg,
        base_seed=0,
        run_slow=True,
    )
    assert fatal is None
    assert all(row["results"][p]["status"] == "ok" for p in ("fastrnn", "cudnn", "loop")), row["results"]
    assert row["max_abs_diff"] < 1e-5 and row["speedup"] > 0
    assert row["results"]["fastrnn"]["note"].startswith("requested 'triton' -> triton")


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_loop_reference_matches_torch_nn(cell, layers, bidir, packed):
    torch.manual_seed(0)
    m = {"RNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}[cell](
        6, 5, num_layers=layers, bidirectional=bidir, dtype=torch.float64
    )
    x = torch.randn(7, 4, 6, dtype=torch.float64)
    if packed:
        p = pack_padded_sequence(x, torch.tensor([3, 7, 1, 5]), enforce_sorted=False)
        want = m(p)[0].data
        got = loop_stack(cell, p.data, p.batch_sizes.tolist(), m._flat_weights, num_layers=layers, bidirectional=bidir)
    else:
        want = m(x)[0]
        got = loop_stack(cell, x.reshape(28, 6), [4] * 7, m._flat_weights, num_layers=layers, bidirectional=bidir)
        got = got.reshape(7, 4, -1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_filters():
    rows = grids.grid("full")
    assert len(cases.select(rows, ["kind=rnn"])) == 3 * 3 * 5 * 5 * 2 * 2 * 2 * 2 * 2
    pick = cases.select(rows, ["kind=rnn lstm", "H=256,512 B>=64", "dtype!=fp32", "packed=1", "run=fwd"])
    assert pick and all(
        r.cell == "LSTM" and r.H in (256, 512) and r.B >= 64 and r.dtype != "fp32" and r.packed and r.run == "fwd"
        for r in pick
    )
    assert len(pick) == 2 * 2 * 2 * 2 * 2 * 2  # H x B (64, 256) x dtype (fp16, bf16) x T x layers x bidir
    assert compile_filter(["/uni/"])(Case("rnn", "GRU", "fp16", 1, 128, 128))
    assert not compile_filter(["bidir=1"])(Case("rnn", "GRU", "fp16", 1, 128, 128))
    assert cases.select(rows, ["nothing-matches"]) == []


def test_run_order_headline_first_then_core():
    rows = grids.grid("full")
    assert [r.key for r in rows[:2]] == [
        "rnn/LSTM/fp16/B16/H768/T1024/L1/uni/dense/fwd",
        "rnn/LSTM/fp16/B16/H768/T1024/L1/uni/dense/fwdbwd",
    ]
    tiers = [grids.tier(r) for r in rows]
    assert tiers == sorted(tiers)
    core = [r for r in rows if grids.tier(r) == 1 and r.kind == "rnn"]  # and the seq2seq quick rows
    assert len(core) == 3 * 3 * 2 * 2 * 2
    assert {r.cell for r in core} == {"RNN", "LSTM", "GRU"} and {r.B for r in core} == {16, 64}
    quick = grids.grid("quick")
    assert quick[0].key == rows[0].key and len(quick) == 124 + 8 + 8 + 8 + 12  # rnn, embed, lnrnn, states, seq2seq


def test_cost_model():
    c = Case("rnn", "LSTM", "fp16", B=16, H=768, T=1024)
    cost = KIND.cost(c, 0)
    assert cost.flops == 2 * 16 * 1024 * 4 * 768 * (768 + 768)
    assert cost.steps == 1024 and cost.tokens == 16 * 1024
    assert cost.bytes == 2 * (16 * 1024 * 768 + 4 * 768 * 1536 + 16 * 1024 * 768)
    train = KIND.cost(Case("rnn", "LSTM", "fp16", B=16, H=768, T=1024, run="fwdbwd"), 0)
    assert train.flops == 3 * cost.flops and train.steps == 2 * 1024 and train.bytes > 2 * cost.bytes
    assert KIND.cost(Case("rnn", "GRU", "fp32", 4, 8, 10, layers=2), 0).steps == 11  # wavefront
    assert KIND.cost(Case("rnn", "GRU", "fp32", 4, 8, 10, layers=2, bidir=True), 0).steps == 20
    packed = Case("rnn", "RNN", "fp32", B=8, H=8, T=50, packed=True)
    assert 50 <= KIND.cost(packed, 3).tokens < 8 * 50


def test_embedding_kind_rows():
    """The "embed" kind: fastrnn.EmbeddingRNN (auto: nn.Embedding + torch.nn on CPU) vs the same modules."""
    case = Case("embed", "LSTM", "fp32", B=3, H=8, T=6, packed=True, extra=(("E", 5), ("V", 40)))
    assert case.key == "embed/LSTM/fp32/B3/H8/T6/L1/uni/packed/fwd/E5/V40"
    assert Case.from_fields(case.fields()) == case
    cfg = TimingConfig(rep_ms=1.0, warmup_ms=0.0, min_reps=3, max_reps=3, flush_l2=False)
    row, fatal = measure_row(
        case,
        suite=CPU_SUITE,
        providers=["fastrnn_auto", "torch_nn", "loop"],
        device=torch.device("cpu"),
        machine=FAKE_MACHINE,
        cfg=cfg,
        base_seed=0,
        run_slow=True,
    )
    assert fatal is None and all(r["status"] == "ok" for r in row["results"].values()), row["results"]
    assert row["max_abs_diff"] == 0.0
    cost = cases.KINDS["embed"].cost(case, case.seed(0))
    assert cost.tokens == row["tokens"] and cost.flops > 0 and cost.steps == 6
    assert cases.select(grids.grid("full"), ["kind=embed"]) and all(
        dict(c.extra)["E"] == c.H for c in cases.select(grids.grid("full"), ["kind=embed"])
    )


def test_gpu_check_plan_and_summary(tmp_path):
    """The GPU command's steps and its results folder, executed on any machine: the cluster tier's
    check first, the device-assertion tests apart (one process each), the interpreter tests in their
    own TRITON_INTERPRET=1 process, each part's limits within its minutes (one command under ten
    minutes), and a step's log, pytest line and JUnit counts (failures and errors apart) in the
    summary."""
    from benchmarks import gpu_check

    steps = gpu_check.plan(tmp_path, cpus=16, python="python")
    names = [s.name for s in steps]
    assert names == ["cluster", "tests", "isolated", "interpreter", "bench", "table", "readme"]
    assert [n for part in gpu_check.PARTS.values() for n in part] == names
    by = {s.name: s for s in steps}
    tests, interp, bench = by["tests"], by["interpreter"], by["bench"]
    assert "tests/test_kernel_report.py" in tests.argv and "tests/test_cuda_tier.py" in tests.argv
    assert tests.argv[tests.argv.index("-m", 2) + 1] == "(slow or not slow) and not device_assert"
    assert by["isolated"].argv[-4:-2] == ["--isolated", "device_assert"]
    assert (
        interp.env == {"TRITON_INTERPRET": "1"}
        and interp.argv[interp.argv.index("-m", 2) + 1] == "interpreter and not slow"
    )
    assert "--quick" in bench.argv and "--max-minutes" in bench.argv
    for part, minutes in gpu_check.PART_MINUTES.items():
        assert sum(by[n].timeout_s for n in gpu_check.PARTS[part]) <= minutes * 60 <= 10 * 60
    ok = gpu_check.Step("ok", [sys.executable, "-c", "print('1 passed, 2 skipped in 0.1s')"], 60)
    slow = gpu_check.Step("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    records = [gpu_check.run_step(s, tmp_path, tmp_path) for s in (ok, slow)]
    assert records[0]["status"] == "passed" and records[0]["result"] == "1 passed, 2 skipped in 0.1s"
    assert records[1]["status"].startswith("timed out")
    md = gpu_check.write_summary(tmp_path, {"gpu": "Test GPU", "commit": "abc"}, records)
    assert "| ok | passed |" in md and "- gpu: Test GPU" in md
    assert json.loads((tmp_path / "summary.json").read_text())["steps"][1]["name"] == "slow"


def test_gpu_check_counts_failures_and_errors_apart(tmp_path):
    """A JUnit file's failures (a test that ran and was wrong) and errors (a test that could not
    run: a broken CUDA context) are counted apart, as the summary shows them.  Kills: adding them up."""
    from benchmarks import gpu_check

    xml = tmp_path / "t.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" tests="10" failures="2" errors="3" skipped="1"></testsuite></testsuites>'
    )
    assert gpu_check.junit_counts(xml) == dict(tests=10, failed=2, errors=3, skipped=1, passed=4)
    step = gpu_check.Step("t", [sys.executable, "-c", "print('x')", "--junitxml", str(xml)], 30)
    rec = gpu_check.run_step(step, tmp_path, tmp_path)
    md = gpu_check.write_summary(tmp_path, {}, [rec])
    assert "| t | failed | " in md or "| t | passed | " in md
    assert "| 4 | 2 | 3 |" in md


def test_seq_floor_uses_the_on_chip_step_only_when_one_sm_holds_the_weights():
    """A recurrence whose W_hh fits one SM is charged ``cta_step_us`` a step (a record without it:
    ``cta_sync_us``), else ``step_us``."""
    from benchmarks.cases import Cost
    from benchmarks.floors import row_floors

    machine = dict(
        bandwidth_gbs=1000.0,
        matmul_tflops={"bf16": 100.0},
        step_us=4.0,
        step_source="grid_sync_us",
        cta_sync_us=0.5,
        smem_per_sm=228 * 1024,
    )
    small = Cost(bytes=1, flops=1, steps=1000, tokens=1, recurrent_bytes=4 * 128 * 128 * 2)
    large = Cost(bytes=1, flops=1, steps=1000, tokens=1, recurrent_bytes=4 * 1024 * 1024 * 2)
    f_small, f_large = row_floors(small, machine, "bf16"), row_floors(large, machine, "bf16")
    assert f_small["seq_step_source"] == "cta_sync_us"
    assert f_small["seq_floor_ms"] == pytest.approx(1000 * 0.5e-3)
    assert f_large["seq_step_source"] == "grid_sync_us"
    assert f_large["seq_floor_ms"] == pytest.approx(1000 * 4.0e-3)
    stepped = row_floors(small, dict(machine, cta_step_us=0.8), "bf16")  # the dependent-step probe measured
    assert stepped["seq_step_source"] == "cta_step_us" and stepped["seq_floor_ms"] == pytest.approx(1000 * 0.8e-3)
    assert row_floors(large, dict(machine, cta_step_us=0.8), "bf16")["seq_step_source"] == "grid_sync_us"
    # a machine record from before the CTA probe (or without it) charges step_us to every row
    old = {k: v for k, v in machine.items() if k not in ("cta_sync_us", "smem_per_sm")}
    assert row_floors(small, old, "bf16")["seq_floor_ms"] == pytest.approx(1000 * 4.0e-3)


@pytest.mark.interpreter
def test_the_dependent_step_probe_computes_a_recurrence():
    """The on-chip step floor's probe kernel runs the chain it claims (h <- tanh(h W) each step,
    fp16 state), checked in Triton's interpreter against torch.  Kills: a probe whose loop the
    compiler could drop or that skips the product."""
    import fastrnn  # noqa: F401  (decides interpreted vs compiled kernels first)
    from benchmarks import floors

    step = floors._grid_sync_kernel()[2]
    torch.manual_seed(0)
    h0 = torch.randn(16, 16).half()
    w = (torch.randn(16, 16) / 4).half()
    h = h0.clone()
    step[(1,)](h, w, 3, num_warps=1)
    want = h0
    for _ in range(3):
        want = torch.tanh(want.float() @ w.float()).half()
    torch.testing.assert_close(h, want, atol=2e-3, rtol=2e-3)
