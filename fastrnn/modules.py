"""``fastrnn.RNN``, ``fastrnn.LSTM``, ``fastrnn.GRU``: drop-ins for their ``torch.nn`` twins.

They derive from ``nn.RNNBase`` (PyTorch's parameter names, init, ``_flat_weights`` bookkeeping)
and not from ``nn.RNN``/``nn.LSTM``/``nn.GRU``: Dynamo refuses to trace instances of those three
classes.  Consequence: ``isinstance(fastrnn.LSTM(...), nn.LSTM)`` is ``False``.

Each forward picks a backend (see :func:`fastrnn.dispatch.select_backend`): ``"triton"`` runs the
recurrence kernels, ``"torch"`` runs the very code of the ``torch.nn`` twin (aten/cuDNN).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import dispatch
from .auto import Runners
from .functional import recurrent_stack


class _RecurrentBase(nn.RNNBase):
    """Shared forward of the three modules; subclasses set ``_twin`` (the ``torch.nn`` class)."""

    _twin: type[nn.RNNBase]

    def __init__(self, mode: str, *args, backend: str = "auto", allow_tf32: bool | None = None, **kwargs) -> None:
        dispatch.check_backend_name(backend)
        super().__init__(mode, *args, **kwargs)
        self.backend = backend
        self.allow_tf32 = allow_tf32

    def tf32(self) -> bool:
        """Whether the kernels may multiply fp32 in TF32 for this call: ``allow_tf32`` when given,
        else ``torch.backends.cudnn.allow_tf32``, the flag torch.nn's cuDNN RNNs follow."""
        return self.allow_tf32 if self.allow_tf32 is not None else dispatch.cudnn_allow_tf32()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def _runners(self, input, hx) -> Runners:
        """This call with each backend, for ``auto``'s first-use measurement (fastrnn.auto)."""
        return Runners(lambda: self._twin.forward(self, input, hx), lambda: self._triton_forward(input, hx),
                       list(self.parameters()))  # fmt: skip

    def forward(self, input, hx=None):
        backend = dispatch.select_backend(self, input, runners=self._runners(input, hx))
        if backend == "torch":
            return self._twin.forward(self, input, hx)
        return self._triton_forward(input, hx)

    # -- the triton path: the twin's argument handling, then recurrent_stack ---------------------

    def _triton_forward(self, input, hx, lengths=None, project=None):
        """The triton path.  ``lengths`` (B,) gives per-sequence lengths of a padded batch (any
        order; output zero at padding).  ``project(T, B, dtype)`` returns the first layer's input
        projection ``(T, B, D*G*H)`` (in dtype ``dtype``) instead of computing it from ``input``, which is then only
        a shape proxy and never read (the fused embedding)."""
        self._update_flat_weights()
        is_lstm = self.mode == "LSTM"
        name = "LSTM" if is_lstm else type(self).__name__
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = orig_input
            input = data
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{name}: Expected input to be 2D or 3D, got {input.dim()}D "
                    + ("instead" if is_lstm else "tensor instead")
                )
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
        hx = self._check_hx(hx, is_batched, orig_input)
        cast = dispatch.autocast_dtype(self.mode, input)
        if hx is not None:
            self.check_forward_args(input, hx, batch_sizes)
            for state in hx if is_lstm else (hx,):
                if (state.dtype != input.dtype and cast is None) or state.device != input.device:
                    raise RuntimeError(
                        f"{name}: initial states must match the input's dtype and device ({input.dtype} on "
                        f"{input.device}), got {state.dtype} on {state.device}"
                    )
            hx = self.permute_hidden(hx, sorted_indices)
        else:
            self.check_input(input, batch_sizes)
        h0, c0 = (hx if is_lstm else (hx, None)) if hx is not None else (None, None)

        if batch_sizes is not None:  # packed: sorted, padded, with lengths on the device
            if project is None:
                x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            else:
                x = None
                lengths = (batch_sizes[None, :] > torch.arange(int(batch_sizes[0]))[:, None]).sum(1)
            lengths_dev = lengths.to(device=data.device)
            T, B = len(batch_sizes), int(batch_sizes[0])
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            lengths_dev = lengths
            T, B = x.shape[:2]
            if T == 0:
                raise RuntimeError(
                    f"Expected sequence length to be larger than 0 in {'RNN' if not is_lstm else 'LSTM'}"
                )

        weights = self._flat_weights
        if cast is not None:  # autocast: compute in its dtype as the torch.nn twin does
            to = lambda t: None if t is None else t.to(cast)
            weights, x, h0, c0 = [to(w) for w in weights], to(x), to(h0), to(c0)
        dtype = weights[0].dtype
        # Inside, autocast is off: the stack runs in exactly the dtype chosen above.
        with torch.autocast(input.device.type, enabled=False):
            out, h_n, c_n = self._run_stack(
                x, weights, h0, c0, lengths_dev, project(T, B, dtype) if project is not None else None
            )
        hidden = (h_n, c_n) if is_lstm else h_n
        if batch_sizes is not None:
            packed_out = pack_padded_sequence(out, lengths, enforce_sorted=True)
            output = PackedSequence(packed_out.data, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)
        if self.batch_first:
            out = out.transpose(0, 1)
        if not is_batched:
            out = out.squeeze(batch_dim)
            hidden = (h_n.squeeze(1), c_n.squeeze(1)) if is_lstm else h_n.squeeze(1)
        return out, hidden

    def _run_stack(self, x, weights, h0, c0, lengths, input_projection):
        return recurrent_stack(
            self.mode,
            x,
            weights,
            h0,
            c0,
            num_layers=self.num_layers,
            bias=self.bias,
            bidirectional=self.bidirectional,
            proj_size=self.proj_size,
            dropout=self.dropout,
            training=self.training,
            lengths=lengths,
            allow_tf32=self.tf32(),
            input_projection=input_projection,
        )

    def _check_hx(self, hx, is_batched: bool, orig_input):
        """The twin's rank checks of ``hx``; unbatched states get their batch dimension."""
        if hx is None or isinstance(orig_input, PackedSequence):
            return hx
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if self.mode == "LSTM":
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
            return hx if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx.dim() != want:
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
        return hx if is_batched else hx.unsqueeze(1)


