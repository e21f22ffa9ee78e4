"""The backend decision of one forward call: made once per call by the module, as one record
(:class:`Decision`), and carried down unchanged.

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

A :class:`Decision` holds everything the call's lower layers need: the backend, the kernels'
:class:`~fastrnn.kernels.tiers.LayerPlan` of every layer and direction (tier, fp32 dot precision,
launch configurations), the dtype the stack computes in (autocast's or the parameters') and why.
``fastrnn.functional``, ``fastrnn.ops`` and the tiers take it as given.

**Per-call cost.** A module remembers its decisions (:func:`decide`), keyed by what can change
them: the environment snapshot, the backend asked for, the parameters' dtype and device, the
input's device, autocast, whether gradients are needed, the fp32 precision settings, ``auto``'s
state and, for ``auto`` on CUDA, the size buckets of ``B`` and ``T``.  A repeated call (a decoder
step) finds its decision with one dictionary lookup: no environment inspection beyond the
snapshot's few reads, no tier choice, no plan, no CUDA query.

**torch.compile.** The choice is made at trace time and is a constant of the compiled graph.
Everything that inspects the process (environment variables, whether Triton is installed, the
interpreter flag, cuDNN's switch) happens in :func:`_environment`, called only from functions
marked ``torch.compiler.assume_constant_result`` (:func:`_backend_and_tier`, :func:`_cuda_autocast_dtype`,
:func:`_auto_in_trace`, :func:`_plan_in_trace`): Dynamo runs those eagerly and bakes in their
result instead of tracing them.  Their arguments are plain strings, ints and bools read off the
module and the input, which Dynamo traces.  ``tests/test_compile.py`` checks that no environment
inspection is ever traced.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import PackedSequence

from . import auto
from .errors import BackendUnavailable
from .kernels import _runtime, cells

__all__ = ["BACKENDS", "BackendUnavailable", "Decision", "autocast_dtype", "decide", "explain"]

BACKENDS = ("auto", "triton", "torch")

#: Read once at import: never inside a traced forward.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


# ---------------------------------------------------------------------------------------------
# The environment: one snapshot, rebuilt only when what it reads changes


@dataclass(frozen=True, eq=False)
class Environment:
    """What the process says about where the kernels can run (one snapshot per change; compared
    by identity: a snapshot is rebuilt only when what it reads changed)."""

    backend_override: str  # FASTRNN_BACKEND ("auto" when unset)
    tier_override: str | None  # FASTRNN_TIER as set (None when unset): tiers.choose_tier reads it
    auto_measure: str | None  # FASTRNN_AUTO_MEASURE as set
    triton_installed: bool
    interpret: bool  # kernels run in Triton's interpreter (CPU tensors)
    late_interpret: bool  # Triton was imported before fastrnn on a machine without CUDA
    hip: bool  # a ROCm build of torch: "cuda" tensors are HIP tensors
    cudnn_enabled: bool  # torch.nn's RNNs use cuDNN on CUDA tensors
    cudnn_allow_tf32: bool  # cuDNN's RNNs may multiply fp32 in TF32 (torch.backends.cudnn.allow_tf32)
    deterministic: bool  # torch.use_deterministic_algorithms(True): auto does not time (fastrnn.auto)


#: ``(raw values, snapshot)`` of the last :func:`_environment` call.
_SNAPSHOT: tuple[tuple, Environment] | None = None

_ENVIRON = os.environ
#: The mapping behind ``os.environ`` (CPython's ``_data``, which every change made through
#: ``os.environ`` updates) and the variables' keys as stored there (bytes on POSIX).
_ENVIRON_DATA = getattr(_ENVIRON, "_data", None) if hasattr(_ENVIRON, "encodekey") else None
_VARIABLES = ("FASTRNN_BACKEND", "FASTRNN_TIER", "FASTRNN_AUTO_MEASURE")
_KEYS = tuple(_ENVIRON.encodekey(v) for v in _VARIABLES) if _ENVIRON_DATA is not None else ()


def _environment() -> Environment:
    """The one place that inspects the process for dispatch.  Only ever called from eager code
    or from functions that Dynamo runs eagerly (``assume_constant_result``), never from traced
    code.  Every call reads what a program may change while it runs (the variables, cuDNN's
    ``enabled`` and ``allow_tf32`` flags, the interpreter flags) and builds a new snapshot only
    when one of them changed: a call costs a few attribute reads.  The variables are read from
    the mapping behind ``os.environ`` (CPython's ``_data``, which every change made through
    ``os.environ`` updates): ``os.environ.get`` of an unset variable raises and catches a
    ``KeyError`` inside, several microseconds per call."""
    global _SNAPSHOT
    cudnn = torch.backends.cudnn
    data = _ENVIRON_DATA if os.environ is _ENVIRON else None
    if data is not None:
        raw = (data.get(_KEYS[0]), data.get(_KEYS[1]), data.get(_KEYS[2]), cudnn.enabled, cudnn.allow_tf32,
               _runtime.INTERPRET, _runtime.LATE_INTERPRET, torch.are_deterministic_algorithms_enabled())  # fmt: skip
    else:
        get = os.environ.get
        raw = (*(get(v) for v in _VARIABLES), cudnn.enabled, cudnn.allow_tf32, _runtime.INTERPRET,
               _runtime.LATE_INTERPRET, torch.are_deterministic_algorithms_enabled())  # fmt: skip
    last = _SNAPSHOT
    if last is not None and last[0] == raw:
        return last[1]
    env = _snapshot(*raw[3:])
    _SNAPSHOT = (raw, env)
    return env


def _snapshot(cudnn_enabled: bool, allow_tf32: bool, interpret: bool, late: bool, deterministic: bool) -> Environment:
    interpret, late = (interpret, late) if _TRITON_INSTALLED else (False, False)
    backend = os.environ.get("FASTRNN_BACKEND", "auto") or "auto"
    check_backend_name(backend)
    return Environment(
        backend_override=backend,
        tier_override=os.environ.get("FASTRNN_TIER"),
        auto_measure=os.environ.get("FASTRNN_AUTO_MEASURE"),
        triton_installed=_TRITON_INSTALLED,
        interpret=interpret,
        late_interpret=late,
        hip=torch.version.hip is not None,
        cudnn_enabled=bool(cudnn_enabled and torch.backends.cudnn.is_available()),
        cudnn_allow_tf32=bool(allow_tf32),
        deterministic=bool(deterministic),
    )


def auto_on_cpu(module, data: torch.Tensor) -> bool:
    """Whether ``module(data)`` is ``auto`` on a CPU tensor with no ``FASTRNN_BACKEND`` set: always
    ``torch.nn``'s own code (:func:`_backend_and_tier`'s first rule), so the caller may run it
    without the decision's machinery -- a one-token call on the CPU costs little more than the
    ``torch.nn`` module's.  False inside ``torch.compile`` (which decides through
    :func:`decide`)."""
    if module.__dict__.get("backend") != "auto" or not data.is_cpu or torch.compiler.is_compiling():
        return False
    if _ENVIRON_DATA is not None and os.environ is _ENVIRON:
        return _ENVIRON_DATA.get(_KEYS[0]) is None
    return os.environ.get("FASTRNN_BACKEND") is None


def requested_backend(module) -> str:
    """The module's backend with ``FASTRNN_BACKEND`` applied (outside traced code only)."""
    return _environment().backend_override if module.backend == "auto" else module.backend


