"""Case kinds for what ``torch.nn`` does not have: ``"lnrnn"`` and ``"states"``.

The cells come from the registry (:mod:`fastrnn.kernels.cells`): :func:`ln_cells` and
:func:`state_cells`.

* ``"lnrnn"``: :class:`fastrnn.LayerNormLSTM` / :class:`fastrnn.LayerNormGRU` (cells ``LN_LSTM``,
  ``LN_GRU``: every registered cell on the extended interface whose family names a fastrnn
  module), one layer, input size = H.  ``fastrnn`` = ``backend='triton'`` (tier-1 kernels),
  ``loop`` and ``torch_nn`` = ``backend='torch'`` (fastrnn's plain-PyTorch step loop: what the
  layer costs without the kernels; torch.nn has no layer-normalised RNN), ``fastrnn_auto`` =
  ``backend='auto'``.  ``cudnn`` = ``torch.nn.LSTM``/``GRU`` of the same shape *without* layer
  norm (cuDNN has none): the plain layer's time, the yardstick of "within 2x of an LSTM"; its
  output differs by design and is not compared.  ``fwdbwd`` rows train with ``zoneout`` (extra
  field ``zo``, masks drawn every call, as in training); ``fwd`` rows run ``eval()`` (zoneout's
  expectation).
* ``"states"``: ``fastrnn.LSTM(...)(x, return_states=True)`` -- every step's ``c_t`` (every
  registered cell with a cell state and a ``torch.nn`` twin).
  ``fastrnn``/``fastrnn_auto`` return the states (``fwdbwd``: the loss reads output and states,
  so the backward kernels take ``dc_t``); ``loop`` and ``torch_nn`` = ``backend='torch'`` (the
  step loop users write without fastrnn; torch.nn cannot return the states); ``cudnn`` =
  ``torch.nn.LSTM`` *without* the states (the yardstick: what the same layer costs without
  them).  ``return_states`` vs without is this row's ``fastrnn`` against the ``rnn`` row of the
  same shape.

On the CPU suite both kinds compare ``backend='auto'`` (the step loop on CPU) with
``backend='torch'``: fastrnn's wrapper overhead, like the ``rnn`` rows (outputs bit-identical).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fastrnn.kernels import cells
from fastrnn.modules import build

from .cases import Case, CaseKind, Cost, register_kind
from .rnn import build_note_cudnn, explained, make_step, packed_lengths, tokens
from .rnn import cost as rnn_cost


def ln_cells() -> dict[str, tuple[str, str]]:
    """Layer-norm cell -> (fastrnn class name, ``torch.nn`` family with the same gates): every
    registered cell on the extended interface whose family is a fastrnn module with a plain twin."""
    import fastrnn

    out = {}
    for mode in cells.modes(extended=True):
        cell = cells.get(mode)
        plain = [cells.get(m).family for m in cells.modes(twin=True) if cells.get(m).gates == cell.gates]
        if plain and hasattr(fastrnn, cell.family):
            out[mode] = (cell.family, plain[0])
    return out


def state_cells() -> tuple[str, ...]:
    """The families of the registered cells with a cell state and a ``torch.nn`` twin (``LSTM``)."""
    return tuple(dict.fromkeys(cells.get(m).family for m in cells.modes(twin=True) if cells.get(m).has_cell_state))


#: Zoneout rate of training rows.
ZONEOUT = 0.1


@dataclass
class Workload:
    """What every provider of one row shares: the weights (a fastrnn module), the input."""

    module: nn.Module  # LN: the LayerNorm module (torch backend); states: a fastrnn.LSTM
    input: torch.Tensor | PackedSequence
    leaf: torch.Tensor
    grad_out: torch.Tensor | None
    grad_states: torch.Tensor | None  # states rows, fwdbwd


def _input(case: Case, device: torch.device, gen: torch.Generator, train: bool, seed: int):
    x = torch.randn(case.T, case.B, case.H, device=device, dtype=case.torch_dtype, generator=gen)
    if not case.packed:
        leaf = x.requires_grad_(train)
        return leaf, leaf, case.T * case.B
    packed = pack_padded_sequence(x, packed_lengths(case, seed), enforce_sorted=False)
    leaf = packed.data.detach().requires_grad_(train)
    return leaf, PackedSequence(leaf, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), leaf.shape[0]


def setup(case: Case, device: torch.device, seed: int) -> Workload:
    """Seeded weights (fastrnn's init; layer-norm gains perturbed from 1), random input and
    output gradients for ``case`` on ``device``."""
    import fastrnn

    torch.manual_seed(seed)
    dtype, train = case.torch_dtype, case.run == "fwdbwd"
    if case.kind == "lnrnn":
        cls = getattr(fastrnn, ln_cells()[case.cell][0])
        module = cls(case.H, case.H, device=device, dtype=dtype, zoneout=ZONEOUT, backend="torch")
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.startswith(("gamma", "beta")):
                    p.add_(0.1 * torch.randn_like(p))
    else:
        module = build(case.cell, case.H, case.H, case.layers, bidirectional=case.bidir, device=device, dtype=dtype,
                       backend="torch")  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(seed)
    leaf, inp, n = _input(case, device, gen, train, seed)
    out_dim = case.directions * case.H
    out_shape = (n, out_dim) if case.packed else (case.T, case.B, out_dim)
    grad_out = torch.randn(out_shape, device=device, dtype=dtype, generator=gen) if train else None
    grad_states = None
    if train and case.kind == "states":
        s_dim = case.layers * case.directions * case.H
        shape = (n, s_dim) if case.packed else (case.T, case.B, s_dim)
        grad_states = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    return Workload(module, inp, leaf, grad_out, grad_states)


def _data(case: Case, t):
    return t.data if case.packed else t


def _copy(wl: Workload, backend: str) -> nn.Module:
    """A module like the workload's, on ``backend``, with its weights."""
    m = wl.module
    kw = dict(device=m.weight_ih_l0.device, dtype=m.weight_ih_l0.dtype, backend=backend)
    if hasattr(m, "zoneout"):  # a layer-norm module
        new = type(m)(m.input_size, m.hidden_size, zoneout=m.zoneout, **kw)
    else:
        new = type(m)(m.input_size, m.hidden_size, m.num_layers, bidirectional=m.bidirectional, **kw)
    new.load_state_dict(m.state_dict())
    return new


def _states_step(case: Case, module: nn.Module, wl: Workload):
    """A timed call with ``return_states=True``; training: backward through output and states."""
    if case.run == "fwd":
        module.eval()

        def step():
            with torch.no_grad():
                return _data(case, module(wl.input, return_states=True)[0])

        return step
    module.train()
    params = list(module.parameters())

    def train_step():
        for p in params:
            p.grad = None
        wl.leaf.grad = None
        out, _, states = module(wl.input, return_states=True)
        torch.autograd.backward([_data(case, out), _data(case, states)], [wl.grad_out, wl.grad_states])
        return _data(case, out)

    return train_step


def _fastrnn_step(case: Case, wl: Workload, device: torch.device, backend: str):

    module = _copy(wl, backend)
    if case.kind == "states":
        step = _states_step(case, module, wl)
    else:
        step = make_step(case, lambda: _data(case, module(wl.input)[0]), [module], wl.grad_out, wl.leaf)
    states = dict(return_states=True) if case.kind == "states" else {}
    explained(case, module, wl.input, step, **states)
    return step


def build_fastrnn(case: Case, wl: Workload, device: torch.device):
    """The kernels (``backend='triton'``)."""
    return _fastrnn_step(case, wl, device, "triton")


def build_fastrnn_auto(case: Case, wl: Workload, device: torch.device):
    """``backend='auto'``: the kernels on CUDA where they run, else the step loop."""
    return _fastrnn_step(case, wl, device, "auto")


def build_loop(case: Case, wl: Workload, device: torch.device):
    """``backend='torch'``: fastrnn's plain-PyTorch step loop, the same maths."""
    step = _fastrnn_step(case, wl, device, "torch")
    step.note = "fastrnn's torch backend: the plain-PyTorch step loop"
    return step


def build_torch_nn(case: Case, wl: Workload, device: torch.device):
    """The step loop (``backend='torch'``): torch.nn has neither layer-normalised RNNs nor
    per-step cell states."""
    return build_loop(case, wl, device)


def build_cudnn(case: Case, wl: Workload, device: torch.device):
    """``torch.nn.LSTM``/``GRU`` of the row's shape (cuDNN on CUDA): the yardstick (see module doc)."""
    m = wl.module
    family = ln_cells()[case.cell][1] if case.kind == "lnrnn" else case.cell
    ref = getattr(nn, family)(m.input_size, m.hidden_size, m.num_layers, bidirectional=m.bidirectional,
                              device=m.weight_ih_l0.device, dtype=m.weight_ih_l0.dtype)  # fmt: skip
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if k in ref.state_dict()})
    if case.kind == "lnrnn":  # different maths: keep its output out of max_abs_diff (a list, not a tensor)
        fwd = make_step(case, lambda: _data(case, ref(wl.input)[0]), [ref], wl.grad_out, wl.leaf)
        step = (lambda: [fwd()]) if case.run == "fwd" else fwd
        step.note = f"torch.nn.{family} without layer norm (none in torch.nn/cuDNN): the plain layer's time"
    else:
        step = make_step(case, lambda: _data(case, ref(wl.input)[0]), [ref], wl.grad_out, wl.leaf)
        build_note_cudnn(step, device)
        step.note = f"torch.nn.{family} without per-step states (it has none)" + (
            f"; {step.note}" if getattr(step, "note", None) else ""
        )
    return step


