"""Importing this module registers the test cell of ``tests/new_cell_def.py`` (for a process
that must know it from its start, such as the kernel report's compile worker)."""

import new_cell_def

new_cell_def.register()
