"""Greedy and beam-search decoding: scores re-scored independently, beam search against exhaustive
enumeration and greedy decoding, a sound stopping rule, <eos> stops, devices."""

from __future__ import annotations

import math

import pytest
import torch

from fastrnn.seq2seq import EOS, PAD, SOS, Seq2Seq, Seq2SeqConfig, beam_search, greedy_decode, search


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


def test_greedy_and_beam_pad_finished_entries_and_respect_max_len():
    class Countdown(TableModel):
        """Source b emits token 4 until it has b tokens, then <eos>; source 3 never ends.  A row's
        state is (its source, its tokens so far), so beam search's rows work too."""

        def decode_step(self, y_prev, state):
            self.calls += 1
            state = [(b, n + (y != SOS)) for (b, n), y in zip(state, y_prev.tolist())]
            logp = torch.full((len(state), self.vocab), -20.0)
            for row, (b, n) in enumerate(state):
                logp[row, EOS if (n >= b and b != 3) else 4] = 0.0
            return logp, state

        def init_state(self, src, src_lengths):
            return [(b, 0) for b in range(src.shape[0])]

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
    # every other path has a token of log-probability -20: a real beam finds the same hypotheses,
    # pads them alike and cuts the endless one at max_len too
    for length_penalty in (0.0, 1.0):
        beam = beam_search(model, src, src_len, beam_size=3, max_len=5, length_penalty=length_penalty)
        assert torch.equal(beam.tokens, hyp.tokens) and torch.equal(beam.lengths, hyp.lengths)
        assert beam.scores.tolist() == [0.0] * 4


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


def rescore(model, src, src_len, hyp) -> torch.Tensor:
    """Each hypothesis' log-probability under ``model``, fed its own tokens step by step (float64 sums)."""
    state = model.init_state(src, src_len)
    y = torch.full((src.shape[0],), SOS, dtype=torch.int64)
    total = torch.zeros(src.shape[0], dtype=torch.float64)
    for t in range(hyp.tokens.shape[1]):
        logp, state = model.decode_step(y, state)
        tok = hyp.tokens[:, t]
        on = t < hyp.lengths
        total += torch.where(on, logp.double().gather(1, tok[:, None])[:, 0], 0.0)
        y = tok
    return total


@pytest.mark.parametrize("attention,mode", [(None, "GRU"), ("general", "LSTM"), ("bahdanau", "GRU"), ("concat", "RNN")])
def test_reported_scores_are_each_hypothesis_own_log_probability(attention, mode):
    torch.manual_seed(3)
    model = Seq2Seq(
        Seq2SeqConfig(9, 9, embedding_dim=6, hidden_size=12, mode=mode, bidirectional=True, attention=attention)
    ).eval()
    src = torch.randint(4, 9, (6, 7))
    src_len = torch.tensor([7, 1, 4, 3, 6, 2])
    src[torch.arange(7)[None, :] >= src_len[:, None]] = PAD
    wrapped = EndsAt(model, [2, 5, 0, 7, 3, 99])  # outputs that end at different steps, one never
    greedy = greedy_decode(wrapped, src, src_len, max_len=10)
    assert greedy.lengths.tolist() == [3, 6, 1, 8, 4, 10]
    torch.testing.assert_close(greedy.scores.double(), rescore(wrapped, src, src_len, greedy), rtol=0, atol=1e-4)
    for length_penalty in (0.0, 1.0):
        for width in (2, 4):
            beam = beam_search(wrapped, src, src_len, beam_size=width, max_len=10, length_penalty=length_penalty)
            # the back-pointers rebuild the hypotheses whose scores the search kept
            torch.testing.assert_close(beam.scores.double(), rescore(wrapped, src, src_len, beam), rtol=0, atol=1e-4)
            ended = beam.tokens.gather(1, (beam.lengths - 1)[:, None])[:, 0] == EOS
            assert torch.all(ended | (beam.lengths == 10))
            rank = beam.scores / beam.lengths.float() ** length_penalty
            assert torch.all(rank >= greedy.scores / greedy.lengths.float() ** length_penalty - 1e-5)


def test_decoding_argument_errors():
    model = TableModel({})
    src, src_len = _src(1)
    with pytest.raises(ValueError, match="beam_size must be at least 1"):
        beam_search(model, src, src_len, beam_size=0)
    with pytest.raises(ValueError, match="max_len must be at least 1"):
        greedy_decode(model, src, src_len, max_len=0)


class _Arrived(Exception):
    pass


