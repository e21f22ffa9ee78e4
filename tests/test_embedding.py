"""fastrnn.EmbeddingRNN (fused embedding + first layer) against nn.Embedding + torch.nn modules."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import fastrnn
from fastrnn.embedding import choose_strategy
from fastrnn.kernels import _runtime, cells
from fastrnn.modules import build
from helpers import TOL, assert_within_oracle, device

V, E, H = 11, 7, 5


def _pair(mode, dtype=torch.float32, padding_idx=None, strategy="auto", **kw):
    emb = nn.Embedding(V, E, padding_idx=padding_idx).to(device(), dtype)
    rnn = build(mode, E, H, torch_nn=True, **kw).to(device(), dtype)
    fused = fastrnn.EmbeddingRNN.from_modules(emb, rnn, backend="triton", strategy=strategy)
    return fused, emb, rnn


def _grads(modules, outs, seed=5):
    g = torch.Generator().manual_seed(seed)
    flat = []
    for o in outs:
        flat += list(o) if isinstance(o, tuple) else [o]
    loss = sum((t * torch.randn(t.shape, generator=g).to(t.device, t.dtype)).sum() for t in flat)
    for m in modules:
        m.zero_grad(set_to_none=True)
    loss.backward()
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()}


CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True), "table", 0),
    ("LSTM", dict(proj_size=3, batch_first=True), "gather_gemm", None),
    ("GRU", dict(num_layers=2), "gather_gemm", 0),
    ("GRU", dict(bidirectional=True, bias=False), "table", 3),
    ("RNN_TANH", dict(batch_first=True), "table", None),
    ("RNN_RELU", dict(num_layers=2, bidirectional=True), "gather_gemm", 0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("mode,kw,strategy,padding_idx", CASES)
def test_dense_matches_embedding_plus_rnn(mode, kw, strategy, padding_idx, dtype):
    fused, emb, rnn = _pair(mode, dtype, padding_idx, strategy, **kw)
    bf = kw.get("batch_first", False)
    ids = torch.randint(0, V, (3, 6) if bf else (6, 3), device=device())
    ids.view(-1)[:2] = padding_idx if padding_idx is not None else 1
    got = fused(ids)
    g_got = _grads([fused], [got[0], got[1]])
    want = rnn(emb(ids))
    g_want = _grads([nn.ModuleDict(dict(embedding=emb, rnn=rnn))], [want[0], want[1]])
    emb64, rnn64 = copy.deepcopy(emb).double(), copy.deepcopy(rnn).double()
    oracle = rnn64(emb64(ids))
    g_oracle = _grads([nn.ModuleDict(dict(embedding=emb64, rnn=rnn64))], [oracle[0], oracle[1]])
    assert_within_oracle(got[0], want[0], oracle[0], dtype, "output")
    for k in g_want:
        assert_within_oracle(g_got[k], g_want[k], g_oracle[k], dtype, k)
    if padding_idx is not None:
        assert torch.all(g_got["0.embedding.weight"][padding_idx] == 0)


@pytest.mark.parametrize("strategy", ["table", "gather_gemm"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_packed_and_lengths_match(mode, strategy):
    fused, emb, rnn = _pair(mode, torch.float64, 0, strategy, num_layers=2, bidirectional=True)
    lengths = torch.tensor([3, 6, 1, 4])
    ids = torch.randint(1, V, (6, 4), device=device())
    h0 = torch.randn(4, 4, H, dtype=torch.float64, device=device())
    stateful = cells.get(mode).has_cell_state
    hx = (h0, torch.randn_like(h0)) if stateful else h0
    packed_ids = pack_padded_sequence(ids, lengths, enforce_sorted=False)
    ref_out, ref_h = rnn(pack_padded_sequence(emb(ids), lengths, enforce_sorted=False), hx)
    ref_pad, _ = pad_packed_sequence(ref_out, total_length=6)
    out, h = fused(packed_ids, hx)
    torch.testing.assert_close(out.data, ref_out.data, **TOL[torch.float64])
    torch.testing.assert_close(out.unsorted_indices, ref_out.unsorted_indices)
    out2, h2 = fused(ids, hx, lengths=lengths)  # padded ids + lengths: padded output, zero padding
    torch.testing.assert_close(out2, ref_pad, **TOL[torch.float64])
    for a, b, c in zip(h if stateful else (h,), h2 if stateful else (h2,), ref_h if stateful else (ref_h,)):
        torch.testing.assert_close(a, c, **TOL[torch.float64])
        torch.testing.assert_close(b, c, **TOL[torch.float64])
    g_fused = _grads([fused], [out2, h2])
    g_ref = _grads([nn.ModuleDict(dict(embedding=emb, rnn=rnn))], [ref_pad, ref_h])
    for k in g_ref:
        torch.testing.assert_close(g_fused[k], g_ref[k], **TOL[torch.float64], msg=lambda m, k=k: f"{k}: {m}")


class _AllocationRecorder(TorchDispatchMode):
    """Records the shapes of tensors that own at least ``numel`` elements of storage."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.big = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= self.numel * t.element_size():
                self.big.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("strategy", ["table", "gather_gemm"])
