"""Load weights trained with haste (``haste_pytorch``: ``LayerNormLSTM``, ``LayerNormGRU``,
``LSTM``, ``GRU``) into fastrnn modules.

haste stores a layer's weights as right-multiplied matrices with its own gate order; fastrnn
(like ``torch.nn``) stores ``W`` with ``x W^T`` and another order.  The mapping, per haste's
documented layout (``H`` hidden size, ``I`` input size; ``P_*`` the row permutation of gate
blocks from haste's order to fastrnn's)::

    haste                                  fastrnn
    LSTM gate order i, g, f, o             i, f, g, o          (P_lstm: blocks 0, 2, 1, 3)
    GRU  gate order z, r, h                r, z, n             (P_gru:  blocks 1, 0, 2)

    kernel            (I, G*H)             weight_ih_l0   = P(kernel^T)            (G*H, I)
    recurrent_kernel  (H, G*H)             weight_hh_l0   = P(recurrent_kernel^T)  (G*H, H)
    bias              (G*H,)               bias_ih_l0     = P(bias)
    recurrent_bias    (G*H,)  (GRUs)       bias_hh_l0     = P(recurrent_bias)      (LSTMs: zeros)
    gamma             (2, G*H) (LN)        gamma_ih_l0    = P(gamma[0]), gamma_hh_l0 = P(gamma[1])
    gamma_h, beta_h   (H,) (LayerNormLSTM) gamma_c_l0, beta_c_l0

haste's layers are single-layer and unidirectional.  Their ``dropout`` (DropConnect on the
recurrent weight) is fastrnn's ``recurrent_dropout``; ``zoneout`` has the same meaning, except
that haste's LSTMs zone out ``h`` only while fastrnn's ``LayerNormLSTM`` zones out ``h`` and ``c``
with the same mask (so with ``zoneout > 0`` an LSTM's outputs differ from haste's; without,
they agree).  haste's ``forget_bias`` is an initialiser, already in the trained ``bias``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

#: haste's gate blocks in fastrnn's order, per family.
GATE_ORDER = {"LSTM": (0, 2, 1, 3), "GRU": (1, 0, 2)}

#: The haste layer of a state dict, by its keys.
_KINDS = {
    frozenset({"kernel", "recurrent_kernel", "bias", "gamma", "gamma_h", "beta_h"}): ("LayerNormLSTM", "LSTM"),
    frozenset({"kernel", "recurrent_kernel", "bias", "recurrent_bias", "gamma"}): ("LayerNormGRU", "GRU"),
    frozenset({"kernel", "recurrent_kernel", "bias"}): ("LSTM", "LSTM"),
    frozenset({"kernel", "recurrent_kernel", "bias", "recurrent_bias"}): ("GRU", "GRU"),
}


def _permute(t: torch.Tensor, family: str, H: int) -> torch.Tensor:
    """Gate blocks of ``t`` (along dim 0, ``G*H`` long) from haste's order to fastrnn's."""
    return torch.cat([t[k * H : (k + 1) * H] for k in GATE_ORDER[family]])


def convert_haste_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> tuple[str, dict]:
    """``(class name, fastrnn state dict)`` of a haste layer's ``state_dict`` (keys under
    ``prefix``, e.g. ``"encoder.rnn."``); see the module doc for the mapping.

    Example::

        name, sd = convert_haste_state_dict(haste_layer.state_dict())   # ("LayerNormLSTM", {...})
    """
    sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    kind = _KINDS.get(frozenset(sd))
    if kind is None:
        known = " / ".join(sorted(", ".join(sorted(k)) for k in _KINDS))
        raise ValueError(f"from_haste: not a haste layer's state dict (keys {sorted(sd)}); expected one of: {known}")
    name, family = kind
    G = 4 if family == "LSTM" else 3
    kernel, recurrent = sd["kernel"], sd["recurrent_kernel"]
    H = recurrent.shape[0]
    if kernel.dim() != 2 or recurrent.shape != (H, G * H) or kernel.shape[1] != G * H or sd["bias"].shape != (G * H,):
        raise ValueError(
            f"from_haste: {name} expects kernel (I, {G}H), recurrent_kernel (H, {G}H), bias ({G}H,); got "
            f"{tuple(kernel.shape)}, {tuple(recurrent.shape)}, {tuple(sd['bias'].shape)}"
        )
    out = {
        "weight_ih_l0": _permute(kernel.t(), family, H),
        "weight_hh_l0": _permute(recurrent.t(), family, H),
        "bias_ih_l0": _permute(sd["bias"], family, H),
        "bias_hh_l0": _permute(sd["recurrent_bias"], family, H)
        if "recurrent_bias" in sd
        else torch.zeros_like(sd["bias"]),
    }
    if "gamma" in sd:
        if sd["gamma"].shape != (2, G * H):
            raise ValueError(f"from_haste: {name} expects gamma (2, {G * H}), got {tuple(sd['gamma'].shape)}")
        out["gamma_ih_l0"] = _permute(sd["gamma"][0], family, H)
        out["gamma_hh_l0"] = _permute(sd["gamma"][1], family, H)
    if "gamma_h" in sd:
        out["gamma_c_l0"], out["beta_c_l0"] = sd["gamma_h"], sd["beta_h"]
    return name, {k: v.detach().clone().contiguous() for k, v in out.items()}


def from_haste(state_dict: Mapping[str, torch.Tensor], *, prefix: str = "", **kwargs) -> nn.Module:
    """A fastrnn module holding the weights of a haste layer (``LayerNormLSTM`` ->
    :class:`fastrnn.LayerNormLSTM`, ``LayerNormGRU`` -> :class:`fastrnn.LayerNormGRU`, ``LSTM``
    -> :class:`fastrnn.LSTM`, ``GRU`` -> :class:`fastrnn.GRU`), built with ``kwargs``
    (``batch_first``, ``zoneout``, ``recurrent_dropout``, ``backend``, ``device``, ...), in the
    weights' dtype.  The mapping is in the module doc.

    Example::

        lstm = fastrnn.from_haste(haste_lstm.state_dict(), zoneout=0.1)   # fastrnn.LayerNormLSTM
    """
    from . import layernorm, modules

    name, sd = convert_haste_state_dict(state_dict, prefix)
    classes = {"LayerNormLSTM": layernorm.LayerNormLSTM, "LayerNormGRU": layernorm.LayerNormGRU,
               "LSTM": modules.LSTM, "GRU": modules.GRU}  # fmt: skip
    I, H = sd["weight_ih_l0"].shape[1], sd["weight_hh_l0"].shape[1]
    kwargs.setdefault("dtype", sd["weight_ih_l0"].dtype)
    kwargs.setdefault("device", sd["weight_ih_l0"].device)
    module = classes[name](I, H, **kwargs)
    module.load_state_dict(sd, strict=True)
    return module
