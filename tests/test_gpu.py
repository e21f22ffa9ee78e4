"""Checks that only a CUDA GPU can make: every tier compiled at the sizes it serves against a
float64 oracle, low precision, int64 addressing, no kernel recompiles, CUDA-graph capture.

On a machine without a GPU these are skipped with the reason stated (the interpreter runs the
same kernels in every other test file).
"""

from __future__ import annotations

import pytest
import torch
import triton

import fastrnn
from fastrnn.kernels import _runtime, persistent, tier1
from fastrnn.kernels.call import RecurrenceCall
from fastrnn.modules import resolve
from helpers import compare_twins, module_inputs, twins

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

    return _compiled_variants(tier1._recurrent_fwd_kernel), _compiled_variants(tier1._recurrent_bwd_kernel)


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


# ---------------------------------------------------------------------------------------------
# Every tier at the sizes it serves, against float64


def _tier1_limit(mode: str, dtype: torch.dtype) -> int | None:
    """The largest multiple of 16 that tier 1 runs for ``mode`` in ``dtype`` (its limit)."""
    sizes = [h for h in range(16, 513, 16) if tier1.tier1_unsupported(mode, h, 0, dtype) is None]
    return max(sizes) if sizes else None


TIER_SIZES = [("tier1", 1, None), ("tier2-H256", 2, 256), ("tier2-H1024", 2, 1024), ("tier3-H256", 3, 256)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("name,tier,H", TIER_SIZES, ids=[t[0] for t in TIER_SIZES])
def test_tier_compiled_against_float64(monkeypatch, name, tier, H, cell, dtype):
    """Forward and every gradient of a two-layer bidirectional stack on a packed batch (unsorted
    lengths, T = 256) through one forced tier, against torch.nn in float64: within twice
    torch.nn's (cuDNN's) own error in the same dtype plus a small floor (TF32 off)."""
    if H is None:
        H = _tier1_limit(resolve(cell).mode, dtype)
        if H is None:
            pytest.skip(f"tier 1 runs no {cell} in {dtype} with triton {triton.__version__}")
    monkeypatch.setenv("FASTRNN_TIER", str(tier))
    kw = dict(num_layers=2, bidirectional=True)
    T, B, I = 256, 5, 32
    fast, ref = twins(cell, I, H, dtype=dtype, **kw)
    before = dict(_runtime.LAUNCHES)
    compare_twins(fast, ref, module_inputs(cell, kw, T, B, "packed_unsorted", True, I, H, dtype), dtype)
    ran = {k.split("_tier")[-1] if "_tier" in k else "1" for k, n in _runtime.LAUNCHES.items() if n != before.get(k, 0)}
    assert ran == {str(tier)}, ran


# ---------------------------------------------------------------------------------------------
# CUDA graphs: the launch path neither allocates outside the graph's pool nor syncs with the host


def _capture(fn):
    """Warm ``fn`` up (compiles), capture it in a CUDA graph, and return ``(graph, outputs)``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = fn()
    return graph, outs


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_seq2seq_decoder_step_captured_in_a_cuda_graph(mode):
    """The seq2seq decoder's one-step path (fused embedding + recurrent layers on the kernels +
    attention), captured once and replayed on new inputs, equals eager."""
    from fastrnn.seq2seq import Seq2Seq, Seq2SeqConfig

    torch.manual_seed(0)
    cfg = Seq2SeqConfig(20, 20, embedding_dim=16, hidden_size=32, num_layers=2, mode=mode, attention="general")
    model = Seq2Seq(cfg).cuda().eval()
    src = torch.randint(4, 20, (3, 7), device="cuda")
    state = model.init_state(src, torch.tensor([7, 5, 2], device="cuda"))
    y = torch.randint(4, 20, (3,), device="cuda")
    with torch.no_grad():  # explained as the decoding step runs: no gradients, in eval()
        line = fastrnn.explain(model.decoder.rnn, y[:, None], state.hidden)
    assert line.startswith("requested 'auto' -> "), line
    with torch.no_grad():
        graph, (logp, new_state) = _capture(lambda: model.decode_step(y, state))
        for _ in range(2):
            y.copy_(torch.randint(4, 20, (3,), device="cuda"))
            graph.replay()
            want, want_state = model.decode_step(y, state)
            torch.testing.assert_close(logp, want)
            hidden = new_state.hidden[0] if isinstance(new_state.hidden, tuple) else new_state.hidden
            want_hidden = want_state.hidden[0] if isinstance(want_state.hidden, tuple) else want_state.hidden
            torch.testing.assert_close(hidden, want_hidden)


def test_tier2_forward_captured_in_a_cuda_graph(monkeypatch):
    """Tier 2's persistent launch (its barrier buffer reused, no host sync) inside a CUDA graph."""
    monkeypatch.setenv("FASTRNN_BARRIER_CHECK", "0")
    T, B, H = 16, 4, 256
    G = resolve("LSTM").G
    gx = torch.randn(T, B, G * H, device="cuda")
    w = torch.randn(G * H, H, device="cuda") / H**0.5
    with torch.no_grad():
        cfg = lambda tier: persistent.multi_config("LSTM", H, torch.float32, tier)
        call = RecurrenceCall("LSTM", T, B, w, save=False)
        graph, res = _capture(lambda: persistent.multi_fwd(call, gx, cfg(2), tier=2))
        gx.copy_(torch.randn_like(gx))
        graph.replay()
        want = persistent.multi_fwd(call, gx, cfg(3), tier=3)
    torch.testing.assert_close(res.out, want.out)
    torch.testing.assert_close(res.h_n, want.h_n)


@pytest.mark.parametrize("tier", [1, 2])
def test_forward_never_syncs_with_the_host(monkeypatch, tier):
    """A forward of EmbeddingRNN with trusted ids (``check_ids=False``: no id check read back) and
    of a plain layer, in tier 1 and tier 2 (cooperative launch, the barrier flag not read), with
    torch's sync debug mode set to raise: a host sync exposes the CPU's launch overhead every call
    (~1.2 ms measured on the fused-embedding rows of an H200 when the id check read the ids back),
    so nothing but the id check may synchronise."""
    monkeypatch.setenv("FASTRNN_TIER", str(tier))
    monkeypatch.setenv("FASTRNN_BARRIER_CHECK", "0")
    H = 64 if tier == 1 else 256
    enc = fastrnn.EmbeddingRNN(100, 32, H, mode="GRU", backend="triton", check_ids=False).cuda().half()
    gru = fastrnn.GRU(32, H, backend="triton").cuda().half()
    ids = torch.randint(0, 100, (20, 8), device="cuda")
    x = torch.randn(20, 8, 32, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        enc(ids), gru(x)  # compile and cache first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            enc(ids)
            gru(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.device_assert
@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
def test_a_bad_cuda_id_raises_and_the_process_stays_usable(backend):
    """A bad id on CUDA is an IndexError naming it and its position, on every backend, before any
    kernel sees it; the CUDA context is not poisoned: the same module then runs good ids."""
    m = fastrnn.EmbeddingRNN(50, 8, 16, mode="LSTM", backend=backend).cuda()
    ids = torch.randint(0, 50, (6, 3), device="cuda")
    bad = ids.clone()
    bad[4, 2] = 57
    with pytest.raises(IndexError, match=r"token id 57 is out of range \[0, 50\).*at position \[4, 2\]"):
        m(bad)
    out, _ = m(ids)
    torch.cuda.synchronize()  # a device-side assertion would raise here, and in every later CUDA call
    assert torch.isfinite(out).all()
