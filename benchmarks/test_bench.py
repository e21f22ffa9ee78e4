"""pytest-benchmark view of a representative subset of rows: ``pytest benchmarks/ --benchmark-only``.

On a GPU: ``fastrnn`` (triton backend) vs ``cudnn`` on a few headline and core rows (a row the
kernels cannot serve is skipped with fastrnn's reason).  On the CPU: small shapes, fastrnn with
``backend='auto'`` vs ``torch.nn``.  Each row is a pytest-benchmark *group*, so the two providers
sit side by side; ``--benchmark-autosave`` / ``--benchmark-compare`` compare against a saved
baseline (see ``benchmarks/README.md``).  The full sweep is ``python -m benchmarks``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed (pip install pytest-benchmark)")

import fastrnn  # noqa: E402
from benchmarks.cases import Case  # noqa: E402
from benchmarks.floors import set_strict_fp32  # noqa: E402
from benchmarks.rnn import KIND  # noqa: E402

CUDA = torch.cuda.is_available()

if CUDA:
    ROWS = [
        Case("rnn", "LSTM", "fp16", B=16, H=768, T=1024),  # the headline: cuDNN's best case
        Case("rnn", "LSTM", "fp16", B=16, H=768, T=1024, run="fwdbwd"),
        Case("rnn", "LSTM", "fp16", B=64, H=256, T=1024),
        Case("rnn", "GRU", "bf16", B=16, H=512, T=1024),
        Case("rnn", "RNN", "fp16", B=16, H=128, T=1024),
        Case("rnn", "RNN", "fp32", B=64, H=128, T=1024, run="fwdbwd"),
        Case("rnn", "LSTM", "fp16", B=16, H=128, T=1024, packed=True),
        Case("rnn", "GRU", "fp16", B=16, H=128, T=128, layers=2, bidir=True),
    ]
    PROVIDERS = ("fastrnn", "cudnn")
else:
    ROWS = [
        Case("rnn", "LSTM", "fp32", B=8, H=64, T=32),
        Case("rnn", "LSTM", "fp32", B=8, H=64, T=32, run="fwdbwd"),
        Case("rnn", "GRU", "fp32", B=8, H=64, T=32),
        Case("rnn", "RNN", "fp32", B=8, H=64, T=32),
        Case("rnn", "LSTM", "fp32", B=8, H=64, T=32, packed=True),
    ]
    PROVIDERS = ("fastrnn_auto", "torch_nn")


@pytest.fixture(scope="module", autouse=True)
def _settings():
    """TF32 off (GPU); one CPU thread (steadier on a shared machine). Restored afterwards."""
    threads = torch.get_num_threads()
    set_strict_fp32()
    if not CUDA:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", ROWS, ids=lambda c: c.key.replace("/", "-"))
def test_rnn(benchmark, case: Case, provider: str) -> None:
    device = torch.device("cuda" if CUDA else "cpu")
    workload = KIND.setup(case, device, case.seed(0))
    step = KIND.providers[provider](case, workload, device)
    try:
        out = step()  # first call: compilation and lazy init, outside the measurement
    except fastrnn.BackendUnavailable as e:
        pytest.skip(f"fastrnn cannot run this row: {e}")
    assert torch.isfinite(out).all()

    if CUDA:

        def call():
            step()
            torch.cuda.synchronize()

    else:
        call = step
    benchmark.group = case.key
    benchmark.extra_info.update(case.fields(), provider=provider, note=getattr(step, "note", None))
    benchmark.pedantic(call, rounds=20 if CUDA else 30, warmup_rounds=3, iterations=1)
