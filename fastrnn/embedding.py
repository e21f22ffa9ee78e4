"""``fastrnn.EmbeddingRNN``: token ids -> embedding -> RNN/LSTM/GRU stack, fused.

The first layer's input gates come straight from the token ids: no ``(T, B, E)`` tensor of
embeddings exists in forward or backward.  Two strategies compute ``gx = E[ids] W_ih^T + b``:

* ``"table"``: project the whole vocabulary once (``V x E x D*G*H`` FLOPs) and gather rows;
* ``"gather_gemm"``: a GEMM whose A-rows are read from the embedding by id (``N x E x D*G*H``
  FLOPs for ``N = T*B`` tokens).

``strategy="auto"`` (the cost model) takes ``"table"`` when the vocabulary has no more rows than
the batch has tokens (``V <= N``), i.e. when it costs no more FLOPs, else ``"gather_gemm"``.
The backward is shared: token gradients summed per vocabulary row (``(V, D*G*H)``), then
``dE``, ``dW_ih`` and ``db`` are GEMMs/reductions over that.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import dispatch, ops
from .auto import Runners, capturing
from .dispatch import Decision
from .functional import first_layer_projection
from .modules import RecurrentBase, build, fast_twin, layout, run_kernels, run_torch

STRATEGIES = ("auto", "table", "gather_gemm")

#: The id dtypes ``nn.Embedding`` takes (it rejects others with a dtype error, whatever their values).
_EMBEDDING_INDEX_DTYPES = (torch.int64, torch.int32)


def choose_strategy(num_embeddings: int, num_tokens: int) -> str:
    """The cost model: ``"table"`` when ``V <= N`` (no more FLOPs than the gather-GEMM)."""
    return "table" if num_embeddings <= num_tokens else "gather_gemm"


class EmbeddingRNN(nn.Module):
    """Embedding + recurrent stack with the embedding fused into the first layer.

    Args:
        num_embeddings, embedding_dim, padding_idx: as :class:`torch.nn.Embedding`.
        hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
        nonlinearity: as the ``torch.nn`` recurrent module of ``mode``.
        mode: a cell family (``"LSTM"``, ``"GRU"``, ``"RNN"``) or mode (``"RNN_TANH"``, ``"RNN_RELU"``).
        backend, allow_tf32, fp32_precision: as :class:`fastrnn.LSTM`.  strategy: ``"auto"``,
        ``"table"``, ``"gather_gemm"``.
        check_ids: check that every id indexes the embedding before anything runs, on every
            device and backend, raising ``IndexError`` with the bad id and its position; on CUDA
            that reads two numbers back to the host, one synchronisation per call.  ``False``
            trusts CUDA ids (ids the model made itself, e.g. a decoder's argmax) and skips that
            synchronisation; a bad one is then a device-side assertion, as with ``nn.Embedding``.
            Inside ``torch.compile`` and a CUDA-graph capture, where nothing can be read back, the
            check is that device-side assertion either way.

    Parameters: ``embedding.weight`` and the recurrent module's under ``rnn.`` -- the state dict
    of a module holding ``embedding = nn.Embedding(...)`` and ``rnn = nn.LSTM(...)`` loads as is.

    Forward ``(input, hx=None, lengths=None)``: ``input`` is ``(T, B)`` int64 ids (``(B, T)`` with
    ``batch_first``, ``(T,)`` unbatched) or a ``PackedSequence`` of ids.  With ``lengths`` (``(B,)``,
    any order) the padded batch is treated as variable-length: the output is zero at padding
    positions and ``h_n`` is each sequence's state at its last valid step.  Returns what the
    recurrent module returns.

    Example::

        enc = fastrnn.EmbeddingRNN(1000, 32, 64, mode="GRU", padding_idx=0)
        out, h_n = enc(torch.randint(1, 1000, (12, 4)))   # out: (12, 4, 64)
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, hidden_size: int, num_layers: int = 1, *,
        mode: str = "LSTM", padding_idx: int | None = None, nonlinearity: str | None = None,
        bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
        proj_size: int = 0, device=None, dtype=None, backend: str = "auto", strategy: str = "auto",
        allow_tf32: bool | None = None, fp32_precision: str | None = None, check_ids: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.embedding = nn.Embedding(num_embeddings, embedding_dim, padding_idx, device=device, dtype=dtype)
        self.rnn: RecurrentBase = build(
            mode, embedding_dim, hidden_size, num_layers, nonlinearity=nonlinearity, proj_size=proj_size, bias=bias,
            batch_first=batch_first, dropout=dropout, bidirectional=bidirectional, device=device, dtype=dtype,
            backend=backend, allow_tf32=allow_tf32, fp32_precision=fp32_precision,
        )  # fmt: skip
        self.strategy = strategy
        self.check_ids = check_ids

    @classmethod
    def from_modules(
        cls,
        embedding: nn.Embedding,
        rnn: nn.RNNBase,
        *,
        backend: str | None = None,
        strategy: str = "auto",
        check_ids: bool = True,
    ) -> EmbeddingRNN:
        """Build one from existing modules, sharing their parameter tensors.

        ``rnn`` is an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (or fastrnn module) whose ``input_size``
        equals ``embedding.embedding_dim``; ``backend`` defaults to the fastrnn module's own, or
        ``"auto"``.
        """
        if rnn.input_size != embedding.embedding_dim:
            raise ValueError(
                f"rnn.input_size ({rnn.input_size}) must equal embedding.embedding_dim ({embedding.embedding_dim})"
            )
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.embedding = embedding
        if isinstance(rnn, RecurrentBase) and backend is None:
            self.rnn = rnn
        else:
            self.rnn = fast_twin(rnn, backend=backend or "auto")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        self.check_ids = check_ids
        return self

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("check_ids", True)  # modules pickled before the option existed

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}" if self.strategy != "auto" else ""

    # ------------------------------------------------------------------------------------------

    def _check_ids(self, ids: torch.Tensor, emb: nn.Embedding) -> None:
        """The ids' dtype and the embedding's options (the range of the ids: :meth:`_check_range`)."""
        dtype = ids.dtype
        if dtype.is_floating_point or dtype.is_complex or dtype is torch.bool:
            raise TypeError(f"EmbeddingRNN: token ids must be an integer tensor, got {dtype}")
        if emb.max_norm is not None:
            raise ValueError("EmbeddingRNN: embedding.max_norm is not supported (it rewrites weights in forward)")
        if emb.sparse:
            raise ValueError("EmbeddingRNN: embedding.sparse=True is not supported (dense gradients only)")
        if emb.scale_grad_by_freq:
            raise ValueError("EmbeddingRNN: embedding.scale_grad_by_freq is not supported")

    def _check_range(self, ids: torch.Tensor) -> None:
        """Raise ``IndexError`` naming a bad id and its position unless every id indexes the
        embedding.  The same host check on every device: on CUDA it reads two numbers back (one
        host synchronisation per call), so no kernel ever sees a bad id and a bad id never becomes
        a device-side assertion, which would leave the process's CUDA context unusable.  Inside
        ``torch.compile``'s trace or a CUDA-graph capture nothing can be read back: there the
        check is a device-side assertion, as ``nn.Embedding``'s own check on CUDA."""
        if not ids.numel() or (not self.check_ids and not ids.is_cpu):
            return  # trusted CUDA ids (on the CPU the check costs no synchronisation: always made)
        if torch.compiler.is_compiling() or (ids.is_cuda and capturing()):
            ok = (ids >= 0).all() & (ids < self.embedding.num_embeddings).all()
            torch._assert_async(ok, "EmbeddingRNN: token ids out of range of the embedding")
            return
        error = self._range_error(ids)
        if error is not None:
            raise error

    def _range_error(self, ids: torch.Tensor) -> IndexError | None:
        """The ``IndexError`` naming the first bad id of ``ids`` and its position, or ``None`` when
        all are good (one reduction and one read back to the host)."""
        if not ids.numel():
            return None
        V = self.embedding.num_embeddings
        lo, hi = torch.aminmax(ids.view(-1) if ids.is_contiguous() else ids.reshape(-1))
        lo, hi = torch.stack((lo, hi)).tolist() if not ids.is_cpu else (int(lo), int(hi))
        if 0 <= lo and hi < V:
            return None
        host = ids.cpu()
        flat = int(((host < 0) | (host >= V)).reshape(-1).nonzero()[0])
        position = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), host.shape))
        bad = int(host.reshape(-1)[flat])
        return IndexError(
            f"EmbeddingRNN: token id {bad} is out of range [0, {V}) of the embedding, at position {list(position)} "
            f"of the ids"
        )

    def _range_checked_later(self, ids: torch.Tensor) -> bool:
        """Whether the range of ``ids`` is checked only where it matters, not before every call:
        int64/int32 ids on the CPU, outside torch.compile.  The torch backend's ``nn.Embedding``
        checks the range itself, on the host, before anything else runs, and its error becomes
        :meth:`_range_error`'s (:meth:`_embed`); the kernels' path and every error raised before
        the lookup check it first (:meth:`forward`), so a bad id is always what is reported."""
        if torch.compiler.is_compiling():
            return False
        return ids.is_cpu and ids.dtype in _EMBEDDING_INDEX_DTYPES

    def backend_decision(self, input, hx=None, lengths: torch.Tensor | None = None) -> Decision:
        """The :class:`~fastrnn.dispatch.Decision` of ``self(input, hx, lengths)`` (what
        :func:`fastrnn.explain` prints for this module and its ids)."""
        return dispatch.decide(self.rnn, input, embedded=True, packed=lengths is not None,
                               runners=lambda d: self._runners(input, hx, lengths, d))  # fmt: skip

    def forward(self, input, hx=None, lengths: torch.Tensor | None = None):
        modules = self._modules  # the submodules, read once (nn.Module's attribute lookup is slow)
        rnn, emb = modules["rnn"], modules["embedding"]
        packed = isinstance(input, PackedSequence)
        ids = input.data if packed else input
        self._check_ids(ids, emb)
        # Bad ids are reported before any other error (lengths, backend); on the CPU's torch path
        # nn.Embedding's own range check stands in for the separate one.
        deferred = self._range_checked_later(ids)
        if deferred and lengths is None and not packed and dispatch.auto_on_cpu(rnn, ids):
            # auto on the CPU: nn.Embedding (its own range check, with this module's message) and
            # torch.nn's code, nothing to decide
            return run_torch(rnn, self._embed(ids, emb), hx)
        if not deferred:
            self._check_range(ids)
        try:
            if packed and lengths is not None:
                raise ValueError("EmbeddingRNN: pass lengths with a padded batch, not with a PackedSequence")
            if lengths is not None:
                lengths = self._check_lengths(ids, lengths)
            # One decision per call: the torch path runs the recurrent module's torch.nn code
            # directly (run_torch), which does not decide again.
            decision = dispatch.decide(rnn, input, embedded=True, packed=lengths is not None,
                                       runners=lambda d: self._runners(input, hx, lengths, d))  # fmt: skip
            if decision.backend == "error":
                decision.check(rnn)
        except Exception:
            error = self._range_error(ids) if deferred else None
            if error is not None:
                raise error from None
            raise
        if decision.backend == "torch":
            if lengths is None and not packed:  # the common case, inline: nn.Embedding, then torch.nn's code
                return run_torch(rnn, self._embed(ids, emb), hx)
            return self._unfused(input, hx, lengths)
        if deferred:
            self._check_range(ids)
        return self._fused(input, hx, lengths, decision)

    def _runners(self, input, hx, lengths, decision: Decision) -> Runners:
        return Runners(lambda: self._unfused(input, hx, lengths), lambda: self._fused(input, hx, lengths, decision),
                       list(self.parameters()))  # fmt: skip

    def _check_lengths(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"EmbeddingRNN: lengths need a batched (2-D) input of ids, got {ids.dim()}-D")
        T = ids.shape[1] if self.rnn.batch_first else ids.shape[0]
        B = ids.shape[0] if self.rnn.batch_first else ids.shape[1]
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (B,):
            raise ValueError(f"EmbeddingRNN: lengths must have shape ({B},), got {tuple(lengths.shape)}")
        if B:
            lo, hi = (int(v) for v in torch.aminmax(lengths))
            if lo < 1 or hi > T:
                raise ValueError(f"EmbeddingRNN: lengths must lie in [1, {T}] (the padded length)")
        return lengths.to(device=ids.device, dtype=torch.int64)

    def _embed(self, ids: torch.Tensor, emb: nn.Embedding) -> torch.Tensor:
        """``nn.Embedding`` of ``ids``; its ``IndexError`` for an id out of range (``index out of
        range in self``) becomes :meth:`_range_error`'s, which names the id and the range (and so
        does any error of a lookup with a bad id, e.g. an embedding on another device)."""
        try:
            return emb(ids)
        except Exception:  # index out of range, or another error that a bad id was always reported before
            error = self._range_error(ids) if ids.is_cpu else None
            if error is not None:
                raise error from None
            raise

    def _unfused(self, input, hx, lengths):
        """torch backend: nn.Embedding, then the recurrent module's torch.nn code (packing when
        lengths are given)."""
        if isinstance(input, PackedSequence):
            return run_torch(self.rnn, input._replace(data=self._embed(input.data, self.embedding)), hx)
        x = self._embed(input, self.embedding)
        if lengths is None:
            return run_torch(self.rnn, x, hx)
        bf = self.rnn.batch_first
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=bf, enforce_sorted=False)
        out, hidden = run_torch(self.rnn, packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=bf, total_length=x.shape[1] if bf else x.shape[0])
        return out, hidden

    def _fused(self, input, hx, lengths, decision: Decision):
        """triton backend: the first layer's input projection straight from the ids
        (:func:`fastrnn.ops.embedding_projection`), then the kernels (:func:`fastrnn.modules.run_kernels`)."""
        rnn, emb = self.rnn, self.embedding
        lay = layout(rnn, input, lengths, ids=True)
        w, b = first_layer_projection(
            rnn.mode, rnn.flat_weights(), num_layers=rnn.num_layers, bias=rnn.bias,
            bidirectional=rnn.bidirectional, proj_size=rnn.proj_size,
        )  # fmt: skip
        if isinstance(input, PackedSequence):  # padded, sorted ids (T, B): the packed path's layout
            ids_tb, _ = pad_packed_sequence(PackedSequence(input.data, input.batch_sizes))
        elif input.dim() == 1:
            ids_tb = input[:, None]
        else:
            ids_tb = input.t() if rnn.batch_first else input

        def project(dtype: torch.dtype) -> torch.Tensor:
            flat = ids_tb.reshape(-1).to(torch.int64)
            strategy = self.strategy if self.strategy != "auto" else choose_strategy(emb.num_embeddings, flat.numel())
            gx = ops.embedding_projection(
                flat, emb.weight.to(dtype), w.to(dtype), None if b is None else b.to(dtype),
                padding_idx=emb.padding_idx, strategy=strategy, precision=decision.precision,
            )  # fmt: skip
            return gx.view(lay.T, lay.B, -1)

        return run_kernels(rnn, lay, hx, decision, input_projection=project)