# ---------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class Decision:
    """Where one call runs, and everything its lower layers need (see the module doc).

    ``backend`` is ``"triton"``, ``"torch"`` or ``"error"`` (``backend='triton'`` that cannot run
    the call: :meth:`check` raises :class:`BackendUnavailable` with ``why``); ``plan`` holds one
    :class:`~fastrnn.kernels.tiers.LayerPlan` per layer and direction (``None`` unless
    ``"triton"``); ``dtype`` is the dtype the recurrent stack computes in, ``cast`` autocast's
    compute dtype where autocast changes it (else ``None``); ``precision`` the fp32 dots'.
    ``alternative`` is ``auto``'s other choice where the choice rests on measured peak memory
    (:func:`decide` checks the memory again for a call larger than the measured one)."""

    backend: str
    why: str
    requested: str
    plan: tuple | None
    dtype: torch.dtype
    cast: torch.dtype | None
    precision: str
    alternative: Alternative | None = None

    @property
    def tier(self) -> int:
        """The kernel tier of every layer (0 when the kernels do not run)."""
        return self.plan[0].tier if self.plan else 0

    def describe(self) -> str:
        """:func:`explain`'s line."""
        backend = "triton (not available)" if self.backend == "error" else self.backend
        return f"requested {self.requested!r} -> {backend}: {self.why}"

    def check(self, module) -> Decision:
        """``self``, or :class:`BackendUnavailable` when ``backend='triton'`` cannot run the call."""
        if self.backend == "error":
            raise BackendUnavailable(
                f"fastrnn {type(module).__name__}: backend='triton' cannot run this call: {self.why}"
            )
        return self


