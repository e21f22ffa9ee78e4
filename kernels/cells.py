"""Recurrent cells: each cell's spec and its maths, in one place.

A cell is registered once (:func:`register`) with

* its **spec**: gate names in ``W_ih``/``W_hh`` row-block order (PyTorch's, so weights are
  interchangeable with ``torch.nn``), the per-step tensors its forward saves for the backward,
  whether it carries a cell state ``c``, which gates keep their recurrent bias inside the maths
  (GRU's ``b_hn``), what its backward reads, its ``torch.nn`` twin;
* its **maths** as two ``@triton.jit`` functions that every kernel tier calls (tier 1 in
  ``tier1.py``, tiers 2/3 in ``persistent.py``); the kernels only do the matrix products, the
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

Cells beyond torch.nn (``Cell.extended``: per-unit parameters, zoneout, layer norm) use the
extended interface, which adds the cell's parameters and a zoneout mask::

    forward(px, ph, h, c, prm, zm, cm, n, ZONEOUT) -> (m, c_new, saved)
    backward(dm, dc, saved, h_new, h_prev, c_prev, prm, zm, cm, n, ZONEOUT)
        -> (d_px, d_ph, dh_direct, dc_prev, d_prm)
        prm[k]  parameter vector k of ``Cell.params`` as a (1, BLOCK_H) tile (0 past H)
        zm      the step's zoneout keep mask (BLOCK_B, BLOCK_H) (train: 1 keeps the new value,
                0 the previous one), a scalar keep probability (eval: the expectation), or 1.0
        cm      (1, BLOCK_H): 1.0 for the H valid hidden units, 0.0 for padding; n = H
        ZONEOUT constexpr: 0 when zoneout is off (zm unused), else on
        d_prm[k]  this step's contribution to dL/dprm[k] (summed over time and batch by the caller)
        ph      the raw recurrent products h W_hh^T (no bias: an extended cell adds its own)

==========  =====  ===============  =====================  ====================================
cell        gates  order            saved                  notes
==========  =====  ===============  =====================  ====================================
RNN_TANH    1      h                --                     backward reads h_t
RNN_RELU    1      h                --                     backward reads h_t
LSTM        4      i, f, g, o       i, f, g, o, c          cell state; optional projection
GRU         3      r, z, n          r, z, n, hn            b_hn inside r * (W_hn h + b_hn)
LN_LSTM     4      i, f, g, o       12 (see below)         layer norm, zoneout; extended, tier 1
LN_GRU      3      r, z, n          8 (see below)          layer norm, zoneout; extended, tier 1
==========  =====  ===============  =====================  ====================================

The layer-normalised cells follow haste's LayerNormLSTM/LayerNormGRU (Ba et al. 2016): with
``LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5)`` over all ``G*H`` gate pre-activations of a row
(one mean and variance for all gates), ``px = LN(x W_ih^T) * gamma_ih + b`` (computed before
the kernel, ``fastrnn/layernorm.py``) and, per step::

    LN_LSTM: v = px + LN(h W_hh^T) * gamma_hh;  i, f, o = sigmoid(v), g = tanh(v)
             c^ = f c + i g;  m = o tanh(LN_H(c^) * gamma_c + beta_c)
    LN_GRU:  a = LN(h W_hh^T) * gamma_hh;  r, z = sigmoid(px + a);  n = tanh(px_n + r (a_n + b_hn))
             m = (1 - z) n + z h

Two dependent row reductions per step (the gates' statistics, then c^'s): a tier-1 program holds
whole rows; tiers 2/3 split a row across programs and do not run these cells.  Zoneout (Krueger
et al. 2016; haste's per-step ``(B, H)`` mask ``zm``): ``h_t = h + zm (m - h)`` and, LSTM,
``c_t = c + zm (c^ - c)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import triton
import triton.language as tl
from torch import nn

from .common import relu, sigmoid, tanh


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
    params: tuple[str, ...] = ()  # per-unit parameter vectors (H each) the maths read (extended interface)
    zoneout: bool = False  # the maths take a per-step zoneout keep mask (extended interface)
    whole_rows: bool = False  # the maths reduce over all hidden units of a row (layer norm): tier 1 only

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
    def extended(self) -> bool:
        """Whether the maths use the extended interface (parameters, zoneout, row reductions)."""
        return bool(self.params) or self.zoneout or self.whole_rows

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
            EXT=self.extended,
            NPRM=len(self.params),
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


def modes(family: str | None = None, twin: bool | None = None, extended: bool | None = None) -> list[str]:
    """The registered modes, in registration order, optionally only those of ``family``, with
    (``twin=True``) or without (``False``) a ``torch.nn`` twin, using the extended interface or not.

    Example::

        modes(twin=True)  # ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]
    """
    return [
        c.mode for c in CELLS.values()
        if (family is None or c.family == family) and (twin is None or (c.twin is not None) == twin)
        and (extended is None or c.extended == extended)
    ]  # fmt: skip


def family_mode(family: str, nonlinearity: str | None = None) -> str:
    """The mode of a family (``"RNN"`` with ``nonlinearity``, default the first registered, tanh;
    ``"LSTM"``, ``"GRU"``)."""
    for cell in CELLS.values():
        if cell.family == family and nonlinearity in (None, cell.twin_kwargs.get("nonlinearity")):
            return cell.mode
    known = sorted({c.family for c in CELLS.values()})
    raise ValueError(f"unknown cell {family!r}" + (f" with nonlinearity {nonlinearity!r}" if nonlinearity else "")
                     + f"; known: {', '.join(known)}")  # fmt: skip


def rnn_mode(nonlinearity: str) -> str:
    """The RNN family's cell for ``nonlinearity``, with torch.nn's error for an unknown one."""
    options = [c.twin_kwargs["nonlinearity"] for c in CELLS.values() if c.family == "RNN"]
    if nonlinearity not in options:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from {' or '.join(map(repr, options))}.")
    return family_mode("RNN", nonlinearity)


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
    m = relu(px[0] + ph[0])
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


def _rnn(nonlinearity: str, forward: Callable, backward: Callable) -> Cell:
    """Register ``torch.nn.RNN``'s cell of ``nonlinearity``."""
    cell = Cell(f"RNN_{nonlinearity.upper()}", "RNN", ("h",), (), forward, backward, reads=frozenset({"h_new"}),
                twin=nn.RNN, twin_kwargs={"nonlinearity": nonlinearity})  # fmt: skip
    return register(cell)


