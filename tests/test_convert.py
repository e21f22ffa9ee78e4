"""fastrnn.convert: swap nn.RNN/LSTM/GRU for fastrnn twins in place, keeping the very parameters."""

from __future__ import annotations

import io

import torch
from torch import nn

import fastrnn


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        self.blocks = nn.ModuleList([nn.Sequential(nn.GRU(8, 4), nn.Identity()), nn.RNN(8, 4, nonlinearity="relu")])
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        out, _ = self.enc(x)
        a, _ = self.blocks[0][0](out)
        b, _ = self.blocks[1](out)
        return self.head(a + b).sum()


class CustomLSTM(nn.LSTM):
    def forward(self, x, hx=None):
        return super().forward(x * 2, hx)


def _state_bytes(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def test_convert_keeps_parameters_state_dict_and_outputs():
    torch.manual_seed(0)
    model = Nested()
    x = torch.randn(5, 2, 3)
    want = model(x)
    params_before = {n: p for n, p in model.named_parameters()}
    bytes_before = _state_bytes(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    report = []
    assert fastrnn.convert(model, report=report) is model
    assert isinstance(model.enc, fastrnn.LSTM)
    assert isinstance(model.blocks[0][0], fastrnn.GRU)
    assert isinstance(model.blocks[1], fastrnn.RNN) and model.blocks[1].nonlinearity == "relu"
    assert sorted(r.name for r in report if r.converted) == ["blocks.0.0", "blocks.1", "enc"]
    assert _state_bytes(model) == bytes_before
    for n, p in model.named_parameters():
        assert p is params_before[n], n
    torch.testing.assert_close(model(x), want)
    # the optimiser built before the conversion updates the converted modules' weights
    before = model.enc.weight_hh_l0.detach().clone()
    model(x).backward()
    opt.step()
    assert not torch.equal(before, model.enc.weight_hh_l0)
    assert model.enc.weight_hh_l0 is params_before["enc.weight_hh_l0"]


def test_convert_keeps_training_mode_and_dtype():
    model = nn.Sequential(nn.GRU(3, 4)).double().eval()
    fastrnn.convert(model, backend="torch")
    assert isinstance(model[0], fastrnn.GRU) and not model[0].training and model[0].backend == "torch"
    assert model[0].weight_ih_l0.dtype == torch.float64


def test_convert_reverse_round_trip():
    torch.manual_seed(0)
    model = Nested()
    x = torch.randn(4, 2, 3)
    want = model(x)
    fastrnn.convert(model)
    report = []
    fastrnn.convert(model, reverse=True, report=report)
    assert type(model.enc) is nn.LSTM and type(model.blocks[1]) is nn.RNN
    assert sum(r.converted for r in report) == 3
    torch.testing.assert_close(model(x), want)


def test_convert_root_module_returns_twin():
    lstm = nn.LSTM(3, 4)
    fast = fastrnn.convert(lstm)
    assert isinstance(fast, fastrnn.LSTM) and fast.weight_ih_l0 is lstm.weight_ih_l0


def test_subclass_with_custom_forward_left_alone():
    model = nn.Sequential(CustomLSTM(3, 4))
    report = []
    fastrnn.convert(model, report=report)
    assert type(model[0]) is CustomLSTM
    assert len(report) == 1 and not report[0].converted and "overrides forward" in report[0].reason


def test_nothing_to_convert_is_a_noop_that_says_so(caplog):
    model = nn.Sequential(nn.Linear(2, 2))
    report = []
    with caplog.at_level("INFO", logger="fastrnn.convert"):
        assert fastrnn.convert(model, report=report) is model
    assert report[0].reason == "nothing to convert" and "nothing to convert" in caplog.text
