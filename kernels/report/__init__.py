"""Kernel report: compile the recurrence kernels of every registered tier
(:mod:`fastrnn.kernels.tiers`) for sm_90 / sm_80 on a machine without a GPU.

Each configuration is compiled with Triton's own toolchain (``triton.compile`` of an
``ASTSource`` for a ``GPUTarget``) into a real cubin, which is then read with the CUDA tools that
ship inside Triton (``cuobjdump -res-usage`` and ``nvdisasm``):

* registers per thread, stack frame bytes and ptxas' spill store/load bytes,
* local-memory instructions in the SASS (``LDL``/``STL``), and how many sit inside a loop: ptxas
  sometimes parks a few bytes on the stack before/after the time loop (at register-occupancy
  cliffs), which costs nothing per step; local memory inside the loop is a real spill,
* shared memory (``compiled.metadata.shared``: static and dynamic, which cuobjdump does not show),
* tensor-core instructions (``HMMA``/``HGMMA``/``DMMA``/...), a per-step estimate, and the
  compile time.

The kernel arguments are not written down here a second time: the tiers' launchers build every
launch as data (their registered ``forward_launch``/``backward_launch``, with the configuration of
:func:`~fastrnn.kernels.tiers.plan_layer`); the report asks them for it on ``meta`` tensors, so it sees
exactly the positional arguments, flags (``HAS_H0``, ``SAVE``, ...) and constexprs a real launch
passes.  Triton's own binder then turns them into the ``signature``/``constexprs``/``attrs`` the
JIT would use (its value-1 and divisible-by-16 specialisation, honouring the kernel's
``do_not_specialize``).

One module per job:

* :mod:`.configs` -- what to compile: :class:`KernelConfig`, the sweeps, the launch it stands for;
* :mod:`.sass` -- reading the cubin and its SASS (registers, spills, loops, tensor-core ops);
* :mod:`.cost` -- the per-step model from the TTIR and the SASS loops;
* :mod:`.pool` -- compiling in worker subprocesses, several at a time, through a disk cache;
* :mod:`.tables` -- the table, the comparison with a baseline, the step estimates;
* :mod:`.limits` -- a tier's size limits as a table (``docs/tiers.md``);
* :mod:`.cli` -- the command line.

Command line (``python -m fastrnn.kernels.report --help``)::

    python -m fastrnn.kernels.report                       # heaviest variant, every cell/dtype
    python -m fastrnn.kernels.report --variants all --jobs 2
    python -m fastrnn.kernels.report --beyond-limit --num-warps 4 8 --hidden 128 256
    python -m fastrnn.kernels.report --tiers 2 3 --hidden 128 1024 --arch 90   # tiers 2 and 3
    python -m fastrnn.kernels.report --no-cache            # compile again what the cache holds

A tier built by nvcc instead (the cluster tier, ``--tiers 4``) compiles and reads its own rows
with the same keys (``Tier.report_rows``), for the architectures its configuration lists
(``ARCHS``).

Compiling needs real ``JITFunction`` kernels, so :func:`compile_report` compiles in worker
subprocesses started with ``TRITON_INTERPRET=0`` (this process may interpret, see
:mod:`fastrnn.kernels._runtime`); a compiler crash (LLVM assertions abort the process) then costs
only the row of its config.  Compiled rows are kept on disk (``$FASTRNN_REPORT_CACHE``, default
``~/.cache/fastrnn/report/``), keyed by the kernel sources, the report's code, the Triton version
and the configuration.  Works with triton 3.6 and 3.9.
"""

from .cli import main
from .configs import (
    CELLS,
    DTYPES,
    EXTRA_CELLS,
    KERNELS,
    SHARED_LIMIT,
    KernelConfig,
    compile_source,
    configs,
    launch_arguments,
    launch_config,
    report_cells,
    specialization_key,
)
from .cost import CLOCK_GHZ, CYCLES, loads_ahead, step_profile
from .pool import cache_dir, cache_key, compile_report
from .sass import REGISTERS_PER_SM, analyse_cubin, missing_tools, nvidia_tool, ptxas_spills, registers_fit
from .tables import COMPARED, compare, format_table, row_key, triton_minor, write_estimates

__all__ = [
    "CELLS",
    "CLOCK_GHZ",
    "COMPARED",
    "CYCLES",
    "DTYPES",
    "EXTRA_CELLS",
    "KERNELS",
    "REGISTERS_PER_SM",
    "SHARED_LIMIT",
    "KernelConfig",
    "analyse_cubin",
    "cache_dir",
    "cache_key",
    "compare",
    "compile_report",
    "compile_source",
    "configs",
    "format_table",
    "launch_arguments",
    "launch_config",
    "loads_ahead",
    "main",
    "missing_tools",
    "nvidia_tool",
    "ptxas_spills",
    "registers_fit",
    "report_cells",
    "row_key",
    "specialization_key",
    "step_profile",
    "triton_minor",
    "write_estimates",
]