class _Recorder(torch.nn.Module):
    """A decoder model whose parameters live on ``device``: records where the source arrives, then stops."""

    def __init__(self, device):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device=device))
        self.seen = None

    def init_state(self, src, src_lengths):
        self.seen = (src.device, src_lengths.device)
        raise _Arrived

    def decode_step(self, y_prev, state):
        raise AssertionError("unreachable")

    def reorder_state(self, state, index):
        raise AssertionError("unreachable")


@pytest.mark.parametrize("decode", ["greedy", "beam", "translate", "translate-beam"])
def test_decoding_moves_the_source_to_the_model_device(decode, monkeypatch):
    """CPU ids and a model elsewhere (the meta device stands for a GPU): the ids are moved."""
    meta = torch.device("meta")
    src, src_len = _src(2)
    if decode.startswith("translate"):
        model = Seq2Seq(Seq2SeqConfig(9, 9, embedding_dim=4, hidden_size=8, attention="general")).to(meta).eval()
        seen = []

        def arrive(self, src, src_lengths):
            seen.append((src.device, src_lengths.device))
            raise _Arrived

        monkeypatch.setattr(Seq2Seq, "init_state", arrive)
        for static in (False, None):
            with pytest.raises(_Arrived):
                model.translate(src, src_len, beam_size=1 if decode == "translate" else 3, max_len=4, static=static)
        assert seen == [(meta, meta)] * 2
        return
    model = _Recorder(meta)
    with pytest.raises(_Arrived):
        if decode == "greedy":
            greedy_decode(model, src, src_len, max_len=4)
        else:
            beam_search(model, src, src_len, beam_size=2, max_len=4)
    assert model.seen == (meta, meta)
    # a decoder model without parameters (no device of its own) gets the ids where they are
    plain = TableModel({})
    assert greedy_decode(plain, src, src_len, max_len=2).tokens.device == src.device


def test_translate_defaults_lengths_to_the_non_pad_ids():
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(9, 9, embedding_dim=4, hidden_size=8, attention="dot")).eval()
    src = torch.tensor([[4, 5, 6], [7, PAD, PAD]])
    want = greedy_decode(model, src, torch.tensor([3, 1]), max_len=5)
    got = model.translate(src, max_len=5)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.scores, want.scores)
    beam = model.translate(src, max_len=5, beam_size=3, length_penalty=0.0)
    assert torch.equal(beam.tokens, beam_search(model, src, torch.tensor([3, 1]), 3, 5, 0.0).tokens)


# ----------------------------------------------------------------------------------------------
# Beam search against exhaustive enumeration; no host sync per step; never below greedy


class Automaton:
    """A decoder model over fixed tables, in tensors only (no host reads inside a step).

    ``logp (N, V)``: the next-token log-probabilities in each of ``N`` states; ``child (N, V)``: the
    state after emitting a token; ``roots (B,)``: each source's first state.  ``-inf`` marks a
    token that cannot follow (probability exactly 0).
    """

    def __init__(self, logp: torch.Tensor, child: torch.Tensor, roots: torch.Tensor):
        self.logp, self.child, self.roots, self.calls = logp, child, roots, 0

    def init_state(self, src, src_lengths):
        return self.roots[: src.shape[0]].clone()

    def decode_step(self, y_prev, node):
        self.calls += 1
        node = torch.where(y_prev == SOS, node, self.child[node, y_prev])
        return self.logp[node], node

    def reorder_state(self, node, index):
        return node[index]

    @classmethod
    def from_tables(cls, tables: list[dict[tuple, dict[int, float]]], vocab: int = 8) -> Automaton:
        """One prefix table per source (as :class:`TableModel`); unlisted prefixes say ``<eos>`` surely."""
        logp = [torch.full((vocab,), -math.inf).index_fill_(0, torch.tensor([EOS]), 0.0)]  # state 0: the sink
        child, roots = [], []
        for table in tables:
            ids = {prefix: len(logp) + i for i, prefix in enumerate(table)}
            for prefix, dist in table.items():
                row = torch.full((vocab,), -math.inf)
                for tok, p in dist.items():
                    row[tok] = math.log(p)
                logp.append(row)
                child.append([ids.get((*prefix, v), 0) for v in range(vocab)])
            roots.append(ids[()])
        child = [[0] * vocab, *child]
        return cls(torch.stack(logp), torch.tensor(child), torch.tensor(roots))

    @classmethod
    def random_tries(cls, B: int, depth: int, tokens: tuple[int, ...], vocab: int, seed: int) -> Automaton:
        """``B`` random prefix trees: every prefix of fewer than ``depth`` ordinary ``tokens`` has its own
        random distribution over ``<eos>`` and ``tokens``."""
        g = torch.Generator().manual_seed(seed)
        n_per = sum(len(tokens) ** d for d in range(depth))
        allowed = torch.tensor([EOS, *tokens])
        logp = torch.full((1 + B * n_per, vocab), -math.inf)
        logp[0, EOS] = 0.0
        logits = torch.randn(B * n_per, len(allowed), generator=g)
        logp[1:, allowed] = logits.log_softmax(-1)
        child = torch.zeros(1 + B * n_per, vocab, dtype=torch.int64)
        roots = []
        for b in range(B):
            first = 1 + b * n_per
            roots.append(first)
            # breadth-first numbering: the children of node i (level order) are consecutive
            for i in range(n_per):
                kids = first + i * len(tokens) + 1 + torch.arange(len(tokens))
                if int(kids[-1]) < first + n_per:
                    child[first + i, list(tokens)] = kids
        return cls(logp, child, torch.tensor(roots))


