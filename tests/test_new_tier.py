"""A new kernel tier by one file and one registration (ARCHITECTURE.md, "Adding a tier").

The toy tier of ``tests/new_tier_def.py`` -- tier 1's kernels with 32-row batch tiles, its own
configuration type, forced only -- is registered and nothing else: no module of fastrnn, of its
kernel report or of the benchmarks is patched.  It then

* is forced by ``FASTRNN_TIER`` and runs a module's forward and backward (interpreter) against
  torch.nn in float64, its plan carried down through ``functional`` and ``ops``;
* is described by ``fastrnn.explain`` and refused, with its own reason, where it cannot run;
* compiles for sm_90 in the kernel report (rows from its configuration's interface alone);
* runs a benchmark row of the ``rnn`` kind with the tier forced.

If adding a tier ever needs an edit elsewhere, the tier interface has a hole: this fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import new_tier_def
import pytest
import torch

import fastrnn
from fastrnn.kernels import _runtime, tiers
from helpers import device

N = new_tier_def.NUMBER


@pytest.fixture
def toy(monkeypatch):
    tier = new_tier_def.register()
    monkeypatch.setenv("FASTRNN_TIER", str(N))
    yield tier
    new_tier_def.unregister()


@pytest.mark.interpreter
def test_a_registered_tier_runs_a_module_forward_and_backward(toy):
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 8, num_layers=2, bidirectional=True).double().to(device())
    fast = fastrnn.GRU(3, 8, num_layers=2, bidirectional=True, backend="triton").double().to(device())
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 4, 3, dtype=torch.float64, device=device(), requires_grad=True)
    decision = fast.backend_decision(x)
    assert decision.tier == N and all(isinstance(p.forward, new_tier_def.ToyConfig) for p in decision.plan)
    assert fastrnn.explain(fast, x) == "requested 'triton' -> triton: tier 9 forced by FASTRNN_TIER"
    before = dict(_runtime.LAUNCHES)
    out, h_n = fast(x)
    want, h_want = ref(x)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n, h_want, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), [x, *fast.parameters()])
    exp = torch.autograd.grad((want * g).sum(), [x, *ref.parameters()])
    for a, b in zip(got, exp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    launched = {k: v - before.get(k, 0) for k, v in _runtime.LAUNCHES.items() if v != before.get(k, 0)}
    assert launched == {"recurrent_fwd": 4, "recurrent_bwd": 4}  # 2 layers x 2 directions, its launches


def test_a_registered_tier_refuses_with_its_own_reason(toy):
    fast = fastrnn.LSTM(3, 128, backend="triton")
    x = torch.randn(2, 1, 3)
    assert "the toy tier runs hidden sizes up to 64" in fastrnn.explain(fast, x)
    with pytest.raises(fastrnn.BackendUnavailable, match="the toy tier runs hidden sizes up to 64"):
        fast(x)


def test_an_unforced_tier_is_never_chosen(toy, monkeypatch):
    monkeypatch.delenv("FASTRNN_TIER")
    assert tiers.choose_tier("GRU", 8, 0, torch.float32)[0] == 1  # automatic=False: rank 0.5 is not tried


def test_a_registered_tier_compiles_in_the_kernel_report(toy, monkeypatch):
    from fastrnn.kernels import report

    if report.missing_tools():
        pytest.skip(f"CUDA tools {report.missing_tools()} not shipped in triton/backends/nvidia/bin")
    tests = str(Path(__file__).resolve().parent)  # where the worker finds new_tier_registered
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p))
    configs = report.configs([N], ["GRU"], ["fp16"], [32], archs=(90,))
    assert {c.kernel for c in configs} == {"fwd", "bwd"} and all(c.tier == N for c in configs)
    # cache=False: the report's disk cache is keyed by the kernels' sources, which hold no test tier
    rows = report.compile_report(configs, imports=["new_tier_registered"], cache=False)
    for cfg, row in zip(configs, rows, strict=True):
        assert row["error"] is None, f"{cfg.kernel}: {row['error']}"
        assert row["block_b"] == 32 and row["num_warps"] == 4, row  # its configuration, through the interface
        assert row["registers"] > 0 and not row["loop_spills"] and row["shared_ok"], row


@pytest.mark.interpreter
def test_a_registered_tier_runs_a_benchmark_row(toy):
    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
        sys.path.insert(0, repo)
    from benchmarks.cases import GPU_SUITE
    from benchmarks.cli import measure_row
    from benchmarks.rnn import KIND
    from benchmarks.timing import TimingConfig

    case = next(c for c in KIND.grids["smoke"]() if c.cell == "GRU" and c.run == "fwd" and c.H <= 64)
    machine = {"bandwidth_gbs": 10.0, "matmul_tflops": {"fp32": 0.1}, "step_us": 2.0, "step_source": "cpu_op_us"}
    cfg = TimingConfig(rep_ms=1.0, warmup_ms=0.0, min_reps=3, max_reps=3, flush_l2=False)
    row, fatal = measure_row(case, suite=GPU_SUITE, providers=["fastrnn", "cudnn"], device=torch.device("cpu"),
                             machine=machine, cfg=cfg, base_seed=0, run_slow=True)  # fmt: skip
    assert fatal is None
    assert all(row["results"][p]["status"] == "ok" for p in ("fastrnn", "cudnn")), row["results"]
    assert "tier 9 forced by FASTRNN_TIER" in row["results"]["fastrnn"]["note"]
    assert row["max_abs_diff"] < 1e-5
