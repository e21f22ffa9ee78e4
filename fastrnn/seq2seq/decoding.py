"""Batched greedy and beam-search decoding.

Both work with any *decoder model* offering (see :class:`DecoderModel`):

* ``init_state(src (B, S), src_lengths (B,)) -> state``
* ``decode_step(y_prev (N,), state) -> (log_probs (N, V), state)``
* ``reorder_state(state, index (M,)) -> state`` (pick/duplicate batch entries)

:class:`~fastrnn.seq2seq.Seq2Seq` is one.  Results are :class:`Hypotheses`: ``tokens (B, T)``
with ``<eos>`` included where a hypothesis ended and ``<pad>`` after it.

**Two step paths.**  On a :class:`~fastrnn.seq2seq.Seq2Seq` (in eval mode, or without dropout)
decoding runs by default on *static buffers* (:mod:`fastrnn.seq2seq.static`): one decoder step
(embedding, cell, attention, output layer, then the search's own bookkeeping) that reads and
writes the same tensors at every token.  On CUDA that step is captured once per batch size,
beam size and source-length bucket in a CUDA graph and replayed for each token; on the CPU the
same code runs without capture.  ``static=False`` (the command line's ``--eager``) runs the
model's :meth:`decode_step` token by token instead, as any other decoder model does.  Both give
the same tokens (on CUDA up to floating-point rounding: see :mod:`fastrnn.seq2seq.static`).

**The search's bookkeeping** (:class:`GreedySearch`, :class:`BeamSearch`) lives in device
buffers that every step updates in place, with the step counter on the device too, so that a
captured step can be replayed unchanged and no step reads the device on the host.

**Host synchronisation.**  Neither loop reads a device tensor on the host inside a decoder step
(no ``.item()``, ``.tolist()``, ``bool()``, ``nonzero()``): every source's progress is kept in
device tensors, finished sources are masked (frozen), and whether *all* sources are done is
asked once every ``sync_every`` steps -- the only host sync of the loop.  ``sync_every=None``
means every step on the CPU (where that costs nothing) and every :data:`SYNC_EVERY` steps on
other devices.  Because a finished source is frozen, the result does not depend on
``sync_every``; a larger value only runs up to ``sync_every - 1`` idle steps at the end.
(The decoder model's own eager step may still synchronise: that is up to the model.)

**Devices.**  When the decoder model is an ``nn.Module`` with parameters (a
:class:`~fastrnn.seq2seq.Seq2Seq`), ``src`` and ``src_lengths`` are moved to the device of its
parameters first (token ids are small), and the hypotheses come back on that device.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .search import BeamSearch, GreedySearch, Hypotheses, backtrace, penalties

__all__ = ["BeamSearch", "GreedySearch", "Hypotheses", "backtrace", "beam_search", "greedy_decode", "penalties"]

#: Steps between two "is every source done?" checks (host syncs) off the CPU.
SYNC_EVERY = 8
#: The default ``length_penalty`` of :func:`beam_search` (and of the command line's ``--length-penalty``).
LENGTH_PENALTY = 1.0


class DecoderModel(Protocol):
    def init_state(self, src: torch.Tensor, src_lengths: torch.Tensor) -> Any: ...
    def decode_step(self, y_prev: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...
    def reorder_state(self, state: Any, index: torch.Tensor) -> Any: ...


def default_max_len(src_lengths: torch.Tensor) -> int:
    """Default output budget: twice the longest source, plus 10."""
    return 2 * int(src_lengths.max()) + 10


def _sync_every(device: torch.device, sync_every: int | None) -> int:
    if sync_every is None:
        return 1 if device.type == "cpu" else SYNC_EVERY
    if sync_every < 1:
        raise ValueError(f"sync_every must be at least 1, got {sync_every}")
    return sync_every


def _budget(src: torch.Tensor, src_lengths: torch.Tensor, max_len: int | None) -> int:
    max_len = default_max_len(src_lengths) if max_len is None else max_len
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    return max_len


def _empty(device: torch.device) -> Hypotheses:
    return Hypotheses(
        torch.zeros(0, 0, dtype=torch.int64, device=device),
        torch.zeros(0, dtype=torch.int64, device=device),
        torch.zeros(0, device=device),
    )


def model_device(model: Any) -> torch.device | None:
    """The device of a decoder model's parameters (``None`` for a model without any)."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return None


