"""Decoding a :class:`~fastrnn.seq2seq.Seq2Seq` on static buffers: one step a CUDA graph captures.

:func:`~fastrnn.seq2seq.greedy_decode` and :func:`~fastrnn.seq2seq.beam_search` use this by
default for a ``Seq2Seq`` (in eval mode, or without dropout).  A :class:`StaticStep` holds every
tensor a decoding step touches, for one *shape*: batch size ``B``, beam size ``K`` (0: greedy),
source-length bucket ``S`` and output capacity:

* the decoder's recurrent state ``(layers, B * R, H)`` (``R = K + 1`` rows per source: the beams
  and the greedy row; 1 row for greedy decoding), the encoder's outputs padded to the bucket,
  their mask and the attention's projected keys (computed once per call: the keys never change
  while decoding);
* the search's bookkeeping (:class:`~fastrnn.seq2seq.search.GreedySearch` /
  :class:`~fastrnn.seq2seq.search.BeamSearch`), step counter included, on the device.

One step (:meth:`StaticStep.step`) is: embedding, the decoder's cells (``torch.gru_cell`` & co.,
one per layer, on the model's own weights), attention, ``tanh(W_c [ctx; h])`` and the output
layer, then the search's step (greedy: argmax and bookkeeping; beam: top-``K`` over ``K x V``,
the greedy row, finished candidates, the stopping rule) and, for beam search, the reordering
of the recurrent state -- all in place, with no host sync and no data-dependent Python branch.
It calls none of the model's modules: it reads their parameters.

**CUDA**: the step of a shape is captured once with :class:`torch.cuda.CUDAGraph` and replayed
for every token; attention and the search's step run as fused Triton kernels
(:mod:`fastrnn.seq2seq.fused`: one kernel for a step's attention scores, softmax and context, the
keys stored once per source; two for the search's step over ``B * R x V``).  The
:data:`MAX_SHAPES` most recently used shapes are kept per model; source lengths are rounded up to
a multiple of :data:`SOURCE_BUCKET` and output budgets to a multiple of :data:`LENGTH_BUCKET`, so
a few graphs serve every batch.  Under ``torch.autocast`` the step runs in autocast's dtype on
copies of the weights made once (refreshed when the weights change), with log-probabilities and
softmax in fp32.  **CPU**: the same step runs without capture and without bucketing, on the same
operations, and the same shapes, as the model's eager :meth:`~fastrnn.seq2seq.Seq2Seq.decode_step`
(the encoder's outputs stored once per row, as the eager step has them).

**Results.**  The tokens are those of the eager step-by-step decoding.  On the CPU every
operation is the eager path's own, so the scores agree to the last bit.  On CUDA the fused
kernels sum in another order than the eager path's ops (and the eager path may run fastrnn's
recurrence kernels where the static step runs ``torch.*_cell``), so log-probabilities agree to
rounding, and a token can differ where two candidates tie to within rounding: an exact tie in the
argmax or the top-``K`` (likelier in bf16, whose logits tie often; the kernels take the smallest
index), or two beam candidates whose scores are that close.  Those ties are the only cases that
may differ.
"""

from __future__ import annotations

import collections
import contextlib
import warnings
import weakref
from typing import Any

import torch
import torch.nn.functional as F

from .search import BeamSearch, GreedySearch, Hypotheses

#: On CUDA, source lengths are rounded up to a multiple of this (one captured graph per bucket).
SOURCE_BUCKET = 16
#: On CUDA, output budgets (``max_len``) are rounded up to a multiple of this.
LENGTH_BUCKET = 16
#: Static steps (buffers and captured graphs, one per shape) kept per model; the least recently used go first.
MAX_SHAPES = 16

CELLS = ("GRU", "LSTM", "RNN_TANH", "RNN_RELU")

_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unsupported(model: Any) -> str | None:
    """Why ``model`` (a :class:`~fastrnn.seq2seq.Seq2Seq`) cannot decode on static buffers, or
    ``None`` when it can."""
    dec = model.decoder
    if model.training and model.config.dropout > 0:
        return "the model is in training mode with dropout (call model.eval() first)"
    rnn, emb = getattr(dec.rnn, "rnn", None), getattr(dec.rnn, "embedding", None)
    if rnn is None or emb is None or getattr(rnn, "mode", None) not in CELLS:
        return "the decoder's recurrent layers are not an embedding + RNN/LSTM/GRU stack"
    if getattr(rnn, "proj_size", 0) or getattr(rnn, "bidirectional", False):
        return "the decoder's recurrent layers have a projection or two directions"
    return None


