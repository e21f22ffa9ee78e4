"""Bad input: fastrnn raises what torch.nn raises (same exception type), never crashes or hangs.

Table-driven: each case builds the call for both twins; either both succeed with the same
shapes or both raise the same exception type.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastrnn
from helpers import device, twins

I, H, T, B = 3, 4, 5, 2


def _r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, device=device())


# (id, cell, constructor kwargs, function(module) -> call result)
CALL_CASES = [
    ("input_1d", "RNN", {}, lambda m: m(_r(I))),
    ("input_4d", "GRU", {}, lambda m: m(_r(T, B, I, 1))),
    ("input_1d_lstm", "LSTM", {}, lambda m: m(_r(I))),
    ("wrong_feature_size", "RNN", {}, lambda m: m(_r(T, B, I + 1))),
    ("wrong_feature_size_lstm", "LSTM", {}, lambda m: m(_r(T, B, I + 1))),
    ("h0_wrong_batch", "GRU", {}, lambda m: m(_r(T, B, I), _r(1, B + 1, H))),
    ("h0_wrong_layers", "RNN", {}, lambda m: m(_r(T, B, I), _r(2, B, H))),
    ("h0_wrong_hidden", "RNN", {}, lambda m: m(_r(T, B, I), _r(1, B, H + 1))),
    ("h0_2d_for_batched", "RNN", {}, lambda m: m(_r(T, B, I), _r(B, H))),
    ("h0_3d_for_unbatched", "GRU", {}, lambda m: m(_r(T, I), _r(1, 1, H))),
    ("lstm_c0_wrong_shape", "LSTM", {}, lambda m: m(_r(T, B, I), (_r(1, B, H), _r(1, B, H + 1)))),
    ("lstm_h0_2d_for_batched", "LSTM", {}, lambda m: m(_r(T, B, I), (_r(B, H), _r(B, H)))),
    ("lstm_proj_h0_full_size", "LSTM", dict(proj_size=2), lambda m: m(_r(T, B, I), (_r(1, B, H), _r(1, B, H)))),
    ("lstm_proj_c0_proj_size", "LSTM", dict(proj_size=2), lambda m: m(_r(T, B, I), (_r(1, B, 2), _r(1, B, 2)))),
    ("lstm_plain_tensor_state", "LSTM", {}, lambda m: m(_r(T, B, I), _r(1, B, H))),
    ("h0_dtype_mismatch", "RNN", {}, lambda m: m(_r(T, B, I), _r(1, B, H, dtype=torch.float64))),
    ("lstm_c0_dtype_mismatch", "LSTM", {}, lambda m: m(_r(T, B, I), (_r(1, B, H), _r(1, B, H, dtype=torch.float64)))),
    ("gru_h0_dtype_mismatch", "GRU", {}, lambda m: m(_r(T, B, I), _r(1, B, H, dtype=torch.float64))),
    ("input_dtype_mismatch", "RNN", {}, lambda m: m(_r(T, B, I, dtype=torch.float64))),
    ("input_dtype_mismatch_lstm", "LSTM", {}, lambda m: m(_r(T, B, I, dtype=torch.float64))),
    ("input_int", "GRU", {}, lambda m: m(torch.ones(T, B, I, dtype=torch.long, device=device()))),
    ("empty_sequence", "RNN", {}, lambda m: m(_r(0, B, I))),
    ("empty_sequence_lstm", "LSTM", {}, lambda m: m(_r(0, B, I))),
    ("empty_sequence_unbatched", "GRU", {}, lambda m: m(_r(0, I))),
    ("empty_batch", "RNN", {}, lambda m: m(_r(T, 0, I))),
    ("empty_batch_lstm_bidir", "LSTM", dict(bidirectional=True), lambda m: m(_r(T, 0, I))),
    ("empty_batch_with_h0", "GRU", {}, lambda m: m(_r(T, 0, I), _r(1, 0, H))),
]


def _outcome(fn, module):
    try:
        result = fn(module)
    except Exception as e:  # the exception type is what is compared
        return type(e), str(e)
    flat = []
    stack = [result]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            flat.append((tuple(x.shape), x.dtype))
        else:
            stack.extend(x)
    return "ok", flat


@pytest.mark.parametrize("case_id,cell,kwargs,fn", CALL_CASES, ids=[c[0] for c in CALL_CASES])
def test_bad_call_matches_torch_nn(case_id, cell, kwargs, fn):
    fast, ref = twins(cell, I, H, **kwargs)
    got, want = _outcome(fn, fast), _outcome(fn, ref)
    assert got[0] == want[0], f"fastrnn: {got}, torch.nn: {want}"
    if got[0] == "ok":
        assert got[1] == want[1]


CTOR_CASES = [
    ("unknown_nonlinearity", "RNN", dict(nonlinearity="sigmoid")),
    ("zero_hidden", "GRU", dict(hidden_size=0)),
    ("negative_hidden", "RNN", dict(hidden_size=-1)),
    ("zero_layers", "LSTM", dict(num_layers=0)),
    ("negative_input", "LSTM", dict(input_size=-2)),
    ("dropout_above_one", "GRU", dict(dropout=1.5)),
    ("proj_not_smaller", "LSTM", dict(proj_size=4)),
    ("negative_proj", "LSTM", dict(proj_size=-1)),
    ("float_hidden", "RNN", dict(hidden_size=4.5)),
]


@pytest.mark.parametrize("case_id,cell,kwargs", CTOR_CASES, ids=[c[0] for c in CTOR_CASES])
def test_bad_constructor_matches_torch_nn(case_id, cell, kwargs):
    fast_cls, torch_cls = {"RNN": (fastrnn.RNN, nn.RNN), "LSTM": (fastrnn.LSTM, nn.LSTM), "GRU": (fastrnn.GRU, nn.GRU)}[
        cell
    ]
    args = dict(input_size=I, hidden_size=H)
    args.update(kwargs)
    with pytest.raises(Exception) as want:
        torch_cls(**args)
    with pytest.raises(want.type):
        fast_cls(**args)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastrnn.RNN(I, H, backend="cudnn")


def test_backend_env_override(monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastrnn.RNN(I, H)(_r(T, B, I))


def test_triton_backend_explains_unsupported_size():
    # A projected LSTM runs only in tier 1, which cannot hold 4 MiB of weights (on a GPU or in
    # the interpreter); tiers 2 and 3 do not do projections.
    m = fastrnn.LSTM(I, 4096, proj_size=64, backend="triton")
    x = _r(T, B, I).to(m.weight_hh_l0.device)
    with pytest.raises(fastrnn.BackendUnavailable, match="tier-1 kernel holds at most") as err:
        m(x)
    assert "does not run a projected LSTM" in str(err.value)
    # auto never fails where torch.nn works: it falls back to torch
    m.backend = "auto"
    out, _ = m(x)
    assert out.shape == (T, B, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device mismatch needs a CUDA device")
def test_device_mismatch_raises():
    fast, ref = twins("RNN", I, H)
    x = _r(T, B, I).to("cpu" if fast.weight_hh_l0.is_cuda else "cuda")
    with pytest.raises(RuntimeError):
        ref(x)
    with pytest.raises(RuntimeError):
        fast(x)
