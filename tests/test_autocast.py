"""Autocast: fastrnn modules behave like their torch.nn twins (dtype of results, accuracy)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastrnn.modules import resolve
from helpers import device, twins

DTYPES = [torch.bfloat16] + ([torch.float16] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_autocast_like_torch_nn(cell, dtype):
    fast, ref = twins(cell, 8, 16, num_layers=2)
    x = torch.randn(6, 3, 8, device=device())
    want32 = ref(x)[0]  # fp32 reference, no autocast
    dev = device().type
    with torch.autocast(dev, dtype=dtype):
        try:
            want = ref(x)
        except RuntimeError as e:  # torch.nn itself, not fastrnn: oneDNN needs CPU bf16 support
            if dev == "cpu" and "primitive descriptor" in str(e):
                pytest.skip(f"this CPU's oneDNN has no bf16 {cell} primitive: torch.nn itself fails ({e})")
            raise
        got = fast(x)
    assert got[0].dtype == want[0].dtype
    stateful = resolve(cell).has_cell_state
    hidden_got = got[1][0] if stateful else got[1]
    hidden_want = want[1][0] if stateful else want[1]
    assert hidden_got.dtype == hidden_want.dtype
    # no more than 2x the error of PyTorch's own low-precision result, plus a small atol
    err_torch = (want[0].float() - want32).abs().max().item()
    err_fast = (got[0].float() - want32).abs().max().item()
    assert err_fast <= 2 * err_torch + 2e-3, (err_fast, err_torch)
    got[0].float().sum().backward()  # differentiable under autocast
    assert fast.weight_ih_l0.grad is not None and fast.weight_ih_l0.grad.dtype == torch.float32


def test_cuda_autocast_rule_follows_cudnn(monkeypatch):
    """The CUDA branch of the rule, executed on any machine: with cuDNN (torch.nn's default on a
    GPU) RNNs compute in float16 whatever autocast dtype was asked for, as PyTorch's autocast
    wrapper of ``_cudnn_rnn`` does (seen on an H200: bf16 autocast gives fp16 outputs); without
    cuDNN, in the requested dtype."""
    from fastrnn import dispatch

    real = dispatch._environment()
    for cudnn, want in ((True, torch.float16), (False, torch.bfloat16)):
        env = dataclasses.replace(real, cudnn_enabled=cudnn)
        monkeypatch.setattr(dispatch, "_environment", lambda env=env: env)
        assert dispatch._cuda_autocast_dtype(str(torch.bfloat16)) == str(want)
    assert dispatch._cuda_autocast_dtype(str(torch.float16)) == str(torch.float16)
