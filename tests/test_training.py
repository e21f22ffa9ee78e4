"""A short training run on fastrnn and on torch.nn from the same initial weights: same loss curve."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import TWINS, device


class Model(nn.Module):
    def __init__(self, rnn_cls, **kw):
        super().__init__()
        self.rnn = rnn_cls(3, 8, batch_first=True, **kw)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _train(model, steps: int, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 5, 3, generator=g).to(device())
        y = x[:, :, 0].sum(1) - x[:, 0, 1]  # needs memory of the whole sequence
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("cell", ["LSTM"])  # the most gates; GRU/RNN gradients are covered in test_modules
@pytest.mark.parametrize("steps", [60, pytest.param(200, marks=pytest.mark.slow)])  # 60: the loss has halved
def test_loss_curves_agree(cell, steps):
    fast_cls, torch_cls = TWINS[cell]
    torch.manual_seed(0)
    ref = Model(torch_cls).to(device())
    fast = Model(fast_cls, backend="triton").to(device())
    fast.load_state_dict(ref.state_dict())
    a, b = _train(fast, steps), _train(ref, steps)
    assert b[-1] < 0.5 * b[0], "the task must actually be learned for the comparison to mean anything"
    # float32 noise: differences come from summation order only and stay tiny along the curve
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-3, atol=1e-4)