def cost(case: Case, seed: int) -> Cost:
    """The recurrent stack's cost (:func:`benchmarks.rnn.cost`) of the same shape; the layer
    norms' and the states' extra bytes are small next to it and left out (a floor)."""
    family = ln_cells()[case.cell][1] if case.kind == "lnrnn" else case.cell
    base = Case("rnn", family, case.dtype, case.B, case.H, case.T, case.layers, case.bidir, case.packed, case.run)
    c = rnn_cost(base, seed)
    return Cost(c.bytes, c.flops, c.steps, tokens(case, seed), c.recurrent_bytes)


def tier(c: Case) -> int:
    """After the rnn rows of the same T (2: T=1024, 3: shorter)."""
    return 2 if c.T >= 1024 else 3


def _ln_rows(cells, dtypes, Bs, Hs, Ts, packs=(False,), modes=("fwd", "fwdbwd")) -> list[Case]:
    return [
        Case("lnrnn", cell, dtype, B, H, T, 1, False, pk, mode, extra=(("zo", ZONEOUT),))
        for T, H, B, pk, cell, dtype, mode in itertools.product(Ts, Hs, Bs, packs, cells, dtypes, modes)
    ]


def _state_rows(dtypes, Bs, Hs, Ts, layers=(1,), bidirs=(False,), packs=(False,), modes=("fwd", "fwdbwd")):
    return [
        Case("states", cell, dtype, B, H, T, L, bi, pk, mode)
        for T, H, B, L, bi, pk, cell, dtype, mode in itertools.product(
            Ts, Hs, Bs, layers, bidirs, packs, state_cells(), dtypes, modes
        )
    ]


