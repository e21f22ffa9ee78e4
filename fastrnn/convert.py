"""``fastrnn.convert``: swap the ``nn.RNN``/``nn.LSTM``/``nn.GRU`` inside a model for fastrnn twins.

The twins share the very parameter tensors (the same ``nn.Parameter`` objects), so the model's
``state_dict`` keys and values, an optimiser built before the conversion and its state all carry
over.  Only exact ``nn.RNN``/``nn.LSTM``/``nn.GRU`` instances are converted: a subclass may have
its own forward or other behaviour that depends on its class, so it is left alone (and reported).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from .modules import FAST_TWINS, RecurrentBase, fast_twin, rebuild_sharing_parameters

log = logging.getLogger("fastrnn.convert")

_TORCH_TWINS = {v: k for k, v in FAST_TWINS.items()}


@dataclass(frozen=True)
class Conversion:
    """One line of the conversion report."""

    name: str  # qualified module name ("" for the root)
    kind: str  # class name of the module found
    converted: bool
    reason: str

    def __str__(self) -> str:
        what = "converted" if self.converted else "skipped"
        return f"{self.name or '<root>'} ({self.kind}): {what} -- {self.reason}"


def _torch_twin(module: RecurrentBase) -> nn.RNNBase:
    return rebuild_sharing_parameters(module, _TORCH_TWINS[type(module)])


def _plan(module: nn.Module, reverse: bool) -> tuple[bool, str]:
    t = type(module)
    if not reverse:
        if t in FAST_TWINS:
            return True, f"-> fastrnn.{FAST_TWINS[t].__name__}"
        for base in FAST_TWINS:
            if isinstance(module, base):
                custom = "forward" in vars(t) or any("forward" in vars(c) for c in t.__mro__[1 : t.__mro__.index(base)])
                why = "it overrides forward" if custom else "its class may add behaviour"
                return False, f"subclass of nn.{base.__name__}: left alone because {why}"
        return False, ""
    if t in _TORCH_TWINS:
        return True, f"-> torch.nn.{_TORCH_TWINS[t].__name__}"
    return False, ""


def convert(model: nn.Module, *, backend: str = "auto", reverse: bool = False, report: list | None = None) -> nn.Module:
    """Replace every ``nn.RNN``/``nn.LSTM``/``nn.GRU`` in ``model`` by its fastrnn twin, in place.

    Args:
        model: any module; if it *is* a recurrent module, its twin is returned (nothing to replace
            it in), so always use the return value: ``model = fastrnn.convert(model)``.
        backend: the twins' ``backend`` (``"auto"``, ``"triton"`` or ``"torch"``).
        reverse: turn fastrnn modules back into their ``torch.nn`` twins instead.
        report: if given, a list that receives one :class:`Conversion` per recurrent module found
            (converted or skipped, with the reason).  Each line is also logged to the
            ``fastrnn.convert`` logger at INFO level.

    Returns:
        ``model`` (converted in place), or the twin when ``model`` itself was converted.

    Example::

        model = fastrnn.convert(model)                # nn.LSTM -> fastrnn.LSTM, same parameters
        model = fastrnn.convert(model, reverse=True)  # and back
    """
    lines: list[Conversion] = []
    root = model
    for name, module in list(model.named_modules()):
        ok, why = _plan(module, reverse)
        if not why:
            continue
        lines.append(Conversion(name, type(module).__name__, ok, why))
        if not ok:
            continue
        twin = _torch_twin(module) if reverse else fast_twin(module, backend=backend)
        if name == "":
            root = twin
        else:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, twin)
    if not lines:
        lines.append(Conversion("", type(model).__name__, False, "nothing to convert"))
    for line in lines:
        log.info("%s", line)
    if report is not None:
        report.extend(lines)
    return root
