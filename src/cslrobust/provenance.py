"""Provenance recorded with every artifact: git SHA, versions, time."""

from __future__ import annotations

import datetime as dt
import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import cslrobust


@functools.cache
def git_sha() -> str:
    """The git commit of the cslrobust source tree, with ``-dirty`` if modified; ``unknown`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    """Versions and time to store beside results."""
    return {
        "cslrobust": cslrobust.__version__,
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