class RNN(_RecurrentBase):
    """Drop-in for :class:`torch.nn.RNN` (Elman RNN, tanh or relu) on Triton kernels.

    Same constructor, parameters, state dict and forward as ``torch.nn.RNN``, plus keyword-only
    ``backend`` (``"auto"``: triton on CUDA, torch elsewhere; ``"triton"``; ``"torch"``) and
    ``allow_tf32`` (fp32 matmuls in TF32 on the GPU; ``None``, the default, follows
    ``torch.backends.cudnn.allow_tf32`` as torch.nn's cuDNN RNNs do).

    Shapes: input ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``), ``(T, I)`` unbatched, or a
    ``PackedSequence``; ``h_0`` ``(L*D, B, H)``.  Returns ``(output (T, B, D*H), h_n (L*D, B, H))``.

    Example::

        rnn = fastrnn.RNN(10, 20, num_layers=2)
        out, h_n = rnn(torch.randn(5, 3, 10))
    """

    _twin = nn.RNN

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
        allow_tf32: bool | None = None,
    ) -> None:
        if nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(
            mode,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
            backend=backend,
            allow_tf32=allow_tf32,
        )


class LSTM(_RecurrentBase):
    """Drop-in for :class:`torch.nn.LSTM` (gate order i, f, g, o; optional ``proj_size``).

    Shapes: input as :class:`RNN`; ``hx = (h_0 (L*D, B, P), c_0 (L*D, B, H))`` with
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

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
        allow_tf32: bool | None = None,
    ) -> None:
        super().__init__(
            "LSTM",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device=device,
            dtype=dtype,
            backend=backend,
            allow_tf32=allow_tf32,
        )


class GRU(_RecurrentBase):
    """Drop-in for :class:`torch.nn.GRU` (gate order r, z, n; reset gate after the matmul).

    Shapes as :class:`RNN`.

    Example::

        gru = fastrnn.GRU(10, 20, bidirectional=True)
        out, h_n = gru(torch.randn(5, 3, 10))   # out: (5, 3, 40), h_n: (2, 3, 20)
    """

    _twin = nn.GRU

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
        allow_tf32: bool | None = None,
    ) -> None:
        super().__init__(
            "GRU",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
            backend=backend,
            allow_tf32=allow_tf32,
        )


#: torch.nn class -> fastrnn twin (exact classes: subclasses may override forward).
FAST_TWINS: dict[type, type[_RecurrentBase]] = {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}


def rebuild_sharing_parameters(module: nn.RNNBase, cls: type, **extra) -> nn.RNNBase:
    """An instance of ``cls`` (a torch.nn or fastrnn recurrent class) configured like ``module``,
    holding the very same ``nn.Parameter`` objects, on its device, in its training mode.
    ``extra`` goes to ``cls``'s constructor (e.g. ``backend=``)."""
    kw = dict(
        num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
        dropout=module.dropout, bidirectional=module.bidirectional, device="meta", **extra,
    )  # fmt: skip
    if cls in (nn.RNN, RNN):
        kw["nonlinearity"] = module.nonlinearity
    if cls in (nn.LSTM, LSTM):
        kw["proj_size"] = module.proj_size
    twin = cls(module.input_size, module.hidden_size, **kw)  # meta: no memory, no init work
    for name in module._flat_weights_names:
        setattr(twin, name, getattr(module, name))
    twin._init_flat_weights()
    twin.train(module.training)
    return twin


def fast_twin(module: nn.RNNBase, *, backend: str = "auto") -> _RecurrentBase:
    """A fastrnn module configured like ``module`` that shares its very parameter tensors.

    ``module`` is an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (or a fastrnn module); the result keeps its
    device, dtype, training mode and parameters (the same ``nn.Parameter`` objects, so optimiser
    state and ``state_dict`` keys carry over).

    Example::

        fast = fast_twin(torch.nn.LSTM(8, 16))
    """
    cls = FAST_TWINS.get(type(module)) or (type(module) if isinstance(module, _RecurrentBase) else None)
    if cls is None:
        raise TypeError(f"fast_twin: expected nn.RNN, nn.LSTM or nn.GRU, got {type(module).__name__}")
    return rebuild_sharing_parameters(module, cls, backend=backend, allow_tf32=getattr(module, "allow_tf32", None))
