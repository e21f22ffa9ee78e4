"""``fastrnn.kernels`` in a source checkout: the kernels live in the repository's top-level
``kernels/`` folder, which ``setup.py`` installs as ``fastrnn.kernels``.  Run from a checkout (the
tests, ``python -m benchmarks``), ``fastrnn`` is this folder and this package is that one: its
path is ``kernels/`` and its initialisation is ``kernels/__init__.py``'s."""

from pathlib import Path as _Path

__path__ = [str(_Path(__file__).resolve().parents[2] / "kernels")]
_init = _Path(__path__[0]) / "__init__.py"
exec(compile(_init.read_text(), str(_init), "exec"))
