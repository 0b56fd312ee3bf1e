"""The results database of a study: append-only long-format rows plus per-cell stage markers.

Storage is addressed by URL. ``sqlite:///path/to/results.db`` (default: ``results.db`` beside the study
file) is implemented with the standard library; the file is opened in WAL mode and **every stage's rows and
its completion marker are written in one transaction**, so a runner killed at any moment (even SIGKILL)
leaves either the whole stage or nothing, and re-running it never duplicates rows (a UNIQUE key backs this
up). The schema is plain SQL so that a PostgreSQL backend can be added behind the same :class:`ResultsStore`
methods.

Tables:
    cells(cell_id PK, study, method, seed, config, status, stage, pid, host, error, updated_at)
    stages(cell_id, stage, completed_at, seconds, PK(cell_id, stage))  (seconds: the stage's
        compute time; NULL for stages committed before it was recorded, added to older databases
        on opening)
    results(id PK, cell_id, stage, metric, attack, norm, eps, corruption, severity, epoch, value,
            extra, git_sha, created_at, UNIQUE(cell_id, stage, metric, attack, norm, eps, corruption,
            severity, epoch))
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cslrobust.errors import ConfigError
from cslrobust.records import ensure_writable_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    study TEXT NOT NULL,
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    stage TEXT,
    pid INTEGER,
    host TEXT,
    error TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stages (
    cell_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    completed_at TEXT NOT NULL,
    seconds REAL,
    PRIMARY KEY (cell_id, stage)
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cell_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    metric TEXT NOT NULL,
    attack TEXT NOT NULL DEFAULT '',
    norm TEXT NOT NULL DEFAULT '',
    eps REAL NOT NULL DEFAULT -1,
    corruption TEXT NOT NULL DEFAULT '',
    severity INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT -1,
    value REAL,
    extra TEXT,
    git_sha TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (cell_id, stage, metric, attack, norm, eps, corruption, severity, epoch)
);
CREATE INDEX IF NOT EXISTS results_cell ON results (cell_id, stage);
"""

