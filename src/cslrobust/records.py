"""JSON records on disk: written atomically, read back with a one-line error when damaged.

Every JSON file the tool writes (stage records, checkpoint metadata, saved configs) goes through
:func:`write_json_atomic`, so a crash mid-write leaves the previous file intact, never half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cslrobust.errors import CheckpointError


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file, ``fsync`` and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def read_json_record(path: Path, *, what: str = "record") -> dict[str, Any]:
    """Read a JSON object written by :func:`write_json_atomic`.

    Raises:
        CheckpointError: If the file is missing, not JSON, or not an object (one line, naming it).
    """
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{what} {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {str(path)!r} must hold a JSON object")
    return data