@dataclass(frozen=True)
class Alternative:
    """What ``auto`` would run instead if the chosen backend did not fit the free memory: the
    verdict both rest on (:class:`fastrnn.auto.Verdict`) and the kernels' plan."""

    verdict: object
    plan: tuple


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
def _backend_and_tier(
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
    constant of the call (see the module doc); ``dtype`` is the compute dtype as
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
        cuda = torch.device(input_device) if device_type == "cuda" else None
        tier, why = choose_tier(mode, hidden_size, proj_size, _DTYPES[dtype], device_type == "cpu", cuda)
        if tier is None:
            reasons.append(why)
        elif not reasons:
            # auto on CUDA: the kernels can run; fastrnn.auto decides whether they are faster
            return ("auto" if backend == "auto" else "triton"), why, tier
    return ("torch" if backend == "auto" else "error"), "; ".join(reasons), 0


@torch.compiler.assume_constant_result
def _plan_in_trace(mode: str, hidden_size: int, proj_size: int, dtype: str, tier: int, device_type: str,
                   device_index: int, precision: str) -> str:  # fmt: skip
    """The :attr:`~fastrnn.kernels.tiers.LayerPlan.key` of a layer, run eagerly by Dynamo (it asks
    the device for its shared memory)."""
    from .kernels import tiers

    device = torch.device(device_type, device_index) if device_index >= 0 else torch.device(device_type)
    return tiers.plan_layer(mode, hidden_size, proj_size, _DTYPES[dtype], tier, tiers.smem_per_block(device),
                            precision).key  # fmt: skip


#: Whether autocast is on for any device: one cheap call before asking per device (torch >= 2.4).
_ANY_AUTOCAST = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)

#: ``str(dtype)`` -> dtype: dtypes cross into :func:`_backend_and_tier` as strings (constants for Dynamo).
_DTYPES = {str(d): d for d in vars(torch).values() if isinstance(d, torch.dtype)}

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


def _sizes(input, batch_first: bool, ids: bool) -> tuple[int, int]:
    """``(B, T)`` of a call's padded batch; ``ids``: ``input`` holds token ids (no feature
    dimension)."""
    if isinstance(input, PackedSequence):
        sizes = input.batch_sizes
        return (int(sizes[0]) if len(sizes) else 0), len(sizes)
    if input.dim() == (1 if ids else 2):  # unbatched
        return 1, input.shape[0]
    return (input.shape[0], input.shape[1]) if batch_first else (input.shape[1], input.shape[0])


@torch.compiler.assume_constant_result
def _auto_in_trace(
    mode: str, dtype: str, layers: int, bidirectional: bool, packed: bool, embedded: bool, hidden_size: int,
    proj_size: int, training: bool, device_index: int, kernels: str,
) -> tuple[str, str]:  # fmt: skip
    """:func:`fastrnn.auto.choose` inside torch.compile's trace, for a class of any size: the
    caches and the table, else the rule; nothing is measured.  Run eagerly by Dynamo."""
    cls = auto.ShapeClass(mode, dtype, layers, bidirectional, packed, embedded, hidden_size, proj_size, -1, -1,
                          training)  # fmt: skip
    index = device_index if device_index >= 0 else torch.cuda.current_device()
    return auto.choose(cls, torch.device("cuda", index), None, 0, kernels)


# ---------------------------------------------------------------------------------------------
# decide: the one entry point


def _precision(module) -> str:
    """The module's fp32 dot precision (:func:`fastrnn.functional.resolve_precision`) with
    ``allow_tf32=None`` following ``torch.backends.cudnn.allow_tf32`` as ``torch.nn`` does; an
    explicit ``fp32_precision`` wins over that default."""
    from .functional import resolve_precision

    allow, asked = module.allow_tf32, getattr(module, "fp32_precision", None)
    if allow is None:
        allow = cudnn_allow_tf32() and asked is None
    return resolve_precision(allow, asked)