def enumerate_best(model: Automaton, b: int, max_len: int, length_penalty: float) -> tuple[float, list[int]]:
    """Exhaustively: the best rank ``score / length ** length_penalty`` over every hypothesis of
    source ``b`` (ended by ``<eos>``, or cut at ``max_len`` tokens), in float64."""
    logp, child = model.logp.double().tolist(), model.child.tolist()
    best = (-math.inf, [])

    def walk(node: int, prefix: list[int], score: float) -> None:
        nonlocal best
        for tok, lp in enumerate(logp[node]):
            if lp == -math.inf:
                continue
            if tok == EOS:
                cand = ((score + lp) / (len(prefix) + 1) ** length_penalty, [*prefix, EOS])
            elif len(prefix) + 1 == max_len:
                cand = ((score + lp) / max_len**length_penalty, [*prefix, tok])
            else:
                walk(child[node][tok], [*prefix, tok], score + lp)
                continue
            if cand[0] > best[0]:
                best = cand

    walk(int(model.roots[b]), [], 0.0)
    return best


def rank_of(model: Automaton, b: int, seq: list[int], length_penalty: float) -> tuple[float, float]:
    """``(raw score, rank)`` of hypothesis ``seq`` of source ``b`` under the model's tables, in float64."""
    node, score = int(model.roots[b]), 0.0
    for tok in seq:
        score += float(model.logp[node, tok].double())
        node = int(model.child[node, tok])
    return score, score / len(seq) ** length_penalty


def _hyp_seqs(hyp) -> list[list[int]]:
    return [row[:n] for row, n in zip(hyp.tokens.tolist(), hyp.lengths.tolist())]


