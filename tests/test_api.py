"""Drop-in API: parameters, state dicts, init, repr, dropout, strided inputs, NaN, backend choice."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import fastrnn
from helpers import TOL, TWINS, device, twins

SPECS = [
    ("RNN", dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
    ("LSTM", dict(num_layers=2, proj_size=2, bidirectional=True)),
    ("GRU", dict(num_layers=3, bias=False)),
]


@pytest.mark.parametrize("cell,kwargs", SPECS, ids=[s[0] for s in SPECS])
def test_parameters_state_dict_and_init_identical(cell, kwargs):
    fast_cls, torch_cls = TWINS[cell]
    torch.manual_seed(7)
    ref = torch_cls(3, 4, **kwargs)
    torch.manual_seed(7)
    fast = fast_cls(3, 4, **kwargs)
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (n, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        assert a.shape == b.shape and torch.equal(a, b), n  # same init, same RNG order
    # state dicts load both ways, strictly
    fast.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(fast.state_dict(), strict=True)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    fast.flatten_parameters()


@pytest.mark.parametrize("cell,kwargs", SPECS, ids=[s[0] for s in SPECS])
def test_repr_like_torch_nn(cell, kwargs):
    fast_cls, torch_cls = TWINS[cell]
    assert repr(fast_cls(3, 4, **kwargs)) == repr(torch_cls(3, 4, **kwargs))
    assert "backend='triton'" in repr(fast_cls(3, 4, **kwargs, backend="triton"))


@pytest.mark.parametrize(
    "cell", [pytest.param("RNN", marks=pytest.mark.slow), "LSTM", pytest.param("GRU", marks=pytest.mark.slow)]
)
def test_dropout_between_layers_only_in_training(cell):
    fast, ref = twins(cell, 3, 4, num_layers=3, dropout=0.5)
    x = torch.randn(4, 2, 3, device=device())
    fast.eval(), ref.eval()
    torch.testing.assert_close(fast(x)[0], ref(x)[0], **TOL[torch.float32])
    fast.train()
    torch.manual_seed(0)
    a = fast(x)[0]
    torch.manual_seed(1)
    b = fast(x)[0]
    assert not torch.allclose(a, b), "training mode must apply dropout between layers"
    fast.dropout = 0.0
    torch.testing.assert_close(fast(x)[0], ref.eval()(x)[0], **TOL[torch.float32])


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_non_contiguous_and_expanded_inputs(cell):
    fast, ref = twins(cell, 3, 4, batch_first=True)
    base = torch.randn(2, 5, 6, device=device())
    x = base[:, :, ::2]  # strided features
    assert not x.is_contiguous()
    torch.testing.assert_close(fast(x)[0], ref(x)[0], **TOL[torch.float32])
    xt = torch.randn(5, 2, 3, device=device()).transpose(0, 1)  # transposed (B, T, I)
    torch.testing.assert_close(fast(xt)[0], ref(xt)[0], **TOL[torch.float32])
    xe = torch.randn(1, 5, 3, device=device()).expand(4, 5, 3)  # stride 0 batch
    torch.testing.assert_close(fast(xe)[0], ref(xe)[0], **TOL[torch.float32])


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_nan_and_inf_propagate_like_torch_nn(cell):
    fast, ref = twins(cell, 3, 4)
    x = torch.randn(4, 3, 3, device=device())
    x[1, 0, 0] = float("nan")
    x[2, 2, 1] = float("inf")
    a, b = fast(x)[0], ref(x)[0]
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    torch.testing.assert_close(a, b, equal_nan=True, **TOL[torch.float32])


@pytest.mark.interpreter
def test_auto_backend_on_cpu_runs_torch_and_explains():
    m = fastrnn.GRU(3, 4)
    x = torch.randn(4, 2, 3)
    assert m.backend_decision(x).backend == "torch"
    assert "torch" in fastrnn.explain(m, x)
    m.backend = "triton"
    assert m.backend_decision(x).backend == "triton"
    assert fastrnn.explain(m, x).startswith("requested 'triton' -> triton: tier 1")


def test_torch_backend_is_torch_nn_exactly():
    fast, ref = twins("LSTM", 3, 4, num_layers=2)
    fast.backend = "torch"
    x = torch.randn(4, 2, 3, device=device())
    (a, (h, c)), (b, (h2, c2)) = fast(x), ref(x)
    assert torch.equal(a, b) and torch.equal(h, h2) and torch.equal(c, c2)


def test_isinstance_is_rnnbase_not_twin():
    m = fastrnn.LSTM(3, 4)
    assert isinstance(m, nn.RNNBase) and not isinstance(m, nn.LSTM)


def test_weight_norm_parametrization_like_torch_nn():
    from torch.nn.utils import parametrizations

    fast, ref = twins("GRU", 3, 4)
    for m in (ref, fast):
        parametrizations.weight_norm(m, "weight_hh_l0")
    x = torch.randn(5, 2, 3, device=device())
    a, b = fast(x)[0], ref(x)[0]
    torch.testing.assert_close(a, b, **TOL[torch.float32])
    a.sum().backward()
    b.sum().backward()
    g = lambda m: m.parametrizations.weight_hh_l0.original0.grad
    torch.testing.assert_close(g(fast), g(ref), **TOL[torch.float32])


def test_inference_mode_and_no_grad():
    fast, ref = twins("LSTM", 3, 4)
    x = torch.randn(5, 2, 3, device=device())
    with torch.inference_mode():
        torch.testing.assert_close(fast(x)[0], ref(x)[0], **TOL[torch.float32])
    with torch.no_grad():
        out = fast(x)[0]
    assert not out.requires_grad


def test_rocm_auto_uses_torch_and_triton_says_why(monkeypatch):
    """HIP tensors report device.type == "cuda": the CUDA-only dispatch path, executed on any
    machine through the decision function with a ROCm environment."""
    from fastrnn import dispatch

    env = dataclasses.replace(dispatch._environment(), hip=True, interpret=False)
    monkeypatch.setattr(dispatch, "_environment", lambda: env)
    args = ("GRU", 16, 0, "torch.float32", "cuda", "cuda:0", "cuda:0")
    assert dispatch._backend_and_tier("auto", *args) == (
        "torch",
        "ROCm (HIP) devices are not supported yet: the kernels are only tested on NVIDIA GPUs",
        0,
    )
    choice, why, _ = dispatch._backend_and_tier("triton", *args)
    assert choice == "error" and "ROCm" in why
    cuda = dataclasses.replace(env, hip=False)
    monkeypatch.setattr(dispatch, "_environment", lambda: cuda)
    assert dispatch._backend_and_tier("auto", *args)[0] == "auto"  # the same call on an NVIDIA GPU: fastrnn.auto picks
