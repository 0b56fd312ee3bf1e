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
from cslrobust.run_files import Record, Spec, validate


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


def read_json_record(
    path: Path, *, what: str = "record", spec: Spec | None = None
) -> dict[str, Any]:
    """Read a JSON object written by :func:`write_json_atomic` and check it against ``spec``.

    Args:
        path: The file.
        what: What it is, for the error message (e.g. ``"attack record"``).
        spec: What this version writes there (see :mod:`cslrobust.run_files`); default: any object.

    Raises:
        CheckpointError: If the file is missing, not UTF-8 JSON, not an object, or a field does not
            fit ``spec`` (one line naming the file and the field).
    """
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
        raise CheckpointError(f"{what} {str(path)!r} is not valid JSON: {reason}") from None
    except OSError as err:
        raise CheckpointError(f"{what} {str(path)!r} cannot be read: {err.strerror}") from None
    validate(data, spec or Record(), path, what=what)
    return dict(data)
