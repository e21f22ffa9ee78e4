"""The per-call work of the modules outside the backends' own code: one backend decision per call
(``EmbeddingRNN`` hands its decision to its recurrent module), an environment snapshot rebuilt
only when what it reads changes, measurement helpers built only to measure, and the id range
check left to ``nn.Embedding`` where it performs it (with fastrnn's message)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import dispatch
from fastrnn.kernels import _runtime

V, E, H = 11, 6, 5


@pytest.fixture
def decisions(monkeypatch):
    """Counts the backend decisions made (:func:`fastrnn.dispatch._make_decision` calls: a call whose
    decision the module does not remember yet)."""
    calls = []
    real = dispatch._make_decision

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(dispatch, "_make_decision", spy)
    return calls


def _embedding_rnn(mode="GRU", backend="auto", **kw):
    return fastrnn.EmbeddingRNN(V, E, H, mode=mode, backend=backend, padding_idx=0, **kw)


@pytest.mark.parametrize("mode", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_embedding_rnn_decides_once_per_kind_of_call(decisions, mode, backend):
    """A call decides at most once (EmbeddingRNN decides for its recurrent module), and a call
    like one made before decides nothing: the module remembers the decision.  Kills: a second
    decision per call, or a decision cache that is never hit."""
    m = _embedding_rnn(mode, backend, batch_first=True)
    ref = nn.ModuleDict(
        dict(embedding=nn.Embedding(V, E, padding_idx=0), rnn=getattr(nn, mode)(E, H, batch_first=True))
    )
    ref.load_state_dict(m.state_dict())
    ids = torch.randint(0, V, (3, 4))
    lengths = torch.tensor([4, 1, 3])

    # auto on the CPU is torch.nn's code for a padded batch without deciding anything
    # (dispatch.auto_on_cpu); lengths and packed input go through the decision
    plain = 0 if backend == "auto" else 1
    out, _ = m(ids)
    assert len(decisions) == plain
    torch.testing.assert_close(out, ref["rnn"](ref["embedding"](ids))[0])
    m(ids)
    m(ids[:2])
    assert len(decisions) == plain  # the same kind of call: remembered
    m(ids, lengths=lengths)
    assert len(decisions) == plain + 1  # variable lengths: another kind of call
    m(pack_padded_sequence(ids, lengths, batch_first=True, enforce_sorted=False))
    assert len(decisions) == plain + 1  # packed input: variable lengths too
    with torch.no_grad():
        state = m(ids)[1]  # no gradients: another kind
        for _ in range(5):
            m(ids[:, :1], state)  # one-token decoding steps with the state
    assert len(decisions) == 2 * plain + 1


def test_standalone_module_decides_once_per_call(decisions):
    m = fastrnn.LSTM(E, H, backend="torch")
    for _ in range(3):
        m(torch.randn(4, 2, E))
    assert len(decisions) == 1


def test_auto_on_the_cpu_runs_torch_nn_without_deciding(decisions, monkeypatch):
    """auto on CPU tensors is always torch.nn's code: no decision is made, the outputs are
    torch.nn's to the bit, and FASTRNN_BACKEND still applies.  Kills: a fast path that ignores
    the variable, or one taken for CUDA-side settings."""
    ref = nn.GRU(E, H)
    m = fastrnn.GRU(E, H)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, E)
    assert torch.equal(m(x)[0], ref(x)[0]) and not decisions
    monkeypatch.setenv("FASTRNN_BACKEND", "torch")
    m(x)
    assert len(decisions) == 1  # the variable is set: the decision is made (and says why)
    monkeypatch.setenv("FASTRNN_BACKEND", "triton")
    before = _runtime.LAUNCHES.get("recurrent_fwd", 0)
    m(x)
    assert _runtime.LAUNCHES.get("recurrent_fwd", 0) == before + 1  # the kernels, as asked


def test_a_remembered_decision_follows_what_it_rests_on(decisions, monkeypatch):
    """Each change of what a decision rests on decides again, and the new decision is the one a
    fresh module makes.  Kills: a key that misses the backend variable, the module's backend,
    the parameters' dtype, autocast, the fp32 precision, or auto's state."""
    m = fastrnn.GRU(E, H)
    x = torch.randn(4, 2, E)
    assert m.backend_decision(x).backend == "torch"
    monkeypatch.setenv("FASTRNN_BACKEND", "triton")
    assert m.backend_decision(x).backend == "triton" and len(decisions) == 2
    monkeypatch.delenv("FASTRNN_BACKEND")
    assert m.backend_decision(x).backend == "torch" and len(decisions) == 3  # as before (a new snapshot: decided again)
    changes = [
        lambda: setattr(m, "backend", "triton"),
        lambda: m.double(),
        lambda: setattr(m, "fp32_precision", "ieee"),
        lambda: fastrnn.auto.clear_cache(disk=False),
    ]
    for change in changes:
        before = len(decisions)
        change()
        y = x.to(m.weight_hh_l0.dtype)
        got = m.backend_decision(y)
        assert len(decisions) == before + 1
        fresh = fastrnn.GRU(E, H, backend=m.backend, fp32_precision=m.fp32_precision).to(m.weight_hh_l0.dtype)
        want = fresh.backend_decision(y)
        assert (got.backend, got.tier, got.dtype, got.precision) == (
            want.backend,
            want.tier,
            want.dtype,
            want.precision,
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = len(decisions)
        assert fastrnn.LSTM(E, H, backend="triton").float().backend_decision(x).dtype == torch.bfloat16
        assert len(decisions) == before + 1


def test_hooks_on_the_recurrent_module_still_run():
    """A hooked recurrent module is called as a module (its hooks see the call)."""
    m = _embedding_rnn("LSTM")
    seen = []
    m.rnn.register_forward_pre_hook(lambda mod, args: seen.append("pre"))
    m.rnn.register_forward_hook(lambda mod, args, out: seen.append("post"))
    ids = torch.randint(0, V, (4, 2))
    out, _ = m(ids)
    assert seen == ["pre", "post"]
    expected, _ = nn.LSTM.forward(m.rnn, m.embedding(ids))
    torch.testing.assert_close(out, expected)


def test_subclass_forward_of_the_recurrent_module_runs():
    """A recurrent module with a forward of its own keeps it inside EmbeddingRNN."""

    class Doubled(fastrnn.GRU):
        def forward(self, input, hx=None):
            out, h = super().forward(input, hx)
            return 2 * out, h

    rnn = Doubled(E, H)
    m = fastrnn.EmbeddingRNN.from_modules(nn.Embedding(V, E), rnn)
    ids = torch.randint(0, V, (4, 2))
    torch.testing.assert_close(m(ids)[0], 2 * nn.GRU.forward(rnn, m.embedding(ids))[0])


def test_runners_are_built_only_to_measure(monkeypatch):
    """The measurement helpers (one per call before) are built only when auto measures (CUDA)."""

    def fail(*args):
        raise AssertionError("runners built for a call that is not measured")

    rnn = fastrnn.GRU(E, H)
    monkeypatch.setattr(rnn, "_runners", fail)
    rnn(torch.randn(3, 2, E))
    m = _embedding_rnn()
    monkeypatch.setattr(m, "_runners", fail)
    m(torch.randint(0, V, (3, 2)))


def test_environment_snapshot_follows_the_backend_variable(monkeypatch):
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    first = dispatch._environment()
    assert first.backend_override == "auto"
    assert dispatch._environment() is first  # nothing changed: the same snapshot
    monkeypatch.setenv("FASTRNN_BACKEND", "torch")
    assert dispatch._environment().backend_override == "torch"
    monkeypatch.setenv("FASTRNN_BACKEND", "triton")
    assert dispatch._environment().backend_override == "triton"
    m = fastrnn.GRU(E, H)
    assert dispatch.requested_backend(m) == "triton"
    monkeypatch.setenv("FASTRNN_BACKEND", "bogus")
    for _ in range(2):  # a bad value is never kept: every call says so
        with pytest.raises(ValueError, match="backend must be one of"):
            dispatch._environment()
    monkeypatch.setenv("FASTRNN_BACKEND", "")
    assert dispatch._environment().backend_override == "auto"


def test_environment_snapshot_follows_cudnn_flags():
    before = dispatch._environment()
    with torch.backends.cudnn.flags(enabled=False, allow_tf32=True):
        env = dispatch._environment()
        assert not env.cudnn_enabled and env.cudnn_allow_tf32
        assert dispatch.cudnn_allow_tf32()
    with torch.backends.cudnn.flags(enabled=before.cudnn_enabled, allow_tf32=False):
        assert not dispatch._environment().cudnn_allow_tf32
        assert not dispatch.cudnn_allow_tf32()
    assert dispatch._environment().interpret == _runtime.INTERPRET


BAD = [("too_large", V), ("negative", -1)]


@pytest.mark.parametrize("name,bad", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_bad_ids_name_the_id(name, bad, backend):
    """On the CPU's torch path nn.Embedding checks the range; its error still names the id and
    the range, without nn.Embedding's own error chained to it."""
    m = _embedding_rnn(backend=backend)
    ids = torch.tensor([[1, bad], [2, 3]])
    with pytest.raises(IndexError, match=rf"token id {bad} is out of range \[0, {V}\)") as info:
        m(ids)
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    with pytest.raises(IndexError, match=rf"token id {bad} is out of range"):  # packed
        m(pack_padded_sequence(ids, torch.tensor([2, 2])))


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_bad_ids_are_reported_before_bad_lengths(backend):
    m = _embedding_rnn(backend=backend)
    ids = torch.tensor([[1, V], [2, 3]])
    with pytest.raises(IndexError, match=rf"token id {V} is out of range"):
        m(ids, lengths=torch.tensor([5, 1]))  # lengths out of [1, T] as well
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 2\]"):
        m(ids.clamp(max=V - 1), lengths=torch.tensor([5, 1]))


def test_bad_ids_of_a_narrow_integer_dtype_name_the_id():
    """int16 ids: nn.Embedding rejects the dtype, but a bad id is what is reported."""
    m = _embedding_rnn()
    with pytest.raises(IndexError, match=rf"token id {V} is out of range"):
        m(torch.tensor([[1, V]], dtype=torch.int16))


def test_good_int32_ids_run():
    m = _embedding_rnn("LSTM")
    ids = torch.randint(0, V, (4, 2))
    torch.testing.assert_close(m(ids.int())[0], m(ids)[0])
