"""JSON records on disk: written atomically, read back with a one-line error when damaged.

Every JSON file the tool writes (stage records, checkpoint metadata, saved configs) goes through
:func:`write_json_atomic`, so a crash mid-write leaves the previous file intact, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cslrobust.errors import CheckpointError, ConfigError
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


def ensure_writable_dir(path: Path, what: str = "output folder") -> Path:
    """Make sure ``path`` is a folder this process can write into, creating it if missing.

    Called before any work starts, so an impossible output location fails in a second, not after
    hours of training. Writability is probed by creating and deleting a temporary file (permission
    bits alone miss read-only mounts and ACLs).

    Args:
        path: The folder to check.
        what: How the message names it (``"output folder"``, ``"report folder"``, ...).

    Returns:
        ``path``.

    Raises:
        ConfigError: If ``path`` is a file, cannot be created, or is not writable (one line naming
            the path and the reason).
    """
    noun = what.removesuffix(" folder")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{noun} path {str(path)!r} is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create {what} {str(path)!r}: {_mkdir_reason(path, err)}"
        ) from None
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{what} {str(path)!r} is not writable ({_reason(err)})") from None
    return path


def _reason(err: OSError) -> str:
    """``PermissionError`` -> ``"permission denied"`` (the OS message, lower case, no path)."""
    return (err.strerror or type(err).__name__).lower()


def _mkdir_reason(path: Path, err: OSError) -> str:
    """Why ``mkdir -p path`` failed: the ancestor that is a file, else the OS message."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                return f"{str(parent)!r} is a file"
            break
    return _reason(err)
