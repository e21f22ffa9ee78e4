"""torch.library ops (opcheck) and torch.compile(fullgraph=True) of models holding fastrnn modules."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import ops
from fastrnn.kernels import cells, tiers
from helpers import TOL, assert_within_oracle, device


def _rand(*shape, dtype=torch.float64, grad=True):
    return torch.randn(*shape, dtype=dtype, device=device()).requires_grad_(grad)


OPCHECK_CASES = {
    "tanh_h0": ("RNN_TANH", dict(h0=True)),
    "relu_varlen_rev": ("RNN_RELU", dict(lengths=True, reverse=1)),
    "lstm_c0_proj": ("LSTM", dict(h0=True, c0=True, proj=True)),
    "gru_bhn_varlen": ("GRU", dict(h0=True, bhn=True, lengths=True)),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck_recurrence(case):
    mode, opt = OPCHECK_CASES[case]
    T, B, H = 3, 2, 3
    G = cells.get(mode).G
    P = 2 if opt.get("proj") else H
    args = (
        mode,
        _rand(T, B, G * H),
        _rand(G * H, P),
        _rand(B, P) if opt.get("h0") else None,
        _rand(B, H) if opt.get("c0") else None,
        torch.tensor([3, 1], device=device()) if opt.get("lengths") else None,
        _rand(G * H) if opt.get("bhn") else None,
        _rand(P, H) if opt.get("proj") else None,
        opt.get("reverse", 0),
        1,
        tiers.plan_layer(mode, H, P if opt.get("proj") else 0, torch.float64, 1).key,
    )
    torch.library.opcheck(ops.recurrence_fwd, args)


@pytest.mark.parametrize("strategy", ["table", "gather_gemm"])
def test_opcheck_embedding_projection(strategy):
    ids = torch.tensor([0, 3, 3, 1], device=device())
    args = (ids, _rand(5, 4), _rand(6, 4), _rand(6), 0, strategy, "ieee")
    torch.library.opcheck(ops.embedding_projection_op, args)


class Model(nn.Module):
    def __init__(self, cls, backend, **kw):
        super().__init__()
        self.rnn = cls(3, 4, num_layers=2, bidirectional=True, backend=backend, **kw)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out, hidden = self.rnn(x)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.head(out).sum(-1) + h.sum(0).mean(-1)


def _mkldnn_off_for_cpu_lstm(cls, backend):
    # PyTorch 2.13 cannot lower its own oneDNN CPU LSTM under torch.compile (aten.mkldnn_rnn_layer
    # fails in AOT autograd); with oneDNN off it uses the native path.  Documented in docs/dispatch.md.
    if cls is fastrnn.LSTM and backend == "torch" and device().type == "cpu":
        return torch.backends.mkldnn.flags(enabled=False)
    return contextlib.nullcontext()


# The module x backend product is slow; the default run keeps LSTM and RNN on triton, GRU on torch.
@pytest.mark.parametrize(
    "cls,backend",
    [pytest.param(c, b, id=f"{cid}-{b}", marks=() if (cid == "gru") == (b == "torch") else pytest.mark.slow)
     for c, cid in ((fastrnn.LSTM, "lstm"), (fastrnn.GRU, "gru"), (fastrnn.RNN, "rnn")) for b in ("triton", "torch")],
)  # fmt: skip
def test_compile_fullgraph_matches_eager(cls, backend):
    """The compiled model's output and gradients are as close to the float64 model's as the eager
    model's are (the oracle rule of docs/numerics.md: twice the eager error plus a floor): two fp32
    runs of one model differ by more than a fixed 1e-5 on a GPU, where cuDNN and cuBLAS pick their
    algorithms per call."""
    torch.manual_seed(0)
    model = Model(cls, backend).to(device())
    oracle = copy.deepcopy(model).double()
    x = torch.randn(5, 2, 3, device=device())
    y_c, g_c = _compiled_run(model, x, cls, backend)
    y_e, g_e = _run(model, x)
    y_o, g_o = _run(oracle, x.double())
    assert_within_oracle(y_c, y_e, y_o, torch.float32, "output")
    assert g_c.keys() == g_e.keys() == g_o.keys()
    for n in g_c:
        assert_within_oracle(g_c[n], g_e[n], g_o[n], torch.float32, f"gradient {n}")


def _run(model: nn.Module, x: torch.Tensor, call=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``model(x)`` (through ``call``, default the model itself) and the gradients of its sum by
    parameter name."""
    model.zero_grad(set_to_none=True)
    y = (call if call is not None else model)(x)
    y.sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _compiled_run(model: nn.Module, x: torch.Tensor, cls, backend) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same through ``torch.compile(fullgraph=True)`` (AOT autograd, eager kernels)."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with _mkldnn_off_for_cpu_lstm(cls, backend):
        return _run(model, x, compiled)


