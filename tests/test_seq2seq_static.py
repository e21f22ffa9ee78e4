"""Decoding on static buffers (``fastrnn.seq2seq.static``) against eager step-by-step decoding, and
the fused Triton kernels of that step (``fastrnn.seq2seq.fused``) against the torch ops they
replace (in Triton's interpreter on the CPU); CUDA-graph capture where a GPU is present."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastrnn.kernels import _runtime
from fastrnn.seq2seq import EOS, PAD, Seq2Seq, Seq2SeqConfig, beam_search, greedy_decode, sequence_loss
from fastrnn.seq2seq import static as static_mod
from fastrnn.seq2seq.decoding import BeamSearch, GreedySearch, backtrace


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread, and do not suffer from a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


V = 11
MAX_LEN = 5


def _reverse_batch(B: int, seed: int, hi: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random sources of lengths 1..hi (the first one hi) and their reversals + <eos> (the targets)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, hi + 1, (B,), generator=g)
    lengths[0] = hi
    src = torch.randint(4, V, (B, hi), generator=g)
    src[torch.arange(hi)[None, :] >= lengths[:, None]] = PAD
    tgt = torch.full((B, hi + 1), PAD)
    for i, n in enumerate(lengths.tolist()):
        tgt[i, :n] = src[i, :n].flip(0)
        tgt[i, n] = EOS
    return src, lengths, tgt


@functools.cache
def _trained(attention: str | None, mode: str, bidirectional: bool) -> Seq2Seq:
    """A small model trained for 40 steps on the reverse task: it ends its outputs at different
    steps (some early, some past the budget), which random weights hardly ever do."""
    torch.manual_seed(1)
    cfg = Seq2SeqConfig(V, V, embedding_dim=8, hidden_size=16, num_layers=2, mode=mode, bidirectional=bidirectional,
                        attention=attention)  # fmt: skip
    model = Seq2Seq(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    for step in range(40):
        src, lengths, tgt = _reverse_batch(32, seed=step)
        loss = sequence_loss(model(src, lengths, tgt), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@contextlib.contextmanager
def _no_eager_steps(model):
    """Fail if decoding falls back to the model's eager step (so a static test really is one)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the eager decode_step ran on the static path")

    model.decode_step = refuse
    try:
        yield
    finally:
        del model.decode_step


def _assert_same(got, want, exact: bool = True) -> None:
    assert torch.equal(got.tokens, want.tokens), (got.tokens, want.tokens)
    assert torch.equal(got.lengths, want.lengths)
    if exact:
        assert torch.equal(got.scores, want.scores), (got.scores - want.scores).abs().max()
    else:
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-5)


def _decode(model, src, lengths, kind: str, static: bool, **kw):
    if kind == "greedy":
        return greedy_decode(model, src, lengths, max_len=MAX_LEN, static=static, **kw)
    lp = 0.0 if kind == "beam-raw" else 1.0
    return beam_search(model, src, lengths, 3, max_len=MAX_LEN, length_penalty=lp, static=static, **kw)


CASES = [
    (None, "GRU", False),
    (None, "LSTM", True),
    ("dot", "LSTM", False),
    ("dot", "GRU", False),
    ("general", "GRU", True),
    ("general", "LSTM", False),
    ("concat", "RNN", True),
    ("concat", "GRU", False),
    ("bahdanau", "LSTM", True),
    ("bahdanau", "GRU", False),
]


@pytest.mark.parametrize("attention,mode,bidirectional", CASES)
def test_static_step_gives_the_eager_tokens(attention, mode, bidirectional):
    model = _trained(attention, mode, bidirectional)
    src, lengths, _ = _reverse_batch(9, seed=100)
    seen = set()
    for kind in ("greedy", "beam-raw", "beam-mean"):
        want = _decode(model, src, lengths, kind, static=False)
        with _no_eager_steps(model):
            got = _decode(model, src, lengths, kind, static=True)
        # on the CPU the static step runs the eager step's own operations: the same bits
        _assert_same(got, want, exact=True)
        seen |= set(want.lengths.tolist())
    # outputs that end early (at different steps) and outputs cut at the budget
    assert len(seen) >= 3 and MAX_LEN in seen and min(seen) < MAX_LEN, seen


