"""Greedy and beam-search decoding: beam 1 == greedy, beam finds the better hypothesis, <eos> stops."""

from __future__ import annotations

import math

import pytest
import torch

from fastrnn.seq2seq import EOS, PAD, SOS, Seq2Seq, Seq2SeqConfig, beam_search, greedy_decode


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread, and do not suffer from a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TableModel:
    """A decoder model whose next-token distribution depends only on the tokens so far.

    ``table`` maps a prefix (tuple of ids after ``<sos>``) to ``{token: probability}``; prefixes not
    listed emit ``<eos>`` for sure.  Its state is the prefix of each batch entry.
    """

    def __init__(self, table: dict[tuple, dict[int, float]], vocab: int = 8):
        self.table, self.vocab, self.calls = table, vocab, 0

    def init_state(self, src, src_lengths):
        return [() for _ in range(src.shape[0])]

    def decode_step(self, y_prev, state):
        self.calls += 1
        new_state, rows = [], []
        for prefix, y in zip(state, y_prev.tolist()):
            prefix = prefix if y == SOS else (*prefix, y)
            probs = torch.full((self.vocab,), 1e-9)
            for tok, p in self.table.get(prefix, {EOS: 1.0}).items():
                probs[tok] = p
            rows.append(probs.log())
            new_state.append(prefix)
        return torch.stack(rows), new_state

    def reorder_state(self, state, index):
        return [state[i] for i in index.tolist()]


def _src(B):
    return torch.full((B, 3), 5), torch.full((B,), 3)


def test_beam_search_returns_the_better_scoring_hypothesis():
    # Greedy takes 4 (p=0.6) and then faces a flat distribution; 5 (p=0.4) ends surely after 6.
    flat = {t: 0.2 for t in (4, 5, 6, 7)} | {EOS: 0.2}
    table = {(): {4: 0.6, 5: 0.4}, (4,): flat, (5,): {6: 1.0}}
    for prefix in [(4, t) for t in (4, 5, 6, 7)]:
        table[prefix] = {EOS: 1.0}
    model = TableModel(table)
    src, src_len = _src(2)
    greedy = greedy_decode(model, src, src_len, max_len=10)
    beam = beam_search(model, src, src_len, beam_size=2, max_len=10, length_penalty=0.0)
    assert greedy.to_lists()[0][0] == 4
    assert beam.to_lists() == [[5, 6], [5, 6]]
    assert beam.tokens[0].tolist() == [5, 6, EOS]
    best = math.log(0.4) + math.log(1.0) + math.log(1.0)
    assert beam.scores[0].item() == pytest.approx(best, abs=1e-5)
    assert beam.scores[0].item() > greedy.scores[0].item() + 1.0


def test_length_normalisation_changes_the_winner():
    # A = 4 <eos>: 0.5 * 0.6 (best sum); B = 5 6 7 <eos>: 0.5 * 0.8^3 (lower sum, best per-token mean)
    table = {
        (): {4: 0.5, 5: 0.5},
        (4,): {EOS: 0.6, 6: 0.4},
        (4, 6): {EOS: 0.1, 7: 0.9},
        (5,): {6: 0.8, 7: 0.2},
        (5, 6): {7: 0.8, 4: 0.2},
        (5, 6, 7): {EOS: 0.8, 4: 0.2},
    }
    src, src_len = _src(1)
    raw = beam_search(TableModel(table), src, src_len, beam_size=3, max_len=6, length_penalty=0.0)
    mean = beam_search(TableModel(table), src, src_len, beam_size=3, max_len=6, length_penalty=1.0)
    assert raw.to_lists() == [[4]]
    assert raw.scores[0].item() == pytest.approx(math.log(0.5 * 0.6), abs=1e-5)
    assert mean.to_lists() == [[5, 6, 7]]
    assert mean.scores[0].item() == pytest.approx(math.log(0.5 * 0.8**3), abs=1e-5)


@pytest.mark.parametrize("decode", ["greedy", "beam"])
def test_decoding_stops_at_eos_and_pads_after_it(decode):
    # entry 0 ends after 1 token, entry 1 after 3; nothing is decoded after the last <eos>
    table = {(): {4: 1.0}, (4,): {5: 0.9, EOS: 0.1}, (4, 5): {6: 1.0}, (4, 5, 6): {EOS: 1.0}}
    model = TableModel(table)
    src, src_len = _src(1)
    run = (lambda: greedy_decode(model, src, src_len, max_len=50)) if decode == "greedy" else (
        lambda: beam_search(model, src, src_len, beam_size=3, max_len=50)
    )  # fmt: skip
    hyp = run()
    assert hyp.to_lists() == [[4, 5, 6]]
    assert hyp.tokens[0].tolist()[:4] == [4, 5, 6, EOS] and hyp.lengths.tolist() == [4]
    assert model.calls <= 6, f"decoding went on after <eos> ({model.calls} steps)"


