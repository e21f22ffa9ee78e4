"""The ``seq2seq`` benchmark kind (``benchmarks/seq2seq.py``): its CPU rows, the three providers
training the same model, the recurrent layers' profiled share, and its grids."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import cases, grids  # noqa: E402
from benchmarks import seq2seq as s2s  # noqa: E402
from benchmarks.cases import CPU_SUITE, GPU_SUITE, Case  # noqa: E402
from benchmarks.cli import measure_row  # noqa: E402
from benchmarks.timing import TimingConfig  # noqa: E402
from helpers import assert_within_oracle, device  # noqa: E402

MACHINE = {
    "bandwidth_gbs": 10.0,
    "matmul_tflops": {"fp32": 0.1, "fp64": 0.05},
    "step_us": 2.0,
    "step_source": "cpu_op_us",
}
CFG = TimingConfig(rep_ms=1.0, warmup_ms=0.0, min_reps=3, max_reps=3, flush_l2=False)


def _case(cell: str, att: str, B: int, H: int, T: int, V: int, mode: str = "fwdbwd") -> Case:
    return Case("seq2seq", cell, "fp32", B, H, T, run=mode, extra=(("S", T), ("V", V), ("att", att)))


@pytest.mark.parametrize("mode", ["fwdbwd", "fwd"])
def test_cpu_rows_run_auto_against_torch_nn(mode):
    case = cases.select(grids.grid("cpu"), ["kind=seq2seq", "cell=GRU", f"run={mode}"])[0]
    row, fatal = measure_row(case, suite=CPU_SUITE, providers=["fastrnn_auto", "torch_nn"], device=torch.device("cpu"),
                             machine=MACHINE, cfg=CFG, base_seed=0, run_slow=False)  # fmt: skip
    assert fatal is None
    for p in ("fastrnn_auto", "torch_nn"):
        res = row["results"][p]
        assert res["status"] == "ok" and res["median_ms"] > 0, res
        share = float(s2s._SHARE.search(res["note"]).group(1))
        assert 0 < share < 100
    assert "-> torch" in row["results"]["fastrnn_auto"]["note"]  # auto runs torch.nn's code on the CPU
    assert row["paired_ratio"] > 0
    lines = s2s.summary_lines({"rows": [row]})
    assert len(lines) == 2 and all(("tok/s" if mode == "fwdbwd" else "sent/s") in ln for ln in lines)
    if mode == "fwd":  # fastrnn on static buffers, torch.nn step by step: the same decoding, token for token
        assert row["max_abs_diff"] == 0.0
        note = row["results"]["fastrnn_auto"]["note"]
        assert "decoding on the static path" in note and float(s2s._EAGER.search(note).group(1)) > 0
        fast, ref = (next(ln for ln in lines if f" {p}:" in ln) for p in ("fastrnn_auto", "torch_nn"))
        assert re.search(r"sent/s, [0-9.]+ ms/token \(static path\); eager path [0-9.]+ ms, .* ms/token", fast), fast
        assert "(eager)" in ref and "eager path" not in ref, ref


def test_beam_rows_decode_the_same_tokens_as_torch_nn():
    case = cases.select(grids.grid("smoke"), ["kind=seq2seq", "att=general", "run=fwd", "beam=3"])[0]
    assert s2s.beam_of(case) == 3 and case.key.endswith("/beam3")
    row, fatal = measure_row(case, suite=CPU_SUITE, providers=["fastrnn_auto", "torch_nn"], device=torch.device("cpu"),
                             machine=MACHINE, cfg=CFG, base_seed=0, run_slow=False)  # fmt: skip
    assert fatal is None and all(r["status"] == "ok" for r in row["results"].values()), row["results"]
    assert row["max_abs_diff"] == 0.0
    # and the workload's beam search is the one beam_search gives (not greedy decoding)
    wl = s2s.setup(case, torch.device("cpu"), seed=3)
    model = s2s.build_model(case, wl, torch.device("cpu"), "auto")
    got = s2s.decode_step(case, model, wl, torch.device("cpu"))()
    want = s2s.beam_search(model.eval(), wl.src, wl.src_lengths, 3, max_len=case.T, static=False).tokens
    assert torch.equal(got, want)


@pytest.mark.interpreter
@pytest.mark.parametrize("mode", ["fwdbwd", pytest.param("fwd", marks=pytest.mark.slow)])  # fwdbwd runs the forward too
def test_gpu_suite_providers_run(mode):
    case = cases.select(grids.grid("smoke"), ["kind=seq2seq", "att=none", f"run={mode}"])[0]
    providers = ["fastrnn", "fastrnn_auto", "cudnn"]
    row, fatal = measure_row(case, suite=GPU_SUITE, providers=providers, device=device(), machine=MACHINE, cfg=CFG,
                             base_seed=0, run_slow=False)  # fmt: skip
    assert fatal is None
    assert all(row["results"][p]["status"] == "ok" for p in providers), row["results"]
    assert "requested 'triton' -> triton" in row["results"]["fastrnn"]["note"]
    assert all("recurrent layers" in row["results"][p]["note"] for p in providers)


def _params_after_one_step(case: Case, provider: str, dev: torch.device, dtype: torch.dtype):
    wl = s2s.setup(case, dev, seed=7)  # same weights and batch for every provider
    model = s2s.build_model(case, wl, dev, provider).to(dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = s2s.train_step(case, model, wl, dev)()
    assert torch.isfinite(loss)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return before, after


def _assert_same_training(case: Case, provider: str, dev: torch.device):
    before, got = _params_after_one_step(case, provider, dev, torch.float32)
    _, base = _params_after_one_step(case, "torch_nn", dev, torch.float32)
    _, want = _params_after_one_step(case, "torch_nn", dev, torch.float64)  # the oracle
    assert got.keys() == base.keys() == want.keys()
    moved = 0
    for name in got:
        assert_within_oracle(got[name], base[name], want[name], torch.float32, f"{provider}: {name} after one step")
        moved += int((got[name] != before[name]).sum())
    assert moved > 0.5 * sum(p.numel() for p in got.values())  # the step did update the model


@pytest.mark.parametrize("cell,att", [("GRU", "general"), ("LSTM", "none")])
def test_auto_and_torch_nn_train_the_same_model(cell, att):
    _assert_same_training(_case(cell, att, B=4, H=16, T=6, V=30), "auto", torch.device("cpu"))


@pytest.mark.interpreter
def test_triton_trains_the_same_model():
    _assert_same_training(_case("LSTM", "general", B=2, H=8, T=3, V=12), "triton", device())


def test_torch_nn_model_is_plain_torch_nn_with_the_same_parameters():
    cfg = s2s.config_of(_case("LSTM", "general", B=2, H=8, T=3, V=12), "auto")
    ref = s2s.torch_nn_seq2seq(cfg)
    for owner in (ref.encoder, ref.decoder):
        assert type(owner.rnn.rnn) is nn.LSTM and type(owner.rnn.embedding) is nn.Embedding
    fast = s2s.Seq2Seq(cfg)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    fast.load_state_dict(ref.state_dict())  # and back: the same model


def test_recurrent_share_from_the_profiler():
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    rnn, head = nn.GRU(16, 16), nn.Linear(16, 4)
    x = torch.randn(20, 4, 16)

    def share(fn) -> float:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return s2s.recurrent_share(prof.events(), device_time=False)

    # a recurrent layer's forward and backward (generic autograd nodes on the CPU) count ...
    assert share(lambda: rnn(x)[0].sum().backward()) > 0.7
    # ... a linear layer does not ...
    assert share(lambda: head(x).sum().backward()) == 0.0
    # ... and a big output layer after it lowers the share
    big = nn.Linear(16, 4096)
    assert share(lambda: big(rnn(x)[0]).sum().backward()) < share(lambda: rnn(x)[0].sum().backward())
    assert s2s.is_recurrent_op("fastrnn::recurrence_bwd") and s2s.is_recurrent_op("aten::_cudnn_rnn_backward")
    assert not s2s.is_recurrent_op("aten::linear")


def test_grids_and_cost():
    full = cases.select(grids.grid("full"), ["kind=seq2seq"])
    assert len(full) == 2 * 2 * 2 * 2 * 2 * 3 * 3  # training, greedy and beam-5 decoding of each shape
    assert {s2s.beam_of(c) for c in full if c.run == "fwd"} == {1, 5}
    assert all(s2s.beam_of(c) == 1 for c in full if c.run == "fwdbwd")
    axes = {f: {c.fields()[f] for c in full} for f in ("cell", "att", "H", "B", "T", "S", "dtype", "run")}
    assert axes == {
        "cell": {"GRU", "LSTM"},
        "att": {"none", "general"},
        "H": {256, 512},
        "B": {64, 256},
        "T": {30, 100},
        "S": {30, 100},
        "dtype": {"fp32", "bf16", "fp16"},
        "run": {"fwd", "fwdbwd"},
    }
    quick = cases.select(grids.grid("quick"), ["kind=seq2seq"])
    assert 0 < len(quick) <= 12 and {c.key for c in quick} <= {c.key for c in full}
    assert {c.cell for c in quick} == {"GRU", "LSTM"} and {c.run for c in quick} == {"fwd", "fwdbwd"}
    decoding = {(c.cell, s2s.beam_of(c)) for c in quick if c.run == "fwd"}
    assert decoding == {("GRU", 1), ("LSTM", 1), ("GRU", 5), ("LSTM", 5)}
    assert all(grids.tier(c) <= 1 for c in quick)
    assert len(cases.select(grids.grid("cpu"), ["kind=seq2seq"])) == 4
    case = quick[0]
    assert Case.from_fields(case.fields()) == case
    c = cases.KINDS["seq2seq"].cost(case, 0)
    wl_tokens = int((s2s.make_batch(case.B, case.T, case.T, 8000, 0)[2] != 0).sum())
    assert c.tokens == wl_tokens and case.B * case.T // 2 <= c.tokens <= case.B * case.T
    assert c.flops > 0 and c.bytes > 0 and c.steps == 4 * case.T
    greedy, beam = (
        next(r for r in quick if r.run == "fwd" and r.cell == "GRU" and s2s.beam_of(r) == b) for b in (1, 5)
    )
    g, b = cases.KINDS["seq2seq"].cost(greedy, 0), cases.KINDS["seq2seq"].cost(beam, 0)
    assert b.tokens == g.tokens == greedy.B * greedy.T and 4 * g.flops < b.flops < 6 * g.flops


@pytest.mark.parametrize("provider", ["auto", "torch_nn"])
def test_recurrent_share_counts_everything_a_recurrent_module_runs(provider):
    """fastrnn's own length handling counts as the recurrent layers' time, as torch's packing does."""
    from torch.profiler import ProfilerActivity, profile

    case = _case("GRU", "none", B=4, H=8, T=6, V=20)
    wl = s2s.setup(case, torch.device("cpu"), seed=5)
    model = s2s.build_model(case, wl, torch.device("cpu"), provider)
    enc = model.encoder.rnn
    assert len(set(wl.src_lengths.tolist())) > 1  # a variable-length batch: lengths are handled
    head = nn.Linear(8, 4096)
    with torch.no_grad():
        alone = s2s.profile_share(lambda: enc(wl.src, lengths=wl.src_lengths), torch.device("cpu"), [enc])
        after = s2s.profile_share(lambda: head(enc(wl.src, lengths=wl.src_lengths)[0]), torch.device("cpu"), [enc])
        with s2s.labelled([enc]), profile(activities=[ProfilerActivity.CPU]) as prof:
            enc(wl.src, lengths=wl.src_lengths)
    assert alone == 1.0, "every operation of the recurrent module, its length handling included, counts"
    assert 0.0 < after < 1.0
    names = {e.name for e in prof.events()}
    assert s2s.RECURRENT_RANGE in names and s2s.is_recurrent_op(s2s.RECURRENT_RANGE)
    # the module left as it was
    assert "forward" not in vars(enc)


def test_host_time_per_token_runs_every_decoding_path(monkeypatch):
    """``python -m benchmarks.seq2seq --host-time``'s measurement (a tool, timed here only for running)."""
    calls = []
    real = s2s.greedy_decode

    def spy(model, src, src_lengths, max_len=None, *, sync_every=None, static=None):
        calls.append(static)
        return real(model, src, src_lengths, max_len, sync_every=sync_every, static=static)

    monkeypatch.setattr(s2s, "greedy_decode", spy)
    for static in (True, False):
        us = s2s.host_time_per_token("GRU", "general", 1, static, B=2, H=4, V=12, T=3, reps=2)
        assert isinstance(us, float) and us == us  # a number (timings of 3 steps may be noise, even < 0)
    assert set(calls) == {True, False}
