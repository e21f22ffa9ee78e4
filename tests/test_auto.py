"""``backend="auto"`` on CUDA (fastrnn.auto): the choice from injected timings and memory.

A CPU machine has no CUDA device, so these tests drive :func:`fastrnn.auto.choose` directly with
a fake device description (``device_info``), fake measurements (``measure_backend``), fake free
memory and a temporary cache directory: table hit, cache hit, measurement, measurement off, cache
invalidated by a kernel change or another device, memory, compile (no measurement in a trace),
DDP agreement (two gloo processes), and ``explain``'s text.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastrnn import auto, dispatch

CUDA0 = torch.device("cuda", 0)
INFO = auto.DeviceInfo("Fake GPU", 100, "2.x", "9", "3.x", "k1")


def _cls(**kw) -> auto.ShapeClass:
    base = dict(mode="LSTM", dtype="torch.float16", layers=1, bidirectional=False, packed=False, embedded=False,
                hidden_size=256, proj_size=0, b_bucket=4, t_bucket=5, training=False)  # fmt: skip
    return auto.ShapeClass(**{**base, **kw})


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A fake device, an empty shipped table, a private cache dir, measurements counted and given
    by ``fake.times`` (ms per backend) and ``fake.peaks`` (MiB)."""

    class Fake:
        info = INFO
        times = {"torch": 2.0, "triton": 1.0}
        peaks = {"torch": 100.0, "triton": 150.0}
        free = 10_000.0
        calls: list[str] = []
        table: dict = {"devices": {}}

    f = Fake()
    f.calls = []
    monkeypatch.setenv("FASTRNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTRNN_AUTO_MEASURE", raising=False)
    monkeypatch.setattr(auto, "device_info", lambda index: f.info)
    monkeypatch.setattr(auto, "_table", lambda: f.table)
    monkeypatch.setattr(auto, "free_mib", lambda device: f.free)

    def measure_backend(fn, params, training, device):
        name = fn()
        f.calls.append(name)
        return f.times[name], f.peaks[name]

    monkeypatch.setattr(auto, "measure_backend", measure_backend)
    auto.clear_cache(disk=False)
    auto.set_measurement(None)
    yield f
    auto.clear_cache(disk=False)
    auto.set_measurement(None)


RUNNERS = auto.Runners(lambda: "torch", lambda: "triton")


def test_buckets_and_keys():
    assert [auto.bucket(n) for n in (1, 2, 3, 4, 5, 16, 17)] == [0, 1, 2, 2, 3, 4, 5]
    assert [auto.bucket(n, 4) for n in (1, 4, 5, 16, 1024, 1025)] == [0, 1, 2, 2, 5, 6]
    key = _cls().key()
    assert key == "LSTM|float16|L1|uni|dense|rnn|H256|P0|B4|T5|infer"
    assert auto._matches(key, _cls().any_size().key()) and not auto._matches(key, _cls(training=True).key())