def grid_full() -> list[Case]:
    """LN: both cells, fp16/bf16/fp32, B 16/64, H 32/64 (tier 1) and 256 (the step loop), T 1024;
    states: fp16/bf16/fp32, B 16/64, H 128/512/1024, T 1024, plus 2-layer bidirectional and packed."""
    rows = _ln_rows(tuple(ln_cells()), ("fp16", "bf16", "fp32"), (16, 64), (32, 64, 256), (1024,))
    rows += _state_rows(("fp16", "bf16", "fp32"), (16, 64), (128, 512, 1024), (1024,))
    rows += _state_rows(("fp16",), (16,), (128,), (1024,), layers=(2,), bidirs=(True,))
    rows += _state_rows(("fp16",), (16,), (128,), (1024,), packs=(True,))
    return rows


def grid_quick() -> list[Case]:
    """LN: both cells, bf16, B 16/64, H 64, T 1024 (8 rows); states: fp16, B 16/64, H 128/512,
    T 1024 (the rnn kind's quick shapes; 8 rows)."""
    rows = _ln_rows(tuple(ln_cells()), ("bf16",), (16, 64), (64,), (1024,))
    rows += _state_rows(("fp16",), (16, 64), (128, 512), (1024,))
    return rows


def grid_cpu() -> list[Case]:
    """CPU comparison: LN both cells and states, fp32, B 4, H 16, T 16 (6 rows)."""
    return _ln_rows(tuple(ln_cells()), ("fp32",), (4,), (16,), (16,)) + _state_rows(("fp32",), (4,), (16,), (16,))


def grid_smoke() -> list[Case]:
    """Tiny rows for exercising the code on a CPU (tests only)."""
    rows = _ln_rows(tuple(ln_cells()), ("fp32",), (3,), (8,), (5,), packs=(False, True))
    rows += _state_rows(("fp32",), (3,), (8,), (5,), layers=(2,), bidirs=(True,), packs=(False, True))
    return rows


_PROVIDERS = {
    "fastrnn": build_fastrnn,
    "cudnn": build_cudnn,
    "loop": build_loop,
    "fastrnn_auto": build_fastrnn_auto,
    "torch_nn": build_torch_nn,
}
_GRIDS = {"full": grid_full, "quick": grid_quick, "cpu": grid_cpu, "smoke": grid_smoke}


def _only(kind: str):
    return {name: (lambda f=f: [c for c in f() if c.kind == kind]) for name, f in _GRIDS.items()}


LN_KIND = register_kind(
    CaseKind(
        name="lnrnn",
        setup=setup,
        providers=_PROVIDERS,
        cost=cost,
        grids=_only("lnrnn"),
        tier=tier,
        description="fastrnn.LayerNormLSTM/GRU (zoneout in training) vs its step loop and the plain torch.nn layer",
    )
)
STATES_KIND = register_kind(
    CaseKind(
        name="states",
        setup=setup,
        providers=_PROVIDERS,
        cost=cost,
        grids=_only("states"),
        tier=tier,
        description="fastrnn.LSTM(return_states=True) vs the step loop and torch.nn.LSTM without states",
    )
)
