"""fastrnn's Triton kernels and their launchers (installed as ``fastrnn.kernels``).

Importing this package decides, once, whether kernels are compiled or interpreted
(see :mod:`._runtime`).  No ``nn.Module`` and no autograd here.
"""

from . import _runtime  # noqa: F401  (must run before any @triton.jit below)