@pytest.mark.parametrize("attention,mode,bidirectional", [("general", "GRU", True), ("bahdanau", "LSTM", True)])
def test_padded_source_buckets_and_sync_every_change_nothing(attention, mode, bidirectional):
    model = _trained(attention, mode, bidirectional)
    src, lengths, _ = _reverse_batch(6, seed=101)
    dec = static_mod.decoder_for(model)
    for kind in ("greedy", "beam-mean"):
        want = _decode(model, src, lengths, kind, static=False)
        dec.buckets = True  # sources padded to 16 positions (masked), budgets rounded up, as on CUDA
        try:
            for every in (1, 3, 100):
                with _no_eager_steps(model):
                    got = _decode(model, src, lengths, kind, static=True, sync_every=every)
                _assert_same(got, want, exact=False)  # softmax over more (masked) positions: rounding
        finally:
            dec.buckets = None
    assert any(key[2] == 16 for key in dec.steps)


def test_static_steps_are_reused_reset_and_bounded(monkeypatch):
    model = _trained("general", "GRU", True)
    a, a_len, _ = _reverse_batch(5, seed=102)
    b, b_len, _ = _reverse_batch(5, seed=103)
    dec = static_mod.decoder_for(model)
    dec.steps.clear()
    first = [_decode(model, a, a_len, kind, static=True) for kind in ("greedy", "beam-mean")]
    [_decode(model, b, b_len, kind, static=True) for kind in ("greedy", "beam-mean")]
    again = [_decode(model, a, a_len, kind, static=True) for kind in ("greedy", "beam-mean")]
    for x, y in zip(first, again):
        _assert_same(x, y)
    assert len(dec.steps) == 2  # one greedy, one beam step: same shapes share one
    monkeypatch.setattr(static_mod, "MAX_SHAPES", 2)
    for B in (1, 2, 3):
        _decode(model, a[:B], a_len[:B], "greedy", static=True)
    assert len(dec.steps) == 2 and [key[0] for key in dec.steps] == [2, 3]


