"""The ``"rnn"`` case kind: a ``torch.nn``-style recurrent stack of every registered cell.

The cells are the registry's (:func:`cells`): one per family of the cells on the plain interface
(``RNN`` is its first registered cell, tanh; relu differs from it in one pointwise op), so a newly
registered cell gets rows in every grid by registration alone.  A cell without a ``torch.nn`` twin
is compared with fastrnn's ``backend='torch'``, its plain-PyTorch reference step loop
(:class:`fastrnn.modules.Recurrent`): the ``cudnn`` and ``torch_nn`` providers run that loop and
say so in the row's note, and the weights come from that module's init.

Every provider runs the same weights (``torch.nn`` init, seeded per row) on the same random
input ``(T, B, I)`` with ``I = H`` (or a ``PackedSequence`` of it with random lengths); both
include the input projection.  ``fwd`` rows run ``eval()`` under ``torch.no_grad()``; ``fwdbwd``
rows run ``train()``, the forward, and ``backward`` from a random output gradient, computing the
gradients of every weight and of the input (``.grad`` is reset to ``None`` before each call, so
no accumulation kernel is timed).  Initial states are zero (``hx=None``); dropout is 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fastrnn.kernels import cells as cell_registry
from fastrnn.modules import build, resolve

from .cases import Case, CaseKind, Cost, register_kind
from .loop import compiled_step, loop_stack


def cells() -> tuple[str, ...]:
    """The cells benchmarked, in grid order: the torch.nn cells first (LSTM, GRU, RNN: the order
    of the committed grids), then every other registered cell on the plain interface, named by its
    family (its mode where the family has several: ``RNN`` is tanh).  Read from the registry
    (:mod:`fastrnn.kernels.cells`) when a grid is built."""
    names = []
    for mode in cell_registry.modes(extended=False):
        family = cell_registry.get(mode).family
        if family not in names:  # a family's first registered cell (RNN: tanh)
            names.append(family)
    known = [f for f in ("LSTM", "GRU", "RNN") if f in names]
    return tuple(known + [f for f in names if f not in known])


#: The cells of the registry when this module was imported (:func:`cells` reads it anew).
CELLS = cells()

# The full grid's sizes.
FULL_B = (1, 8, 16, 64, 256)
FULL_H = (128, 256, 512, 768, 1024)
FULL_T = (128, 1024)
GPU_DTYPES = ("fp16", "bf16", "fp32")

HEADLINE = dict(cell="LSTM", dtype="fp16", B=16, H=768, T=1024, layers=1, bidir=False, packed=False)


@dataclass
class RNNWorkload:
    """What every provider of one row shares (see module doc)."""

    ref: nn.RNNBase  # the torch.nn module: the cudnn/torch_nn provider, and the loop's weights
    input: torch.Tensor | PackedSequence  # time-major
    leaf: torch.Tensor  # the tensor whose .grad the input gradient lands in
    batch_sizes: list[int]  # per-step active batch (all B when dense)
    grad_out: torch.Tensor | None  # gradient of the output (data), fwdbwd only


def packed_lengths(case: Case, seed: int) -> torch.Tensor:
    """Random lengths in ``[1, T]`` (the first is ``T``) for a packed row; int64 on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, case.T + 1, (case.B,), generator=gen)
    lengths[0] = case.T
    return lengths


def tokens(case: Case, seed: int) -> int:
    """Sequence elements of one batch: ``T*B`` dense, the sum of the lengths when packed."""
    return int(packed_lengths(case, seed).sum()) if case.packed else case.T * case.B


