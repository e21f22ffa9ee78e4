"""The configuration grid of the kernel report: what to compile (:class:`KernelConfig`, the
sweep :func:`configs` over the registered tiers) and the launch each one stands for, as
the tier's own launchers build it (:func:`launch_arguments`), bound the way Triton's JIT binds it
(:func:`compile_source`, :func:`specialization_key`)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import cells, tiers
from ..call import Gradients, RecurrenceCall

#: Shared memory one block may use (opt-in maximum), bytes.  H100: 227 KB; A100: 163 KB.
SHARED_LIMIT: dict[int, int] = {90: 227 * 1024, 80: 163 * 1024}


def report_cells(extended: bool = False) -> dict[str, str]:
    """The report's cell names -> registered mode, from the cell registry (``cells.CELLS``): each
    registered cell under its mode and, for a cell that can project (torch.nn's LSTM), its
    projected twin ``<mode>P`` (``LSTMP``: an LSTM with ``proj_size``).  ``extended``: the cells
    beyond torch.nn's interface (layer norm) instead, which the report compiles on request."""
    modes = cells.modes(extended=extended)
    out = {mode: mode for mode in modes}
    out.update({f"{mode}P": mode for mode in modes if cells.get(mode).projection})
    return out


def _projected(cell: str) -> bool:
    """Whether the report's ``cell`` is a projected twin (``LSTMP``)."""
    return cell.endswith("P") and report_cells().get(cell, cell) != cell


#: Cells of the report by default: name -> registered mode (:func:`report_cells`).
CELLS: dict[str, str] = report_cells()

#: Cells beyond torch.nn (``--cells LN_LSTM LN_GRU``): compiled on request, not by default
#: (``tests/test_kernel_report.py`` compiles them at their own limits in a sweep of their own).
#: Their launches carry the heaviest options: parameters and a per-step zoneout mask.
EXTRA_CELLS: dict[str, str] = report_cells(extended=True)

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}

#: The kernels of every tier: the forward and the backward.
KERNELS = ("fwd", "bwd")


