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


def test_changing_T_and_B_compiles_no_new_kernel():
    from fastrnn.kernels import recurrent

    m = fastrnn.LSTM(16, 16, backend="triton").cuda()  # 4 KiB of fp32 weights: within tier 1
    m(torch.randn(5, 3, 16, device="cuda"))[0].sum().backward()
    before = _compiled_variants(recurrent._recurrent_fwd_kernel), _compiled_variants(recurrent._recurrent_bwd_kernel)
    for T, B in [(7, 5), (33, 16), (2, 1), (100, 31)]:
        m(torch.randn(T, B, 16, device="cuda"))[0].sum().backward()
    after = _compiled_variants(recurrent._recurrent_fwd_kernel), _compiled_variants(recurrent._recurrent_bwd_kernel)
    assert after == before


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
