"""``fastrnn.RNN``, ``fastrnn.LSTM``, ``fastrnn.GRU``: drop-ins for their ``torch.nn`` twins.

They derive from ``nn.RNNBase`` (PyTorch's parameter names, init, ``_flat_weights`` bookkeeping)
and not from ``nn.RNN``/``nn.LSTM``/``nn.GRU``: Dynamo refuses to trace instances of those three
classes.  Consequence: ``isinstance(fastrnn.LSTM(...), nn.LSTM)`` is ``False``.

Each forward decides once (:func:`fastrnn.dispatch.decide`, a :class:`~fastrnn.dispatch.Decision`):
``"triton"`` runs the recurrence kernels as the decision's plan says, ``"torch"`` runs the very
code of the ``torch.nn`` twin (aten/cuDNN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import dispatch
from .auto import Runners
from .dispatch import Decision
from .functional import recurrent_stack
from .kernels import cells
from .kernels.cells import rnn_mode  # noqa: F401  (its home before it moved to the cells)


@dataclass
class Layout:
    """A call's input as the kernels take it: time-major and padded.

    ``x`` is ``(T, B, I)`` (``None`` for token ids: the caller brings the first layer's input
    projection); ``lengths`` ``(B,)`` on the input's device for variable lengths (packed input,
    or lengths given with a padded batch), ``lengths_cpu`` the same on the CPU for re-packing a
    packed output; ``packed`` the input ``PackedSequence``'s bookkeeping (else ``None``);
    ``batched`` false for unbatched input.
    """

    x: torch.Tensor | None
    T: int
    B: int
    lengths: torch.Tensor | None
    lengths_cpu: torch.Tensor | None
    packed: PackedSequence | None
    batched: bool
    dtype: torch.dtype
    device: torch.device


def layout(module: nn.RNNBase, input, lengths: torch.Tensor | None = None, *, ids: bool = False) -> Layout:
    """Check ``input`` as the ``torch.nn`` twin does and lay it out for the kernels.

    ``input`` is ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), ``(T, I)`` unbatched, or a
    ``PackedSequence``; with ``ids`` it holds token ids, one dimension less (``(T, B)``, ``(T,)``,
    a ``PackedSequence`` of ids) and ``x`` is ``None``.  ``lengths`` (B,) may come with a padded
    batch (any order; the output is zero past each length).
    """
    name = type(module).__name__
    features = 0 if ids else 1
    if isinstance(input, PackedSequence):
        data, batch_sizes = input.data, input.batch_sizes
        if not ids:
            module.check_input(data, batch_sizes)
        T, B = len(batch_sizes), int(batch_sizes[0])
        lengths_cpu = (batch_sizes[None, :] > torch.arange(B)[:, None]).sum(1)
        x = None if ids else pad_packed_sequence(PackedSequence(data, batch_sizes))[0]
        lengths_dev = lengths_cpu.to(device=data.device)
        dtype = module._flat_weights[0].dtype if ids else data.dtype
        return Layout(x, T, B, lengths_dev, lengths_cpu, input, True, dtype, data.device)
    if input.dim() not in (1 + features, 2 + features):
        stateful = cells.get(module.mode).has_cell_state  # torch.nn's LSTM words this message differently
        raise ValueError(
            f"{name}: Expected input to be {1 + features}D or {2 + features}D, got {input.dim()}D "
            + ("instead" if stateful else "tensor instead")
        )
    batched = input.dim() == 2 + features
    batch_dim = 0 if module.batch_first else 1
    if not batched:
        input = input.unsqueeze(batch_dim)
    if not ids:
        module.check_input(input, None)
    tm = input.transpose(0, 1) if module.batch_first else input
    T, B = tm.shape[0], tm.shape[1]
    if T == 0:
        stateful = cells.get(module.mode).has_cell_state
        raise RuntimeError(f"Expected sequence length to be larger than 0 in {'LSTM' if stateful else 'RNN'}")
    dtype = module._flat_weights[0].dtype if ids else input.dtype  # ids: the embedded input's dtype
    return Layout(None if ids else tm, T, B, lengths, None, None, batched, dtype, input.device)


def check_states(module: nn.RNNBase, lay: Layout, hx, cast: torch.dtype | None = None):
    """The twin's checks of ``hx`` for a call laid out as ``lay`` (``cast``: the autocast compute
    dtype, which lets the states' dtype differ); returns ``(h0, c0)`` (``c0`` for cells with a cell
    state), batched and in the order of the packed batch."""
    if hx is None:
        return None, None
    cell = cells.get(module.mode)
    want_rank = 3 if lay.batched else 2
    # As torch.nn: a cell with a cell state indexes hx as a pair (a plain tensor then fails the
    # way it fails there), the others take it as one tensor.
    states = (hx[0], hx[1]) if cell.has_cell_state else (hx,)
    if lay.packed is None and any(t.dim() != want_rank for t in states):
        kind = "batched 3-D" if lay.batched else "unbatched 2-D"
        ranks = ", ".join(f"{t.dim()}-D" for t in states)
        raise RuntimeError(f"For {kind} input, hx should also be {want_rank}-D but got ({ranks}) tensor(s)")
    if not lay.batched:
        states = tuple(t.unsqueeze(1) for t in states)
    D = 2 if module.bidirectional else 1
    P = module.proj_size or module.hidden_size
    expected = [(module.num_layers * D, lay.B, P), (module.num_layers * D, lay.B, module.hidden_size)]
    for i, (t, shape) in enumerate(zip(states, expected)):
        msg = f"Expected hidden[{i}] size {{}}, got {{}}" if cell.has_cell_state else "Expected hidden size {}, got {}"
        module.check_hidden_size(t, shape, msg)
    for t in states:
        if t.device != lay.device or (t.dtype != lay.dtype and cast is None):
            raise RuntimeError(
                f"{type(module).__name__}: initial states must match the input's dtype and device ({lay.dtype} on "
                f"{lay.device}), got {t.dtype} on {t.device}"
            )
    if lay.packed is not None and lay.packed.sorted_indices is not None:
        states = tuple(t.index_select(1, lay.packed.sorted_indices) for t in states)
    return states[0], (states[1] if cell.has_cell_state else None)


def stack_inputs(module: nn.RNNBase, lay: Layout, hx, decision: Decision):
    """``(weights, x, h0, c0)`` of a call laid out as ``lay``: the checked initial states and,
    under autocast, everything in the dtype the ``torch.nn`` twin computes in (``decision.cast``)."""
    cast = decision.cast
    h0, c0 = check_states(module, lay, hx, cast)
    weights = module.flat_weights()
    x = lay.x
    if cast is not None:  # autocast: compute in its dtype as the torch.nn twin does
        to = lambda t: None if t is None else t.to(cast)
        weights, x, h0, c0 = [to(w) for w in weights], to(x), to(h0), to(c0)
    return weights, x, h0, c0


def package_outputs(module: nn.RNNBase, lay: Layout, out, h_n, c_n, c_states=None):
    """What the ``torch.nn`` twin returns, from the stack's time-major padded results: the output
    (and ``c_states``, laid out like it: a ``PackedSequence`` for packed input, batch-first,
    unbatched) and the final states in the caller's batch order."""
    cell = cells.get(module.mode)
    hidden = (h_n, c_n) if cell.has_cell_state else (h_n,)
    seqs = [out] + ([c_states] if c_states is not None else [])
    if lay.packed is not None:
        p = lay.packed
        seqs = [
            PackedSequence(pack_padded_sequence(t, lay.lengths_cpu, enforce_sorted=True).data, p.batch_sizes,
                           p.sorted_indices, p.unsorted_indices)
            for t in seqs
        ]  # fmt: skip
        if p.unsorted_indices is not None:
            hidden = tuple(t.index_select(1, p.unsorted_indices) for t in hidden)
    else:
        seqs = [t.transpose(0, 1) if module.batch_first else t for t in seqs]
        if not lay.batched:
            seqs = [t.squeeze(0 if module.batch_first else 1) for t in seqs]
            hidden = tuple(t.squeeze(1) for t in hidden)
    result = (seqs[0], (hidden if cell.has_cell_state else hidden[0]))
    return result + (seqs[1],) if c_states is not None else result