@dataclass(frozen=True)
class KernelConfig:
    """One kernel compile: which tier, kernel, cell, dtype, size, variant and target.

    ``num_warps``/``block_b``/``split_k``/``resident`` of ``None`` mean "what the tier's launch
    configuration picks" (the default); a value overrides it, for exploring (the launcher itself is
    still what builds the call).  ``proj_size`` is LSTMP's projection size (0: ``hidden_size //
    2``); other cells ignore it.
    """

    kernel: str  # "fwd" or "bwd"
    cell: str  # key of CELLS
    dtype: str  # key of DTYPES
    hidden_size: int
    arch: int = 90  # compute capability: 90 (H100) or 80 (A100)
    varlen: bool = False  # per-sequence lengths (packed sequences)
    reverse: bool = False  # reverse direction of a bidirectional layer
    has_h0: bool = False  # initial state given (h0, and c0 for LSTM)
    save: bool = True  # forward saves what backward needs (training); False: inference
    batch: int = 64  # the launch's B (T is 8): only the strides of sizes not multiples of 16 depend on it
    num_warps: int | None = None
    block_b: int | None = None
    precision: str = "ieee"  # fp32 dots (tiers.PRECISIONS)
    proj_size: int = 0
    tier: int = 1  # a registered tier (fastrnn.kernels.tiers)
    split_k: int | None = None  # override the configuration's SPLIT_K
    resident: bool | None = None  # override the configuration's resident/streamed choice (a tier that has one)
    states: bool = False  # return_states: the forward stores every step's c_t, the backward reads its gradient

    @property
    def mode(self) -> str:
        """The registered mode of this cell (``torch.nn``'s mode string for its cells)."""
        names = {**report_cells(), **report_cells(extended=True)}
        if self.cell not in names:
            raise ValueError(f"unknown cell {self.cell!r}; the report knows {', '.join(names)}")
        return names[self.cell]

    @property
    def proj(self) -> int:
        """The projection size the layer has (0: none; only a projected twin such as LSTMP has one)."""
        if self.cell == self.mode:
            return 0
        proj = self.proj_size or max(1, self.hidden_size // 2)
        if not 0 < proj < self.hidden_size:
            raise ValueError(f"proj_size must be in (0, hidden_size), got {proj} for hidden_size {self.hidden_size}")
        return proj

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def variant(self) -> str:
        """Short name of the variant flags, e.g. ``varlen,rev,h0``."""
        flags = [f"tier{self.tier}"] if self.tier != 1 else []
        flags += [("varlen" if self.varlen else "dense"), ("rev" if self.reverse else "fwd")]
        if self.has_h0:
            flags.append("h0")
        if self.kernel == "fwd" and not self.save:
            flags.append("nosave")
        if self.precision != "ieee":
            flags.append(self.precision)
        if self.split_k:
            flags.append(f"split{self.split_k}")
        if self.resident is not None:
            flags.append("res" if self.resident else "stream")
        if self.states:
            flags.append("states")
        return ",".join(flags)

    def unsupported(self) -> str | None:
        """Why the configuration's tier refuses this size (``None``: it accepts it); what this
        machine lacks to run it (a GPU) does not count: the report only compiles."""
        return tiers.get_tier(self.tier).unsupported(self.mode, self.hidden_size, self.proj, self.torch_dtype)


def configs(
    tiers_: Sequence[int] = (1,),
    cells: Sequence[str] = tuple(CELLS),
    dtypes: Sequence[str] = ("fp32", "bf16", "fp16", "fp64"),
    hidden_sizes: Sequence[int] = (32, 64, 128, 256),
    archs: Sequence[int] = (90, 80),
    kernels: Sequence[str] = ("fwd", "bwd"),
    variants: str = "heaviest",
    num_warps: Sequence[int | None] = (None,),
    block_b: Sequence[int | None] = (None,),
    beyond_limit: bool = False,
    batch: int = 64,
    proj_sizes: Sequence[int] = (0,),
    precisions: Sequence[str] = ("ieee",),
    split_k: Sequence[int | None] = (None,),
    resident: Sequence[bool | None] = (None,),
) -> list[KernelConfig]:
    """The configurations to compile, for every tier of ``tiers_`` (registered tiers, through
    :mod:`fastrnn.kernels.tiers` only): each size a tier runs (``beyond_limit``: also the sizes
    it refuses, to find the spill frontier).

    Args:
        variants: ``"heaviest"`` (varlen, reverse, with h0 and, forward, saving: the most live
            values), ``"default"`` (dense, forward, no h0), or ``"all"`` (every combination of
            dense/varlen, forward/reverse, with/without h0, plus inference forwards).
        num_warps, block_b, split_k, resident: ``None`` is the tier's configuration's choice;
            other values override it where the tier's configuration has that knob (a field of
            its type; :meth:`~fastrnn.kernels.tiers.TierConfig.override`).
        proj_sizes: LSTMP projection sizes (0: ``hidden_size // 2``); sizes not below the hidden
            size are left out.
        precisions: fp32 dot precisions (:data:`fastrnn.kernels.tiers.PRECISIONS`); every other
            dtype compiles with ``"ieee"`` only (its dots do not depend on it).

    Example::

        cfgs = configs([1], cells=["LSTM"], dtypes=["bf16"], hidden_sizes=[64], archs=[90])
    """
    if variants == "heaviest":
        flag_sets = [(True, True, True, True)]
    elif variants == "default":
        flag_sets = [(False, False, False, True)]
    elif variants == "all":
        flag_sets = [(v, r, h, True) for v, r, h in itertools.product((False, True), repeat=3)]
        flag_sets.append((False, False, False, False))
    else:
        raise ValueError(f"variants must be 'heaviest', 'default' or 'all', got {variants!r}")
    out = []
    sizes = [(cell, h, p) for cell in cells for h in hidden_sizes for p in (proj_sizes if _projected(cell) else (0,))]
    for tier in tiers_:
        knobs = {f.name for f in dataclasses.fields(tiers.get_tier(tier).config_type)}
        own = {k: v if k in knobs else (None,) for k, v in
               dict(num_warps=num_warps, block_b=block_b, split_k=split_k, resident=resident).items()}  # fmt: skip
        for (cell, hidden, proj), dtype, arch, kernel, (varlen, rev, h0, save), warps, bb, sk, res, prec in (
            itertools.product(dict.fromkeys(sizes), dtypes, archs, kernels, flag_sets, own["num_warps"],
                              own["block_b"], own["split_k"], own["resident"], precisions)
        ):  # fmt: skip
            proj = (proj or max(1, hidden // 2)) if _projected(cell) else 0
            if (kernel == "bwd" and not save) or proj >= hidden or (prec != "ieee" and dtype != "fp32"):
                continue  # inference has no backward; a projection is smaller; precisions are fp32's
            cfg = KernelConfig(kernel, cell, dtype, hidden, arch, varlen, rev, h0, save, batch, warps, bb, prec, proj,
                               tier, sk, res)  # fmt: skip
            if arch not in getattr(tiers.get_tier(tier).config_type, "ARCHS", (arch,)):
                continue  # a tier built for some architectures only (the cluster tier: sm_90a)
            if beyond_limit or cfg.unsupported() is None:
                out.append(cfg)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# The launch, as the real launcher makes it


def _layer_tensors(cfg: KernelConfig, seq_len: int):
    """``meta`` tensors of one layer/direction as ``fastrnn.ops`` passes them for ``cfg``."""
    cell = cells.get(cfg.mode)
    H, P0, dt = cfg.hidden_size, cfg.proj, cfg.torch_dtype
    P, G, T, B = P0 or H, cell.G, seq_len, cfg.batch

    def new(*shape: int, dtype: torch.dtype = dt) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device="meta")

    return dict(
        new=new, T=T, B=B, H=H, P=P,
        gx=new(T, B, G * H), w_hh=new(G * H, P),
        h0=new(B, P) if cfg.has_h0 else None,
        c0=new(B, H) if (cfg.has_h0 and cell.has_cell_state) else None,
        lengths=new(B, dtype=torch.int64) if cfg.varlen else None,
        b_hh=new(G * H), w_hr=new(P, H) if P0 else None,
        d_cn=new(B, H) if cell.has_cell_state else None,
        d_cs=new(T, B, H) if (cfg.states and cell.has_cell_state) else None,
        ext=dict(params=new(len(cell.params) * H, dtype=torch.float64 if dt == torch.float64 else torch.float32),
                 zoneout=new(T, B, H)) if cell.extended else {},
    )  # fmt: skip


def launch_config(cfg: KernelConfig):
    """The tier's launch configuration of ``cfg`` (:func:`fastrnn.kernels.tiers.plan_layer`) with
    ``cfg``'s overrides (``num_warps``, ``block_b``, ``split_k``, ``resident``) applied through the
    configuration's own ``override`` (:class:`~fastrnn.kernels.tiers.TierConfig`)."""
    plan = tiers.plan_layer(cfg.mode, cfg.hidden_size, cfg.proj, cfg.torch_dtype, cfg.tier, SHARED_LIMIT.get(cfg.arch),
                            cfg.precision)  # fmt: skip
    config = plan.config(cfg.kernel)
    changes = dict(resident=cfg.resident, num_warps=cfg.num_warps, block_b=cfg.block_b, split_k=cfg.split_k)
    changes = {k: v for k, v in changes.items() if v is not None}
    return config.override(cfg.hidden_size, cfg.torch_dtype, **changes) if changes else config


def launch_arguments(cfg: KernelConfig, seq_len: int = 8) -> tuple[object, tuple, dict]:
    """The kernel and the ``(args, kwargs)`` of the launch ``cfg`` describes, as the tier's
    launchers build it (its registered ``forward_launch``/``backward_launch``, on ``meta``
    tensors, with the launch configuration of :func:`fastrnn.kernels.tiers.plan`): the report
    compiles exactly what a real launch passes.  ``cfg.num_warps``/``block_b``/``split_k``/
    ``resident`` override the configuration's choice.  Tiers 2/3: the persistent launch (tier 2:
    ``USE_BARRIER``, cooperative) or one step (tier 3)."""
    t = _layer_tensors(cfg, seq_len)
    tier = tiers.get_tier(cfg.tier)
    config = launch_config(cfg)
    call = RecurrenceCall(cfg.mode, t["T"], t["B"], t["w_hh"], t["h0"], t["c0"], t["lengths"], t["b_hh"], t["w_hr"],
                          cfg.reverse, cfg.save or cfg.kernel == "bwd", cfg.precision, cfg.states, **t["ext"])  # fmt: skip
    launch, fwd = tier.forward_launch(call, t["gx"], config)
    if cfg.kernel == "bwd":
        grads = Gradients(t["new"](t["T"], t["B"], t["P"]), t["new"](t["B"], t["P"]), t["d_cn"], t["d_cs"], fwd.out,
                          fwd.saved)  # fmt: skip
        launch, _ = tier.backward_launch(call, grads, config)
    kernel, args, kwargs = tier.compiled(launch)
    return kernel, tuple(args), kwargs


def compile_source(cfg: KernelConfig):
    """``(ASTSource, GPUTarget, options)`` for ``cfg``: what ``triton.compile`` takes.

    Uses Triton's own argument binder, so the signature, constexprs (including arguments equal
    to 1) and divisibility attributes are the ones the JIT would derive at launch time.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    kernel, args, kwargs = launch_arguments(cfg)
    if not isinstance(kernel, JITFunction):
        raise RuntimeError(
            "the kernels were built for Triton's interpreter; compile them in a process started "
            "with TRITON_INTERPRET=0 (compile_report does that for you)"
        )
    target = GPUTarget("cuda", cfg.arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), target, options.__dict__


def specialization_key(cfg: KernelConfig, seq_len: int = 8) -> str:
    """The key Triton's JIT caches the compiled kernel of this launch under (its binder's
    specialization of every argument, plus the launch options), for ``T = seq_len`` and
    ``B = cfg.batch``.  Two launches with equal keys share one compiled kernel, so counting the
    distinct keys while ``T`` and ``B`` vary counts the compiles, without compiling (works in an
    interpreting process too: the binder is built from the kernel's own ``do_not_specialize``).

    Example::

        keys = {specialization_key(dataclasses.replace(cfg, batch=b), t) for t in (1, 9) for b in (1, 33)}
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    kernel, args, kwargs = launch_arguments(cfg, seq_len)
    if not isinstance(kernel, JITFunction):  # triton.jit under TRITON_INTERPRET=1 keeps its options
        kernel = JITFunction(kernel.fn, **kernel.kwargs)
    backend = make_backend(GPUTarget("cuda", cfg.arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    _, specialization, options = binder(*args, **kwargs)
    return str(specialization) + str(options)