def _to_model(model: Any, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``src`` and ``src_lengths`` on the model's device (see the module doc, "Devices")."""
    device = model_device(model)
    if device is None:
        return src, src_lengths
    return src.to(device), torch.as_tensor(src_lengths).to(device)


def _static_path(model: Any, static: bool | None):
    """The static-buffer decoder of ``model`` when it is to be used, else ``None``: a decoder
    model offers one through ``static_decoder() -> (decoder or None, why not)``
    (:meth:`fastrnn.seq2seq.Seq2Seq.static_decoder`)."""
    if static is False:
        return None
    offer = getattr(model, "static_decoder", None)
    decoder, reason = offer() if offer is not None else (None, f"a {type(model).__name__} has no static-buffer step")
    if decoder is None and static:
        raise ValueError(f"static=True: {reason}")
    return decoder


# ----------------------------------------------------------------------------------------------
# Greedy decoding and beam search


@torch.no_grad()
def greedy_decode(
    model: DecoderModel,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len: int | None = None,
    *,
    sync_every: int | None = None,
    static: bool | None = None,
) -> Hypotheses:
    """Batched greedy decoding: the most likely token at each step, until ``<eos>`` or ``max_len``.

    ``src (B, S)`` ids, ``src_lengths (B,)`` (moved to the model's device, see the module doc).
    Stops once every sequence has produced ``<eos>`` (checked every ``sync_every`` steps, see the
    module doc).  ``static``: ``None`` (default) runs a :class:`~fastrnn.seq2seq.Seq2Seq` on the
    static-buffer step (a CUDA graph on CUDA) and any other decoder model step by step; ``False``
    always step by step (:meth:`decode_step`); ``True`` insists on the static step (an error
    names why a model cannot have it).

    Example::

        hyp = greedy_decode(model, src, src_lengths, max_len=50)
        texts = [tgt_vocab.decode(ids) for ids in hyp.to_lists()]
    """
    src, src_lengths = _to_model(model, src, src_lengths)
    max_len = _budget(src, src_lengths, max_len)
    every = _sync_every(src.device, sync_every)
    B = src.shape[0]
    if B == 0:
        return _empty(src.device)
    fast = _static_path(model, static)
    if fast is not None:
        return fast.greedy(model, src, src_lengths, max_len, every)
    state = model.init_state(src, src_lengths)
    search = GreedySearch(B, max_len, src.device)
    for t in range(max_len):
        logp, state = model.decode_step(search.y.clone(), state)
        search.advance(logp.float())
        if (t + 1) % every == 0 and search.all_done():  # the loop's only host sync
            break
    return search.result()


@torch.no_grad()
def beam_search(
    model: DecoderModel,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    beam_size: int = 5,
    max_len: int | None = None,
    length_penalty: float = LENGTH_PENALTY,
    *,
    sync_every: int | None = None,
    static: bool | None = None,
) -> Hypotheses:
    """Batched beam search; returns the best hypothesis per source.

    A hypothesis is ranked by ``score / length ** length_penalty``: ``score`` is its sum of token
    log-probabilities, ``length`` counts its tokens including ``<eos>`` (``length_penalty=0``: the
    raw sum, the model's own probability; ``1``: the per-token mean).  A hypothesis still
    unfinished at ``max_len`` competes as it is, with length ``max_len``.

    The search, per source and step: every live hypothesis that ends here (its ``<eos>``
    extension) is a finished candidate, and the best finished one is kept; the ``beam_size`` best
    extensions by anything but ``<eos>`` live on.  Beside the beam, one extra row follows the
    greedy path (:func:`greedy_decode`'s hypothesis) and competes like any other, so the result
    never ranks below greedy decoding's under the same ranking.

    **Stopping rule** (sound, so stopping early never changes the result): a token's
    log-probability is at most 0, so a live hypothesis with sum ``s`` after ``l`` tokens can only
    end with a sum ``<= s`` and a length in ``l + 1 .. max_len``.  The best rank it can still reach
    is therefore ``s / max_len ** length_penalty`` for ``length_penalty >= 0`` (``s`` itself for the
    raw sum: a live hypothesis only gets worse), and ``s / (l + 1) ** length_penalty`` for a
    negative one.  A source is done when its best finished hypothesis ranks at least as high as
    that bound of every live hypothesis (the greedy row included); the search ends when every
    source is done, or at ``max_len``.  With the raw sum this stops as soon as the best finished
    hypothesis beats every live one; with length normalisation the bound is looser and the
    search runs longer (up to ``max_len``).  Done sources are frozen and the "all done?" check
    syncs with the host once every ``sync_every`` steps only (see the module doc).

    ``beam_size=1`` is :func:`greedy_decode`.  ``src (B, S)``, ``src_lengths (B,)`` (moved to the
    model's device).  ``scores`` in the result are raw log-probability sums.  The decoder's
    ``log_probs`` must be log-probabilities (``<= 0``), as :meth:`Seq2Seq.decode_step` returns.
    ``static``: as for :func:`greedy_decode`.

    Example::

        hyp = beam_search(model, src, src_lengths, beam_size=5, length_penalty=0.0)
        texts = [tgt_vocab.decode(ids) for ids in hyp.to_lists()]
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    src, src_lengths = _to_model(model, src, src_lengths)
    max_len = _budget(src, src_lengths, max_len)
    if beam_size == 1:
        return greedy_decode(model, src, src_lengths, max_len, sync_every=sync_every, static=static)
    every = _sync_every(src.device, sync_every)
    B, K, dev = src.shape[0], beam_size, src.device
    if B == 0:
        return _empty(dev)
    lp = float(length_penalty)
    fast = _static_path(model, static)
    if fast is not None:
        return fast.beam(model, src, src_lengths, K, max_len, lp, every)
    search = BeamSearch(B, K, max_len, dev)
    search.reset(max_len, lp)
    state = model.init_state(src, src_lengths)
    state = model.reorder_state(state, torch.arange(B, device=dev).repeat_interleave(search.R))
    steps = 0
    for t in range(max_len):
        logp, state = model.decode_step(search.y.clone(), state)
        search.advance(logp.float())
        state = model.reorder_state(state, search.rows.clone())
        steps = t + 1
        if (t + 1) % every == 0 and search.all_done():  # the loop's only host sync
            break
    return search.finish(steps, max_len, lp)