def setup(case: Case, device: torch.device, seed: int) -> RNNWorkload:
    """Seeded weights, random input and output gradient for ``case`` on ``device``."""
    dtype = case.torch_dtype
    torch.manual_seed(seed)
    twin = resolve(case.cell).twin is not None  # else fastrnn's step loop stands in (module doc)
    ref = build(case.cell, case.input_size, case.H, case.layers, bidirectional=case.bidir, device=device,
                dtype=dtype, torch_nn=twin, **({} if twin else {"backend": "torch"}))  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(seed)
    train = case.run == "fwdbwd"
    x = torch.randn(case.T, case.B, case.input_size, device=device, dtype=dtype, generator=gen)
    if case.packed:
        packed = pack_padded_sequence(x, packed_lengths(case, seed), enforce_sorted=False)
        leaf = packed.data.detach().requires_grad_(train)
        inp: torch.Tensor | PackedSequence = PackedSequence(
            leaf, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )
        batch_sizes = packed.batch_sizes.tolist()
        out_shape: tuple[int, ...] = (leaf.shape[0], case.directions * case.H)
    else:
        leaf = x.requires_grad_(train)
        inp = leaf
        batch_sizes = [case.B] * case.T
        out_shape = (case.T, case.B, case.directions * case.H)
    grad_out = torch.randn(out_shape, device=device, dtype=dtype, generator=gen) if train else None
    return RNNWorkload(ref, inp, leaf, batch_sizes, grad_out)


def make_step(
    case: Case,
    forward: Callable[[], torch.Tensor],
    modules: list[nn.Module],
    grad_out: torch.Tensor | None,
    leaf: torch.Tensor | None = None,
) -> Callable[[], torch.Tensor]:
    """One timed call around ``forward()`` (which returns the output tensor).

    ``fwd`` rows: ``modules`` in ``eval()``, under ``torch.no_grad()``.  ``fwdbwd`` rows: ``train()``,
    every parameter's (and ``leaf``'s) ``.grad`` reset to ``None``, forward, ``backward(grad_out)``.
    """
    if case.run == "fwd":
        for m in modules:
            m.eval()

        def step():
            with torch.no_grad():
                return forward()

        return step
    for m in modules:
        m.train()
    params = [p for m in modules for p in m.parameters()]

    def train_step():
        for p in params:
            p.grad = None
        if leaf is not None:
            leaf.grad = None
        out = forward()
        out.backward(grad_out)
        return out

    return train_step


def explained(case: Case, module: nn.Module, input, step, **kwargs) -> None:
    """Note on ``step`` the decision of the call a row times (:func:`fastrnn.explain`), made in
    the row's grad mode (``fwd`` rows run under ``torch.no_grad()``, their modules in ``eval()``;
    call it after :func:`make_step`), and, where the kernels run, their identity
    (``step.kernels``: :func:`fastrnn.kernels.tiers.kernel_identity`).  Informative only: a
    failure is the note, the timed call reports real failures."""
    import contextlib

    from fastrnn.kernels import tiers

    try:
        with torch.no_grad() if case.run == "fwd" else contextlib.nullcontext():
            decision = module.backend_decision(input, **kwargs)
        step.note = decision.describe()
        if decision.backend == "triton":
            step.kernels = tiers.kernel_identity(decision.plan[0], embedded=case.kind == "embed")
    except Exception as e:
        step.note = f"explain() failed: {type(e).__name__}: {e}"


def _module_step(module: nn.Module, case: Case, wl: RNNWorkload):
    """One call of a recurrent ``module`` on the workload: inference, or forward + backward."""

    def forward():
        out, _ = module(wl.input)
        return out.data if case.packed else out

    return make_step(case, forward, [module], wl.grad_out, wl.leaf)


def build_note_cudnn(step, device: torch.device) -> None:
    """Note on a ``torch.nn`` step which library runs it on CUDA (cuDNN and its version)."""
    if device.type == "cuda":
        v = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        step.note = f"cuDNN {v}" if v and torch.backends.cudnn.enabled else "aten CUDA (cuDNN unavailable)"


def build_torch_nn(case: Case, wl: RNNWorkload, device: torch.device):
    """``torch.nn.LSTM`` & co. (cuDNN on CUDA, aten on CPU); for a cell without a ``torch.nn``
    twin, fastrnn's ``backend='torch'`` (its reference step loop)."""
    step = _module_step(wl.ref, case, wl)
    if resolve(case.cell).twin is None:
        step.note = f"{resolve(case.cell).mode} has no torch.nn twin: fastrnn's backend='torch' (a step loop)"
    else:
        build_note_cudnn(step, device)
    return step