@pytest.mark.slow
def test_compile_check_catches_a_wrong_compiled_gradient(monkeypatch):
    """The oracle rule above still fails a wrong gradient: a recurrent weight gradient 1e-4 off
    (relative), only in the compiled graph (the weight-gradient GEMM perturbed while AOT autograd
    traces the backward), is caught."""
    real = ops._recurrent_weight_grad

    def perturbed(*args, **kwargs):
        grad = real(*args, **kwargs)
        return grad * (1 + 1e-4) if torch.compiler.is_compiling() else grad

    monkeypatch.setattr(ops, "_recurrent_weight_grad", perturbed)
    with pytest.raises(AssertionError, match="gradient rnn.weight_hh_l0"):
        test_compile_fullgraph_matches_eager(fastrnn.RNN, "triton")


def test_compile_inductor_triton_backend():
    torch.manual_seed(0)
    model = Model(fastrnn.GRU, "triton").to(device())
    compiled = torch.compile(model, fullgraph=True)  # inductor
    x = torch.randn(4, 3, 3, device=device())
    torch.testing.assert_close(compiled(x), model(x), **TOL[torch.float32])


def test_compile_does_not_recompile_when_T_and_B_change():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    model = Model(fastrnn.LSTM, "triton", batch_first=False).to(device())
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for T, B in [(3, 2), (5, 3), (7, 4), (2, 5)]:
        x = torch.randn(T, B, 3, device=device())
        torch._dynamo.mark_dynamic(x, 0)  # T and B are dynamic: marked, as a user would
        torch._dynamo.mark_dynamic(x, 1)
        compiled(x).sum().backward()
    assert counter.frame_count == 1, counter.frame_count


def test_embedding_rnn_compiles():
    torch.manual_seed(0)
    m = fastrnn.EmbeddingRNN(11, 5, 4, mode="GRU", padding_idx=0, backend="triton", strategy="gather_gemm").to(device())
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    ids = torch.randint(0, 11, (4, 3), device=device())
    torch.testing.assert_close(compiled(ids)[0], m(ids)[0], **TOL[torch.float32])


@pytest.mark.parametrize("cls,backend", [(fastrnn.GRU, "triton"), (fastrnn.LSTM, "auto")], ids=["triton", "auto"])
def test_dispatch_decision_is_never_traced(monkeypatch, cls, backend):
    """Nothing that inspects the process (environment variables, ``importlib.util.find_spec``,
    cuDNN's switch) runs inside the traced forward: torch 2.11's Dynamo refuses ``find_spec`` and
    failed every compile on a GPU.  All of it lives in ``dispatch._environment``, which only
    functions Dynamo runs eagerly (``assume_constant_result``) call.  A spy records whether Dynamo
    was tracing when it ran: ``is_dynamo_compiling()`` is True only in traced code."""
    from fastrnn import dispatch

    seen = []
    real = dispatch._environment

    def spy():
        seen.append(torch.compiler.is_dynamo_compiling())
        return real()

    monkeypatch.setattr(dispatch, "_environment", spy)
    torch._dynamo.reset()
    model = Model(cls, backend).to(device())
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = torch.randn(4, 2, 3, device=device())
    with _mkldnn_off_for_cpu_lstm(cls, "torch"), torch.autocast(device().type, dtype=torch.bfloat16):
        compiled(x)
    assert seen and not any(seen), seen
    # and outside compile nothing is traced either (auto on CPU tensors reads FASTRNN_BACKEND
    # directly, in eager code, and runs torch.nn's code)
    seen.clear()
    model(x)
    assert not any(seen)