def test_static_decoding_follows_the_weights():
    model = _trained("concat", "GRU", False)
    src, lengths, _ = _reverse_batch(6, seed=104)
    before = _decode(model, src, lengths, "beam-mean", static=True)
    fresh = Seq2Seq(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    # in place (an optimiser step, load_state_dict): the same parameter tensors change
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(0.9).add_(0.05)
    changed = _decode(model, src, lengths, "beam-mean", static=True)
    _assert_same(changed, _decode(model, src, lengths, "beam-mean", static=False))
    assert not torch.equal(changed.scores, before.scores)
    # new tensors (model.to(dtype)): the decoder starts over on them
    model.double()
    try:
        _assert_same(
            _decode(model, src, lengths, "greedy", static=True), _decode(model, src, lengths, "greedy", static=False)
        )
    finally:
        model.float()
        model.load_state_dict(fresh.state_dict())


def test_autocast_copies_of_the_weights_follow_in_place_updates():
    model = _trained("general", "LSTM", False)
    src, lengths, _ = _reverse_batch(4, seed=105)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hyp = greedy_decode(model, src, lengths, max_len=MAX_LEN)
    dec = static_mod.decoder_for(model)
    w = dec.weights[torch.bfloat16]
    assert w.out_w.dtype == torch.bfloat16 and torch.equal(w.out_w, model.decoder.out.weight.detach().bfloat16())
    assert hyp.tokens.dtype == torch.int64 and torch.isfinite(hyp.scores).all()
    saved = model.decoder.out.weight.detach().clone()
    try:
        with torch.no_grad():
            model.decoder.out.weight.mul_(-1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            greedy_decode(model, src, lengths, max_len=MAX_LEN)
        assert dec.weights[torch.bfloat16] is w  # the same copies (a captured graph keeps reading them) ...
        assert torch.equal(w.out_w, model.decoder.out.weight.detach().bfloat16())  # ... updated
    finally:
        with torch.no_grad():
            model.decoder.out.weight.copy_(saved)


def test_training_mode_with_dropout_decodes_eagerly_and_static_true_says_why():
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(V, V, embedding_dim=4, hidden_size=8, num_layers=2, dropout=0.3, attention="dot"))
    src, lengths, _ = _reverse_batch(3, seed=106)
    calls = []
    step = model.decode_step
    model.decode_step = lambda *a: calls.append(1) or step(*a)
    greedy_decode(model, src, lengths, max_len=4)
    assert calls, "a model in training mode with dropout must decode with its own (random) step"
    with pytest.raises(ValueError, match="training mode with dropout"):
        greedy_decode(model, src, lengths, max_len=4, static=True)
    model.eval()
    calls.clear()
    greedy_decode(model, src, lengths, max_len=4)
    assert not calls


class _Reads(torch.overrides.TorchFunctionMode):
    """Counts tensor operations that read device data on the host."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["greedy", "beam"])
def test_static_step_reads_nothing_on_the_host(kind):
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(V, V, embedding_dim=4, hidden_size=8, attention="general")).eval()
    with torch.no_grad():
        model.decoder.out.bias[EOS] = -50.0  # never ends: every step runs
    src, lengths, _ = _reverse_batch(3, seed=107)
    reads = {}
    for n in (8, 24):
        with _Reads() as mode:
            if kind == "greedy":
                greedy_decode(model, src, lengths, max_len=n, sync_every=4, static=True)
            else:
                beam_search(model, src, lengths, 3, max_len=n, sync_every=4, static=True)
        reads[n] = mode.n
    assert reads[24] - reads[8] == (24 - 8) // 4, reads  # the "all done?" check every 4 steps, nothing else


# ----------------------------------------------------------------------------------------------
# The fused kernels against the torch ops they replace (Triton's interpreter on the CPU)


def _static_step(model, B: int, K: int, S: int, capacity: int, kernels: str):
    w = static_mod.Weights(model, torch.float32)
    return static_mod.StaticStep(w, B, K, S, capacity, torch.device("cpu"), kernels)


@pytest.mark.interpreter
@pytest.mark.parametrize("attention", ["dot", "general", "concat", "bahdanau"])
def test_fused_attention_equals_torch(attention):
    model = _trained(attention, "GRU", False)
    src, lengths, _ = _reverse_batch(3, seed=108)
    fused = _static_step(model, 3, 2, 16, MAX_LEN, "triton")  # 3 rows per source, sources padded to 16
    plain = _static_step(model, 3, 2, src.shape[1], MAX_LEN, "torch")
    for st in (fused, plain):
        st.prepare(model, src, lengths)
    out = torch.randn(9, 16)
    want = plain.attend(out)
    got = fused.attend(out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if attention != "bahdanau":  # Luong's readout takes [ctx; h]: the kernel wrote h beside the context
        assert torch.equal(fused.fused.cat[:, got.shape[1] :], out)
    assert torch.equal(fused.memory[:, src.shape[1] :], torch.zeros_like(fused.memory[:, src.shape[1] :]))


def _random_logits(N: int, V: int, g: torch.Generator, eos_boost: float) -> torch.Tensor:
    logits = 3 * torch.randn(N, V, generator=g)
    logits[:, EOS] += eos_boost * torch.rand(N, generator=g)
    return logits


@pytest.mark.interpreter
def test_fused_greedy_step_equals_torch():
    model = _trained("general", "GRU", True)
    st = _static_step(model, 5, 0, 4, 6, "triton")
    want = GreedySearch(5, 6, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        logits = _random_logits(5, V, g, eos_boost=2.5)
        if step == 1:
            logits[0, 5] = logits[0, 7] = logits[0].max() + 1  # a tie: the first index, as torch.max
        st.fused.select(logits)
        want.advance(logits.log_softmax(-1))
        got = st.search
        for name in ("y", "finished", "lengths", "t"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (step, name)
        assert torch.equal(got.tokens[:, : step + 1], want.tokens[:, : step + 1])
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-5)
    assert want.finished.any() and not want.finished.all()


@pytest.mark.interpreter
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, -0.5])
def test_fused_beam_step_and_backtrace_equal_torch(length_penalty):
    model = _trained("general", "GRU", True)
    B, K, T = 3, 3, 6
    st = _static_step(model, B, K, 4, T, "triton")
    got = st.search
    want = BeamSearch(B, K, T, torch.device("cpu"))
    for search in (got, want):
        search.reset(T, length_penalty)
    g = torch.Generator().manual_seed(1)
    for step in range(T):
        logits = _random_logits(B * (K + 1), V, g, eos_boost=3.0)
        st.fused.select(logits)
        want.advance(logits.log_softmax(-1))
        live = torch.isfinite(want.score)
        assert torch.equal(torch.isfinite(got.score), live), step
        torch.testing.assert_close(got.score[live], want.score[live], rtol=0, atol=1e-5)
        for name in ("greedy_alive", "best_step", "best_row", "best_len", "best_eos", "done", "t"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (step, name)
        for name in ("best", "best_raw"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=1e-5)
        for name in ("tokens", "parents"):
            assert torch.equal(getattr(got, name)[step][live], getattr(want, name)[step][live]), (step, name)
        rows = live.view(-1)
        assert torch.equal(got.rows[rows], want.rows[rows]) and torch.equal(got.y[rows], want.y[rows])
    assert want.done.any(), "the stopping rule should fire for some source"
    assert not want.greedy_alive.all(), "the greedy row should end for some source"
    hyp = got.finish(T, T, length_penalty, st.fused.backtrace)
    ref = want.finish(T, T, length_penalty)
    assert torch.equal(hyp.tokens, ref.tokens) and torch.equal(hyp.lengths, ref.lengths)
    # the kernel's backtrace against the torch one on the very same buffers
    assert torch.equal(st.fused.backtrace(T).tokens, backtrace(got, T).tokens)


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "attention,mode,bidirectional",
    [("general", "GRU", True), pytest.param("bahdanau", "LSTM", True, marks=pytest.mark.slow)]
    + [pytest.param(*c, marks=pytest.mark.slow) for c in CASES if c[0] not in ("general", "bahdanau")],
)
def test_fused_static_decoding_gives_the_eager_tokens(attention, mode, bidirectional):
    model = _trained(attention, mode, bidirectional)
    src, lengths, _ = _reverse_batch(4, seed=109)
    dec = static_mod.decoder_for(model)
    dec.kernels, dec.buckets = "triton", True
    try:
        for kind in ("greedy", "beam-mean"):
            want = _decode(model, src, lengths, kind, static=False)
            before = dict(_runtime.LAUNCHES)
            with _no_eager_steps(model):
                got = _decode(model, src, lengths, kind, static=True)
            _assert_same(got, want, exact=False)
            launched = {k: v - before.get(k, 0) for k, v in _runtime.LAUNCHES.items() if k.startswith("seq2seq.")}
            steps = launched["seq2seq.row_stats"]
            select = "seq2seq.greedy_select" if kind == "greedy" else "seq2seq.beam_select"
            attends = launched.get("seq2seq.attend", 0)
            assert steps >= 2 and launched[select] == steps and attends == (steps if attention else 0), launched
    finally:
        dec.kernels, dec.buckets = "auto", None


_COMPILE = textwrap.dedent(
    """
    import json, torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    from fastrnn.kernels.report.sass import analyse_cubin
    from fastrnn.seq2seq import Seq2Seq, Seq2SeqConfig, fused, static

    launches = []
    class Grab:
        def __init__(self, kernel): self.kernel = kernel
        def __getitem__(self, grid): return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))
    for name in ("attend_kernel", "row_stats_kernel", "greedy_select_kernel", "beam_select_kernel", "backtrace_kernel"):
        setattr(fused, name, Grab(getattr(fused, name)))
    for mode, att, H, V, K in (("GRU", "general", 512, 8000, 0), ("LSTM", "concat", 1024, 32000, 5),
                               ("GRU", "bahdanau", 256, 8000, 5)):
        model = Seq2Seq(Seq2SeqConfig(V, V, embedding_dim=32, hidden_size=H, mode=mode, attention=att))
        st = static.StaticStep(static.Weights(model, torch.bfloat16), 64, K, 32, 48, torch.device("cpu"), "triton")
        st.fused.attend(torch.zeros(64 * st.R, H, dtype=torch.bfloat16))
        st.fused.select(torch.zeros(64 * st.R, V, dtype=torch.bfloat16))
        if K:
            st.fused.backtrace(10)
    out = []
    for arch in (90, 80):
        backend = make_backend(GPUTarget("cuda", arch, 32))
        for kernel, args, kwargs in launches:
            bind = create_function_from_signature(kernel.signature, kernel.params, backend)
            bound, spec, options = bind(*args, **kwargs)
            options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, options)
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", arch, 32), options=options.__dict__)
            info = analyse_cubin(compiled.asm["cubin"], compiled.metadata.name)
            out.append([kernel.fn.__name__, arch, info["registers"], info["local_bytes"]])
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_fused_kernels_compile_for_sm90_and_sm80_without_spills():
    """Compiled (not interpreted) for Hopper and Ampere at the benchmark's sizes, on any machine."""
    from fastrnn.kernels.report import sass

    if sass.missing_tools():
        pytest.skip(f"Triton's CUDA tools are missing: {sass.missing_tools()}")
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {r[0] for r in rows}
    assert names == {"attend_kernel", "row_stats_kernel", "greedy_select_kernel", "beam_select_kernel",
                     "backtrace_kernel"}  # fmt: skip
    assert all(r[3] == 0 for r in rows), [r for r in rows if r[3]]  # no local memory: no spills
    assert all(r[2] <= 255 for r in rows)


