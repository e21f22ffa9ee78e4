"""The benchmark kinds beyond torch.nn (``benchmarks/beyond.py``): ``lnrnn`` (LayerNormLSTM/GRU) and
``states`` (``return_states=True``), their providers on tiny CPU rows (the GPU suite's code with
the kernels in Triton's interpreter), their grids and costs."""

from __future__ import annotations

import pytest
import torch

from benchmarks import cases, grids
from benchmarks.cases import CPU_SUITE, GPU_SUITE, Case
from benchmarks.cli import measure_row
from benchmarks.timing import TimingConfig
from helpers import device

MACHINE = {
    "bandwidth_gbs": 10.0,
    "matmul_tflops": {"fp32": 0.1, "fp64": 0.05},
    "step_us": 2.0,
    "step_source": "cpu_op_us",
}
CFG = TimingConfig(rep_ms=1.0, warmup_ms=0.0, min_reps=2, max_reps=2, flush_l2=False)


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "case",
    [
        Case("lnrnn", "LN_LSTM", "fp32", B=3, H=8, T=4, packed=True, extra=(("zo", 0.1),)),
        Case("lnrnn", "LN_GRU", "fp32", B=3, H=8, T=4, run="fwdbwd", extra=(("zo", 0.1),)),
        Case("states", "LSTM", "fp32", B=3, H=8, T=4, layers=2, bidir=True, packed=True),
        Case("states", "LSTM", "fp32", B=3, H=8, T=4, run="fwdbwd"),
    ],
    ids=lambda c: c.key,
)
def test_gpu_suite_providers_run_on_cpu(case):
    providers = ["fastrnn", "cudnn", "loop"]
    row, fatal = measure_row(case, suite=GPU_SUITE, providers=providers, device=device(), machine=MACHINE, cfg=CFG,
                             base_seed=0, run_slow=True)  # fmt: skip
    assert fatal is None
    assert all(row["results"][p]["status"] == "ok" for p in providers), row["results"]
    assert row["speedup"] > 0
    assert row["results"]["fastrnn"]["note"].startswith("requested 'triton' -> triton")
    assert "without" in row["results"]["cudnn"]["note"]
    if case.kind == "lnrnn":
        assert row["max_abs_diff"] is None  # the plain layer's output differs by design: not compared
    elif case.run == "fwd":
        assert row["max_abs_diff"] < 1e-5  # the states rows' output is torch.nn's


def test_cpu_suite_rows_compare_auto_with_the_step_loop():
    case = cases.select(grids.grid("cpu"), ["kind=states", "run=fwd"])[0]
    row, fatal = measure_row(case, suite=CPU_SUITE, providers=["fastrnn_auto", "torch_nn"], device=torch.device("cpu"),
                             machine=MACHINE, cfg=CFG, base_seed=0, run_slow=False)  # fmt: skip
    assert fatal is None and row["max_abs_diff"] == 0.0
    assert "torch" in row["results"]["fastrnn_auto"]["note"]


def test_grids_and_costs():
    for name in ("full", "quick", "cpu", "smoke"):
        rows = grids.grid(name)
        assert cases.select(rows, ["kind=lnrnn"]) and cases.select(rows, ["kind=states"]), name
    quick_states = cases.select(grids.grid("quick"), ["kind=states"])
    rnn_keys = {c.key for c in grids.grid("quick")}
    # every states row has an rnn row of the same shape: return_states vs without
    assert all(c.key.replace("states/", "rnn/", 1) in rnn_keys for c in quick_states)
    case = Case("lnrnn", "LN_LSTM", "fp16", 16, 64, 1024, extra=(("zo", 0.1),))
    assert case.key == "lnrnn/LN_LSTM/fp16/B16/H64/T1024/L1/uni/dense/fwd/zo0.1"
    assert Case.from_fields(case.fields()) == case
    c_ln = cases.KINDS["lnrnn"].cost(case, 0)
    c_rnn = cases.KINDS["rnn"].cost(Case("rnn", "LSTM", "fp16", 16, 64, 1024), 0)
    assert (c_ln.flops, c_ln.steps, c_ln.bytes) == (c_rnn.flops, c_rnn.steps, c_rnn.bytes)
