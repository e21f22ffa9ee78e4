"""Shared test setup: kernel outputs NaN-poisoned, TF32 off, deterministic seeds."""

import pytest
import torch

from fastrnn.kernels import _runtime


@pytest.fixture(autouse=True)
def _poison_and_seed():
    """Every buffer a launcher allocates starts as NaN, so an unwritten element fails a test."""
    old = _runtime.POISON_OUTPUTS
    _runtime.POISON_OUTPUTS = True
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    _runtime.POISON_OUTPUTS = old


def pytest_report_header(config):
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (kernels run in Triton's interpreter)"
    return f"fastrnn tests: torch {torch.__version__}, CUDA device: {dev}"