# Condition columns of a result row and their "not applicable" defaults (NULLs would defeat UNIQUE).
CONDITIONS: dict[str, Any] = {
    "attack": "",
    "norm": "",
    "eps": -1.0,
    "corruption": "",
    "severity": 0,
    "epoch": -1,
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CellStatus:
    """One row of ``cslrobust study status``."""

    cell_id: str
    method: str
    seed: int
    state: str  # done | running | failed | interrupted | pending
    stage: str | None
    stages_done: tuple[str, ...]
    error: str | None


def sqlite_path(url: str, base: Path) -> Path:
    """The file of a ``sqlite:///path`` URL (relative paths are relative to ``base``).

    Raises:
        ConfigError: For any other scheme.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or not url.removeprefix(prefix).strip():
        raise ConfigError(
            f"storage URL {url!r} is not supported; expected sqlite:///path/to/results.db "
            "(a relative path is relative to output_dir)"
        )
    path = Path(url.removeprefix(prefix))
    return path if path.is_absolute() else base / path


class ResultsStore:
    """SQLite-backed results store (see module docstring).

    Args:
        path: Database file (created with its folder if missing).

    Raises:
        ConfigError: If the folder cannot be created or written, ``path`` is a folder, or SQLite
            cannot open it as a database (one line naming the file).
    """

    def __init__(self, path: Path) -> None:
        ensure_writable_dir(path.parent, "results database folder")
        if path.is_dir():
            raise ConfigError(f"results database {str(path)!r} is a folder, expected a SQLite file")
        self.path = path
        try:
            self._conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        except sqlite3.Error as err:
            raise ConfigError(f"results database {str(path)!r} cannot be opened: {err}") from None
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            self._upgrade()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise ConfigError(
                f"results database {str(path)!r} cannot be used: {err}; expected a SQLite file "
                "written by this tool"
            ) from None

    def _upgrade(self) -> None:
        """Add the columns of later versions to an older database (its rows stay as they were)."""
        columns = {r["name"] for r in self._conn.execute("PRAGMA table_info(stages)").fetchall()}
        if "seconds" not in columns:
            try:
                self._conn.execute("ALTER TABLE stages ADD COLUMN seconds REAL")
            except sqlite3.OperationalError as err:  # another process added it just now
                if "duplicate column" not in str(err):
                    raise

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locking) transaction, committed on success, rolled back on error."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- cells -------------------------------------------------------------------------------
    def register_cell(
        self, cell_id: str, study: str, method: str, seed: int, config: dict[str, Any]
    ) -> None:
        """Insert a cell if it is new (idempotent)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO cells (cell_id, study, method, seed, config, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (cell_id, study, method, seed, json.dumps(config, sort_keys=True), _now()),
            )

    def mark_running(self, cell_id: str, stage: str) -> None:
        """Record that this process is running ``stage`` of the cell."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE cells SET status='running', stage=?, pid=?, host=?, error=NULL, updated_at=? "
                "WHERE cell_id=?",
                (stage, os.getpid(), socket.gethostname(), _now(), cell_id),
            )

    def mark_failed(self, cell_id: str, stage: str, error: str) -> None:
        """Record a failed stage with its one-line error."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE cells SET status='failed', stage=?, error=?, updated_at=? WHERE cell_id=?",
                (stage, error.splitlines()[0] if error else "", _now(), cell_id),
            )

    def mark_done(self, cell_id: str) -> None:
        """Record that every stage of the cell is complete."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE cells SET status='done', stage=NULL, error=NULL, updated_at=? WHERE cell_id=?",
                (_now(), cell_id),
            )

    def completed_stages(self, cell_id: str) -> set[str]:
        """Stages of the cell whose rows are committed."""
        rows = self._conn.execute("SELECT stage FROM stages WHERE cell_id=?", (cell_id,)).fetchall()
        return {r["stage"] for r in rows}

    def cell_statuses(self, expected: dict[str, dict[str, str]]) -> list[CellStatus]:
        """Status of each cell given its expected stage keys (``{cell_id: {stage: key}}``).

        A cell is done when every expected stage key is committed; a cell marked running whose process
        is gone (same host) is reported as interrupted.
        """
        out = []
        host = socket.gethostname()
        for cell_id, keys in expected.items():
            row = self._conn.execute("SELECT * FROM cells WHERE cell_id=?", (cell_id,)).fetchone()
            committed = self.completed_stages(cell_id)
            finished = tuple(stage for stage, key in keys.items() if key in committed)
            if row is None:
                out.append(CellStatus(cell_id, "?", -1, "pending", None, finished, None))
                continue
            if len(finished) == len(keys):
                state = "done"
            elif row["status"] == "running":
                alive = row["host"] != host or _pid_alive(row["pid"])
                state = "running" if alive else "interrupted"
            elif row["status"] == "failed":
                state = "failed"
            else:
                state = "pending"
            out.append(
                CellStatus(
                    cell_id, row["method"], row["seed"], state, row["stage"], finished, row["error"]
                )
            )
        return out

    # -- results -----------------------------------------------------------------------------
    def commit_stage(
        self,
        cell_id: str,
        stage: str,
        rows: Sequence[dict[str, Any]],
        git_sha: str,
        seconds: float | None = None,
    ) -> None:
        """Write a stage's rows and its completion marker in one transaction (replacing a previous run).

        Each row has ``metric`` and ``value`` plus any of the condition keys in :data:`CONDITIONS`;
        other keys go to the JSON ``extra`` column. ``seconds`` is the stage's compute time.
        """
        now = _now()
        with self.transaction() as conn:
            conn.execute("DELETE FROM results WHERE cell_id=? AND stage=?", (cell_id, stage))
            for row in rows:
                cond = {k: row.get(k, default) for k, default in CONDITIONS.items()}
                cond = {
                    k: (default if v is None else v)
                    for (k, default), v in zip(CONDITIONS.items(), cond.values(), strict=True)
                }
                extra = {
                    k: v
                    for k, v in row.items()
                    if k not in CONDITIONS and k not in ("metric", "value")
                }
                value = row["value"]
                conn.execute(
                    "INSERT INTO results (cell_id, stage, metric, attack, norm, eps, corruption, severity, "
                    "epoch, value, extra, git_sha, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        cell_id,
                        stage,
                        row["metric"],
                        cond["attack"],
                        cond["norm"],
                        float(cond["eps"]),
                        cond["corruption"],
                        int(cond["severity"]),
                        int(cond["epoch"]),
                        None if value is None else float(value),
                        json.dumps(extra, sort_keys=True, default=str) if extra else None,
                        git_sha,
                        now,
                    ),
                )
            conn.execute(
                "INSERT OR REPLACE INTO stages (cell_id, stage, completed_at, seconds) "
                "VALUES (?, ?, ?, ?)",
                (cell_id, stage, now, seconds),
            )

    def rows(self, cell_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """All result rows (optionally of some cells) joined with their cell's method and seed."""
        query = "SELECT r.*, c.method, c.seed, c.study FROM results r JOIN cells c USING (cell_id)"
        params: tuple[Any, ...] = ()
        if cell_ids is not None:
            query += f" WHERE r.cell_id IN ({','.join('?' * len(cell_ids))})"
            params = tuple(cell_ids)
        out = []
        for r in self._conn.execute(query + " ORDER BY r.id", params).fetchall():
            row = dict(r)
            extra = row.pop("extra")
            if extra:
                row.update(json.loads(extra))
            out.append(row)
        return out

    def stage_seconds(self, keys: dict[str, Sequence[str]]) -> tuple[float, int]:
        """Summed compute time of the committed stages ``{cell_id: [stage key, ...]}``.

        Returns:
            The seconds summed over the stages that recorded theirs, and how many committed stages
            did not (committed before durations were stored).
        """
        total, unknown = 0.0, 0
        for cell_id, stages in keys.items():
            for stage in stages:
                row = self._conn.execute(
                    "SELECT seconds FROM stages WHERE cell_id=? AND stage=?", (cell_id, stage)
                ).fetchone()
                if row is None:
                    continue
                if row["seconds"] is None:
                    unknown += 1
                else:
                    total += float(row["seconds"])
        return total, unknown

    def count_rows(self) -> int:
        """Number of result rows."""
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pack_bits(mask: Any) -> str:
    """Encode a boolean vector compactly (base64 of packed bits) for per-image bootstrap later."""
    bits = np.packbits(np.asarray(mask, dtype=bool))
    return base64.b64encode(bits.tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)