def test_measured_once_then_cached_in_memory_and_on_disk(fake):
    cls = _cls()
    assert auto.choose(cls, CUDA0, RUNNERS, 256)[0] == "triton"
    assert fake.calls == ["torch", "triton"]  # measured on first use
    backend, why = auto.choose(cls, CUDA0, RUNNERS, 256)
    assert backend == "triton" and why.startswith("this process: fastrnn 1 ms, torch.nn 2 ms")
    assert fake.calls == ["torch", "triton"]  # not measured again
    auto.clear_cache(disk=False)  # a new process: the device cache answers
    backend, why = auto.choose(cls, CUDA0, RUNNERS, 256)
    assert why.startswith("device cache: fastrnn 1 ms, torch.nn 2 ms") and len(fake.calls) == 2
    files = list(auto.cache_dir().glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["device_key"] == INFO.key()
    auto.clear_cache()  # and on disk
    assert not list(auto.cache_dir().glob("*.json"))
    auto.choose(cls, CUDA0, RUNNERS, 256)
    assert len(fake.calls) == 4


def test_torch_wins_where_it_is_faster(fake):
    fake.times = {"torch": 1.0, "triton": 3.0}
    assert auto.choose(_cls(), CUDA0, RUNNERS, 256)[0] == "torch"


def test_another_device_or_kernel_change_invalidates_the_cache(fake):
    auto.choose(_cls(), CUDA0, RUNNERS, 256)
    auto.clear_cache(disk=False)
    fake.info = dataclasses.replace(INFO, kernels="k2")  # the kernel sources changed
    auto.choose(_cls(), CUDA0, RUNNERS, 256)
    assert len(fake.calls) == 4
    auto.clear_cache(disk=False)
    fake.info = dataclasses.replace(INFO, name="Other GPU")
    auto.choose(_cls(), CUDA0, RUNNERS, 256)
    assert len(fake.calls) == 6
    assert len(list(auto.cache_dir().glob("*.json"))) == 3


def test_kernel_hash_follows_the_kernel_sources():
    h = auto.kernel_hash()
    assert len(h) == 16 and h == auto.kernel_hash()


KERNELS = "1|ieee|block_b=16|block_b=16@0123456789abcdef"  # the identity of the kernels that would run (faked)


def test_shipped_table_hit_and_entries_of_other_kernels(fake):
    """An entry answers only for the kernels it measured (the same plan and device code,
    ``fastrnn.kernels.tiers.kernel_identity``); for others it is ignored and the reason says so.
    Kills: using an entry whatever kernels it measured."""
    cls = _cls()
    entry = {"triton_ms": 5.0, "torch_ms": 2.0, "triton_peak_mib": 10.0, "torch_peak_mib": 20.0, "tokens": 1024,
             "kernels": KERNELS}  # fmt: skip
    fake.table = {"devices": {"Fake GPU": {"commit": "abcdef123456", "classes": {cls.key(): entry}}}}
    backend, why = auto.choose(cls, CUDA0, RUNNERS, 256, KERNELS)
    assert backend == "torch" and why.startswith(
        "shipped table (Fake GPU, commit abcdef12): fastrnn 5 ms, torch.nn 2 ms"
    )
    assert fake.calls == []  # the table answered: nothing measured
    other = KERNELS.replace("block_b=16@", "block_b=32@")  # another launch plan: not these kernels
    backend, why = auto.choose(cls, CUDA0, RUNNERS, 256, other)
    assert backend == "triton" and fake.calls == ["torch", "triton"]
    assert why.startswith("measured") and "the shipped table does not apply (it measured other kernels" in why


def test_a_table_of_other_kernels_is_not_used_and_explain_says_why(fake, monkeypatch):
    """With measurement off, an entry of other kernels does not answer either: the rule does, and
    the reason reaches the explanation."""
    cls = _cls()
    entry = {"triton_ms": 5.0, "torch_ms": 2.0, "tokens": 1024, "kernels": KERNELS}
    fake.table = {"devices": {"Fake GPU": {"commit": "abcdef123456", "classes": {cls.key(): entry}}}}
    monkeypatch.setenv("FASTRNN_AUTO_MEASURE", "0")
    backend, why = auto.choose(cls, CUDA0, RUNNERS, 256, KERNELS.replace("@0123", "@9999"))
    assert backend == "torch" and "rule" in why and "the shipped table does not apply (it measured other" in why
    assert fake.calls == []
    fake.table = {"devices": {}}
    assert "the shipped table has no Fake GPU" in auto.choose(cls, CUDA0, RUNNERS, 256, KERNELS)[1]


def test_measurement_off_uses_the_table_else_the_rule(fake, monkeypatch):
    monkeypatch.setenv("FASTRNN_AUTO_MEASURE", "0")
    backend, why = auto.choose(_cls(), CUDA0, RUNNERS, 256)
    assert backend == "torch" and "rule" in why and "measurement off" in why and fake.calls == []
    assert auto.choose(_cls(dtype="torch.bfloat16"), CUDA0, RUNNERS, 256)[0] == "triton"  # the rule's bf16 case
    auto.set_measurement(True)  # the switch overrides the environment
    assert auto.choose(_cls(), CUDA0, RUNNERS, 256)[0] == "triton" and fake.calls == ["torch", "triton"]


def test_memory_never_picks_the_one_that_does_not_fit(fake):
    fake.peaks = {"torch": 100.0, "triton": 400.0}  # at 256 tokens
    auto.choose(_cls(), CUDA0, RUNNERS, 256)
    fake.free = 1000.0
    assert auto.choose(_cls(), CUDA0, RUNNERS, 512)[0] == "triton"  # needs 800 of 1000 MiB
    fake.free = 700.0
    backend, why = auto.choose(_cls(), CUDA0, RUNNERS, 512)  # 800 > 700 >= 200
    assert backend == "torch" and "would not fit the free memory" in why
    fake.free = 100.0  # neither fits: the faster one (it may still fit after the allocator frees)
    assert auto.choose(_cls(), CUDA0, RUNNERS, 512)[0] == "triton"


def test_a_backend_out_of_memory_loses(fake):
    fake.times = {"torch": 2.0, "triton": None}
    fake.peaks = {"torch": 1.0, "triton": None}
    backend, why = auto.choose(_cls(), CUDA0, RUNNERS, 256)
    assert backend == "torch" and "fastrnn failed" in why


def test_in_a_trace_nothing_is_measured_and_sizes_are_ignored(fake):
    """torch.compile: the class has no size buckets; every known bucket must prefer the kernels."""
    auto.choose(_cls(b_bucket=4), CUDA0, RUNNERS, 256)  # triton faster at B bucket 4
    fake.times = {"torch": 1.0, "triton": 3.0}
    auto.choose(_cls(b_bucket=7), CUDA0, RUNNERS, 256)  # torch faster at B bucket 7
    assert len(fake.calls) == 4
    args = ("LSTM", "torch.float16", 1, False, False, False, 256, 0, False, 0, KERNELS)
    backend, why = dispatch._auto_in_trace(*args)
    assert backend == "torch" and "2 size bucket(s), the least favourable" in why and len(fake.calls) == 4
    auto.clear_cache()
    backend, why = dispatch._auto_in_trace(*args)  # nothing known: the rule, never a measurement
    assert backend == "torch" and "inside torch.compile" in why and len(fake.calls) == 4
    assert getattr(dispatch._auto_in_trace, "_dynamo_marked_constant", False)  # run eagerly by Dynamo


def test_ddp_forward_never_measures(fake, monkeypatch):
    monkeypatch.setattr(auto, "_distributed", lambda: True)
    backend, why = auto.choose(_cls(), CUDA0, RUNNERS, 256)
    assert backend == "torch" and "under DDP" in why and fake.calls == []
    with auto.calibrating():  # calibrate() measures
        assert auto.choose(_cls(), CUDA0, RUNNERS, 256)[0] == "triton"
    assert fake.calls == ["torch", "triton"]


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, json, torch, torch.distributed as dist
    from fastrnn import auto
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    info = auto.DeviceInfo("Fake GPU", 100, "2.x", "9", "3.x", "k1")
    auto.device_info = lambda index: info
    auto.free_mib = lambda device: 1e9
    # rank 1's "measurement" disagrees with rank 0's
    auto.measure_backend = lambda fn, params, training, device: ((1.0 if fn() == "triton" else 2.0) if rank == 0
                                                                 else (3.0 if fn() == "triton" else 2.0), 1.0)
    cls = auto.ShapeClass("GRU", "torch.float16", 1, False, False, False, 128, 0, 3, 4, True)
    runners = auto.Runners(lambda: "torch", lambda: "triton")

    class Model(torch.nn.Module):
        def forward(self, x):
            return auto.choose(cls, torch.device("cuda", 0), runners, 64)[0]

    before = Model()(None)  # under DDP a forward without calibration: the rule (no measurement)
    auto.calibrate(Model(), None)
    after = Model()(None)
    # one file per rank: two processes printing to one pipe can interleave their lines
    with open(os.path.join(os.environ["DDP_RESULTS"], f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "before": before, "after": after}, f)
    dist.destroy_process_group()
    """
)


def test_ddp_calibrate_every_rank_adopts_rank_0(tmp_path):
    script = tmp_path / "ddp_auto.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["FASTRNN_CACHE_DIR"] = str(tmp_path / "cache")
    env["DDP_RESULTS"] = str(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["before"] for r in results] == ["torch", "torch"]  # fp16: the rule, on every rank
    assert [r["after"] for r in results] == ["triton", "triton"]  # rank 0 measured triton faster
    assert not list((tmp_path / "cache").glob("**/*.json"))  # under DDP nothing is written to disk


def _fake_cuda(monkeypatch):
    """Dispatch sees CPU tensors as ``cuda:0`` tensors on an NVIDIA GPU (nothing runs on it: the
    measurements are the ``fake`` fixture's)."""
    from fastrnn.kernels import tiers

    env = dataclasses.replace(dispatch._environment(), interpret=False, hip=False)
    monkeypatch.setattr(dispatch, "_environment", lambda: env)
    monkeypatch.setattr(dispatch, "_device_names", lambda device: ("cuda", "cuda:0"))
    monkeypatch.setattr(tiers, "smem_per_block", lambda device: None)


def test_explain_names_the_source_times_and_memory(fake, monkeypatch):
    """explain() makes the same decision as a forward (measuring, as the first call would); with
    a CUDA device faked, its line names the backend, the times, the memory and their source."""
    import fastrnn

    _fake_cuda(monkeypatch)
    m = fastrnn.LSTM(8, 256).half()
    monkeypatch.setattr(m, "_runners", lambda input, hx, decision: RUNNERS)
    x = torch.empty(5, 16, 8, dtype=torch.float16)  # T = 5, B = 16
    line = fastrnn.explain(m, x)
    assert line.startswith("requested 'auto' -> triton: measured: fastrnn 1 ms, torch.nn 2 ms per call"), line
    assert "peak memory 150 / 100 MiB at 80 tokens" in line and "tier 2" in line
    assert fastrnn.explain(m, x) == line  # the module remembers its decision
    fastrnn.auto.clear_cache(disk=False)  # forgotten in memory: the device cache answers
    assert fastrnn.explain(m, x).startswith("requested 'auto' -> triton: device cache: fastrnn 1 ms")
    fake.times = {"torch": 1.0, "triton": 3.0}
    assert fastrnn.explain(m, torch.empty(5, 2000, 8, dtype=torch.float16)).startswith(
        "requested 'auto' -> torch: measured: fastrnn 3 ms"
    )  # another B bucket: another class, measured


def test_auto_in_eval_mode_with_gradients_measures_the_forward_only(fake, monkeypatch):
    """In eval() with gradients on, a backward through torch.nn's cuDNN RNN is refused by cuDNN
    ("cudnn RNN backward can only be called in training mode"): auto measures what the call runs,
    the forward, and explain() says so without raising.  Kills: measuring a backward in eval()."""
    import fastrnn

    _fake_cuda(monkeypatch)
    trained = []
    real = auto.measure

    def measure(runners, training, device, tokens):
        trained.append(training)
        return real(runners, training, device, tokens)

    monkeypatch.setattr(auto, "measure", measure)
    m = fastrnn.GRU(8, 256).half().eval()
    monkeypatch.setattr(m, "_runners", lambda input, hx, decision: RUNNERS)
    x = torch.empty(5, 16, 8, dtype=torch.float16)
    assert torch.is_grad_enabled() and m.weight_hh_l0.requires_grad
    assert "|infer" not in fastrnn.explain(m, x)
    assert trained == [False]
    m.train()
    fastrnn.explain(m, x)
    assert trained == [False, True]


def test_a_backend_that_raises_while_measured_loses_and_nothing_raises(fake, monkeypatch):
    """A backend that raises in its first-use measurement (cuDNN refusing a call, the kernels
    failing) loses with a warning; the decision and explain() never raise.  Kills: letting the
    torch side's exception escape from the measurement."""

    def measure_backend(fn, params, training, device):
        name = fn()
        if name == "torch":
            raise RuntimeError("cudnn RNN backward can only be called in training mode")
        return 1.0, 1.0

    monkeypatch.setattr(auto, "measure_backend", measure_backend)
    with pytest.warns(RuntimeWarning, match="torch.nn failed on a first-use measurement"):
        backend, why = auto.choose(_cls(), CUDA0, RUNNERS, 256)
    assert backend == "triton" and "torch.nn failed" in why


def test_with_deterministic_algorithms_auto_does_not_time(fake):
    """Under ``torch.use_deterministic_algorithms(True)`` auto never times a call (a choice by
    timing could differ between two runs, and with it their results): the table, else the rule.
    Kills: a measurement that ignores the flag."""
    torch.use_deterministic_algorithms(True)
    try:
        backend, why = auto.choose(_cls(), CUDA0, RUNNERS, 256)
    finally:
        torch.use_deterministic_algorithms(False)
    assert fake.calls == [] and backend == "torch" and "deterministic algorithms" in why
    assert auto.choose(_cls(), CUDA0, RUNNERS, 256)[0] == "triton" and fake.calls == ["torch", "triton"]