RNN_TANH = _rnn("tanh", _rnn_tanh_forward, _rnn_tanh_backward)
RNN_RELU = _rnn("relu", _rnn_relu_forward, _rnn_relu_backward)
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


# ---------------------------------------------------------------------------------------------
# Layer-normalised cells (haste's formulation; extended interface, see the module doc)

#: Layer norm's epsilon (haste's and torch's default); ``_LN_EPS`` is the kernels' copy.
LN_EPS = 1e-5
_LN_EPS = tl.constexpr(LN_EPS)


@triton.jit
def _add_pairs(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


@triton.jit
def _row_sums(a, b):
    """``(sum(a, axis=1), sum(b, axis=1))`` in one cross-warp reduction."""
    return tl.reduce((a, b), 1, _add_pairs)


@triton.jit
def _norm_rows(xs, cm, n, G: tl.constexpr):
    """Layer norm of the rows of the ``G`` tiles ``xs`` taken together (``G*n`` valid columns):
    ``((x_g - mean) * rstd for each g, rstd (BLOCK_B, 1))``; 0 in padding columns.  One
    cross-warp reduction for both moments (the tiles summed elementwise first), the variance as
    ``E[x^2] - E[x]^2`` in fp32: a second, dependent reduction for a centred variance would lengthen
    the step's serial chain.  Its relative error is about ``6e-8 (mean/std)^2``, negligible for the
    rows normalised here (``W_hh h`` and ``c_t``, whose mean is not far above their spread); the
    float64 kernels are checked against the two-pass reference."""
    d = xs[0] * cm
    s1 = d
    s2 = d * d
    for g in tl.static_range(1, G):
        d = xs[g] * cm
        s1 += d
        s2 += d * d
    t1, t2 = _row_sums(s1, s2)
    mean = t1[:, None] / (G * n)
    var = tl.maximum(t2[:, None] / (G * n) - mean * mean, 0.0)
    rstd = 1.0 / tl.sqrt(var + _LN_EPS)
    hats = ()
    for g in tl.static_range(G):
        hats = hats + ((xs[g] - mean) * rstd * cm,)
    return hats, rstd


@triton.jit
def _norm_rows_backward(dys, hats, rstd, cm, n, G: tl.constexpr):
    """Gradient through :func:`_norm_rows`: ``dx_g = rstd (dy_g - mean(dy) - hat_g mean(dy hat))``
    (means over the ``G*n`` valid columns of a row; one reduction for both), given ``dy_g`` =
    dL/dhat_g."""
    t1 = dys[0]
    t2 = dys[0] * hats[0]
    for g in tl.static_range(1, G):
        t1 += dys[g]
        t2 += dys[g] * hats[g]
    s1, s2 = _row_sums(t1 * cm, t2)
    m1 = s1[:, None] / (G * n)
    m2 = s2[:, None] / (G * n)
    dx = ()
    for g in tl.static_range(G):
        dx = dx + (rstd * (dys[g] - m1 - hats[g] * m2) * cm,)
    return dx


@triton.jit
def _ln_lstm_forward(px, ph, h, c, prm, zm, cm, n, ZONEOUT: tl.constexpr):
    # prm: gamma_hh of i, f, g, o; gamma_c, beta_c
    a, rstd = _norm_rows(ph, cm, n, 4)
    i = sigmoid(px[0] + a[0] * prm[0])
    f = sigmoid(px[1] + a[1] * prm[1])
    g = tanh(px[2] + a[2] * prm[2])
    o = sigmoid(px[3] + a[3] * prm[3])
    c_hat = f * c + i * g
    nc, rstd_c = _norm_rows((c_hat,), cm, n, 1)
    m = o * tanh(nc[0] * prm[4] + prm[5])
    c_new = c_hat
    if ZONEOUT:
        m = h + zm * (m - h)
        c_new = c + zm * (c_hat - c)
    return m, c_new, (i, f, g, o, a[0], a[1], a[2], a[3], rstd * cm, nc[0], rstd_c * cm, c_new)


@triton.jit
def _ln_lstm_backward(dm, dc, saved, h_new, h_prev, c_prev, prm, zm, cm, n, ZONEOUT: tl.constexpr):
    i, f, g, o, a0, a1, a2, a3, rstd, nc, rstd_c, c_new = saved
    ty = tanh(nc * prm[4] + prm[5])
    dm_cell = dm
    dc_hat = dc
    dh_keep = 0.0
    dc_keep = 0.0
    if ZONEOUT:
        dm_cell = zm * dm
        dc_hat = zm * dc
        dh_keep = dm - dm_cell
        dc_keep = dc - dc_hat
    d_o = dm_cell * ty
    dy = dm_cell * o * (1.0 - ty * ty)
    d_nc = _norm_rows_backward((dy * prm[4],), (nc,), rstd_c, cm, n, 1)
    dc_hat = dc_hat + d_nc[0]
    dv = (dc_hat * g * i * (1.0 - i), dc_hat * c_prev * f * (1.0 - f), dc_hat * i * (1.0 - g * g),
          d_o * o * (1.0 - o))  # fmt: skip
    d_ph = _norm_rows_backward((dv[0] * prm[0], dv[1] * prm[1], dv[2] * prm[2], dv[3] * prm[3]), (a0, a1, a2, a3),
                               rstd, cm, n, 4)  # fmt: skip
    d_prm = (dv[0] * a0, dv[1] * a1, dv[2] * a2, dv[3] * a3, dy * nc, dy)
    return dv, d_ph, dh_keep, dc_hat * f + dc_keep, d_prm


@triton.jit
def _ln_gru_forward(px, ph, h, c, prm, zm, cm, n, ZONEOUT: tl.constexpr):
    # prm: gamma_hh of r, z, n; b_hn
    a, rstd = _norm_rows(ph, cm, n, 3)
    r = sigmoid(px[0] + a[0] * prm[0])
    z = sigmoid(px[1] + a[1] * prm[1])
    hn = a[2] * prm[2] + prm[3]
    nn_ = tanh(px[2] + r * hn)
    m = (1.0 - z) * nn_ + z * h
    if ZONEOUT:
        m = h + zm * (m - h)
    return m, c, (r, z, nn_, hn, a[0], a[1], a[2], rstd * cm)


@triton.jit
def _ln_gru_backward(dm, dc, saved, h_new, h_prev, c_prev, prm, zm, cm, n, ZONEOUT: tl.constexpr):
    r, z, nn_, hn, a0, a1, a2, rstd = saved
    dm_cell = dm
    dh_keep = 0.0
    if ZONEOUT:
        dm_cell = zm * dm
        dh_keep = dm - dm_cell
    dn = dm_cell * (1.0 - z) * (1.0 - nn_ * nn_)
    dz = dm_cell * (h_prev - nn_) * z * (1.0 - z)
    dr = dn * hn * r * (1.0 - r)
    dhn = dn * r
    d_ph = _norm_rows_backward((dr * prm[0], dz * prm[1], dhn * prm[2]), (a0, a1, a2), rstd, cm, n, 3)
    return (dr, dz, dn), d_ph, dm_cell * z + dh_keep, dc, (dr * a0, dz * a1, dhn * a2, dhn)


LN_LSTM = register(
    Cell(
        "LN_LSTM",
        "LayerNormLSTM",
        ("i", "f", "g", "o"),
        ("i", "f", "g", "o", "ni", "nf", "ng", "no", "rstd", "nc", "rstd_c", "c"),
        _ln_lstm_forward,
        _ln_lstm_backward,
        has_cell_state=True,
        direct_dh=True,
        params=("gamma_i", "gamma_f", "gamma_g", "gamma_o", "gamma_c", "beta_c"),
        zoneout=True,
        whole_rows=True,
    )  # fmt: skip
)
LN_GRU = register(
    Cell(
        "LN_GRU",
        "LayerNormGRU",
        ("r", "z", "n"),
        ("r", "z", "n", "hn", "nr", "nz", "nn", "rstd"),
        _ln_gru_forward,
        _ln_gru_backward,
        reads=frozenset({"h_prev"}),
        direct_dh=True,
        params=("gamma_r", "gamma_z", "gamma_n", "b_hn"),
        zoneout=True,
        whole_rows=True,
    )  # fmt: skip
)