def decide(
    module,
    input,
    *,
    embedded: bool = False,
    packed: bool = False,
    beyond_torch_nn: bool = False,
    autocast: bool = True,
    runners: Callable[[Decision], object] | None = None,
) -> Decision:
    """The :class:`Decision` of ``module(input)`` (see the module doc).

    ``embedded``: ``module`` is an ``EmbeddingRNN``'s recurrent module and ``input`` holds ids;
    ``packed``: variable lengths given apart from ``input``; ``beyond_torch_nn``: the call does
    what the ``torch.nn`` twin cannot (``return_states=True``, a cell without a twin), so
    ``auto`` takes the kernels wherever they run and ``torch`` means fastrnn's plain-PyTorch step
    loop; ``autocast=False``: the module computes in its parameters' dtype under autocast too.
    ``runners(decision)`` builds :class:`fastrnn.auto.Runners` that run the call with each
    backend (the kernels with ``decision``), for ``auto``'s first-use measurement on CUDA; it is
    called only when the call is measured.  A ``backend='triton'`` that cannot run the call gives
    ``backend="error"`` (:meth:`Decision.check` raises).

    A call *needs gradients* (``auto``'s training classes, measured forward and backward) when
    gradients are enabled, a parameter needs one and the module is in training mode: in
    ``eval()`` a backward through ``torch.nn``'s cuDNN RNN is refused by cuDNN, so there ``auto``
    measures and compares the forward only."""
    is_packed = isinstance(input, PackedSequence)
    data = input.data if is_packed else input
    params = module._flat_weights  # their dtype and device (the kernels' path refreshes the list itself)
    param_dtype = params[0].dtype if params else data.dtype
    device = data.device
    cast = autocast_dtype(module.mode, device, param_dtype) if autocast else None
    training = module.training and torch.is_grad_enabled() and any(p.requires_grad for p in params)
    if torch.compiler.is_compiling():
        return _make_decision(module, input, data, params, param_dtype, cast, training, embedded, packed,
                              beyond_torch_nn, None)  # fmt: skip
    attrs = module.__dict__
    key = (
        _environment(), attrs["backend"], param_dtype, params[0].device if params else None, device, cast, training,
        embedded | (packed or is_packed) << 1 | beyond_torch_nn << 2 | autocast << 3, attrs["allow_tf32"],
        attrs.get("fp32_precision"), auto.epoch(),
        _buckets(input, module.batch_first, embedded) if _device_names(device)[0] == "cuda" else None,
    )  # fmt: skip
    cache = attrs.get("_fastrnn_decisions")
    if cache is None:
        cache = attrs["_fastrnn_decisions"] = {}
    else:
        found = cache.get(key)
        if found is not None:
            return found if found.alternative is None else _memory_checked(found, module, input, embedded)
    decision = _make_decision(module, input, data, params, param_dtype, cast, training, embedded, packed,
                              beyond_torch_nn, runners)  # fmt: skip
    if len(cache) > 64:  # a module called with ever new buckets, devices or modes: start over
        cache.clear()
    cache[key] = decision
    return decision


def _make_decision(module, input, data, params, param_dtype, cast, training: bool, embedded: bool, packed: bool,
              beyond_torch_nn: bool, runners) -> Decision:  # fmt: skip
    dtype = cast or param_dtype
    device_type, input_device = _device_names(data.device)
    param_device = _device_names(params[0].device)[1] if params else ""
    requested = requested_backend(module) if not torch.compiler.is_compiling() else module.backend
    precision = _precision(module)
    facts = (module.backend, module.mode, module.hidden_size, module.proj_size, str(dtype), device_type,
             input_device, param_device)  # fmt: skip
    choice, why, tier = _backend_and_tier(*facts)
    base = dict(requested=requested, dtype=dtype, cast=cast, precision=precision)
    if choice in ("torch", "error"):
        if beyond_torch_nn and choice == "torch":
            why = f"{why} (the torch backend of this call is a step loop)"
        return Decision(choice, why, plan=None, **base)
    plan = _stack_plan(module, dtype, tier, data.device, precision)
    kernels = Decision("triton", why, plan=plan, **base)
    if choice == "triton" or beyond_torch_nn:
        return kernels
    # auto on CUDA where the kernels can run: fastrnn.auto compares them with torch.nn
    B, T = _sizes(input, module.batch_first, embedded)
    fields = (module.mode, str(dtype), module.num_layers, module.bidirectional,
              packed or isinstance(input, PackedSequence), embedded, module.hidden_size, module.proj_size)  # fmt: skip
    device = torch.device(input_device)
    identity = _kernel_identity(plan[0].key, embedded)
    if torch.compiler.is_compiling():  # sizes may be symbolic: no branch on them (no guards)
        choice, why = _auto_in_trace(*fields, training, device.index if device.index is not None else -1, identity)
        verdict = None
    else:
        cls = auto.ShapeClass(*fields, auto.bucket(B, 2), auto.bucket(T, 4), training)
        build = (lambda: runners(kernels)) if runners is not None else None
        choice, why, verdict = auto.choose_verdict(cls, device, build, B * T, identity)
    alternative = Alternative(verdict, plan) if verdict is not None and verdict.tokens else None
    if choice == "triton":
        return Decision("triton", f"{why}; {kernels.why}", plan=plan, alternative=alternative, **base)
    return Decision("torch", why, plan=None, alternative=alternative, **base)


