"""Make the multi-process helpers importable by name in spawned child processes.

Spawned processes unpickle worker functions by module name; ``sys.path`` is passed on to them, so
modules in this folder (``dist_spawn``, ``dist_workers``) are importable there too.
"""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
