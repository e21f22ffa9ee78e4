"""fastrnn.seq2seq model: shapes, masks, fused teacher forcing == step-wise decoding, launch counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastrnn.kernels import _runtime
from fastrnn.seq2seq import PAD, SOS, Seq2Seq, Seq2SeqConfig, sequence_loss
from fastrnn.seq2seq.attention import BahdanauAttention, LuongAttention
from fastrnn.seq2seq.model import Encoder


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread, and do not suffer from a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


V = 11


def _batch(lengths, vocab=V, seed=0):
    """Random ids (B, max(lengths)) in [4, vocab) padded with <pad>, and the lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    ids = torch.randint(4, vocab, (len(lengths), int(lengths.max())), generator=g)
    ids[torch.arange(ids.shape[1])[None, :] >= lengths[:, None]] = PAD
    return ids, lengths


def _model(attention=None, mode="GRU", bidirectional=False, **kw):
    torch.manual_seed(0)
    cfg = dict(embedding_dim=6, hidden_size=8, num_layers=2, mode=mode, bidirectional=bidirectional)
    cfg.update(kw)
    return Seq2Seq(Seq2SeqConfig(V, V + 2, attention=attention, **cfg)).eval()


ATTENTION_CASES = [
    (None, "GRU", False),
    (None, "LSTM", True),
    ("dot", "LSTM", False),
    ("general", "GRU", True),
    ("concat", "RNN", True),
    ("bahdanau", "LSTM", True),
    ("bahdanau", "GRU", False),
]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_encoder_shapes_mask_and_final_state_per_sequence(mode):
    enc = Encoder(V, 5, 7, 2, mode=mode, bidirectional=True).eval()
    src, lengths = _batch([4, 1, 6, 3])
    out = enc(src, lengths)
    assert out.outputs.shape == (4, 6, 14)
    assert out.mask.tolist() == [[t < n for t in range(6)] for n in lengths.tolist()]
    assert torch.all(out.outputs[~out.mask] == 0), "encoder outputs must be zero at padding"
    h = out.state[0] if mode == "LSTM" else out.state
    assert h.shape == (4, 4, 7)
    for b, n in enumerate(lengths.tolist()):  # each sequence alone, unpadded: the same states
        alone = enc(src[b : b + 1, :n], lengths[b : b + 1])
        torch.testing.assert_close(alone.outputs[0], out.outputs[b, :n], rtol=1e-5, atol=1e-6)
        h_alone = alone.state[0] if mode == "LSTM" else alone.state
        torch.testing.assert_close(h_alone[:, 0], h[:, b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention,mode,bidirectional", ATTENTION_CASES)
def test_logits_shape_and_source_padding_is_invisible(attention, mode, bidirectional):
    model = _model(attention, mode, bidirectional)
    src, src_len = _batch([5, 2, 3], seed=1)
    tgt, _ = _batch([4, 4, 2], vocab=V + 2, seed=2)
    logits = model(src, src_len, tgt)
    assert logits.shape == (3, 4, V + 2)
    # Source padding is masked: garbage ids in padded source positions change nothing.
    noisy = src.clone()
    noisy[src == PAD] = 7
    torch.testing.assert_close(model(noisy, src_len, tgt), logits, rtol=1e-5, atol=1e-6)
    # Each pair alone (no padding at all) gives the same logits as inside the batch.
    for b in range(3):
        n = int(src_len[b])
        alone = model(src[b : b + 1, :n], src_len[b : b + 1], tgt[b : b + 1])
        torch.testing.assert_close(alone[0], logits[b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention,mode,bidirectional", ATTENTION_CASES)
def test_teacher_forced_forward_equals_stepwise_decoding(attention, mode, bidirectional):
    model = _model(attention, mode, bidirectional)
    src, src_len = _batch([5, 2, 3], seed=3)
    tgt, _ = _batch([6, 6, 6], vocab=V + 2, seed=4)
    logits = model(src, src_len, tgt)
    state = model.init_state(src, src_len)
    tgt_in = F.pad(tgt[:, :-1], (1, 0), value=SOS)
    steps = []
    for t in range(tgt.shape[1]):
        logp, state = model.decode_step(tgt_in[:, t], state)
        steps.append(logp)
    torch.testing.assert_close(torch.stack(steps, 1), logits.log_softmax(-1), rtol=1e-5, atol=1e-5)


def test_scheduled_sampling_ratio_one_is_teacher_forcing_and_zero_feeds_own_predictions():
    model = _model("general", "GRU", True)
    src, src_len = _batch([5, 2, 3], seed=5)
    tgt, _ = _batch([4, 4, 4], vocab=V + 2, seed=6)
    forced = model(src, src_len, tgt, teacher_forcing=1.0)
    free = model(src, src_len, tgt, teacher_forcing=0.0)
    torch.testing.assert_close(free[:, 0], forced[:, 0])  # the first step always reads <sos>
    # ratio 0 feeds the argmax: the same as teacher forcing on the model's own greedy tokens
    own = free.argmax(-1)
    torch.testing.assert_close(model(src, src_len, own), free, rtol=1e-5, atol=1e-6)


def test_attention_weights_zero_at_padding_and_sdpa_matches_explicit():
    torch.manual_seed(0)
    q, k = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    for score in ("dot", "general", "concat"):
        att = LuongAttention(8, 8, score)
        ctx_fast, none = att(q, k, mask)
        ctx, w = att(q, k, mask, need_weights=True)
        assert (none is None) == (score != "concat"), "dot/general go through SDPA (no weights)"
        assert w.shape == (3, 4, 6)
        assert torch.all(w[~mask[:, None, :].expand_as(w)] == 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
        torch.testing.assert_close(ctx_fast, ctx, rtol=1e-5, atol=1e-6)
    bahdanau = BahdanauAttention(8, 8, 5)
    ctx, w = bahdanau(q[:, :1], k, bahdanau.project_keys(k), mask)
    assert ctx.shape == (3, 1, 8) and torch.all(w[:, 0][~mask] == 0)
    torch.testing.assert_close(ctx[2, 0], k[2, 0])  # one real key: the context is that key


def test_bad_configurations_are_rejected():
    with pytest.raises(ValueError, match="attention 'dot' needs"):
        Seq2SeqConfig(V, V, hidden_size=8, bidirectional=True, attention="dot")
    with pytest.raises(ValueError, match="'dot' score needs"):
        LuongAttention(8, 16, "dot")
    with pytest.raises(ValueError, match="attention must be one of"):
        Seq2SeqConfig(V, V, attention="luong")
    with pytest.raises(ValueError, match="mode must be one of"):
        Seq2SeqConfig(V, V, mode="lstm")
    model = _model()
    src, src_len = _batch([3, 2])
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\]"):
        model(src, torch.tensor([4, 2]), src)
    with pytest.raises(ValueError, match="integer tensor of token ids"):
        model(src.float(), src_len, src)


def test_bridge_maps_bidirectional_and_resized_states():
    model = _model(None, "LSTM", True, encoder_hidden_size=5)
    src, src_len = _batch([3, 2])
    state = model.init_state(src, src_len)
    h, c = state.hidden
    assert h.shape == c.shape == (2, 2, 8)  # (layers, batch, decoder hidden)
    assert not model.bridge.identity
    assert _model(None, "GRU", False).bridge.identity


def test_sequence_loss_ignores_padding():
    logits = torch.randn(2, 3, 5)
    tgt = torch.tensor([[4, 2, PAD], [3, 4, 2]])
    changed = logits.clone()
    changed[0, 2] = 100.0  # a padded position: must not count
    loss = sequence_loss(logits, tgt)
    torch.testing.assert_close(sequence_loss(changed, tgt), loss)
    real = tgt != PAD
    torch.testing.assert_close(loss, F.cross_entropy(logits[real], tgt[real]))


def _launches_fwd_bwd(model, src, src_len, tgt) -> int:
    before = _runtime.total_launches()
    sequence_loss(model(src, src_len, tgt), tgt).backward()
    return _runtime.total_launches() - before


@pytest.mark.interpreter
@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_fused_teacher_forced_decoder_launch_count_does_not_grow_with_target_length(mode):
    """backend='triton' (Triton's interpreter on CPU): the whole target is one recurrent call."""
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(7, 7, embedding_dim=4, hidden_size=4, mode=mode, attention="general", backend="triton")
    model = Seq2Seq(cfg)
    src, src_len = _batch([3, 2], vocab=7)
    counts = {}
    for T in (4, 9):  # both past V tokens: the same embedding strategy (table) for both
        tgt, _ = _batch([T, T], vocab=7, seed=T)
        counts[T] = _launches_fwd_bwd(model, src, src_len, tgt)
    assert counts[4] > 0, "the triton kernels must actually run"
    assert counts[9] == counts[4], counts
    # Control: the step-wise (Bahdanau) decoder launches per step, so the count above is meaningful.
    torch.manual_seed(0)
    stepwise = Seq2Seq(Seq2SeqConfig(7, 7, embedding_dim=4, hidden_size=4, mode=mode, attention="bahdanau", backend="triton"))  # fmt: skip
    grow = [_launches_fwd_bwd(stepwise, src, src_len, _batch([T, T], vocab=7, seed=T)[0]) for T in (2, 3)]
    assert grow[1] > grow[0]