def test_no_embedded_tensor_is_allocated(strategy):
    """No tensor holding T*B*E elements (the embedded input) is allocated in forward or backward."""
    T, B = 9, 8  # T*B*E = 504 elements; every other tensor here is smaller or of another size
    fused, _, _ = _pair("GRU", torch.float32, 0, strategy)
    ids = torch.randint(0, V, (T, B), device=device())
    with _AllocationRecorder(T * B * E) as rec:
        out, h = fused(ids)
        (out.sum() + h.sum()).backward()
    embedded = [(f, s) for f, s in rec.big if s and s[-1] == E]  # (T, B, E), (B, T, E), (T*B, E), ...
    assert not embedded, embedded
    # the recorder does see the real big tensors (the gate buffers), so it is not vacuous
    assert any(s == (T, B, cells.get("GRU").G * H) for _, s in rec.big)


def test_launch_count_constant_in_sequence_length():
    fused, _, _ = _pair("LSTM", torch.float32, None, "gather_gemm", num_layers=2)
    counts = []
    for T in (2, 8):
        before = _runtime.total_launches()
        out, _ = fused(torch.randint(0, V, (T, 3), device=device()))
        out.sum().backward()
        counts.append(_runtime.total_launches() - before)
    assert counts[0] == counts[1] == 5  # gather-GEMM + (fwd + bwd) x 2 layers


def test_cost_model():
    assert choose_strategy(100, 1000) == "table"
    assert choose_strategy(50_000, 1000) == "gather_gemm"


BAD_IDS = [
    ("out_of_range", lambda: torch.tensor([[1, V]]), IndexError),
    ("negative", lambda: torch.tensor([[1, -1]]), IndexError),
    ("float_ids", lambda: torch.ones(2, 2), TypeError),
]


@pytest.mark.device_assert
@pytest.mark.parametrize("name,make,exc", BAD_IDS, ids=[b[0] for b in BAD_IDS])
def test_bad_ids_raise_on_host_before_any_kernel(name, make, exc):
    fused, _, _ = _pair("GRU")
    before = _runtime.total_launches()
    with pytest.raises(exc):
        fused(make().to(device()))
    assert _runtime.total_launches() == before


class _OnCuda(torch.Tensor):
    """CPU ids that say they are CUDA ids: the CUDA branch of EmbeddingRNN's id check, on a CPU."""

    @property
    def is_cuda(self) -> bool:
        return True

    @property
    def is_cpu(self) -> bool:
        return False


@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
def test_bad_ids_on_cuda_raise_index_error_naming_id_and_position(backend):
    """A bad CUDA id is an ``IndexError`` on the host, naming the id and its position, before any
    kernel -- never a device-side assertion (which leaves the process's CUDA context unusable).
    Kills: checking CUDA ids with ``torch._assert_async`` outside a trace or a graph capture."""
    m = fastrnn.EmbeddingRNN.from_modules(nn.Embedding(V, E), nn.GRU(E, H), backend=backend)
    ids = torch.tensor([[1, 2], [3, V + 4], [-1, 0]]).as_subclass(_OnCuda)
    before = _runtime.total_launches()
    with pytest.raises(IndexError, match=rf"token id {V + 4} is out of range \[0, {V}\).*at position \[1, 1\]"):
        m(ids)
    assert _runtime.total_launches() == before
    m.check_ids = False  # trusts CUDA ids only: CPU ids are checked all the same (no synchronisation)
    with pytest.raises(IndexError):
        m(torch.tensor([[1, V]]))


@pytest.mark.parametrize("option", [dict(max_norm=1.0), dict(sparse=True), dict(scale_grad_by_freq=True)])
def test_unsupported_embedding_options_rejected(option):
    emb = nn.Embedding(V, E, **option)
    fused = fastrnn.EmbeddingRNN.from_modules(emb, nn.GRU(E, H), backend="triton")
    with pytest.raises(ValueError, match="not supported"):
        fused(torch.randint(0, V, (3, 2)))


def test_state_dict_loads_from_embedding_plus_lstm_pair():
    ref = nn.ModuleDict(dict(embedding=nn.Embedding(V, E), rnn=nn.LSTM(E, H, 2)))
    fused = fastrnn.EmbeddingRNN(V, E, H, 2, mode="LSTM")
    fused.load_state_dict(ref.state_dict(), strict=True)
    ids = torch.randint(0, V, (4, 2))
    torch.testing.assert_close(fused(ids)[0], ref["rnn"](ref["embedding"](ids))[0])


def test_deterministic_gradients():
    fused, _, _ = _pair("GRU", torch.float32, None, "table")
    ids = torch.randint(0, 3, (6, 4), device=device())  # many repeated ids: accumulation order matters
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            out, _ = fused(ids)
            grads.append(_grads([fused], [out]))
    finally:
        torch.use_deterministic_algorithms(False)
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k