# ----------------------------------------------------------------------------------------------
# On a GPU: the captured graph


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs, compiled kernels)")
@pytest.mark.parametrize("attention,mode,bidirectional", CASES)
def test_cuda_graph_decoding_gives_the_eager_tokens(attention, mode, bidirectional):
    model = _trained(attention, mode, bidirectional)
    cuda = Seq2Seq(model.config).cuda().eval()
    cuda.load_state_dict(model.state_dict())
    src, lengths, _ = _reverse_batch(9, seed=110)
    src, lengths = src.cuda(), lengths.cuda()
    for kind in ("greedy", "beam-raw", "beam-mean"):
        want = _decode(cuda, src, lengths, kind, static=False)
        with _no_eager_steps(cuda):
            got = _decode(cuda, src, lengths, kind, static=True)
            again = _decode(cuda, src, lengths, kind, static=True)  # replayed, not captured again
        _assert_same(got, want, exact=False)
        _assert_same(again, got)
    dec = static_mod.decoder_for(cuda)
    assert dec.steps and all(s.graph is not None and s.fused is not None for s in dec.steps.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs, compiled kernels)")
def test_cuda_graph_decoding_under_bf16_autocast_scores_its_own_tokens():
    """bf16 logits tie often, so tokens may differ from eager decoding's; the hypotheses' scores must
    still be their own log-probabilities (re-scored teacher-forced in fp32, bf16 tolerance)."""
    model = _trained("general", "LSTM", False)
    cuda = Seq2Seq(model.config).cuda().eval()
    cuda.load_state_dict(model.state_dict())
    src, lengths, _ = _reverse_batch(9, seed=111)
    src, lengths = src.cuda(), lengths.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        hyp = beam_search(cuda, src, lengths, 3, max_len=MAX_LEN, length_penalty=0.0)
    tgt = hyp.tokens.clone()
    with torch.no_grad():
        logp = cuda(src, lengths, tgt).float().log_softmax(-1).gather(2, tgt[:, :, None])[:, :, 0]
    real = torch.arange(tgt.shape[1], device="cuda")[None, :] < hyp.lengths[:, None]
    rescored = (logp * real).sum(1)
    torch.testing.assert_close(hyp.scores, rescored.float(), rtol=0, atol=0.1 * MAX_LEN)  # bf16 logits: ~0.05 a token