@torch.compiler.assume_constant_result
def _kernel_identity(plan_key: str, embedded: bool) -> str:
    """:func:`fastrnn.kernels.tiers.kernel_identity` of a plan (it reads the kernel files: run
    eagerly by Dynamo)."""
    from .kernels import tiers

    return tiers.kernel_identity(tiers.from_key(plan_key), embedded)


def _stack_plan(module, dtype: torch.dtype, tier: int, device: torch.device, precision: str) -> tuple:
    """The :class:`~fastrnn.kernels.tiers.LayerPlan` of every layer and direction."""
    from .kernels import tiers

    n = module.num_layers * (2 if module.bidirectional else 1)
    if torch.compiler.is_compiling():
        key = _plan_in_trace(module.mode, module.hidden_size, module.proj_size, str(dtype), tier, device.type,
                             device.index if device.index is not None else -1, precision)  # fmt: skip
        return (tiers.from_key(key),) * n
    plan = tiers.plan_layer(module.mode, module.hidden_size, module.proj_size, dtype, tier,
                            tiers.smem_per_block(device), precision)  # fmt: skip
    return (plan,) * n


def _memory_checked(decision: Decision, module, input, embedded: bool) -> Decision:
    """``decision``, or the other backend where the chosen one would not fit the free memory
    (:func:`fastrnn.auto.fits`: only a call larger than the measured one is checked)."""
    B, T = _sizes(input, module.batch_first, embedded)
    data = input.data if isinstance(input, PackedSequence) else input
    alt = decision.alternative
    fitted = auto.fits(alt.verdict, decision.backend, B * T, data.device)
    if fitted == decision.backend:
        return decision
    why = f"{fitted} because {decision.backend} would not fit the free memory -- {alt.verdict.describe()}"
    plan = alt.plan if fitted == "triton" else None
    return Decision(fitted, why, decision.requested, plan, decision.dtype, decision.cast, decision.precision)


def _buckets(input, batch_first: bool, ids: bool) -> tuple[int, int]:
    """:func:`fastrnn.auto.bucket` of ``B`` and ``T``: what ``auto``'s shape classes tell apart."""
    B, T = _sizes(input, batch_first, ids)
    return auto.bucket(B, 2), auto.bucket(T, 4)


def explain(module, input, hx=None, **kwargs) -> str:
    """One line saying which backend ``module(input, hx)`` runs, and why: the same decision as the
    call (for ``auto`` on CUDA: the times and memory it rests on and where they come from -- this
    process, the device cache, the shipped table, a measurement, which explain makes as the first
    call would -- or the rule).  ``module`` is a fastrnn module: ``fastrnn.LSTM`` & co.,
    ``Recurrent``, ``LayerNormLSTM``/``GRU``, or ``EmbeddingRNN`` (``input`` then holds token ids;
    ``lengths=`` as its forward).  It describes the call in the current grad mode and with the
    module's ``training`` flag, as the call would run: call it where the call is made (under
    ``torch.no_grad()`` for an inference call).  A backend that cannot run the call is reported,
    not raised.

    Example::

        fastrnn.explain(fastrnn.GRU(8, 16), torch.randn(5, 3, 8))
        # "requested 'auto' -> torch: cpu tensors: torch (aten) is the fastest there; ..."
    """
    backend_decision = getattr(module, "backend_decision", None)
    if backend_decision is None:
        raise TypeError(f"explain: expected a fastrnn module, got {type(module).__name__}")
    return backend_decision(input, hx, **kwargs).describe()


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
    whatever autocast dtype was asked for (bfloat16 autocast gives float16 RNN outputs; held by
    ``tests/test_autocast.py`` on a GPU); without cuDNN the RNN is built from ops that autocast
    lowers to the requested dtype."""
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
    if not _ANY_AUTOCAST():
        return None
    dev = device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev) or not dtype.is_floating_point:
        return None
    if dev == "cpu":
        return torch.get_autocast_dtype(dev) if cells.get(mode).twin_cpu_autocast else None
    return _DTYPES[_cuda_autocast_dtype(str(torch.get_autocast_dtype(dev)))]
