"""Shared test setup: kernel outputs NaN-poisoned, TF32 off, deterministic seeds; the
``interpreter`` and ``gpu`` markers.

Whether the kernels are compiled or interpreted is decided once per process, when fastrnn is
imported (``kernels/_runtime.py``).  On a machine without CUDA they are interpreted and every test
runs.  On a CUDA machine they are compiled, so the tests marked ``interpreter`` (CPU tensors
through ``backend='triton'``) skip there and run in their own process:
``TRITON_INTERPRET=1 python -m pytest -m interpreter`` (the GPU command,
``python -m benchmarks.gpu_check``, runs both).
"""

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


INTERPRETER_SKIP = (
    "CUDA machine: this process compiles the kernels; this test puts CPU tensors through Triton's "
    "interpreter and runs in its own process (TRITON_INTERPRET=1 python -m pytest -m interpreter)"
)


def pytest_collection_modifyitems(config, items):
    if _runtime.INTERPRET:
        return
    skip = pytest.mark.skip(reason=INTERPRETER_SKIP)
    for item in items:
        if "interpreter" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    how = "Triton's interpreter (CPU tensors)" if _runtime.INTERPRET else "compiled (CUDA tensors)"
    return f"fastrnn tests: torch {torch.__version__}, CUDA device: {dev}, kernels: {how}"
