"""Backend choice for one forward call.

* ``"triton"``: the fastrnn kernels (CUDA tensors; CPU tensors through Triton's interpreter).
* ``"torch"``: the ``torch.nn`` twin's own code (aten/cuDNN): the fastest choice on CPU and the
  honest fallback wherever a kernel does not support an input.
* ``"auto"`` (default): on CUDA tensors the faster of the two where the kernels support the call
  (:mod:`fastrnn.auto`: measured per shape class), torch otherwise.  ``auto`` never fails where
  ``torch.nn`` would have worked.  On ROCm (HIP tensors also report ``device.type == "cuda"``)
  ``auto`` uses torch until the kernels are tested there.

The environment variable ``FASTRNN_BACKEND`` (``auto``/``triton``/``torch``) replaces ``"auto"``
for modules built with the default.  A backend asked for explicitly that cannot serve an input
raises :class:`BackendUnavailable` listing every reason.

**torch.compile.** The choice is made at trace time and is a constant of the compiled graph.
Everything that inspects the process (environment variables, whether Triton is installed, the
interpreter flag, cuDNN's switch) happens in :func:`_environment`, called only from functions
marked ``torch.compiler.assume_constant_result`` (:func:`_decide`, :func:`_cuda_autocast_dtype`):
Dynamo runs those eagerly and bakes in their result instead of tracing them (torch 2.11's Dynamo
refuses ``importlib.util.find_spec`` inside a traced function).  Their arguments are plain strings,
ints and bools read off the module and the input, which Dynamo traces.
``tests/test_compile.py`` checks that no environment inspection is ever traced.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import PackedSequence

from .kernels import _runtime, cells

BACKENDS = ("auto", "triton", "torch")

#: Read once at import: never inside a traced forward.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


class BackendUnavailable(RuntimeError):
    """``backend='triton'`` was requested for an input the kernels cannot serve."""


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


@dataclass(frozen=True)
class Environment:
    """What the process says about where the kernels can run (one snapshot per decision)."""

    backend_override: str  # FASTRNN_BACKEND ("auto" when unset)
    triton_installed: bool
    interpret: bool  # kernels run in Triton's interpreter (CPU tensors)
    late_interpret: bool  # Triton was imported before fastrnn on a machine without CUDA
    hip: bool  # a ROCm build of torch: "cuda" tensors are HIP tensors
    cudnn_enabled: bool  # torch.nn's RNNs use cuDNN on CUDA tensors
    cudnn_allow_tf32: bool  # cuDNN's RNNs may multiply fp32 in TF32 (torch.backends.cudnn.allow_tf32)


#: ``(raw values, snapshot)`` of the last :func:`_environment` call.
_SNAPSHOT: tuple[tuple, Environment] | None = None


def _environment() -> Environment:
    """The one place that inspects the process for dispatch.  Only ever called from functions
    that Dynamo runs eagerly (``assume_constant_result``), never from traced code.

    Every call reads what a program may change while it runs (``FASTRNN_BACKEND``, cuDNN's
    ``enabled`` and ``allow_tf32`` flags, the interpreter flags) and builds a new snapshot only
    when one of them changed: a call costs a few attribute reads."""
    global _SNAPSHOT
    cudnn = torch.backends.cudnn
    raw = (_backend_variable_raw(), cudnn.enabled, cudnn.allow_tf32, *_interpret_flags())
    last = _SNAPSHOT
    if last is not None and last[0] == raw:
        return last[1]
    env = _snapshot(*raw[1:])
    _SNAPSHOT = (raw, env)
    return env


_ENVIRON = os.environ
#: The mapping behind ``os.environ`` and ``FASTRNN_BACKEND`` as it is stored there (bytes on POSIX).
_ENVIRON_DATA = getattr(_ENVIRON, "_data", None) if hasattr(_ENVIRON, "encodekey") else None
_BACKEND_KEY = _ENVIRON.encodekey("FASTRNN_BACKEND") if _ENVIRON_DATA is not None else None


def _backend_variable_raw():
    """``FASTRNN_BACKEND``'s value as stored (``None`` when unset), to see whether it changed.
    ``os.environ.get`` of an unset variable raises and catches a ``KeyError`` inside, which cost
    several microseconds per call in a model's forward; the mapping behind ``os.environ``
    (CPython's ``_data``, which every change made through ``os.environ`` updates) answers without
    one."""
    if os.environ is _ENVIRON and _ENVIRON_DATA is not None:
        return _ENVIRON_DATA.get(_BACKEND_KEY)
    return os.environ.get("FASTRNN_BACKEND")


def _interpret_flags() -> tuple[bool, bool]:
    """``(interpret, late_interpret)`` of :mod:`fastrnn.kernels._runtime` (both false without Triton)."""
    if not _TRITON_INSTALLED:
        return False, False
    return _runtime.INTERPRET, _runtime.LATE_INTERPRET


def _snapshot(cudnn_enabled: bool, allow_tf32: bool, interpret: bool, late: bool) -> Environment:
    env = os.environ.get("FASTRNN_BACKEND", "auto") or "auto"
    check_backend_name(env)
    return Environment(
        backend_override=env,
        triton_installed=_TRITON_INSTALLED,
        interpret=interpret,
        late_interpret=late,
        hip=torch.version.hip is not None,
        cudnn_enabled=bool(cudnn_enabled and torch.backends.cudnn.is_available()),
        cudnn_allow_tf32=bool(allow_tf32),
    )


def requested_backend(module) -> str:
    """The module's backend with ``FASTRNN_BACKEND`` applied (outside traced code only)."""
    return _environment().backend_override if module.backend == "auto" else module.backend


# ---------------------------------------------------------------------------------------------
# The decision, as a function of constants


def _device_reasons(env: Environment, device_type: str, param_device: str, input_device: str) -> list[str]:
    reasons = []
    if device_type == "cuda" and env.hip:
        reasons.append("ROCm (HIP) devices are not supported yet: the kernels are only tested on NVIDIA GPUs")
    elif device_type == "cuda" and env.interpret:
        reasons.append("TRITON_INTERPRET=1 is set, so the kernels run on CPU tensors only")
    elif device_type == "cpu" and env.late_interpret:
        reasons.append("Triton was imported before fastrnn without TRITON_INTERPRET=1 (import fastrnn first)")
    elif device_type == "cpu" and not env.interpret:
        reasons.append(
            "CPU tensors run the kernels in Triton's interpreter, which needs TRITON_INTERPRET=1 set "
            "before fastrnn is imported on a machine with a CUDA device"
        )
    elif device_type not in ("cpu", "cuda"):
        reasons.append(f"{device_type} tensors are not supported")
    if param_device and param_device != input_device:
        reasons.append(f"input is on {input_device} but the parameters are on {param_device}")
    return reasons


@torch.compiler.assume_constant_result
def _decide(
    backend: str,
    mode: str,
    hidden_size: int,
    proj_size: int,
    dtype: str,
    device_type: str,
    input_device: str,
    param_device: str,
) -> tuple[str, str, int]:
    """``(choice, why, tier)`` for one call: ``choice`` is ``"triton"``, ``"torch"``, ``"error"``
    (``backend='triton'`` that cannot run; ``why`` lists every reason) or ``"auto"`` (``auto`` on
    CUDA where the kernels can run: :mod:`fastrnn.auto` picks the faster); ``tier`` is the kernel
    tier every layer of the call runs in (0 when the kernels do not run).  Every argument is a
    constant of the call (see the module doc); ``dtype`` is the parameters' dtype as
    ``str(torch.dtype)``."""
    env = _environment()
    if backend == "auto":
        backend = env.backend_override
    if backend == "torch":
        return "torch", "asked for explicitly", 0
    if backend == "auto" and device_type != "cuda":
        if device_type == "cpu":
            return "torch", "cpu tensors: torch (aten) is the fastest there; pass backend='triton' for the kernels", 0
        return "torch", f"{device_type} tensors: the kernels run on CUDA (and CPU through the interpreter)", 0
    if not env.triton_installed:
        reasons = ["Triton is not installed"]
    else:
        from .kernels.tiers import choose_tier

        reasons = _device_reasons(env, device_type, param_device, input_device)
        tier, why = choose_tier(mode, hidden_size, proj_size, _DTYPES[dtype], interpreted=device_type == "cpu")
        if tier is None:
            reasons.append(why)
        elif not reasons:
            # auto on CUDA: the kernels can run; fastrnn.auto decides whether they are faster
            return ("auto" if backend == "auto" else "triton"), why, tier
    return ("torch" if backend == "auto" else "error"), "; ".join(reasons), 0


@torch.compiler.assume_constant_result
def _tier_of(mode: str, hidden_size: int, proj_size: int, dtype: str, device_type: str) -> int:
    """The kernel tier of a layer (0: none can run it); run eagerly by Dynamo (it reads
    ``FASTRNN_TIER``)."""
    from .kernels.tiers import choose_tier

    tier, _ = choose_tier(mode, hidden_size, proj_size, _DTYPES[dtype], interpreted=device_type == "cpu")
    return tier or 0


def kernel_tier_of(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, device: torch.device) -> int:
    """The kernel tier of a layer for the functional API (the modules get theirs from the
    dispatcher); raises :class:`BackendUnavailable` when no tier can run it."""
    tier = _tier_of(mode, hidden_size, proj_size, str(dtype), device.type)
    if not tier:
        from .kernels.tiers import choose_tier

        why = choose_tier(mode, hidden_size, proj_size, dtype, interpreted=device.type == "cpu")[1]
        raise BackendUnavailable(f"fastrnn: no kernel tier runs {mode} with hidden_size={hidden_size}: {why}")
    return tier


#: ``str(dtype)`` -> dtype: dtypes cross into :func:`_decide` as strings (constants for Dynamo).
_DTYPES = {str(d): d for d in vars(torch).values() if isinstance(d, torch.dtype)}


def _data(input):
    return input.data if isinstance(input, PackedSequence) else input


def _call_facts(module, input) -> tuple:
    """The arguments of :func:`_decide` for ``module(input)``, read off the module and the
    tensors (all traceable by Dynamo)."""
    data = _data(input)
    params = module._flat_weights
    # The parameters' dtype decides: an input of another dtype is rejected by the argument checks
    # (the same ValueError as torch.nn), not by the backend choice.
    dtype = params[0].dtype if params else data.dtype
    device_type, input_device = _device_names(data.device)
    param_device = _device_names(params[0].device)[1] if params else ""
    return (
        module.backend, module.mode, module.hidden_size, module.proj_size, str(dtype), device_type, input_device,
        param_device,
    )  # fmt: skip


#: ``torch.device`` -> ``(device.type, str(device))``: both build a new string per call.
_DEVICE_NAMES: dict[torch.device, tuple[str, str]] = {}


def _device_names(device: torch.device) -> tuple[str, str]:
    """``(device.type, str(device))``, remembered per device outside torch.compile's trace."""
    if torch.compiler.is_compiling():
        return device.type, str(device)
    names = _DEVICE_NAMES.get(device)
    if names is None:
        names = _DEVICE_NAMES[device] = (device.type, str(device))
    return names


def _sizes(input, batch_first: bool, ids: bool) -> tuple[int, int, bool]:
    """``(B, T, packed)`` of a call's padded batch; ``ids``: ``input`` holds token ids (no feature
    dimension)."""
    if isinstance(input, PackedSequence):
        sizes = input.batch_sizes
        return (int(sizes[0]) if len(sizes) else 0), len(sizes), True
    if input.dim() == (1 if ids else 2):  # unbatched
        return 1, input.shape[0], False
    return (input.shape[0], input.shape[1], False) if batch_first else (input.shape[1], input.shape[0], False)


def _class_facts(module, input, dtype: str, *, embedded: bool, packed: bool) -> tuple[tuple, int, int]:
    """``(fields, B, T)`` of a call: ``fields`` are the :class:`fastrnn.auto.ShapeClass` fields
    but the size buckets (``mode, dtype, layers, bidirectional, packed, embedded, hidden_size,
    proj_size, training``; plain values, traceable by Dynamo)."""
    B, T, packed_input = _sizes(input, module.batch_first, embedded)
    training = torch.is_grad_enabled() and any(p.requires_grad for p in module._flat_weights)
    data = _data(input)
    cast = autocast_dtype(module.mode, data.device, data.dtype) if not embedded else None
    fields = (
        module.mode, str(cast) if cast is not None else dtype, module.num_layers, module.bidirectional,
        packed or packed_input, embedded, module.hidden_size, module.proj_size, training,
    )  # fmt: skip
    return fields, B, T


@torch.compiler.assume_constant_result
def _auto_in_trace(
    mode: str, dtype: str, layers: int, bidirectional: bool, packed: bool, embedded: bool, hidden_size: int,
    proj_size: int, training: bool, device_index: int,
) -> tuple[str, str]:  # fmt: skip
    """:func:`fastrnn.auto.choose` inside torch.compile's trace, for a class of any size: the
    caches and the table, else the rule; nothing is measured.  Run eagerly by Dynamo."""
    from . import auto

    cls = auto.ShapeClass(mode, dtype, layers, bidirectional, packed, embedded, hidden_size, proj_size, -1, -1,
                          training)  # fmt: skip
    index = device_index if device_index >= 0 else torch.cuda.current_device()
    return auto.choose(cls, torch.device("cuda", index), None, 0)


@dataclass(frozen=True)
class Route:
    """Where one call runs: ``backend`` (``"triton"``/``"torch"``), the kernel ``tier`` of every
    layer (0 for torch) and why."""

    backend: str
    tier: int
    why: str


def route(module, input, *, runners=None, embedded: bool = False, packed: bool = False) -> Route:
    """The :class:`Route` of this call (see module doc); raises :class:`BackendUnavailable` when
    ``backend='triton'`` cannot serve it.

    ``runners`` (:class:`fastrnn.auto.Runners`, or a function that builds them: called only when
    the call is measured) run the call with each backend, for ``auto``'s first-use measurement on
    CUDA; ``embedded``: the caller is an ``EmbeddingRNN`` (``input`` holds ids), ``packed``:
    variable lengths given apart from ``input``."""
    choice, why, tier = _select(module, input, runners, embedded, packed)
    return Route(choice, tier if choice == "triton" else 0, why)


def route_beyond_torch_nn(module, input) -> Route:
    """The :class:`Route` of a call the ``torch.nn`` twin cannot serve (``return_states=True``):
    ``triton`` wherever the kernels can run it (``auto`` too: its ``torch`` side would be a step
    loop, never faster), else ``torch``, meaning fastrnn's plain-PyTorch step loop.  Raises
    :class:`BackendUnavailable` when ``backend='triton'`` cannot serve it."""
    choice, why, tier = _decide(*_call_facts(module, input))
    if choice == "error":
        raise BackendUnavailable(f"fastrnn {type(module).__name__}: backend='triton' cannot run this call: {why}")
    if choice in ("auto", "triton"):
        return Route("triton", tier, why)
    return Route("torch", 0, f"{why} (the torch backend of this call is a step loop)")


def select_backend(module, input, *, runners=None, embedded: bool = False, packed: bool = False) -> str:
    """``"triton"`` or ``"torch"`` for this call: :func:`route`'s backend."""
    return route(module, input, runners=runners, embedded=embedded, packed=packed).backend


def _select(module, input, runners, embedded: bool, packed: bool) -> tuple[str, str, int]:
    facts = _call_facts(module, input)
    choice, why, tier = _decide(*facts)
    if choice == "error":
        raise BackendUnavailable(f"fastrnn {type(module).__name__}: backend='triton' cannot run this call: {why}")
    if choice != "auto":
        return choice, why, tier
    tier_why = why
    device = torch.device(facts[6])
    fields, B, T = _class_facts(module, input, facts[4], embedded=embedded, packed=packed)
    if torch.compiler.is_compiling():  # sizes may be symbolic: no branch on them (no guards)
        choice, why = _auto_in_trace(*fields, device.index if device.index is not None else -1)
    else:
        from . import auto

        cls = auto.ShapeClass(*fields[:8], auto.bucket(B, 2), auto.bucket(T, 4), fields[8])
        choice, why = auto.choose(cls, device, runners, B * T)
    return choice, (f"{why}; {tier_why}" if choice == "triton" else why), tier


def kernel_tier(module, input) -> tuple[int | None, str]:
    """``(tier, why)`` of the kernels for ``module(input)``'s layers (all layers have the same
    sizes but the first's input width, which only the input-projection GEMM sees)."""
    from .kernels.tiers import choose_tier

    _, mode, hidden, proj, dtype, device_type, _, _ = _call_facts(module, input)
    return choose_tier(mode, hidden, proj, _DTYPES[dtype], interpreted=device_type == "cpu")


def explain(module, input) -> str:
    """One line saying which backend ``module(input)`` uses, and why (the same decision as
    :func:`select_backend`; for ``auto`` on CUDA: the times and memory it rests on and where they
    come from -- this process, the device cache, the shipped table, a measurement (which explain
    makes, as the first call would) or the rule).

    Example::

        fastrnn.explain(fastrnn.GRU(8, 16), torch.randn(5, 3, 8))
        # "requested 'auto' -> torch: cpu tensors: torch (aten) is the fastest there; ..."
    """
    runners = (lambda: module._runners(input, None)) if hasattr(module, "_runners") else None
    choice, why, _ = _select(module, input, runners, False, False)
    return f"requested {requested_backend(module)!r} -> {choice}: {why}"


# ---------------------------------------------------------------------------------------------
# numerics that follow torch.nn: TF32 and autocast


@torch.compiler.assume_constant_result
def cudnn_allow_tf32() -> bool:
    """``torch.backends.cudnn.allow_tf32``: whether torch.nn's (cuDNN's) RNNs may multiply fp32 in
    TF32.  A module built with ``allow_tf32=None`` (the default) follows it, as torch.nn does."""
    return _environment().cudnn_allow_tf32


@torch.compiler.assume_constant_result
def _cuda_autocast_dtype(requested: str) -> str:
    """The dtype ``torch.nn``'s RNNs compute in under CUDA autocast asking for ``requested``.

    With cuDNN (the default), PyTorch's autocast wrapper of ``_cudnn_rnn`` casts to float16
    whatever autocast dtype was asked for (seen on an H200 with torch 2.11: bfloat16 autocast
    gives float16 RNN outputs); without cuDNN the RNN is built from ops that autocast lowers to
    the requested dtype."""
    return str(torch.float16) if _environment().cudnn_enabled else requested


def autocast_dtype(mode: str, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the ``torch.nn`` twin computes in under the active autocast, or ``None``.

    fastrnn follows ``torch.nn`` under autocast (the drop-in rule): the output dtype never
    depends on which backend ran, so ``auto`` may pick either.  CUDA: float16 while cuDNN is
    enabled, whatever autocast dtype was asked for (:func:`_cuda_autocast_dtype`).  CPU (torch
    2.11-2.13): LSTM and RNN in the autocast dtype, GRU left in fp32 (the cell spec's
    ``twin_cpu_autocast``).  ``tests/test_autocast.py``
    checks this rule against ``torch.nn`` so a change in PyTorch shows up as a failing test.
    """
    dev = device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev) or not dtype.is_floating_point:
        return None
    if dev == "cpu":
        return torch.get_autocast_dtype(dev) if cells.get(mode).twin_cpu_autocast else None
    return _DTYPES[_cuda_autocast_dtype(str(torch.get_autocast_dtype(dev)))]
