"""fastrnn's benchmark suite: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Modules: :mod:`~benchmarks.cases` (rows, case kinds, suites, filters), :mod:`~benchmarks.rnn` (the
recurrent-stack kind and its providers), :mod:`~benchmarks.loop` (the PyTorch step-loop reference),
:mod:`~benchmarks.timing`, :mod:`~benchmarks.floors` (machine figures and time floors),
:mod:`~benchmarks.results` (JSON/CSV/markdown), :mod:`~benchmarks.plot`, :mod:`~benchmarks.cli`.
"""

# fastrnn decides at import of its kernel runtime whether Triton interprets (no CUDA device) by
# setting TRITON_INTERPRET; that only works if nothing imported Triton before (torch.compile's
# Inductor does).  So let fastrnn decide first, before any provider runs.
try:
    from fastrnn.kernels import _runtime as _fastrnn_runtime  # noqa: F401
except ImportError:  # fastrnn absent: plotting a results.json still works
    pass