def test_beam_of_the_needed_width_finds_the_enumerated_best_where_greedy_fails():
    # A garden path.  Greedy takes 4 (0.35), then ends (0.55).  Beam 2 keeps 4 and 5 (0.33) and
    # prunes 6 (0.32), whose continuation 7 7 7 <eos> is sure: 6 7 7 7 <eos> is the best hypothesis
    # (0.32).  Beam 3 keeps it, but meanwhile the short 5 <eos> (0.198), 4 <eos>, 4 5 <eos> and
    # 5 4 <eos> end: a search that stops once it has 3 finished hypotheses returns 5 <eos>.
    table = {
        (): {4: 0.35, 5: 0.33, 6: 0.32},
        (4,): {EOS: 0.55, 5: 0.45},
        (4, 5): {EOS: 1.0},
        (5,): {EOS: 0.6, 4: 0.4},
        (5, 4): {EOS: 1.0},
        (6,): {7: 1.0},
        (6, 7): {7: 1.0},
        (6, 7, 7): {7: 1.0},
        (6, 7, 7, 7): {EOS: 1.0},
    }
    max_len = 8
    model = Automaton.from_tables([table])
    src, src_len = _src(1)
    for lp in (0.0, 1.0):
        best_rank, best_seq = enumerate_best(model, 0, max_len, lp)
        assert best_seq == [6, 7, 7, 7, EOS]
        greedy = _hyp_seqs(greedy_decode(model, src, src_len, max_len=max_len))[0]
        assert greedy == [4, EOS]
        assert rank_of(model, 0, greedy, lp)[1] < best_rank - 0.1, "greedy must be wrong here"
        found = {}
        for width in (2, 3, 4):
            hyp = beam_search(model, src, src_len, beam_size=width, max_len=max_len, length_penalty=lp)
            found[width] = _hyp_seqs(hyp)[0]
        assert found[2] != best_seq, "width 2 prunes the best path here: width 3 is needed"
        assert found[3] == found[4] == best_seq
        hyp = beam_search(model, src, src_len, beam_size=3, max_len=max_len, length_penalty=lp)
        assert hyp.scores[0].item() == pytest.approx(math.log(0.32), abs=1e-5)
        assert hyp.lengths.tolist() == [5]


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0, 2.0, -0.5])
def test_an_exhaustive_beam_is_exact_and_any_beam_ranks_at_least_as_high_as_greedy(length_penalty):
    # depth-5 random trees over 3 ordinary tokens: at most 3**4 = 81 live prefixes at any step, so
    # beam 81 prunes nothing, and only a premature stop could miss the enumerated best
    B, max_len, tokens = 10, 5, (4, 5, 6)
    model = Automaton.random_tries(B, max_len, tokens, vocab=8, seed=11)
    src, src_len = _src(B)
    best = [enumerate_best(model, b, max_len, length_penalty) for b in range(B)]
    greedy = _hyp_seqs(greedy_decode(model, src, src_len, max_len=max_len))
    greedy_rank = [rank_of(model, b, greedy[b], length_penalty)[1] for b in range(B)]
    assert sum(g < r - 1e-3 for g, (r, _) in zip(greedy_rank, best)) >= 2, "greedy should miss some optima"
    exact = beam_search(model, src, src_len, beam_size=81, max_len=max_len, length_penalty=length_penalty)
    for b, seq in enumerate(_hyp_seqs(exact)):
        score, rank = rank_of(model, b, seq, length_penalty)
        assert rank == pytest.approx(best[b][0], abs=1e-5), (b, seq, best[b])
        assert exact.scores[b].item() == pytest.approx(score, abs=1e-4)
        assert exact.lengths[b].item() == len(seq)
    for width in (2, 3, 5):
        hyp = beam_search(model, src, src_len, beam_size=width, max_len=max_len, length_penalty=length_penalty)
        for b, seq in enumerate(_hyp_seqs(hyp)):
            assert rank_of(model, b, seq, length_penalty)[1] >= greedy_rank[b] - 1e-5, (width, b)


def test_stopping_keeps_a_live_hypothesis_whose_mean_can_still_win():
    # <eos> at once ranks log 0.7 = -0.357; "4 4 4 <eos>" ranks log(0.3) / 4 = -0.301 (per-token
    # mean).  After step 1 the live "4" has the sum log 0.3: by the sound bound it may still reach
    # log(0.3) / max_len > -0.357, so the search goes on; a bound that assumed it ends at the next
    # step, log(0.3) / 2 = -0.602, would stop there and return [<eos>].
    table = {(): {EOS: 0.7, 4: 0.3}, (4,): {4: 1.0}, (4, 4): {4: 1.0}, (4, 4, 4): {EOS: 1.0}}
    model = Automaton.from_tables([table])
    src, src_len = _src(1)
    for max_len in (4, 8):
        best_rank, best_seq = enumerate_best(model, 0, max_len, 1.0)
        assert best_seq == [4, 4, 4, EOS] and best_rank > math.log(0.7)
        for width in (2, 3):
            hyp = beam_search(model, src, src_len, beam_size=width, max_len=max_len, length_penalty=1.0)
            assert _hyp_seqs(hyp) == [best_seq]
            assert hyp.scores[0].item() == pytest.approx(math.log(0.3), abs=1e-5)