def test_greedy_batch_pads_finished_entries_and_respects_max_len():
    class Countdown(TableModel):
        """Entry b emits token 4 until it has b tokens, then <eos>; entry 3 never ends."""

        def decode_step(self, y_prev, state):
            self.calls += 1
            state = [n + (y != SOS) for n, y in zip(state, y_prev.tolist())]
            logp = torch.full((len(state), self.vocab), -20.0)
            for b, n in enumerate(state):
                logp[b, EOS if (n >= b and b != 3) else 4] = 0.0
            return logp, state

        def init_state(self, src, src_lengths):
            return [0] * src.shape[0]

    model = Countdown({})
    src, src_len = _src(4)
    hyp = greedy_decode(model, src, src_len, max_len=5)
    assert hyp.tokens.tolist() == [
        [EOS, PAD, PAD, PAD, PAD],
        [4, EOS, PAD, PAD, PAD],
        [4, 4, EOS, PAD, PAD],
        [4, 4, 4, 4, 4],
    ]
    assert hyp.lengths.tolist() == [1, 2, 3, 5]
    assert hyp.to_lists() == [[], [4], [4, 4], [4] * 5]
    beam = beam_search(model, src, src_len, beam_size=1, max_len=5)
    assert torch.equal(beam.tokens, hyp.tokens) and torch.equal(beam.lengths, hyp.lengths)


class EndsAt:
    """Wraps a real model: entry ``b`` says ``<eos>`` exactly at step ``ends[b]`` (lengths vary),
    every other token comes from the model itself."""

    def __init__(self, model, ends):
        self.model, self.ends = model, torch.tensor(ends)

    def init_state(self, src, src_lengths):
        return self.model.init_state(src, src_lengths), torch.arange(src.shape[0]), 0

    def decode_step(self, y_prev, state):
        inner, ids, t = state
        logp, inner = self.model.decode_step(y_prev, inner)
        logp = logp.clone()
        hit = self.ends[ids] == t
        logp[:, EOS] = -50.0
        logp[hit] = -50.0
        logp[hit, EOS] = 0.0
        return logp, (inner, ids, t + 1)

    def reorder_state(self, state, index):
        inner, ids, t = state
        return self.model.reorder_state(inner, index), ids[index], t


@pytest.mark.parametrize("attention,mode", [(None, "GRU"), ("general", "LSTM"), ("bahdanau", "GRU"), ("concat", "RNN")])
def test_beam_size_one_equals_greedy_on_a_real_model(attention, mode):
    torch.manual_seed(3)
    model = Seq2Seq(
        Seq2SeqConfig(9, 9, embedding_dim=6, hidden_size=12, mode=mode, bidirectional=True, attention=attention)
    ).eval()
    src = torch.randint(4, 9, (6, 7))
    src_len = torch.tensor([7, 1, 4, 3, 6, 2])
    src[torch.arange(7)[None, :] >= src_len[:, None]] = PAD
    wrapped = EndsAt(model, [2, 5, 0, 7, 3, 99])
    greedy = greedy_decode(wrapped, src, src_len, max_len=10)
    assert greedy.lengths.tolist() == [3, 6, 1, 8, 4, 10]
    beam = beam_search(wrapped, src, src_len, beam_size=1, max_len=10)
    assert torch.equal(beam.tokens, greedy.tokens)
    assert torch.equal(beam.lengths, greedy.lengths)
    torch.testing.assert_close(beam.scores, greedy.scores)
    # and on the bare model, whatever it does
    greedy = greedy_decode(model, src, src_len, max_len=10)
    beam = beam_search(model, src, src_len, beam_size=1, max_len=10)
    assert torch.equal(beam.tokens, greedy.tokens)
    torch.testing.assert_close(beam.scores, greedy.scores)
    wide = beam_search(wrapped, src, src_len, beam_size=4, max_len=10, length_penalty=0.0)
    # with raw scores, a wider beam never returns a worse hypothesis than greedy's here
    assert torch.all(wide.scores >= greedy_decode(wrapped, src, src_len, max_len=10).scores - 1e-5)


def test_decoding_argument_errors():
    model = TableModel({})
    src, src_len = _src(1)
    with pytest.raises(ValueError, match="beam_size must be at least 1"):
        beam_search(model, src, src_len, beam_size=0)
    with pytest.raises(ValueError, match="max_len must be at least 1"):
        greedy_decode(model, src, src_len, max_len=0)
