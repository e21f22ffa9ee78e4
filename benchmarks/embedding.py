"""The ``"embed"`` case kind: token ids -> embedding -> recurrent stack.

``fastrnn`` is :class:`fastrnn.EmbeddingRNN` (the embedding fused into the first layer: no
``(T, B, E)`` tensor of embeddings); ``cudnn``/``torch_nn`` is ``nn.Embedding`` followed by the
``torch.nn`` cell, with the same weights; ``loop``/``compile`` embed, then run the step loop.
Rows carry the vocabulary size ``V`` and the embedding size ``E`` (``extra``); ids are uniform
in ``[0, V)``.  ``fwdbwd`` rows compute the gradients of the embedding and of every weight.

This kind shows how a new family of rows slots in: a setup, providers, a cost and grids,
registered with :func:`benchmarks.cases.register_kind`; tables, files, filters (``V=32000``,
``kind=embed``) and plots pick the rows up unchanged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fastrnn.modules import build, resolve

from .cases import Case, CaseKind, Cost, register_kind
from .loop import compiled_step, loop_stack
from .rnn import CELLS, GPU_DTYPES, build_note_cudnn, explained, make_step, packed_lengths, tokens


class EmbeddingThenRNN(nn.Module):
    """``nn.Embedding`` then a ``torch.nn`` recurrent module (its state dict loads into EmbeddingRNN)."""

    def __init__(self, case: Case, device: torch.device) -> None:
        super().__init__()
        extra = dict(case.extra)
        dtype = case.torch_dtype
        self.embedding = nn.Embedding(extra["V"], extra["E"], device=device, dtype=dtype)
        self.rnn = build(case.cell, extra["E"], case.H, case.layers, bidirectional=case.bidir, device=device,
                         dtype=dtype, torch_nn=True)  # fmt: skip

    def forward(self, ids: torch.Tensor | PackedSequence):
        if isinstance(ids, PackedSequence):
            return self.rnn(ids._replace(data=self.embedding(ids.data)))
        return self.rnn(self.embedding(ids))


@dataclass
class EmbedWorkload:
    """What every provider of one row shares."""

    ref: EmbeddingThenRNN
    input: torch.Tensor | PackedSequence  # (T, B) int64 ids, or packed ids
    batch_sizes: list[int]
    grad_out: torch.Tensor | None


def setup(case: Case, device: torch.device, seed: int) -> EmbedWorkload:
    """Seeded weights, random ids (and output gradient) for ``case`` on ``device``."""
    torch.manual_seed(seed)
    ref = EmbeddingThenRNN(case, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(0, dict(case.extra)["V"], (case.T, case.B), device=device, generator=gen)
    if case.packed:
        packed = pack_padded_sequence(ids, packed_lengths(case, seed), enforce_sorted=False)
        inp: torch.Tensor | PackedSequence = packed
        batch_sizes = packed.batch_sizes.tolist()
        out_shape: tuple[int, ...] = (packed.data.shape[0], case.directions * case.H)
    else:
        inp = ids
        batch_sizes = [case.B] * case.T
        out_shape = (case.T, case.B, case.directions * case.H)
    train = case.run == "fwdbwd"
    grad_out = torch.randn(out_shape, device=device, dtype=case.torch_dtype, generator=gen) if train else None
    return EmbedWorkload(ref, inp, batch_sizes, grad_out)


def _output(case: Case, result) -> torch.Tensor:
    out = result[0]
    return out.data if case.packed else out


def build_torch_nn(case: Case, wl: EmbedWorkload, device: torch.device):
    """``nn.Embedding`` + ``torch.nn.<cell>`` (cuDNN on CUDA)."""
    step = make_step(case, lambda: _output(case, wl.ref(wl.input)), [wl.ref], wl.grad_out)
    build_note_cudnn(step, device)
    return step


def _build_fastrnn(case: Case, wl: EmbedWorkload, device: torch.device, backend: str):
    import fastrnn

    extra = dict(case.extra)
    module = fastrnn.EmbeddingRNN(
        extra["V"],
        extra["E"],
        case.H,
        case.layers,
        mode=case.cell,
        bidirectional=case.bidir,
        device=device,
        dtype=case.torch_dtype,
        backend=backend,
    )
    module.load_state_dict(wl.ref.state_dict())
    step = make_step(case, lambda: _output(case, module(wl.input)), [module], wl.grad_out)
    explained(case, module, wl.input, step)
    return step


def build_fastrnn(case: Case, wl: EmbedWorkload, device: torch.device):
    """``fastrnn.EmbeddingRNN(backend='triton')``: embedding fused into the first layer."""
    return _build_fastrnn(case, wl, device, "triton")


def build_fastrnn_auto(case: Case, wl: EmbedWorkload, device: torch.device):
    """``fastrnn.EmbeddingRNN(backend='auto')``."""
    return _build_fastrnn(case, wl, device, "auto")


def _build_loop(case: Case, wl: EmbedWorkload, device: torch.device, compiled: bool):
    ref = wl.ref
    step_fn = compiled_step(case.cell) if compiled else None
    ids = wl.input.data if case.packed else wl.input.reshape(-1)

    def forward():
        out = loop_stack(
            case.cell,
            ref.embedding(ids),
            wl.batch_sizes,
            ref.rnn._flat_weights,
            num_layers=case.layers,
            bidirectional=case.bidir,
            step=step_fn,
        )
        return out if case.packed else out.reshape(case.T, case.B, -1)

    return make_step(case, forward, [ref], wl.grad_out)


def build_loop(case: Case, wl: EmbedWorkload, device: torch.device):
    """Embedding, then the plain PyTorch step loop."""
    return _build_loop(case, wl, device, compiled=False)


def build_compile(case: Case, wl: EmbedWorkload, device: torch.device):
    """Embedding, then the step loop with the compiled step."""
    return _build_loop(case, wl, device, compiled=True)


def cost(case: Case, seed: int) -> Cost:
    """As :func:`benchmarks.rnn.cost` with the first layer reading ids and embedding rows.

    The first layer's projection needs ``m = min(N, V)`` distinct rows (project the table when
    ``V <= N``): ``2*m*D*G*H*E`` FLOPs (three times that in training: ``dW_ih`` and ``dE``); it
    reads ``N`` int64 ids and ``m`` embedding rows; training writes ``dE`` (``V*E``) instead of
    an input gradient.
    """
    G, H, D, L = resolve(case.cell).G, case.H, case.directions, case.layers
    extra = dict(case.extra)
    V, E = extra["V"], extra["E"]
    elem = torch.empty((), dtype=case.torch_dtype).element_size()
    N = tokens(case, seed)
    m = min(N, V)
    train = case.run == "fwdbwd"
    k = 3 if train else 1
    flops = 0.0
    nbytes = 8.0 * N * (2 if train else 1)  # ids
    for layer in range(L):
        in_size = E if layer == 0 else D * H
        rows = m if layer == 0 else N
        w = D * G * H * (in_size + H)
        flops += k * (2.0 * rows * D * G * H * in_size + 2.0 * N * D * G * H * H)
        elems = rows * in_size + w + N * D * H
        if train:
            grad_in = V * E if layer == 0 else N * in_size
            elems += N * D * H + rows * in_size + N * D * H + w + w + grad_in
        nbytes += elems * elem
    steps = (L * case.T if case.bidir else case.T + L - 1) * (2 if train else 1)
    return Cost(bytes=nbytes, flops=flops, steps=steps, tokens=N, recurrent_bytes=G * H * H * elem)


def tier(c: Case) -> int:
    """Embedding rows run after the single-layer recurrent rows of the same T (2: T=1024, 3: shorter)."""
    return 2 if c.T == 1024 else 3


def _rows(cells, dtypes, Bs, Hs, Ts, V, packs=(False,), modes=("fwd", "fwdbwd")) -> list[Case]:
    return [
        Case("embed", cell, dtype, B, H, T, 1, False, pk, mode, extra=(("E", H), ("V", V)))
        for T, H, B, pk, cell, dtype, mode in itertools.product(Ts, Hs, Bs, packs, cells, dtypes, modes)
    ]


def grid_full() -> list[Case]:
    """Every cell and dtype, B 16/64, H = E 128/512, T 128/1024, V = 32000, dense and packed (288 rows)."""
    return _rows(CELLS, GPU_DTYPES, (16, 64), (128, 512), (1024, 128), 32000, packs=(False, True))


def grid_quick() -> list[Case]:
    """LSTM and GRU fp16, B 16/64, H = E = 128, T = 1024, V = 32000 (8 rows)."""
    return _rows(("LSTM", "GRU"), ("fp16",), (16, 64), (128,), (1024,), 32000)


def grid_smoke() -> list[Case]:
    """Tiny rows for exercising the code on a CPU (tests only)."""
    return _rows(("GRU",), ("fp32",), (3,), (8,), (5,), 50, packs=(False, True))


KIND = register_kind(
    CaseKind(
        name="embed",
        setup=setup,
        providers={
            "fastrnn": build_fastrnn,
            "cudnn": build_torch_nn,
            "loop": build_loop,
            "compile": build_compile,
            "fastrnn_auto": build_fastrnn_auto,
            "torch_nn": build_torch_nn,
        },
        cost=cost,
        grids={"full": grid_full, "quick": grid_quick, "smoke": grid_smoke},
        tier=tier,
        description="token ids -> embedding -> recurrent stack (fastrnn.EmbeddingRNN vs nn.Embedding + torch.nn)",
    )
)