def run_kernels(
    module: nn.RNNBase,
    lay: Layout,
    hx,
    decision: Decision,
    input_projection=None,
    *,
    return_states: bool = False,
):
    """The kernels' forward of ``module`` on a call laid out by :func:`layout`, as ``decision``
    plans it: the first layer's input projection computed from ``lay.x``, or given by
    ``input_projection(dtype)`` -> ``(T, B, D*G*H)`` (the fused embedding).  Returns what the
    ``torch.nn`` twin returns, and with ``return_states`` every step's cell state as a third item
    (laid out like the output)."""
    weights, x, h0, c0 = stack_inputs(module, lay, hx, decision)
    with torch.autocast(lay.device.type, enabled=False):  # the stack runs in exactly this dtype
        res = recurrent_stack(
            module.mode, x, weights, h0, c0, num_layers=module.num_layers, bias=module.bias,
            bidirectional=module.bidirectional, proj_size=module.proj_size, dropout=module.dropout,
            training=module.training, lengths=lay.lengths, plan=decision.plan,
            input_projection=input_projection(decision.dtype) if input_projection is not None else None,
            return_states=return_states,
        )  # fmt: skip
    return package_outputs(module, lay, *res)


def run_loop(module: nn.RNNBase, lay: Layout, hx, decision: Decision, *, return_states: bool = False):
    """The ``torch`` backend of calls the ``torch.nn`` twin cannot serve (``return_states``): the
    plain-PyTorch step loop of :func:`fastrnn.reference.stack_forward` (autograd-differentiable,
    any device), with the same inputs, dropout and outputs as :func:`run_kernels`."""
    from . import reference

    weights, x, h0, c0 = stack_inputs(module, lay, hx, decision)
    with torch.autocast(lay.device.type, enabled=False):
        res = reference.stack_forward(
            module.mode, x, weights, h0, c0, num_layers=module.num_layers, bias=module.bias,
            bidirectional=module.bidirectional, proj_size=module.proj_size, lengths=lay.lengths,
            dropout=module.dropout, training=module.training, return_states=return_states,
        )  # fmt: skip
    return package_outputs(module, lay, *res)