def _build_fastrnn(case: Case, wl: RNNWorkload, device: torch.device, backend: str):
    module = build(case.cell, case.input_size, case.H, case.layers, bidirectional=case.bidir, device=device,
                   dtype=case.torch_dtype, backend=backend)  # fmt: skip
    module.load_state_dict(wl.ref.state_dict())
    step = _module_step(module, case, wl)
    explained(case, module, wl.input, step)
    return step


def build_fastrnn(case: Case, wl: RNNWorkload, device: torch.device):
    """``fastrnn.<cell>(backend='triton')``: the kernels, or the reason they cannot run."""
    return _build_fastrnn(case, wl, device, "triton")


def build_fastrnn_auto(case: Case, wl: RNNWorkload, device: torch.device):
    """``fastrnn.<cell>(backend='auto')``: what a user gets by default (torch's code on CPU)."""
    return _build_fastrnn(case, wl, device, "auto")


def _build_loop(case: Case, wl: RNNWorkload, device: torch.device, compiled: bool):
    ref = wl.ref
    step_fn = compiled_step(case.cell) if compiled else None

    def forward():
        data = wl.leaf if case.packed else wl.leaf.reshape(case.T * case.B, case.input_size)
        out = loop_stack(
            case.cell,
            data,
            wl.batch_sizes,
            ref._flat_weights,
            num_layers=case.layers,
            bidirectional=case.bidir,
            step=step_fn,
        )
        return out if case.packed else out.reshape(case.T, case.B, -1)

    return make_step(case, forward, [ref], wl.grad_out, wl.leaf)


def build_loop(case: Case, wl: RNNWorkload, device: torch.device):
    """Plain PyTorch step loop (:mod:`benchmarks.loop`)."""
    return _build_loop(case, wl, device, compiled=False)


def build_compile(case: Case, wl: RNNWorkload, device: torch.device):
    """The step loop with ``torch.compile``'d step function (:func:`benchmarks.loop.compiled_step`)."""
    return _build_loop(case, wl, device, compiled=True)


def cost(case: Case, seed: int) -> Cost:
    """Compulsory work of one call: the floors' numerator (see ``benchmarks/README.md``).

    FLOPs: the two matmuls per layer and direction, ``2*N*G*H*(I+H)``; a training step adds the
    backward's twice that (input and weight gradients).  Bytes (in the row's dtype): read the
    layer input and the weights once, write the output; a training step also reads the output
    gradient, the input and output again (for the weight gradients), the weights, and writes the
    input and weight gradients.  Steps: the dependent chain, ``T + L - 1`` (layers can pipeline
    in a wavefront) or ``L*T`` when bidirectional (layer l+1 needs both directions of layer l);
    doubled for a training step.
    """
    G, H, D, L = resolve(case.cell).G, case.H, case.directions, case.layers
    elem = torch.empty((), dtype=case.torch_dtype).element_size()
    N = tokens(case, seed)
    train = case.run == "fwdbwd"
    flops = 0.0
    elems = 0.0
    for layer in range(L):
        in_size = case.input_size if layer == 0 else D * H
        w = D * G * H * (in_size + H)
        f = 2.0 * N * D * G * H * (in_size + H)
        flops += 3 * f if train else f
        elems += N * in_size + w + N * D * H
        if train:
            elems += N * D * H + N * in_size + N * D * H + w + w + N * in_size
    steps = (L * case.T if case.bidir else case.T + L - 1) * (2 if train else 1)
    return Cost(bytes=elems * elem, flops=flops, steps=steps, tokens=N, recurrent_bytes=G * H * H * elem)


