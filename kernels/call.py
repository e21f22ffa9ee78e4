"""One recurrence call as a record: what every tier's launchers, the custom ops and the kernel
report take, and the shapes of what it returns.

A :class:`RecurrenceCall` is one layer and one direction: the cell, the recurrent weights, the
initial state, the lengths and the options.  It is built once per call (in ``fastrnn.ops``) and
handed down unchanged; a tier's forward takes ``(call, gx, cfg)``, its backward
``(call, grads, cfg)``.  :func:`forward_shapes` and :func:`backward_shapes` are the one statement
of the outputs' shapes: the custom ops' fake implementations allocate from them, and so do the
launchers (:func:`allocate`).

Dimension letters as in :mod:`.recurrent`: ``T`` steps, ``B`` sequences, ``H`` hidden size,
``P`` size of ``h`` (``proj_size`` or ``H``), ``G`` gates, ``S`` saved tensors per step, ``N``
inner-bias gates, ``NPRM`` parameter vectors of an extended cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import cells
from .common import acc_dtype

#: A tensor's shape and dtype, or ``None`` for an output the call does not produce.
Spec = tuple[tuple[int, ...], torch.dtype] | None


@dataclass(frozen=True)
class RecurrenceCall:
    """One layer/direction's recurrence: the record every tier launches from.

    ``T`` and ``B`` are the padded length and the batch (the forward's ``gx`` is ``(T, B, G*H)``;
    the backward gets them from the forward's ``out``); every tensor is on one device, and
    ``w_hh``'s dtype is the storage dtype of ``gx``, ``out`` and the states.
    """

    mode: str  # a registered cell (:mod:`.cells`)
    T: int
    B: int
    w_hh: torch.Tensor  # (G*H, P), gate order of the cell
    h0: torch.Tensor | None = None  # (B, P); None: zeros
    c0: torch.Tensor | None = None  # (B, H) cells with a cell state; None: zeros
    lengths: torch.Tensor | None = None  # (B,) int64 in 1..T, any order; None: all T
    b_hh: torch.Tensor | None = None  # (G*H,) recurrent bias; only the inner-bias gates' blocks are read
    w_hr: torch.Tensor | None = None  # (P, H) projected LSTM
    reverse: bool = False  # each sequence from its last valid step to its first
    save: bool = True  # the forward also writes what the backward reads
    precision: str = "ieee"  # fp32 dots: "ieee", "tf32x3" or "tf32" (:data:`.tiers.PRECISIONS`)
    states: bool = False  # the forward also writes every step's cell state c_t
    params: torch.Tensor | None = None  # (NPRM*H,) extended cells' parameter vectors
    zoneout: torch.Tensor | float | None = None  # (T, B, H) keep mask, a keep probability, or None

    @property
    def cell(self) -> cells.Cell:
        return cells.get(self.mode)

    @property
    def H(self) -> int:
        return self.w_hh.shape[0] // self.cell.G

    @property
    def P(self) -> int:
        return self.w_hh.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.w_hh.dtype

    @property
    def device(self) -> torch.device:
        return self.w_hh.device

    @property
    def saving(self) -> bool:
        """Whether the forward writes the saved tensors (asked for, and the cell saves some)."""
        return self.save and self.cell.S > 0

    @property
    def storing_states(self) -> bool:
        """Whether the forward writes every step's cell state (asked for, and the cell has one)."""
        return self.states and self.cell.has_cell_state

    @property
    def empty(self) -> bool:
        """Nothing to compute: the final states are the initial ones."""
        return self.T == 0 or self.B == 0


@dataclass(frozen=True)
class Gradients:
    """What a tier's backward reads besides the call: the incoming gradients and what the forward
    saved.  ``d_out`` (T, B, P), ``d_hn`` (B, P), ``d_cn`` (B, H) or None, ``d_cs`` (T, B, H) the
    gradient of every step's ``c_t`` (forwards that returned them) or None; ``out`` (T, B, P) and
    ``saved`` (T, B, S*H) from the forward."""

    d_out: torch.Tensor
    d_hn: torch.Tensor
    d_cn: torch.Tensor | None
    d_cs: torch.Tensor | None
    out: torch.Tensor
    saved: torch.Tensor | None


def n_inner(cell: cells.Cell) -> int:
    """Gates whose recurrent part gets its own gradient (``d_gh_inner``): the inner-bias gates,
    or every gate of an extended cell."""
    return cell.G if cell.extended else len(cell.inner_gates)


def forward_shapes(call: RecurrenceCall) -> dict[str, Spec]:
    """The forward's outputs: ``out`` (T,B,P), ``h_n`` (B,P), ``c_n`` (B,H), ``saved`` (T,B,S*H),
    ``m`` (T,B,H) the projected LSTM's output before the projection, ``cs`` (T,B,H) every step's
    cell state; ``None`` where the call does not produce one."""
    cell, T, B, H, P = call.cell, call.T, call.B, call.H, call.P
    dt, acc = call.dtype, acc_dtype(call.dtype)
    return {
        "out": ((T, B, P), dt),
        "h_n": ((B, P), dt),
        "c_n": ((B, H), dt) if cell.has_cell_state else None,
        "saved": ((T, B, cell.S * H), acc) if call.saving else None,
        "m": ((T, B, H), acc) if call.saving and call.w_hr is not None else None,
        "cs": ((T, B, H), dt) if call.storing_states else None,
    }


def backward_shapes(call: RecurrenceCall) -> dict[str, Spec]:
    """The backward's outputs, in the accumulation dtype: ``d_gx`` (T,B,G*H), ``d_gh_inner``
    (T,B,N*H), ``d_h`` (T,B,P) (projected LSTM: the total gradient of every ``h_t``), ``d_h0``
    (B,P), ``d_c0`` (B,H), ``d_prm`` (T,B,NPRM*H) (extended cells: each step's share of the
    parameters' gradient); ``None`` where the cell has none."""
    cell, T, B, H, P = call.cell, call.T, call.B, call.H, call.P
    acc, n = acc_dtype(call.dtype), n_inner(cell)
    return {
        "d_gx": ((T, B, cell.G * H), acc),
        "d_gh_inner": ((T, B, n * H), acc) if n else None,
        "d_h": ((T, B, P), acc) if call.w_hr is not None else None,
        "d_h0": ((B, P), acc),
        "d_c0": ((B, H), acc) if cell.has_cell_state else None,
        "d_prm": ((T, B, len(cell.params) * H), acc) if cell.params else None,
    }


def allocate(
    shapes: dict[str, Spec], empty: Callable[[tuple[int, ...], torch.dtype], torch.Tensor]
) -> dict[str, torch.Tensor | None]:
    """``{name: empty(shape, dtype)}`` for every produced output, ``None`` for the others."""
    return {name: None if spec is None else empty(*spec) for name, spec in shapes.items()}
