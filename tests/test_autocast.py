"""Autocast: fastrnn modules behave like their torch.nn twins (dtype of results, accuracy)."""

from __future__ import annotations

import pytest
import torch

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
        got = fast(x)
        want = ref(x)
    assert got[0].dtype == want[0].dtype
    hidden_got = got[1][0] if cell == "LSTM" else got[1]
    hidden_want = want[1][0] if cell == "LSTM" else want[1]
    assert hidden_got.dtype == hidden_want.dtype
    # no more than 2x the error of PyTorch's own low-precision result, plus a small atol
    err_torch = (want[0].float() - want32).abs().max().item()
    err_fast = (got[0].float() - want32).abs().max().item()
    assert err_fast <= 2 * err_torch + 2e-3, (err_fast, err_torch)
    got[0].float().sum().backward()  # differentiable under autocast
    assert fast.weight_ih_l0.grad is not None and fast.weight_ih_l0.grad.dtype == torch.float32
