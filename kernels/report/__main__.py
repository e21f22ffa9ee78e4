"""``python -m fastrnn.kernels.report``: see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