def test_the_greedy_row_keeps_the_search_going_and_beam_never_ranks_below_greedy():
    # Beam 2 keeps "4" (0.4) and "5" (0.31), then prunes greedy's "4 7" (0.112) for "5 11" and
    # "5 12" (0.155 each).  After step 3 the best finished is "5 11 <eos>" (0.093) and the beams
    # live on at 0.062, but the greedy row, "4 7 14" (0.1008), still beats it and ends next:
    # "4 7 14 <eos>" is the answer.  Without the greedy row, or with a stopping rule that forgets
    # it, the search returns "5 11 <eos>": worse than greedy decoding.
    table = {
        (): {4: 0.4, 5: 0.31, 6: 0.29},
        (4,): {7: 0.28, 8: 0.24, 9: 0.24, 10: 0.24},
        (4, 7): {14: 0.9, EOS: 0.1},
        (4, 7, 14): {EOS: 1.0},
        (5,): {11: 0.5, 12: 0.5},
        (5, 11): {EOS: 0.6, 13: 0.4},
        (5, 12): {EOS: 0.6, 13: 0.4},
        (6,): {15: 1.0},
        (6, 15): {EOS: 0.05, 15: 0.95},
    }
    model = Automaton.from_tables([table], vocab=16)
    src, src_len = _src(1)
    greedy = _hyp_seqs(greedy_decode(model, src, src_len, max_len=6))[0]
    assert greedy == [4, 7, 14, EOS]
    greedy_score = rank_of(model, 0, greedy, 0.0)[0]
    for length_penalty in (0.0, 0.5):
        hyp = beam_search(model, src, src_len, beam_size=2, max_len=6, length_penalty=length_penalty)
        assert _hyp_seqs(hyp) == [greedy], "beam search must not rank below greedy decoding"
        assert hyp.scores[0].item() == pytest.approx(greedy_score, abs=1e-5)
    # (the enumerated best, "6 15 15 <eos>", is out of a 2-beam's reach: the guarantee is greedy's)
    assert enumerate_best(model, 0, 6, 0.0)[1] == [6, 15, 15, EOS]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, -0.5])
def test_stopping_early_never_changes_the_result(monkeypatch, length_penalty):
    """The same search with a bound no hypothesis ever meets (it runs to max_len) returns the same."""
    B, max_len = 12, 6
    model = Automaton.random_tries(B, max_len, (4, 5, 6), vocab=8, seed=7)
    src, src_len = _src(B)
    real = search.penalties
    never = lambda cap, n, lp: (real(cap, n, lp)[0], torch.full((cap,), math.inf))  # noqa: E731
    runs = {}
    for name in ("stopping", "to the end"):
        if name == "to the end":
            monkeypatch.setattr(search, "penalties", never)
        runs[name] = []
        for width in (2, 3, 5):
            model.calls = 0
            hyp = beam_search(model, src, src_len, beam_size=width, max_len=max_len, length_penalty=length_penalty)
            runs[name].append((hyp, model.calls))
    for (a, calls_a), (b, calls_b) in zip(runs["stopping"], runs["to the end"]):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
        assert torch.equal(a.scores, b.scores)
        assert calls_b == max_len and calls_a <= calls_b
    if length_penalty <= 0:  # the raw sum (and a negative penalty) stop early here
        assert any(calls < max_len for _, calls in runs["stopping"])


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor operations that read device data on the host (a sync on a GPU)."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        masked = name in ("__getitem__", "__setitem__") and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in _flat(args[1:])
        )
        if name in self.READS or masked:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


def _flat(items):
    for a in items:
        if isinstance(a, (tuple, list)):
            yield from _flat(a)
        else:
            yield a


def _looping_automaton(B: int, seed: int, eos: float | None = 0.02) -> Automaton:
    """``B`` sources over a random 12-state automaton.  ``eos``: the probability of ``<eos>`` in
    every state (small: decoding runs long), or ``None``: random like the other tokens'."""
    g = torch.Generator().manual_seed(seed)
    V, N = 8, 12
    logits = 2 * torch.randn(N, V, generator=g)
    logits[:, (PAD, SOS, 3)] = -math.inf
    logp = logits.log_softmax(-1)
    if eos is not None:
        rest = logp[:, 4:].exp()
        logp[:, 4:] = (rest * (1 - eos) / rest.sum(-1, keepdim=True)).log()
        logp[:, EOS] = math.log(eos)
    child = torch.randint(0, N, (N, V), generator=g)
    return Automaton(logp, child, torch.randint(0, N, (B,), generator=g))


