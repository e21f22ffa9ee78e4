"""``fastrnn.LayerNormLSTM`` and ``fastrnn.LayerNormGRU``: layer-normalised recurrent layers with
zoneout and recurrent DropConnect, on the same kernels as the ``torch.nn`` drop-ins.

The maths follow haste's ``LayerNormLSTM``/``LayerNormGRU`` (Ba et al. 2016; stated in
:mod:`fastrnn.kernels.cells`): layer norm over all ``G*H`` gate pre-activations of the input part
and of the recurrent part (one mean and variance per row for all gates, a gain ``gamma`` per
unit, no shift: the biases follow), and for the LSTM a layer norm of ``c_t`` (gain and shift)
before the output ``tanh``.  The parameters are ``torch.nn``'s (``weight_ih_l0``, ``weight_hh_l0``,
``bias_ih_l0``, ``bias_hh_l0``, ``torch.nn``'s gate order and init) plus, per layer and direction,
``gamma_ih_l0`` and ``gamma_hh_l0`` (``G*H``, ones) and, LSTM, ``gamma_c_l0``/``beta_c_l0`` (``H``,
ones/zeros).  Weights trained with haste load through :func:`fastrnn.haste.from_haste`.

Regularisers (training only), every random draw made here with torch's generator before the
backend runs, so that ``triton`` and ``torch`` agree for a given seed:

* ``zoneout`` (Krueger et al. 2016, haste's semantics): one keep mask per step over ``(B, H)``
  per layer and direction, ``P(keep new) = 1 - zoneout``; ``h_t = h_{t-1} + mask (h~_t - h_{t-1})``
  and, LSTM, the same for ``c_t``.  In evaluation the mask is replaced by its expectation
  ``1 - zoneout``.
* ``recurrent_dropout``: DropConnect on ``W_hh`` (haste's ``dropout``), one mask per weight
  and forward, scaled by ``1 / (1 - p)`` (``F.dropout`` of the weight).
* ``dropout``: ``torch.nn``'s dropout between layers.

Backends: ``triton`` runs the tier-1 kernels (one program holds a whole row, so the per-step
layer norms are reductions inside it); sizes beyond tier 1 run the ``torch`` backend, a plain
PyTorch step loop (:func:`fastrnn.reference.layer_forward`), as does ``auto`` on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import dispatch, ops, reference
from .dispatch import Decision
from .functional import plan_stack, resolve_precision, stack_layers
from .kernels import cells
from .modules import RecurrentBase, check_states, layout, package_outputs


def layer_norm_stack(
    mode: str, input: torch.Tensor, weights: list[torch.Tensor], norms: list[tuple[torch.Tensor, ...]],
    h0: torch.Tensor | None = None, c0: torch.Tensor | None = None, *, num_layers: int = 1, bias: bool = True,
    bidirectional: bool = False, dropout: float = 0.0, training: bool = False, lengths: torch.Tensor | None = None,
    allow_tf32: bool = False, zoneout: torch.Tensor | float | None = None, tier: int | None = None,
    return_states: bool = False, plan=None,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """A stack of layer-normalised layers (``mode`` ``"LN_LSTM"`` or ``"LN_GRU"``).

    Args:
        input: ``(T, B, I)`` time-major.
        weights: ``torch.nn``'s flat order: ``w_ih, w_hh[, b_ih, b_hh]`` per layer and direction
            (``w_hh`` with its DropConnect mask already applied).
        norms: per layer and direction ``(gamma_ih, gamma_hh[, gamma_c, beta_c])``.
        h0: ``(L*D, B, H)``; c0: ``(L*D, B, H)`` (LSTM).
        zoneout: ``(L*D, T, B, H)`` keep masks (training), a keep probability (evaluation) or
            ``None``.
        tier: the kernel tier (1: the only one these cells have); ``None`` (and no ``plan``): the
            plain-PyTorch step loop (the ``torch`` backend).
        return_states: LSTM: also every step's ``c_t`` (as :func:`fastrnn.functional.recurrent_stack`).
        plan: every layer and direction's :class:`~fastrnn.kernels.tiers.LayerPlan` (the modules'
            decision); replaces ``tier`` and ``allow_tf32``.

    Returns:
        ``(output (T, B, D*H), h_n (L*D, B, H), c_n (L*D, B, H) or None[, c_states (T, B, L*D*H)])``.
    """
    cell = cells.get(mode)
    if return_states and not cell.has_cell_state:
        raise ValueError(f"return_states: {mode} has no cell state")
    D = 2 if bidirectional else 1
    per = 4 if bias else 2
    G = cell.G
    if plan is None and tier is not None:
        plan = plan_stack(mode, weights[1], 0, input.device, layers=num_layers, directions=D, tier=tier,
                          precision=resolve_precision(allow_tf32))  # fmt: skip

    def run_layer(layer, layer_input):
        results = []
        for d in range(D):
            k = layer * D + d
            group = weights[k * per : (k + 1) * per]
            w_ih, w_hh = group[0], group[1]
            b_ih, b_hh = (group[2], group[3]) if bias else (None, None)
            gamma_ih = norms[k][0]
            b, prm = reference.layer_norm_arguments(mode, b_ih, b_hh, *norms[k][1:])
            zk = zoneout[k] if isinstance(zoneout, torch.Tensor) else zoneout
            h0_k = h0[k] if h0 is not None else None
            c0_k = c0[k] if c0 is not None else None
            if plan is None:
                out, hn, cn, cache = reference.layer_forward(
                    mode, layer_input, w_ih, w_hh, b, None, h0_k, c0_k, lengths=lengths, reverse=d == 1,
                    input_gamma=gamma_ih, params=prm, zoneout=zk,
                )  # fmt: skip
                results.append((out, hn, cn, cache.c_states))
            else:
                GH = G * w_hh.shape[1]
                gx = F.layer_norm(F.linear(layer_input, w_ih), (GH,), gamma_ih, None, cells.LN_EPS)
                if b is not None:
                    gx = gx + b
                results.append(ops.recurrence(
                    mode, gx, w_hh, h0_k, c0_k, lengths, reverse=d == 1, plan=plan[k], return_states=True,
                    params=prm, zoneout=zk,
                ))  # fmt: skip
        return results

    return stack_layers(
        num_layers, input, run_layer, dropout=dropout, training=training, has_cell_state=cell.has_cell_state,
        return_states=return_states,
    )  # fmt: skip


class _LayerNormBase(RecurrentBase):
    """Shared construction and forward of the layer-normalised modules (``_cell`` is the
    registered cell; :class:`fastrnn.modules.RecurrentBase` builds ``torch.nn``'s weights and
    biases from its spec).  They compute in the parameters' dtype, under autocast too."""

    _cell: str
    _beyond_torch_nn = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, zoneout: float = 0.0, recurrent_dropout: float = 0.0, backend: str = "auto",
                 allow_tf32: bool | None = None, fp32_precision: str | None = None) -> None:  # fmt: skip
        for name, p in (("zoneout", zoneout), ("recurrent_dropout", recurrent_dropout)):
            if not (isinstance(p, (int, float)) and 0 <= p <= 1) or isinstance(p, bool):
                raise ValueError(f"{type(self).__name__}: {name} must be a number in [0, 1], got {p!r}")
        super().__init__(
            self._cell, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device=device, dtype=dtype, backend=backend, allow_tf32=allow_tf32, fp32_precision=fp32_precision,
        )  # fmt: skip
        self.zoneout = float(zoneout)
        self.recurrent_dropout = float(recurrent_dropout)
        cell = cells.get(self._cell)
        GH = cell.G * hidden_size
        factory = dict(device=device, dtype=dtype)
        self._norm_names: list[list[str]] = []
        for layer in range(num_layers):
            for suffix in ("", "_reverse")[: 2 if bidirectional else 1]:
                shapes = {"gamma_ih": GH, "gamma_hh": GH}
                if cell.has_cell_state:
                    shapes.update(gamma_c=hidden_size, beta_c=hidden_size)
                names = []
                for base, size in shapes.items():
                    name = f"{base}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(size, **factory)))
                    names.append(name)
                self._norm_names.append(names)
        self._reset_norms()

    def _reset_norms(self) -> None:
        with torch.no_grad():
            for names in self._norm_names:
                for name in names:
                    getattr(self, name).fill_(0.0 if name.startswith("beta") else 1.0)

    def reset_parameters(self) -> None:
        """``torch.nn``'s init of the weights and biases; layer-norm gains 1, shifts 0."""
        super().reset_parameters()
        if hasattr(self, "_norm_names"):
            self._reset_norms()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.zoneout:
            s += f", zoneout={self.zoneout}"
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        return s

    def norms(self) -> list[tuple[torch.Tensor, ...]]:
        """Per layer and direction ``(gamma_ih, gamma_hh[, gamma_c, beta_c])``."""
        return [tuple(getattr(self, n) for n in names) for names in self._norm_names]

    def _masks(self, lay, dtype: torch.dtype):
        """``(weights, zoneout)`` of one call: the flat weights with ``W_hh``'s DropConnect mask
        applied (training), and the zoneout keep masks (training) or keep probability (eval).
        Drawn here, with torch's generator, in a fixed order (every ``W_hh`` mask, then the
        zoneout masks), whatever backend runs next."""
        weights = list(self.flat_weights())
        if self.training and self.recurrent_dropout > 0:
            per = 4 if self.bias else 2
            for k in range(len(weights) // per):
                weights[k * per + 1] = F.dropout(weights[k * per + 1], p=self.recurrent_dropout, training=True)
        zoneout = None
        if self.zoneout > 0:
            if self.training:
                D = 2 if self.bidirectional else 1
                shape = (self.num_layers * D, lay.T, lay.B, self.hidden_size)
                zoneout = torch.empty(shape, dtype=dtype, device=lay.device).bernoulli_(1.0 - self.zoneout)
            else:
                zoneout = 1.0 - self.zoneout
        return weights, zoneout

    def backend_decision(self, input, hx=None, *, return_states: bool = False) -> Decision:
        """The :class:`~fastrnn.dispatch.Decision` of ``self(input, hx)`` (what :func:`fastrnn.explain`
        prints): the kernels wherever they run, else the plain-PyTorch step loop."""
        return dispatch.decide(self, input, beyond_torch_nn=True, autocast=False)

    def _forward(self, input, hx, return_states: bool):
        decision = self.backend_decision(input, hx).check(self)
        lay = layout(self, input)
        h0, c0 = check_states(self, lay, hx)
        dtype = self.flat_weights()[0].dtype
        with torch.autocast(lay.device.type, enabled=False):  # computed in the parameters' dtype
            weights, zoneout = self._masks(lay, dtype)
            res = layer_norm_stack(
                self.mode, lay.x, weights, self.norms(), h0, c0, num_layers=self.num_layers, bias=self.bias,
                bidirectional=self.bidirectional, dropout=self.dropout, training=self.training,
                lengths=lay.lengths, zoneout=zoneout, plan=decision.plan, return_states=return_states,
            )  # fmt: skip
        return package_outputs(self, lay, *res)


class LayerNormLSTM(_LayerNormBase):
    """Layer-normalised LSTM with zoneout and recurrent DropConnect (haste's ``LayerNormLSTM``
    maths; see the module doc), on fastrnn's tier-1 kernels.

    Constructor as :class:`torch.nn.LSTM` (no ``proj_size``) plus keyword-only ``zoneout``,
    ``recurrent_dropout`` (both in [0, 1], default 0), ``backend`` and ``allow_tf32``.  Shapes,
    ``PackedSequence``/unbatched/``batch_first`` input and outputs as ``torch.nn.LSTM``;
    ``forward(input, hx=None, *, return_states=False)`` (``return_states``: also every step's
    ``c_t``, as :meth:`fastrnn.LSTM.forward`).  Parameters: ``torch.nn.LSTM``'s plus
    ``gamma_ih_l{k}``, ``gamma_hh_l{k}`` (4H), ``gamma_c_l{k}``, ``beta_c_l{k}`` (H).

    Example::

        lstm = fastrnn.LayerNormLSTM(80, 256, zoneout=0.1)
        out, (h_n, c_n) = lstm(torch.randn(50, 8, 80))
    """

    _cell = "LN_LSTM"
    check_forward_args = nn.LSTM.check_forward_args
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    permute_hidden = nn.LSTM.permute_hidden

    def forward(self, input, hx=None, *, return_states: bool = False):
        """``(output, (h_n, c_n))``, and with ``return_states`` ``c_states`` (see the class doc)."""
        return self._forward(input, hx, return_states)


class LayerNormGRU(_LayerNormBase):
    """Layer-normalised GRU with zoneout and recurrent DropConnect (haste's ``LayerNormGRU``
    maths, ``torch.nn.GRU``'s gate order r, z, n with ``b_hn`` inside ``r * (...)``).

    Constructor, shapes and outputs as :class:`torch.nn.GRU` plus keyword-only ``zoneout``,
    ``recurrent_dropout``, ``backend`` and ``allow_tf32``.  Parameters: ``torch.nn.GRU``'s plus
    ``gamma_ih_l{k}`` and ``gamma_hh_l{k}`` (3H).

    Example::

        gru = fastrnn.LayerNormGRU(80, 256, zoneout=0.1, recurrent_dropout=0.1)
        out, h_n = gru(torch.randn(50, 8, 80))
    """

    _cell = "LN_GRU"

    def forward(self, input, hx=None):
        """``(output, h_n)`` as :meth:`torch.nn.GRU.forward`."""
        return self._forward(input, hx, False)
