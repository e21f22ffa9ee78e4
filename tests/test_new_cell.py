"""A new cell by registration alone: the kernel layer has one home per cell.

The cell is a GRU without a reset gate (``tests/new_cell_def.py``), which torch.nn does not
have.  Registering exactly three things -- its spec (:func:`fastrnn.kernels.cells.register`), its
jit maths (two ``@triton.jit`` functions) and its reference step (:func:`fastrnn.reference.register`,
forward only: the reference differentiates it by autograd) -- it then

* runs through the tier-1 and the tier-2 kernels (in the interpreter) against that reference,
  forward and every gradient, in float64;
* gets a module (:func:`fastrnn.modules.build` -> :class:`fastrnn.modules.Recurrent`, parameters
  from its spec) whose forward and backward match the reference;
* compiles for sm_90 in the kernel report (tier 1, forward and backward) without spills in the loop;
* gets rows in every benchmark grid of the ``rnn`` kind, and one of them runs on the CPU

-- with no edit to a kernel, a launcher, the ops, the stack, the modules, the report or the
benchmarks.  If that ever needs more than registration, a cell has lost its home.
See ARCHITECTURE.md ("Adding a cell").
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import new_cell_def
import pytest
import torch
from new_cell_def import MODE, _gru_nr_backward, _gru_nr_forward

from fastrnn import reference
from fastrnn.functional import recurrent_stack
from fastrnn.kernels import _runtime, cells
from fastrnn.modules import Recurrent, build, fast_twin
from helpers import device


@pytest.fixture
def new_cell():
    cell = new_cell_def.register()
    yield cell
    new_cell_def.unregister()


def _weights(G, I, H, layers, D, gen):
    ws = []
    for layer in range(layers):
        for _ in range(D):
            inp = I if layer == 0 else D * H
            ws += [torch.randn(G * H, inp, generator=gen, dtype=torch.float64) * 0.5,
                   torch.randn(G * H, H, generator=gen, dtype=torch.float64) * 0.5,
                   torch.randn(G * H, generator=gen, dtype=torch.float64) * 0.1,
                   torch.randn(G * H, generator=gen, dtype=torch.float64) * 0.1]  # fmt: skip
    return [w.to(device()).requires_grad_() for w in ws]


@pytest.mark.parametrize("tier", [1, 2])
def test_a_cell_registered_alone_runs_in_every_tier(new_cell, tier):
    gen = torch.Generator().manual_seed(0)
    T, B, I, H, layers, D = 5, 3, 4, 20, 2, 2  # H = 20: two tier-2 programs per layer, one partial
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(device()).requires_grad_()
    h0 = torch.randn(layers * D, B, H, generator=gen, dtype=torch.float64).to(device()).requires_grad_()
    lengths = torch.tensor([5, 2, 4], device=device())
    weights = _weights(new_cell.G, I, H, layers, D, gen)
    kw = dict(num_layers=layers, bidirectional=True, lengths=lengths)
    d_out = torch.randn(T, B, D * H, generator=gen, dtype=torch.float64).to(device())
    d_hn = torch.randn(layers * D, B, H, generator=gen, dtype=torch.float64).to(device())
    leaves = [x, h0, *weights]

    before = dict(_runtime.LAUNCHES)
    out, h_n, c_n = recurrent_stack(MODE, x, weights, h0, tier=tier, **kw)
    got = torch.autograd.grad((out * d_out).sum() + (h_n * d_hn).sum(), leaves)
    launched = {k for k, n in _runtime.LAUNCHES.items() if n != before.get(k, 0)}
    assert launched == ({"recurrent_fwd", "recurrent_bwd"} if tier == 1 else {"multi_fwd_tier2", "multi_bwd_tier2"})

    ref_out, ref_hn, ref_cn = reference.stack_forward(MODE, x, weights, h0, **kw)
    want = torch.autograd.grad((ref_out * d_out).sum() + (ref_hn * d_hn).sum(), leaves)
    assert c_n is None and ref_cn is None
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n, ref_hn, rtol=1e-10, atol=1e-10)
    names = ["x", "h0"] + [f"weight {i}" for i in range(len(weights))]
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_the_reference_backward_of_a_registered_cell_is_its_autograd(new_cell):
    """The reference's BPTT loop (layer_backward) serves a cell registered without a hand-written
    backward, through autograd of its step, and agrees with autograd of the whole loop."""
    gen = torch.Generator().manual_seed(1)
    T, B, I, H = 4, 2, 3, 5
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64, requires_grad=True)
    w_ih, w_hh, b_ih, b_hh = (torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
                              for s in ((2 * H, I), (2 * H, H), (2 * H,), (2 * H,)))  # fmt: skip
    out, h_n, _, cache = reference.layer_forward(MODE, x, w_ih, w_hh, b_ih, b_hh)
    d_out, d_hn = torch.randn_like(out), torch.randn_like(h_n)
    manual = reference.layer_backward(cache, d_out, d_hn)
    auto = torch.autograd.grad((out * d_out).sum() + (h_n * d_hn).sum(), [x, w_ih, w_hh, b_ih, b_hh])
    for name, a in zip(["x", "w_ih", "w_hh", "b_ih", "b_hh"], auto, strict=True):
        torch.testing.assert_close(manual[name], a, rtol=1e-10, atol=1e-12)


def test_registration_is_checked():
    with pytest.raises(ValueError, match="a cell state must be saved"):
        cells.Cell("BAD", "BAD", ("i",), (), _gru_nr_forward, _gru_nr_backward, has_cell_state=True)
    with pytest.raises(ValueError, match="inner_bias names unknown gates"):
        cells.Cell("BAD", "BAD", ("i",), (), _gru_nr_forward, _gru_nr_backward, inner_bias=("x",))
    with pytest.raises(ValueError, match="unknown recurrent cell 'NOPE'"):
        cells.get("NOPE")


@pytest.mark.interpreter
def test_a_registered_cell_gets_a_module(new_cell):
    """``build`` gives the cell a module (no torch.nn twin: :class:`Recurrent`, parameters from
    the spec with torch.nn's names, ``G*H`` rows), whose kernels' forward and backward match the
    reference step loop on its own weights."""
    assert MODE in cells.modes(twin=False, extended=False)
    torch.manual_seed(0)
    I, H, layers = 4, 6, 2
    module = build(MODE, I, H, layers, bidirectional=True, batch_first=True, dtype=torch.float64,
                   backend="triton").to(device())  # fmt: skip
    assert type(module) is Recurrent and module.mode == MODE and repr(module).startswith(f"Recurrent('{MODE}', 4, 6")
    G = new_cell.G
    assert module.weight_ih_l0.shape == (G * H, I) and module.weight_hh_l1_reverse.shape == (G * H, H)
    assert module.bias_hh_l1.shape == (G * H,) and len(module.state_dict()) == layers * 2 * 4
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, I, generator=gen, dtype=torch.float64).to(device()).requires_grad_()  # (B, T, I)
    h0 = torch.randn(layers * 2, 3, H, generator=gen, dtype=torch.float64).to(device()).requires_grad_()
    leaves = [x, h0, *module.parameters()]

    before = _runtime.LAUNCHES.get("recurrent_fwd", 0)
    out, h_n = module(x, h0)
    assert _runtime.LAUNCHES.get("recurrent_fwd", 0) > before  # the kernels ran
    d_out, d_hn = torch.randn_like(out), torch.randn_like(h_n)
    got = torch.autograd.grad((out * d_out).sum() + (h_n * d_hn).sum(), leaves)

    kw = dict(num_layers=layers, bidirectional=True)
    ref_out, ref_hn, _ = reference.stack_forward(MODE, x.transpose(0, 1), module.flat_weights(), h0, **kw)
    ref_out = ref_out.transpose(0, 1)
    want = torch.autograd.grad((ref_out * d_out).sum() + (ref_hn * d_hn).sum(), leaves)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n, ref_hn, rtol=1e-10, atol=1e-10)
    names = ["x", "h0"] + [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")

    twin = fast_twin(module, backend="torch")  # the reference step loop, on the very same parameters
    assert type(twin) is Recurrent and twin.mode == MODE and twin.weight_hh_l0 is module.weight_hh_l0
    torch.testing.assert_close(twin(x, h0)[0], out, rtol=1e-10, atol=1e-10)


def test_a_registered_cell_compiles_without_spills(new_cell, monkeypatch):
    """The kernel report compiles the cell's tier-1 forward and backward for sm_90 in its worker
    processes (which import ``new_cell_registered`` to know the cell) without spills in the loop."""
    from fastrnn.kernels import report

    compile_report = getattr(report, "compile_report", None)
    if compile_report is None or "imports" not in inspect.signature(compile_report).parameters:
        pytest.skip(
            "the kernel report cannot compile a cell registered outside fastrnn yet: "
            "fastrnn.kernels.report.compile_report(..., imports=[module names]) must have each compile worker "
            "import those modules before it compiles"
        )
    if report.missing_tools():
        pytest.skip(
            f"CUDA tools {report.missing_tools()} not shipped in triton/backends/nvidia/bin: cannot build cubins"
        )
    tests = str(Path(__file__).resolve().parent)  # where the worker finds new_cell_registered
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p))
    configs = [report.KernelConfig(kernel, MODE, "fp16", 128, arch=90) for kernel in ("fwd", "bwd")]
    # cache=False: the report's disk cache is keyed by the kernels' sources, which hold no test cell
    rows = report.compile_report(configs, imports=["new_cell_registered"], cache=False)
    for cfg, row in zip(configs, rows, strict=True):
        assert row["error"] is None, f"{cfg.kernel}: {row['error']}"
        assert row["registers"] > 0 and not row["loop_spills"], row
        assert row["regs_ok"] and row["shared_ok"], row


@pytest.mark.interpreter
def test_a_registered_cell_gets_benchmark_rows(new_cell):
    """Every grid of the ``rnn`` benchmark kind has rows of the cell, and one runs on the CPU:
    the kernels (interpreted) against the reference step loop standing in for torch.nn."""
    import sys

    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
        sys.path.insert(0, repo)
    from benchmarks.cases import GPU_SUITE
    from benchmarks.cli import measure_row
    from benchmarks.rnn import KIND
    from benchmarks.timing import TimingConfig

    for grid, rows in KIND.grids.items():
        assert any(c.cell == MODE for c in rows()), f"no {MODE} row in the {grid} grid"
    case = next(c for c in KIND.grids["smoke"]() if c.cell == MODE and c.run == "fwd")
    machine = {"bandwidth_gbs": 10.0, "matmul_tflops": {"fp32": 0.1}, "step_us": 2.0, "step_source": "cpu_op_us"}
    cfg = TimingConfig(rep_ms=1.0, warmup_ms=0.0, min_reps=3, max_reps=3, flush_l2=False)
    row, fatal = measure_row(case, suite=GPU_SUITE, providers=["fastrnn", "cudnn", "loop"], device=torch.device("cpu"),
                             machine=machine, cfg=cfg, base_seed=0, run_slow=True)  # fmt: skip
    assert fatal is None
    assert all(row["results"][p]["status"] == "ok" for p in ("fastrnn", "cudnn", "loop")), row["results"]
    assert row["results"]["fastrnn"]["note"].startswith("requested 'triton' -> triton")
    assert "no torch.nn twin" in row["results"]["cudnn"]["note"]
    assert row["max_abs_diff"] < 1e-5
