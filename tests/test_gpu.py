"""Checks that only a CUDA GPU can make: low precision, int64 addressing, no kernel recompiles.

On a machine without a GPU these are skipped with the reason stated (the interpreter runs the
same kernels in every other test file).
"""

from __future__ import annotations

import pytest
import torch

import fastrnn
from helpers import twins

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (kernels compiled, not interpreted)"
)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_low_precision_within_twice_torch_error(cell, dtype):
    fast, ref = twins(cell, 32, 32, num_layers=2, bidirectional=True)
    x = torch.randn(64, 8, 32, device="cuda")
    want32 = ref(x)[0]
    fast_lp, ref_lp = fast.to(dtype), ref.to(dtype)
    got, want = fast_lp(x.to(dtype))[0].float(), ref_lp(x.to(dtype))[0].float()
    err_torch = (want - want32).abs().max().item()
    err_fast = (got - want32).abs().max().item()
    assert err_fast <= 2 * err_torch + 1e-3, (err_fast, err_torch)


def _compiled_variants(kernel) -> int:
    caches = getattr(kernel, "device_caches", None)
    if caches is not None:
        return sum(len(c[0]) for c in caches.values())
    return sum(len(c) for c in kernel.cache.values())


def _variants() -> tuple[int, int]:
    from fastrnn.kernels import recurrent

    return _compiled_variants(recurrent._recurrent_fwd_kernel), _compiled_variants(recurrent._recurrent_bwd_kernel)


@pytest.mark.parametrize(
    "cls,dtype", [(fastrnn.GRU, torch.float32), (fastrnn.LSTM, torch.bfloat16)], ids=["gru-fp32", "lstm-bf16"]
)
def test_changing_T_and_B_compiles_no_new_kernel(cls, dtype):
    """H = 16 (a multiple of 16): every stride is a multiple of 16 and T, B are not specialised,
    so one compiled kernel serves every shape -- through batch_first, two layers and both
    directions too (sliced and transposed inputs and gradients)."""
    m = cls(16, 16, num_layers=2, bidirectional=True, batch_first=True, backend="triton").cuda().to(dtype)

    def step(T, B):
        m(torch.randn(B, T, 16, device="cuda", dtype=dtype))[0].float().sum().backward()

    step(5, 3)
    before = _variants()
    for T, B in [(7, 5), (33, 16), (2, 1), (100, 31), (1, 64)]:
        step(T, B)
    assert _variants() == before


def test_other_sizes_compile_one_variant_per_batch_alignment():
    """H = 24: the strides B*24 of out/aux are multiples of 16 for even B only, so odd and even
    batches get one compiled kernel each, and T never adds one (tests/test_kernel_report.py
    checks the same on CPU through Triton's binder)."""
    m = fastrnn.LSTM(8, 24, backend="triton").cuda().to(torch.bfloat16)

    def step(T, B):
        m(torch.randn(T, B, 8, device="cuda", dtype=torch.bfloat16))[0].float().sum().backward()

    step(5, 3)
    odd = _variants()
    for T, B in [(7, 5), (33, 1), (100, 31)]:
        step(T, B)
    assert _variants() == odd
    step(4, 2)
    even = _variants()  # one more per kernel (none if an earlier test already compiled it)
    assert all(o <= e <= o + 1 for o, e in zip(odd, even, strict=True)), (odd, even)
    for T, B in [(9, 6), (1, 64), (40, 4)]:
        step(T, B)
    assert _variants() == even


def test_offsets_past_2_to_the_31_elements():
    """gx of a GRU layer with T*B*3H > 2**31 elements: the last sequence's outputs must be right."""
    free, _ = torch.cuda.mem_get_info()
    T, B, H = 2**14, 2**11, 32  # gx: 2**14 * 2**11 * 96 elements (> 2**31), 6 GiB in fp16
    if free < 24 * 2**30:
        pytest.skip(f"needs 24 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    m = fastrnn.GRU(8, H, backend="triton").cuda().half()
    x = torch.randn(T, B, 8, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        out, h_n = m(x)
        ref = torch.nn.GRU(8, H).cuda().half()
        ref.load_state_dict(m.state_dict())
        _, h_ref = ref(x[:, -2:].contiguous())  # the last two sequences alone
    torch.testing.assert_close(h_n[:, -2:].float(), h_ref.float(), atol=2e-2, rtol=2e-2)