def tier(c: Case) -> int:
    """Run order: 0 headline (cuDNN's best case), 1 per-cell core, 2-3 the rest of the 1-layer
    unidirectional dense grid (T=1024 first), 4 bidirectional / 2-layer / packed variants."""
    base = c.layers == 1 and not c.bidir and not c.packed
    if all(getattr(c, k) == v for k, v in HEADLINE.items()):
        return 0
    if base and c.B in (16, 64) and c.H in (256, 512) and c.T == 1024:
        return 1
    if base:
        return 2 if c.T == 1024 else 3
    return 4


def _rows(cells, dtypes, Bs, Hs, Ts, layers=(1,), bidirs=(False,), packs=(False,), modes=("fwd", "fwdbwd")):
    # Innermost loops over cell/dtype/mode, so that a capped run covers every cell evenly.
    return [
        Case("rnn", cell, dtype, B, H, T, L, bi, pk, mode)
        for T, H, B, L, bi, pk, cell, dtype, mode in itertools.product(
            Ts, Hs, Bs, layers, bidirs, packs, cells, dtypes, modes
        )
    ]


def grid_full() -> list[Case]:
    """The full GPU grid: every cell (:func:`cells`; 3 today) x 3 dtypes x 5 B x 5 H x 2 T x uni/bi x 1/2 layers x dense/packed
    x 2 modes (7200 rows; run order by :func:`tier`)."""
    return _rows(cells(), GPU_DTYPES, FULL_B, FULL_H, FULL_T, (1, 2), (False, True), (False, True))


def grid_quick() -> list[Case]:
    """A first look on a GPU (124 rows): the headline, every cell and dtype at B 16/64 x H 128/512,
    T=1024, and bidirectional / 2-layer / packed variants at B=16, H=128; tier 1's edges (fp16,
    B 1/128 x H 64/128, T=512, and RNN H=256) and tier 2's (LSTM/GRU fp16 H=1024: B 16 at
    T=1024, B 1/128 at T=512)."""
    rows = _rows(("LSTM",), ("fp16",), (16,), (768,), (1024,))
    rows += _rows(cells(), GPU_DTYPES, (16, 64), (128, 512), (1024,))
    for variant in (dict(bidirs=(True,)), dict(layers=(2,)), dict(packs=(True,))):
        rows += _rows(("LSTM", "RNN"), ("fp16",), (16,), (128,), (1024,), **variant)
    rows += _rows(cells(), ("fp16",), (1, 128), (64, 128), (512,))  # tier 1's edges
    rows += _rows(("RNN",), ("fp16",), (16,), (256,), (512,))
    rows += _rows(("LSTM", "GRU"), ("fp16",), (16,), (1024,), (1024,))  # tier 2's
    rows += _rows(("LSTM", "GRU"), ("fp16",), (1, 128), (1024,), (512,))
    return rows


def grid_cpu() -> list[Case]:
    """The CPU comparison (no GPU): small fp32 shapes, every cell, both modes, plus variants (30 rows)."""
    rows = _rows(cells(), ("fp32",), (1, 8), (32, 128), (32,))
    for variant in (dict(bidirs=(True,)), dict(layers=(2,)), dict(packs=(True,))):
        rows += _rows(("LSTM",), ("fp32",), (8,), (64,), (32,), **variant)
    return rows


def grid_smoke() -> list[Case]:
    """Tiny rows for exercising the GPU suite's code on a CPU (Triton interpreter): tests only."""
    rows = _rows(cells(), ("fp32",), (3,), (8,), (5,))
    for variant in (dict(bidirs=(True,)), dict(layers=(2,)), dict(packs=(True,))):
        rows += _rows(("GRU",), ("fp32",), (3,), (8,), (5,), **variant)
    return rows


KIND = register_kind(
    CaseKind(
        name="rnn",
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
        grids={"full": grid_full, "quick": grid_quick, "cpu": grid_cpu, "smoke": grid_smoke},
        tier=tier,
        description="torch.nn-style recurrent stack (RNN tanh / LSTM / GRU), input size = H",
    )
)