class RecurrentBase(nn.RNNBase):
    """Shared construction and forward of the modules; subclasses set ``_twin`` (the ``torch.nn``
    class) where the cell has one.

    The parameters come from the cell's spec: a cell with a ``torch.nn`` twin is built by
    ``nn.RNNBase`` itself (its mode table knows exactly those cells), so names, shapes, init and
    state dict are ``torch.nn``'s; any other registered cell gets the same layout with
    ``gate_size = G * hidden_size`` (:meth:`_build_from_spec`).

    Keyword-only options beyond ``torch.nn``'s: ``backend`` (``"auto"``, ``"triton"``,
    ``"torch"``), ``allow_tf32`` (``None``: follow ``torch.backends.cudnn.allow_tf32`` as
    ``torch.nn`` does) and ``fp32_precision`` (``None``: from ``allow_tf32``; ``"ieee"``,
    ``"tf32x3"``, ``"tf32"``: docs/numerics.md).
    """

    _twin: type[nn.RNNBase] | None = None

    def __init__(
        self, mode: str, *args, backend: str = "auto", allow_tf32: bool | None = None,
        fp32_precision: str | None = None, **kwargs,
    ) -> None:  # fmt: skip
        dispatch.check_backend_name(backend)
        _check_precision(allow_tf32, fp32_precision)
        cell = cells.get(mode)
        if cell.twin is not None:
            super().__init__(mode, *args, **kwargs)
        else:
            self._build_from_spec(cell, *args, **kwargs)
        self.backend = backend
        self.allow_tf32 = allow_tf32
        self.fp32_precision = fp32_precision

    def _build_from_spec(
        self, cell: cells.Cell, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
        batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
        device=None, dtype=None,
    ) -> None:  # fmt: skip
        """``nn.RNNBase``'s construction for a cell its mode table does not know: its argument
        checks, attributes and parameter names (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
        ``bias_hh_l0``, ..., ``_reverse``), taken from a one-gate construction on the meta device
        (no memory, no random draws); then the parameters at ``G * hidden_size`` rows and
        ``nn.RNNBase``'s init (uniform in ``+-1/sqrt(hidden_size)``, in registration order)."""
        if proj_size and not cell.projection:
            raise ValueError(f"proj_size applies to cells with a projection, not {cell.mode!r}")
        nn.RNNBase.__init__(
            self, "RNN_TANH", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, device="meta", dtype=dtype,
        )  # fmt: skip
        self.mode = cell.mode
        gate_size = cell.G * hidden_size
        for name in self._flat_weights_names:
            shape = getattr(self, name).shape
            if not name.startswith("weight_hr"):  # the projection keeps its (proj_size, hidden_size)
                shape = (gate_size, *shape[1:])
            setattr(self, name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self._init_flat_weights()
        self.reset_parameters()

    def flatten_parameters(self) -> None:
        """``nn.RNNBase``'s (cuDNN's weight buffer) for cells with a ``torch.nn`` twin; nothing for
        the others, which cuDNN never runs."""
        if cells.get(self.mode).twin is not None:
            super().flatten_parameters()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.fp32_precision is not None:
            s += f", fp32_precision={self.fp32_precision!r}"
        return s

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("fp32_precision", None)  # modules pickled before the option existed

    # -- the forward ----------------------------------------------------------------------------

    #: Whether every call does what the ``torch.nn`` twin cannot (a cell without one): ``auto``
    #: takes the kernels wherever they run, and ``torch`` is fastrnn's step loop.
    _beyond_torch_nn = False

    def backend_decision(self, input, hx=None, *, return_states: bool = False) -> Decision:
        """The :class:`~fastrnn.dispatch.Decision` of ``self(input, hx)`` (what
        :func:`fastrnn.explain` prints); ``backend="error"`` where ``backend='triton'`` cannot run
        the call."""
        beyond = self._beyond_torch_nn or return_states
        return dispatch.decide(self, input, beyond_torch_nn=beyond, runners=lambda d: self._runners(input, hx, d))

    def _runners(self, input, hx, decision: Decision) -> Runners:
        """This call with each backend, for ``auto``'s first-use measurement (fastrnn.auto)."""
        return Runners(lambda: self._twin.forward(self, input, hx), lambda: self._run(input, hx, decision),
                       list(self.parameters()))  # fmt: skip

    def forward(self, input, hx=None):
        if dispatch.auto_on_cpu(self, input.data if isinstance(input, PackedSequence) else input):
            return self._twin.forward(self, input, hx)  # auto on the CPU: torch.nn's code, nothing to decide
        decision = self.backend_decision(input, hx).check(self)
        if decision.backend == "torch":
            return self._twin.forward(self, input, hx)
        return self._run(input, hx, decision)

    def _run(self, input, hx, decision: Decision, *, return_states: bool = False):
        """The call on ``decision``'s backend other than the ``torch.nn`` twin: the kernels, or
        the plain-PyTorch step loop (:func:`run_loop`)."""
        lay = layout(self, input)
        if decision.backend == "torch":
            return run_loop(self, lay, hx, decision, return_states=return_states)
        return run_kernels(self, lay, hx, decision, return_states=return_states)

    def flat_weights(self) -> list[torch.Tensor]:
        """The parameters in ``torch.nn``'s flat order (``w_ih, w_hh[, b_ih, b_hh][, w_hr]`` per
        layer and direction), as the kernels take them (:func:`fastrnn.functional.recurrent_stack`),
        brought up to date first as ``torch.nn``'s forward does (parameters replaced since)."""
        self._update_flat_weights()
        return self._flat_weights


def _check_precision(allow_tf32: bool | None, fp32_precision: str | None) -> None:
    from .functional import resolve_precision

    if fp32_precision is not None:
        resolve_precision(bool(allow_tf32), fp32_precision)  # raises for an unknown or contradicting value


class RNN(RecurrentBase):
    """Drop-in for :class:`torch.nn.RNN` (Elman RNN, tanh or relu) on Triton kernels.

    Same constructor, parameters, state dict and forward as ``torch.nn.RNN``, plus keyword-only
    ``backend`` (``"auto"``: triton on CUDA where faster, torch elsewhere; ``"triton"``;
    ``"torch"``), ``allow_tf32`` (fp32 matmuls in TF32 on the GPU; ``None``, the default, follows
    ``torch.backends.cudnn.allow_tf32`` as torch.nn's cuDNN RNNs do) and ``fp32_precision``
    (``"ieee"``, ``"tf32x3"``, ``"tf32"``; ``None``: from ``allow_tf32``, docs/numerics.md).

    Shapes: input ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), ``(T, I)`` unbatched, or a
    ``PackedSequence``; ``h_0`` ``(L*D, B, H)``.  Returns ``(output (T, B, D*H), h_n (L*D, B, H))``.

    Example::

        rnn = fastrnn.RNN(10, 20, num_layers=2)
        out, h_n = rnn(torch.randn(5, 3, 10))
    """

    _twin = nn.RNN

    def __init__(self, *args, **kwargs) -> None:
        # torch.nn.RNN's own handling of nonlinearity (4th positional argument or keyword)
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        mode = rnn_mode(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(mode, *args, **kwargs)


class LSTM(RecurrentBase):
    """Drop-in for :class:`torch.nn.LSTM` (gate order i, f, g, o; optional ``proj_size``).

    Constructor as ``torch.nn.LSTM`` plus the keyword-only options of :class:`RNN`.  Shapes:
    input as :class:`RNN`; ``hx = (h_0 (L*D, B, P), c_0 (L*D, B, H))`` with
    ``P = proj_size or hidden_size``.  Returns ``(output (T, B, D*P), (h_n, c_n))``.

    Example::

        lstm = fastrnn.LSTM(10, 20, batch_first=True)
        out, (h_n, c_n) = lstm(torch.randn(3, 5, 10))
    """

    _twin = nn.LSTM
    # The twin's own argument checks and state permutation (they know about c and proj_size).
    check_forward_args = nn.LSTM.check_forward_args
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    permute_hidden = nn.LSTM.permute_hidden

    def __init__(self, *args, **kwargs) -> None:
        super().__init__("LSTM", *args, **kwargs)

    def forward(self, input, hx=None, *, return_states: bool = False):
        """As :meth:`torch.nn.LSTM.forward`; with ``return_states=True`` also the cell state
        ``c_t`` of every step, layer and direction: ``(output, (h_n, c_n), c_states)``.

        ``c_states`` is laid out like ``output`` -- ``(T, B, L*D*H)`` (``(B, T, L*D*H)`` with
        ``batch_first``, ``(T, L*D*H)`` unbatched, a ``PackedSequence`` for packed input) -- with
        layer ``l``, direction ``d`` at ``[..., (l*D + d)*H : (l*D + d + 1)*H]`` (the order of
        ``c_n``'s first dimension), 0 past each sequence's length.  It is differentiable.  The
        kernels write it in the same launch (``triton``; ``auto`` takes the kernels wherever they
        run); the ``torch`` backend runs a plain-PyTorch step loop (``torch.nn`` has no such output).

        Example::

            lstm = fastrnn.LSTM(10, 20, num_layers=2)
            out, (h_n, c_n), c_states = lstm(torch.randn(5, 3, 10), return_states=True)
            c_states.shape  # (5, 3, 40): layer 0 in [..., :20], layer 1 in [..., 20:]
        """
        if not return_states:
            return super().forward(input, hx)
        decision = self.backend_decision(input, hx, return_states=True).check(self)
        return self._run(input, hx, decision, return_states=True)


class GRU(RecurrentBase):
    """Drop-in for :class:`torch.nn.GRU` (gate order r, z, n; reset gate after the matmul).

    Constructor as ``torch.nn.GRU`` plus the keyword-only options of :class:`RNN`; shapes as
    :class:`RNN`.

    Example::

        gru = fastrnn.GRU(10, 20, bidirectional=True)
        out, h_n = gru(torch.randn(5, 3, 10))   # out: (5, 3, 40), h_n: (2, 3, 20)
    """

    _twin = nn.GRU

    def __init__(self, *args, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


class Recurrent(RecurrentBase):
    """A recurrent layer of any registered cell, named by its mode (``fastrnn.kernels.cells``):
    what a cell without a ``torch.nn`` twin gets by registration alone.

    Constructor as :class:`torch.nn.GRU` with the mode first (``proj_size`` for cells with a
    projection) plus the keyword-only options of :class:`RNN`; parameters as ``torch.nn``'s with
    ``G * hidden_size`` rows (``G`` the cell's gate count); shapes, ``PackedSequence``/unbatched/
    ``batch_first`` input and outputs as ``torch.nn.GRU`` (``torch.nn.LSTM`` for a cell with a cell
    state).  Backends: ``triton`` runs the kernels; ``torch`` (and ``auto`` on the CPU) the cell's
    plain-PyTorch reference step loop (:func:`fastrnn.reference.stack_forward`); ``auto`` takes the
    kernels wherever they run.

    Example::

        layer = Recurrent("LSTM", 8, 16)   # the same maths as fastrnn.LSTM(8, 16)
        out, (h_n, c_n) = layer(torch.randn(5, 3, 8))
    """

    _beyond_torch_nn = True

    def __init__(self, mode: str, *args, **kwargs) -> None:
        if cells.get(mode).extended:
            raise ValueError(
                f"cell {mode!r} takes per-unit parameters: use its own module (e.g. fastrnn.LayerNormLSTM)"
            )
        if not kwargs.get("proj_size", 0):  # torch.nn's RNN/GRU constructors take none
            kwargs.pop("proj_size", None)
        super().__init__(mode, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.mode!r}, " + super().extra_repr()

    def forward(self, input, hx=None, *, return_states: bool = False):
        """``(output, h_n)`` (``(output, (h_n, c_n))`` for a cell with a cell state), and with
        ``return_states`` every step's cell state (see :meth:`fastrnn.LSTM.forward`)."""
        decision = self.backend_decision(input, hx, return_states=return_states).check(self)
        return self._run(input, hx, decision, return_states=return_states)


def run_torch(module: nn.RNNBase, input, hx=None):
    """``module(input, hx)`` on the torch backend, chosen by the caller (``EmbeddingRNN``): the
    ``torch.nn`` twin's forward, without a second backend decision.  A module whose call does more
    than its plain forward -- hooks (its own or global ones), ``torch.jit.trace``, a forward of its
    own (a subclass, a cell without a ``torch.nn`` twin) -- is called as a module and decides for
    itself, as any module call does."""
    forward = type(module).forward
    plain = forward is RecurrentBase.forward or forward is LSTM.forward
    if plain and module._twin is not None and not _call_does_more(module):
        return module._twin.forward(module, input, hx)
    return module(input, hx)


def _call_does_more(module: nn.Module) -> bool:
    """Whether ``module(...)`` would do more than ``module.forward(...)``: the condition of
    ``nn.Module.__call__``'s own shortcut (hooks) and ``torch.jit.trace`` (which records scopes)."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or _module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
        or _module_hooks._global_backward_hooks or _module_hooks._global_backward_pre_hooks
        or torch._C._get_tracing_state()
    )  # fmt: skip


#: Cell family -> its fastrnn module (the one place that names them).
FAMILIES: dict[str, type[RecurrentBase]] = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}

#: torch.nn class -> fastrnn twin (exact classes: subclasses may override forward).
FAST_TWINS: dict[type, type[RecurrentBase]] = {cells.families()[f]: cls for f, cls in FAMILIES.items()}


def resolve(mode: str, nonlinearity: str | None = None) -> cells.Cell:
    """The cell a user names: a registered mode (``"LSTM"``, ``"RNN_RELU"``) or a family
    (``"RNN"``, with ``nonlinearity``; ``"GRU"``)."""
    if mode in cells.CELLS:
        cell = cells.get(mode)
        if nonlinearity is not None and cell.twin_kwargs.get("nonlinearity") != nonlinearity:
            raise ValueError(f"nonlinearity={nonlinearity!r} does not apply to mode={mode!r}")
        return cell
    return cells.get(cells.family_mode(mode, nonlinearity))


def build(
    mode: str, input_size: int, hidden_size: int, num_layers: int = 1, *, nonlinearity: str | None = None,
    proj_size: int = 0, torch_nn: bool = False, **kwargs,
) -> nn.RNNBase:  # fmt: skip
    """A recurrent module for ``mode`` (a mode or a family, see :func:`resolve`): the fastrnn module
    (:class:`Recurrent` for a cell without a class of its own), or with ``torch_nn`` its
    ``torch.nn`` twin.  ``kwargs`` go to the constructor (``bias``,
    ``batch_first``, ``backend``, ...).

    Example::

        build("RNN", 8, 16, nonlinearity="relu", batch_first=True)   # fastrnn.RNN(..., nonlinearity="relu")
    """
    cell = resolve(mode, nonlinearity)
    if nonlinearity is not None and "nonlinearity" not in cell.twin_kwargs:
        raise ValueError(f"nonlinearity applies to the RNN family only, not {mode!r}")
    if proj_size and not cell.projection:
        raise ValueError(f"proj_size applies to LSTM only, not {mode!r}")
    extra = dict(cell.twin_kwargs)
    if cell.projection:
        extra["proj_size"] = proj_size
    if torch_nn and cell.twin is None:
        raise ValueError(f"cell {cell.mode!r} has no torch.nn twin")
    if torch_nn:
        return cell.twin(input_size, hidden_size, num_layers, **extra, **kwargs)
    if cell.family not in FAMILIES:  # a cell without a fastrnn class of its own
        return Recurrent(cell.mode, input_size, hidden_size, num_layers, **extra, **kwargs)
    return FAMILIES[cell.family](input_size, hidden_size, num_layers, **extra, **kwargs)


def rebuild_sharing_parameters(module: nn.RNNBase, cls: type, **extra) -> nn.RNNBase:
    """An instance of ``cls`` (a torch.nn or fastrnn recurrent class) configured like ``module``,
    holding the very same ``nn.Parameter`` objects, on its device, in its training mode.
    ``extra`` goes to ``cls``'s constructor (e.g. ``backend=``)."""
    kw = dict(
        num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
        dropout=module.dropout, bidirectional=module.bidirectional, device="meta", **extra,
    )  # fmt: skip
    cell = cells.get(module.mode)
    generic = issubclass(cls, Recurrent)  # named by its mode, not by torch.nn's arguments
    if not generic:
        kw.update(cell.twin_kwargs)  # RNN: its nonlinearity
    if cell.projection:
        kw["proj_size"] = module.proj_size
    args = (module.mode,) if generic else ()
    twin = cls(*args, module.input_size, module.hidden_size, **kw)  # meta: no memory, no init work
    for name in module._flat_weights_names:
        setattr(twin, name, getattr(module, name))
    twin._init_flat_weights()
    twin.train(module.training)
    return twin


def fast_twin(module: nn.RNNBase, *, backend: str = "auto") -> RecurrentBase:
    """A fastrnn module configured like ``module`` that shares its very parameter tensors.

    ``module`` is an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (or a fastrnn module); the result keeps its
    device, dtype, training mode and parameters (the same ``nn.Parameter`` objects, so optimiser
    state and ``state_dict`` keys carry over).

    Example::

        fast = fast_twin(torch.nn.LSTM(8, 16))
    """
    cls = FAST_TWINS.get(type(module)) or (type(module) if isinstance(module, RecurrentBase) else None)
    if cls is None:
        raise TypeError(f"fast_twin: expected nn.RNN, nn.LSTM or nn.GRU, got {type(module).__name__}")
    return rebuild_sharing_parameters(module, cls, backend=backend, allow_tf32=getattr(module, "allow_tf32", None))