def decoder_for(model: Any) -> StaticDecoder:
    """The :class:`StaticDecoder` of ``model`` (made on first use, dropped with the model)."""
    dec = _DECODERS.get(model)
    if dec is None:
        dec = _DECODERS[model] = StaticDecoder()
    return dec


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def autocast_on(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` (never for a type autocast lacks)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # e.g. "meta": no autocast there
        return False


def compute_dtype(param_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a step computes in: autocast's for fp32 weights under ``torch.autocast``, else the weights'."""
    if param_dtype == torch.float32 and autocast_on(device.type):
        return torch.get_autocast_dtype(device.type)
    return param_dtype


class Weights:
    """The decoder's parameters in the compute dtype: the parameters themselves when they have it,
    else copies made once and refreshed (:meth:`refresh`) when a parameter has changed."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        dec = model.decoder
        rnn, att = dec.rnn.rnn, dec.attention
        self.mode, self.num_layers, self.hidden_size = rnn.mode, rnn.num_layers, rnn.hidden_size
        self.attention = dec.attention_kind
        named: list[tuple[str, torch.Tensor | None]] = [("emb", dec.rnn.embedding.weight)]
        for layer in range(rnn.num_layers):
            for kind in ("ih", "hh"):
                named.append((f"w_{kind}{layer}", getattr(rnn, f"weight_{kind}_l{layer}")))
                named.append((f"b_{kind}{layer}", getattr(rnn, f"bias_{kind}_l{layer}", None)))
        additive = getattr(att, "additive", None)
        if getattr(att, "weight", None) is not None:
            named.append(("att_w", att.weight.weight))
        if additive is not None:
            named += [("add_q", additive.query.weight), ("add_kw", additive.key.weight), ("add_kb", additive.key.bias)]
            named.append(("add_v", additive.v.weight))
        if dec.feed is not None:
            for kind in ("ih", "hh"):
                named.append((f"feed_w_{kind}", getattr(dec.feed, f"weight_{kind}_l0")))
                named.append((f"feed_b_{kind}", getattr(dec.feed, f"bias_{kind}_l0", None)))
        if dec.combine is not None:
            named += [("comb_w", dec.combine.weight), ("comb_b", dec.combine.bias)]
        named += [("out_w", dec.out.weight), ("out_b", dec.out.bias)]
        self.dtype = dtype
        self.sources = [(n, p) for n, p in named if p is not None]
        optional = ("att_w", "add_q", "add_kw", "add_kb", "add_v", "comb_w", "comb_b")
        self.tensors: dict[str, torch.Tensor | None] = {n: None for n in optional} | {n: None for n, _ in named}
        for n, p in self.sources:
            self.tensors[n] = p.detach() if p.dtype == dtype else p.detach().to(dtype)
        self._versions = [p._version for _, p in self.sources]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["tensors"][name]
        except KeyError:
            raise AttributeError(name) from None

    def layer(self, i: int) -> tuple:
        t = self.tensors
        return t[f"w_ih{i}"], t[f"w_hh{i}"], t[f"b_ih{i}"], t[f"b_hh{i}"]

    def feed(self) -> tuple:
        t = self.tensors
        return t["feed_w_ih"], t["feed_w_hh"], t["feed_b_ih"], t["feed_b_hh"]

    def fingerprint(self) -> tuple:
        return fingerprint(p for _, p in self.sources)

    def refresh(self) -> None:
        """Copy every parameter that changed (in place: an optimiser step, ``load_state_dict``)
        into its cast copy; the copies keep their storage, so captured graphs stay valid."""
        for i, (n, p) in enumerate(self.sources):
            if p._version != self._versions[i]:
                copy = self.tensors[n]
                if copy is not None and copy.data_ptr() != p.data_ptr():
                    copy.copy_(p.detach())
                self._versions[i] = p._version


def fingerprint(params) -> tuple:
    """Where and what the parameters are: a new tensor (``model.to(...)``) means new weights."""
    return tuple((p.data_ptr(), p.dtype, p.device, tuple(p.shape)) for p in params)


def cell(mode: str, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, w_ih, w_hh, b_ih, b_hh):
    """One step of a ``torch.nn`` cell: ``(h', c')`` (``c'`` is ``None`` but for an LSTM)."""
    if mode == "LSTM":
        if x.device.type == "cpu":  # the op nn.LSTM runs on the CPU (oneDNN's LSTM where it applies)
            weights = [w_ih, w_hh] if b_ih is None else [w_ih, w_hh, b_ih, b_hh]
            _, h2, c2 = torch.lstm(x[None], (h[None], c[None]), weights, b_ih is not None, 1, 0.0, False, False, False)
            return h2[0], c2[0]
        return torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    fn = {"GRU": torch.gru_cell, "RNN_TANH": torch.rnn_tanh_cell, "RNN_RELU": torch.rnn_relu_cell}[mode]
    return fn(x, h, w_ih, w_hh, b_ih, b_hh), None


class StaticStep:
    """The buffers and (on CUDA) the captured graph of one decoding shape: ``B`` sources, beam
    size ``K`` (0: greedy), source bucket ``S``, output ``capacity``, compute ``dtype``."""

    def __init__(self, w: Weights, B: int, K: int, S: int, capacity: int, device: torch.device, kernels: str) -> None:
        self.w, self.B, self.K, self.S, self.capacity, self.device = w, B, K, S, capacity, device
        self.R = K + 1 if K else 1
        N, L, H, dt = B * self.R, w.num_layers, w.hidden_size, w.dtype
        self.search: GreedySearch | BeamSearch = (
            BeamSearch(B, K, capacity, device) if K else GreedySearch(B, capacity, device)
        )
        self.h = torch.zeros(L, N, H, dtype=dt, device=device)
        self.c = torch.zeros(L, N, H, dtype=dt, device=device) if w.mode == "LSTM" else None
        # the encoder's outputs: one copy per source for the fused kernels (a source's rows share
        # it), one per row for torch's ops (the eager step's own shapes, so the same results)
        M = B if kernels == "triton" else N
        key_size = w.comb_w.shape[1] - H if w.comb_w is not None else 0
        self.memory = torch.zeros(M, S, key_size, dtype=dt, device=device) if w.attention else None
        self.mask = torch.zeros(M, S, dtype=torch.bool, device=device)
        self.mask[:, 0] = True
        self.pk = torch.zeros(M, S, w.add_q.shape[0], dtype=dt, device=device) if w.add_q is not None else None
        self.fused = None
        if kernels == "triton":
            from . import fused

            self.fused = fused.StepKernels(self)
        self.graph: torch.cuda.CUDAGraph | None = None

    # -- filling the buffers for one call ----------------------------------------------------

    @torch.no_grad()
    def prepare(self, model: Any, src: torch.Tensor, src_lengths: torch.Tensor) -> None:
        """Encode ``src`` and load the decoder's initial state and the encoder's outputs."""
        state = model.init_state(src, src_lengths)
        S, R = src.shape[1], self.R
        hidden = state.hidden
        h, c = hidden if isinstance(hidden, tuple) else (hidden, None)
        if R > 1:
            h = h.repeat_interleave(R, dim=1)
            c = None if c is None else c.repeat_interleave(R, dim=1)
        self.h.copy_(h)
        if self.c is not None:
            self.c.copy_(c)
        if self.memory is not None:
            per_row = self.memory.shape[0] != self.B and R > 1
            rows = (lambda t: t.repeat_interleave(R, dim=0)) if per_row else (lambda t: t)
            self.memory[:, :S].copy_(rows(state.memory))
            self.mask[:, :S].copy_(rows(state.mask))
            if S < self.S:
                self.memory[:, S:].zero_()
                self.mask[:, S:] = False
            if self.pk is not None:
                if state.projected_keys is not None:  # Bahdanau: the model projected them
                    self.pk[:, :S].copy_(rows(state.projected_keys))
                else:  # Luong concat: project once here (the eager step projects at every step)
                    self.pk[:, :S].copy_(F.linear(self.memory[:, :S], self.w.add_kw, self.w.add_kb))
                if S < self.S:
                    self.pk[:, S:].zero_()
        if self.fused is not None:
            self.fused.prepare()

    # -- the step ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> None:
        """One token for every row: reads ``search.y`` and the state, writes them back."""
        w, search = self.w, self.search
        with self._no_autocast():
            x = F.embedding(search.y, w.emb)
            new = []
            for layer in range(w.num_layers):
                c = None if self.c is None else self.c[layer]
                h2, c2 = cell(w.mode, x, self.h[layer], c, *w.layer(layer))
                new.append((h2, c2))
                x = h2
            out, ctx = x, None
            if w.attention is not None:
                ctx = self.attend(out)
                if w.attention == "bahdanau":  # input feeding: the context drives the top layer's state
                    h2, c2 = cell(w.mode, ctx, new[-1][0], new[-1][1], *w.feed())
                    new[-1] = (h2, c2)
                    out = h2
            logits = self.readout(out, ctx)
            if self.fused is not None:
                self.fused.select(logits)
            else:
                search.advance(logits.float().log_softmax(-1))
            self.store(new)

    def _no_autocast(self):
        if autocast_on(self.device.type):
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    @torch.no_grad()
    def attend(self, out: torch.Tensor) -> torch.Tensor:
        """The context ``(B * R, K)`` of the top layer's output ``out (B * R, H)``."""
        if self.fused is not None:
            return self.fused.attend(out)
        w = self.w
        q = out[:, None, :]  # (B * R, 1, H) against one copy of the keys per row, as the eager step
        if w.attention in ("dot", "general"):
            if w.att_w is not None:
                q = F.linear(q, w.att_w)
            ctx = F.scaled_dot_product_attention(
                q, self.memory, self.memory, attn_mask=self.mask[:, None, :], scale=1.0
            )
        else:  # additive scores: Luong's concat, Bahdanau
            hidden = torch.tanh(F.linear(q, w.add_q)[:, :, None, :] + self.pk[:, None, :, :])
            scores = F.linear(hidden, w.add_v).squeeze(-1)
            wide = scores.to(torch.promote_types(scores.dtype, torch.float32))  # fp32 softmax in 16-bit steps
            weights = wide.masked_fill(~self.mask[:, None, :], float("-inf")).softmax(-1)
            ctx = weights.to(w.dtype) @ self.memory
        return ctx[:, 0]

    def readout(self, out: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B * R, V)``: ``W_o tanh(W_c [ctx; h])`` (``W_o h`` without attention)."""
        w = self.w
        h = out
        if ctx is not None:
            both = self.fused.readout_input(out) if self.fused is not None else torch.cat([ctx, out], -1)
            h = torch.tanh(F.linear(both, w.comb_w, w.comb_b))
        return F.linear(h, w.out_w, w.out_b)

    def store(self, new: list) -> None:
        """The new recurrent state into the state buffers; beam search reorders it (``search.rows``)."""
        rows = self.search.rows if self.K else None
        for layer, (h2, c2) in enumerate(new):
            for buf, val in ((self.h, h2), (self.c, c2)):
                if buf is None:
                    continue
                if rows is None:
                    buf[layer].copy_(val)
                else:
                    torch.index_select(val, 0, rows, out=buf[layer])

    # -- running -------------------------------------------------------------------------------

    def capture(self, pool: Any) -> None:
        """Capture :meth:`step` in a CUDA graph (after two warm-up steps on a side stream, which
        write step 0 and 1 of the buffers: :meth:`prepare` and the search's reset start over)."""
        with _on(self.device):
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # cuBLAS workspaces, Triton compilation: never inside the capture
                    self.step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.step()
        self.graph = graph

    def run(self, max_len: int, every: int) -> int:
        """Up to ``max_len`` steps, asking "all done?" every ``every`` steps; returns the steps run."""
        steps = 0
        for t in range(max_len):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.step()
            steps = t + 1
            if steps % every == 0 and self.search.all_done():  # the loop's only host sync
                break
        return steps


def _on(device: torch.device):
    """``device`` as the current CUDA device (Triton launches and graph replays go there)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class StaticDecoder:
    """Greedy and beam decoding of one :class:`~fastrnn.seq2seq.Seq2Seq` on static buffers.

    Settings (attributes): ``kernels``: ``"auto"`` (the fused Triton kernels on CUDA, torch ops
    elsewhere), ``"torch"`` or ``"triton"`` (on the CPU: Triton's interpreter);  ``capture``:
    CUDA graphs on CUDA (default ``True``);  ``buckets``: round source lengths and output budgets
    up to :data:`SOURCE_BUCKET`/:data:`LENGTH_BUCKET` (default ``None``: on CUDA only, where
    each shape is a captured graph).
    """

    def __init__(self) -> None:
        self.kernels = "auto"
        self.capture = True
        self.buckets: bool | None = None
        self.steps: collections.OrderedDict = collections.OrderedDict()
        self.weights: dict[torch.dtype, Weights] = {}
        self.pool = None
        self._fingerprint: tuple | None = None

    def _weights(self, model: Any, device: torch.device) -> Weights:
        params = list(model.decoder.parameters())
        fp = fingerprint(params)
        if fp != self._fingerprint:  # new parameter tensors (model.to(...), a new dtype): start over
            self.steps.clear()
            self.weights.clear()
            self._fingerprint = fp
        dtype = compute_dtype(params[0].dtype, device)
        w = self.weights.get(dtype)
        if w is None:
            w = self.weights[dtype] = Weights(model, dtype)
        else:
            w.refresh()
        return w

    def _kernels(self, device: torch.device) -> str:
        if self.kernels != "auto":
            return self.kernels
        return "triton" if device.type == "cuda" else "torch"

    def get(self, model: Any, B: int, K: int, S: int, max_len: int, device: torch.device) -> StaticStep:
        """The step of this shape (made, and on CUDA captured, on first use)."""
        w = self._weights(model, device)
        cuda = device.type == "cuda"
        buckets = cuda if self.buckets is None else self.buckets
        S_b = _round_up(S, SOURCE_BUCKET) if buckets else S
        cap = _round_up(max_len, LENGTH_BUCKET) if buckets else max_len
        cap = max(cap, 2) if cuda and self.capture else cap  # the capture's two warm-up steps
        kernels = self._kernels(device)
        key = (B, K, S_b, cap, w.dtype, device, kernels)
        st = self.steps.get(key)
        if st is not None:
            self.steps.move_to_end(key)
            return st
        try:
            st = self._new_step(w, B, K, S_b, cap, device, kernels)
        except Exception as e:
            if kernels != "triton" or self.kernels != "auto":
                raise
            # the fused kernels failed to build here (an unsupported GPU or Triton release): torch's ops
            warnings.warn(
                f"fastrnn.seq2seq: the fused decoding kernels failed ({type(e).__name__}: {e}); decoding on "
                "torch operations instead",
                stacklevel=3,
            )
            self.kernels = kernels = "torch"
            key = (B, K, S_b, cap, w.dtype, device, kernels)
            st = self._new_step(w, B, K, S_b, cap, device, kernels)
        self.steps[key] = st
        while len(self.steps) > MAX_SHAPES:
            self.steps.popitem(last=False)
        return st

    def _new_step(self, w: Weights, B: int, K: int, S: int, cap: int, device: torch.device, kernels: str) -> StaticStep:
        st = StaticStep(w, B, K, S, cap, device, kernels)
        if device.type == "cuda" and self.capture:
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            st.capture(self.pool)
        return st

    def greedy(self, model: Any, src: torch.Tensor, src_lengths: torch.Tensor, max_len: int, every: int) -> Hypotheses:
        with _on(src.device):
            st = self.get(model, src.shape[0], 0, src.shape[1], max_len, src.device)
            st.prepare(model, src, src_lengths)
            st.search.reset()
            st.run(max_len, every)
            return st.search.result()

    def beam(
        self, model: Any, src: torch.Tensor, src_lengths: torch.Tensor, K: int, max_len: int, lp: float, every: int
    ) -> Hypotheses:
        with _on(src.device):
            st = self.get(model, src.shape[0], K, src.shape[1], max_len, src.device)
            st.prepare(model, src, src_lengths)
            st.search.reset(max_len, lp)
            steps = st.run(max_len, every)
            trace = st.fused.backtrace if st.fused is not None else None
            return st.search.finish(steps, max_len, lp, trace)