@pytest.mark.parametrize("decode", ["greedy", "beam"])
def test_decoding_reads_the_device_only_every_sync_every_steps(decode):
    model = _looping_automaton(5, seed=2)
    src, src_len = _src(5)
    max_len, every = 24, 4
    with HostReads() as mode:
        if decode == "greedy":
            greedy_decode(model, src, src_len, max_len=max_len, sync_every=every)
        else:
            beam_search(model, src, src_len, beam_size=4, max_len=max_len, length_penalty=1.0, sync_every=every)
    assert model.calls >= 12, model.calls
    # one "all done?" check per `every` steps, and one read of the output width at the end
    assert len(mode.reads) <= -(-model.calls // every) + 1, (model.calls, mode.reads)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_decoding_results_do_not_depend_on_sync_every(length_penalty):
    model = _looping_automaton(7, seed=5, eos=None)
    src, src_len = _src(7)
    runs = [
        beam_search(model, src, src_len, beam_size=3, max_len=30, length_penalty=length_penalty, sync_every=n)
        for n in (1, 3, 8, 100)
    ]
    greedy = [greedy_decode(model, src, src_len, max_len=30, sync_every=n) for n in (1, 3, 8, 100)]
    for results in (runs, greedy):
        for other in results[1:]:
            assert torch.equal(other.tokens, results[0].tokens) and torch.equal(other.lengths, results[0].lengths)
            assert torch.equal(other.scores, results[0].scores)
    # sources end at different steps (the per-token mean of a loop can beat every ending: then
    # length-normalised beams run to max_len)
    assert len(set(greedy[0].lengths.tolist())) > 1
    assert length_penalty > 0 or len(set(runs[0].lengths.tolist())) > 1


def test_decoding_an_empty_batch_and_a_bad_sync_every():
    model = _looping_automaton(1, seed=0)
    src, src_len = torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    for hyp in (greedy_decode(model, src, src_len, max_len=5), beam_search(model, src, src_len, 3, max_len=5)):
        assert hyp.tokens.shape == (0, 0) and hyp.to_lists() == []
    with pytest.raises(ValueError, match="sync_every must be at least 1"):
        beam_search(model, *_src(1), beam_size=2, max_len=5, sync_every=0)


@pytest.fixture(scope="module")
def reverse_model(tmp_path_factory):
    """A small attention model trained here on the reverse task (250 steps, about 30 s on one core):
    good enough to be mostly right, weak enough that decoding choices matter."""
    from fastrnn.seq2seq.train import TrainOptions, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    opts = TrainOptions(
        out=str(tmp_path_factory.mktemp("reverse")), task="reverse", train_size=250 * 32, valid_size=20, max_len=16,
        hidden_size=32, embedding_dim=16, bidirectional=True, attention="general", epochs=1, batch_size=32, lr=0.01,
        warmup_steps=30, lr_decay="linear", progress=False, quiet=True,
    )  # fmt: skip
    result = train(opts)
    torch.set_num_threads(threads)
    return result


@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_beam_5_is_not_worse_than_greedy_on_a_trained_model(reverse_model, length_penalty):
    from fastrnn.seq2seq.data import encode_batch
    from fastrnn.seq2seq.train import evaluate, make_task

    model, src_vocab, tgt_vocab = reverse_model.model, reverse_model.src_vocab, reverse_model.tgt_vocab
    test = make_task("reverse", 400, seed=99, split="valid", min_len=1, max_len=16)
    greedy = evaluate(model, test, src_vocab, tgt_vocab)
    beam = evaluate(model, test, src_vocab, tgt_vocab, beam_size=5, length_penalty=length_penalty)
    assert 0.5 < greedy.exact_match < 0.98, f"the model should be good but not perfect: {greedy.summary()}"
    assert beam.exact_match >= greedy.exact_match - 0.01, (greedy.summary(), beam.summary())
    # and by the model's own ranking, beam search never returns a worse hypothesis than greedy's:
    # each hypothesis re-scored independently (teacher-forced, the whole output in one decoder call)
    device = next(model.parameters()).device  # the ids go where the model is, as a user puts them
    src, src_len = encode_batch(src_vocab, [s for s, _ in test[:100]], add_eos=False, device=device)
    g = greedy_decode(model, src, src_len)
    b = beam_search(model, src, src_len, beam_size=5, length_penalty=length_penalty)
    ranks = []
    for hyp in (g, b):
        score = _teacher_forced_score(model, src, src_len, hyp)
        torch.testing.assert_close(hyp.scores.double(), score, rtol=0, atol=1e-3)  # its own report agrees
        ranks.append(score / hyp.lengths.double() ** length_penalty)
    g_rank, b_rank = ranks
    assert torch.all(b_rank >= g_rank - 1e-4), (b_rank - g_rank).min()
    assert torch.any(b_rank > g_rank + 1e-3), "beam search should improve on greedy somewhere"


def _teacher_forced_score(model, src, src_len, hyp) -> torch.Tensor:
    """Each hypothesis' log-probability from the teacher-forced forward (float64 sums)."""
    with torch.no_grad():
        logp = model(src, src_len, hyp.tokens).double().log_softmax(-1)
    token = logp.gather(2, hyp.tokens[:, :, None])[:, :, 0]
    real = torch.arange(hyp.tokens.shape[1], device=token.device)[None, :] < hyp.lengths[:, None]
    return (token * real).sum(1)
