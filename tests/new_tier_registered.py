"""Importing this module registers the toy tier of ``tests/new_tier_def.py`` (for a process that
must know it from its start, such as the kernel report's compile worker)."""

import new_tier_def

new_tier_def.register()
