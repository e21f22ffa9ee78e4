"""Recurrent cells: each cell's spec and its maths, in one place.

A cell is registered once (:func:`register`) with

* its **spec**: gate names in ``W_ih``/``W_hh`` row-block order (PyTorch's, so weights are
  interchangeable with ``torch.nn``), the per-step tensors its forward saves for the backward,
  whether it carries a cell state ``c``, which gates keep their recurrent bias inside the maths
  (GRU's ``b_hn``), what its backward reads, its ``torch.nn`` twin;
* its **maths** as two ``@triton.jit`` functions that every kernel tier calls (tier 1 in
  ``recurrent.py``, tiers 2/3 in ``multi.py``); the kernels only do the matrix products, the
  loads and stores and the time loop.

The plain-PyTorch reference step of a cell lives in ``fastrnn/reference.py`` (the layer above).

The cell maths interface (every tensor ``(BLOCK_B, BLOCK_H)`` in the accumulation dtype; tuples
have one entry per gate or per saved tensor)::

    forward(px, ph, h, c) -> (m, c_new, saved)
        px[g]  input part of gate g's pre-activation: (x W_ih^T)_g + b_ih_g (+ b_hh_g folded in,
               except for the inner-bias gates)
        ph[g]  recurrent part: (h W_hh^T)_g (+ b_hh_g for the inner-bias gates)
        h, c   previous hidden and cell state (c: a placeholder for cells without one)
        m      the cell's output h_t (before an LSTM projection), c_new the new cell state,
        saved  what the backward needs, in the order of ``Cell.saved``
    backward(dm, dc, saved, h_new, h_prev, c_prev) -> (d_px, d_ph, dh_direct, dc_prev)
        dm     dL/dm_t (all paths), dc dL/dc_t from later steps; h_new/h_prev/c_prev only when
               the cell reads them (``Cell.reads``), else placeholders
        d_px[g], d_ph[g]  dL/dpx_g and dL/dph_g (equal unless g is an inner-bias gate)
        dh_direct         dL/dh_{t-1} not through W_hh (``Cell.direct_dh``), dc_prev dL/dc_{t-1}

==========  =====  ===============  =====================  ====================================
cell        gates  order            saved                  notes
==========  =====  ===============  =====================  ====================================
RNN_TANH    1      h                --                     backward reads h_t
RNN_RELU    1      h                --                     backward reads h_t
LSTM        4      i, f, g, o       i, f, g, o, c          cell state; optional projection
GRU         3      r, z, n          r, z, n, hn            b_hn inside r * (W_hn h + b_hn)
==========  =====  ===============  =====================  ====================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import triton
import triton.language as tl
from torch import nn

from .common import sigmoid, tanh


@dataclass(frozen=True)
class Cell:
    """One recurrent cell: its spec and its jit maths (see the module doc)."""

    mode: str  # registry key; torch.nn's mode string for the torch.nn cells ("RNN_TANH", "LSTM", ...)
    family: str  # what users call it: "RNN", "LSTM", "GRU" (RNN_TANH and RNN_RELU are one family)
    gates: tuple[str, ...]
    saved: tuple[str, ...]  # per-step (B, H) tensors the forward stores for the backward
    forward: Any  # @triton.jit (px, ph, h, c) -> (m, c_new, saved)
    backward: Any  # @triton.jit (dm, dc, saved, h_new, h_prev, c_prev) -> (d_px, d_ph, dh_direct, dc_prev)
    has_cell_state: bool = False  # an LSTM-like c; it must be one of ``saved`` (named "c")
    inner_bias: tuple[str, ...] = ()  # gates whose recurrent bias b_hh stays inside the maths
    reads: frozenset[str] = frozenset()  # what backward reads besides ``saved``: "h_new", "h_prev"
    direct_dh: bool = False  # backward returns a gradient of h_{t-1} that bypasses W_hh
    projection: bool = False  # may project its output (torch.nn's LSTM proj_size)
    twin: type[nn.RNNBase] | None = None  # the torch.nn module running this cell
    twin_kwargs: dict = field(default_factory=dict)  # constructor arguments selecting it (nonlinearity)
    twin_cpu_autocast: bool = True  # torch.nn's CPU autocast lowers the twin (torch 2.11-2.13: not GRU)

    def __post_init__(self) -> None:
        if self.has_cell_state and "c" not in self.saved:
            raise ValueError(f"cell {self.mode}: a cell state must be saved (as 'c') for the backward")
        unknown = set(self.inner_bias) - set(self.gates)
        if unknown:
            raise ValueError(f"cell {self.mode}: inner_bias names unknown gates {sorted(unknown)}")
        if not self.reads <= {"h_new", "h_prev"}:
            raise ValueError(f"cell {self.mode}: reads must be a subset of {{'h_new', 'h_prev'}}")

    @property
    def G(self) -> int:
        """Number of gates (row blocks of ``W_ih``/``W_hh``)."""
        return len(self.gates)

    @property
    def S(self) -> int:
        """Number of per-step tensors saved for the backward."""
        return len(self.saved)

    @property
    def inner_gates(self) -> tuple[int, ...]:
        """Indices of the inner-bias gates, in gate order."""
        return tuple(i for i, g in enumerate(self.gates) if g in self.inner_bias)

    def constexprs(self) -> dict[str, Any]:
        """The compile-time arguments every kernel tier takes for this cell."""
        slots = [-1] * self.G
        for k, g in enumerate(self.inner_gates):
            slots[g] = k
        return dict(
            CELL_FWD=self.forward,
            CELL_BWD=self.backward,
            G=self.G,
            S=self.S,
            INNER_SLOTS=tuple(slots),
            HAS_C=self.has_cell_state,
            STATE_SLOT=self.saved.index("c") if self.has_cell_state else -1,
            READ_H_NEW="h_new" in self.reads,
            READ_H_PREV="h_prev" in self.reads,
            DIRECT_DH=self.direct_dh,
        )


CELLS: dict[str, Cell] = {}


def register(cell: Cell) -> Cell:
    """Make ``cell`` known to every layer (kernels, ops, modules, reference, benchmarks, tests)."""
    if cell.mode in CELLS and CELLS[cell.mode] != cell:
        raise ValueError(f"a different cell is already registered as {cell.mode!r}")
    CELLS[cell.mode] = cell
    return cell


def unregister(mode: str) -> None:
    """Forget a cell (tests that register a temporary one)."""
    CELLS.pop(mode, None)


def get(mode: str) -> Cell:
    """The registered cell of ``mode`` (a ``torch.nn`` mode string such as ``"LSTM"``)."""
    try:
        return CELLS[mode]
    except KeyError:
        raise ValueError(f"unknown recurrent cell {mode!r}; registered: {', '.join(CELLS)}") from None


def gate_count(mode: str) -> int:
    """Number of gates of ``mode``."""
    return get(mode).G


def family_mode(family: str, nonlinearity: str | None = None) -> str:
    """The mode of a family (``"RNN"`` with ``nonlinearity``, default the first registered, tanh;
    ``"LSTM"``, ``"GRU"``)."""
    for cell in CELLS.values():
        if cell.family == family and nonlinearity in (None, cell.twin_kwargs.get("nonlinearity")):
            return cell.mode
    known = sorted({c.family for c in CELLS.values()})
    raise ValueError(f"unknown cell {family!r}" + (f" with nonlinearity {nonlinearity!r}" if nonlinearity else "")
                     + f"; known: {', '.join(known)}")  # fmt: skip


def families() -> dict[str, type[nn.RNNBase]]:
    """Family name -> its ``torch.nn`` class, for the cells that have one."""
    return {c.family: c.twin for c in CELLS.values() if c.twin is not None}


# ---------------------------------------------------------------------------------------------
# The cells of torch.nn


@triton.jit
def _rnn_tanh_forward(px, ph, h, c):
    m = tanh(px[0] + ph[0])
    return m, c, ()


@triton.jit
def _rnn_tanh_backward(dm, dc, saved, h_new, h_prev, c_prev):
    d = dm * (1.0 - h_new * h_new)
    return (d,), (d,), 0.0, dc


@triton.jit
def _rnn_relu_forward(px, ph, h, c):
    m = tl.maximum(px[0] + ph[0], 0.0)
    return m, c, ()


@triton.jit
def _rnn_relu_backward(dm, dc, saved, h_new, h_prev, c_prev):
    d = tl.where(h_new > 0, dm, 0.0)
    return (d,), (d,), 0.0, dc


@triton.jit
def _lstm_forward(px, ph, h, c):
    i = sigmoid(px[0] + ph[0])
    f = sigmoid(px[1] + ph[1])
    g = tanh(px[2] + ph[2])
    o = sigmoid(px[3] + ph[3])
    c_new = f * c + i * g
    m = o * tanh(c_new)
    return m, c_new, (i, f, g, o, c_new)


@triton.jit
def _lstm_backward(dm, dc, saved, h_new, h_prev, c_prev):
    i, f, g, o, c = saved
    tc = tanh(c)
    dc_t = dc + dm * o * (1.0 - tc * tc)
    d = (dc_t * g * i * (1.0 - i), dc_t * c_prev * f * (1.0 - f), dc_t * i * (1.0 - g * g), dm * tc * o * (1.0 - o))
    return d, d, 0.0, dc_t * f


@triton.jit
def _gru_forward(px, ph, h, c):
    r = sigmoid(px[0] + ph[0])
    z = sigmoid(px[1] + ph[1])
    n = tanh(px[2] + r * ph[2])
    m = (1.0 - z) * n + z * h
    return m, c, (r, z, n, ph[2])


@triton.jit
def _gru_backward(dm, dc, saved, h_new, h_prev, c_prev):
    r, z, n, hn = saved
    dn = dm * (1.0 - z) * (1.0 - n * n)
    dz = dm * (h_prev - n) * z * (1.0 - z)
    dr = dn * hn * r * (1.0 - r)
    return (dr, dz, dn), (dr, dz, dn * r), dm * z, dc


RNN_TANH = register(
    Cell(
        "RNN_TANH",
        "RNN",
        ("h",),
        (),
        _rnn_tanh_forward,
        _rnn_tanh_backward,
        reads=frozenset({"h_new"}),
        twin=nn.RNN,
        twin_kwargs={"nonlinearity": "tanh"},
    )  # fmt: skip
)
RNN_RELU = register(
    Cell(
        "RNN_RELU",
        "RNN",
        ("h",),
        (),
        _rnn_relu_forward,
        _rnn_relu_backward,
        reads=frozenset({"h_new"}),
        twin=nn.RNN,
        twin_kwargs={"nonlinearity": "relu"},
    )  # fmt: skip
)
LSTM = register(
    Cell(
        "LSTM",
        "LSTM",
        ("i", "f", "g", "o"),
        ("i", "f", "g", "o", "c"),
        _lstm_forward,
        _lstm_backward,
        has_cell_state=True,
        projection=True,
        twin=nn.LSTM,
    )  # fmt: skip
)
GRU = register(
    Cell(
        "GRU",
        "GRU",
        ("r", "z", "n"),
        ("r", "z", "n", "hn"),
        _gru_forward,
        _gru_backward,
        inner_bias=("n",),
        reads=frozenset({"h_prev"}),
        direct_dh=True,
        twin=nn.GRU,
        twin_cpu_autocast=False,
    )  # fmt: skip
)
