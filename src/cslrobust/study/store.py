"""The results database of a study: long-format rows, per-cell stage markers and stage leases.

Storage is addressed by URL and implemented once on SQLAlchemy Core, with the same schema for
``sqlite:///path/to/results.db`` (default: ``results.db`` in the study's ``output_dir``) and
``postgresql://user:password@host:port/database`` (driver psycopg 3; ``postgresql+psycopg://`` is the
same). **Every stage's rows and its completion marker are written in one transaction**, so a runner
killed at any moment (even SIGKILL) leaves either the whole stage or nothing, and re-running it never
duplicates rows (a UNIQUE key backs this up). SQLite files are opened in WAL mode and every write
transaction starts with ``BEGIN IMMEDIATE`` (the write lock is taken at the start, so two writers
never deadlock on a lock upgrade).

Several workers (processes, machines) may share one store. A worker **claims** a (cell, stage key)
with a lease before running the stage, renews it with heartbeats, and commits the stage's rows only
while the lease is still its own (fencing, checked in the commit's transaction); the commit releases
the lease. Lease times are judged by the database's clock (epoch seconds computed in the statement
that writes them), never by a worker's clock.

Tables (schema version 2; version 1 is a database without ``schema_version`` and ``leases``, possibly
without ``stages.seconds``, and is upgraded in place on opening):
    schema_version(version)
    cells(cell_id PK, study, method, seed, config, status, stage, pid, host, error, updated_at)
    stages(cell_id, stage, completed_at, seconds, PK(cell_id, stage))  (seconds: the stage's
        compute time; NULL for stages committed before it was recorded)
    results(id PK, cell_id, stage, metric, attack, norm, eps, corruption, severity, epoch, value,
            extra, git_sha, created_at, UNIQUE(cell_id, stage, metric, attack, norm, eps, corruption,
            severity, epoch))
    leases(cell_id, stage_key, worker, host, pid, machine, token, acquired_at, heartbeat_at,
           expires_at, PK(cell_id, stage_key))  (times: epoch seconds of the database clock;
           machine: host + pid namespace, where a dead pid proves the holder is gone)
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import secrets
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from cslrobust.errors import ConfigError, CslRobustError
from cslrobust.records import ensure_writable_dir
from cslrobust.study.lock import pid_alive

SCHEMA_VERSION = 2
CONNECT_TIMEOUT_S = 10
_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgresql+psycopg://")
_SUPPORTED = (
    "expected sqlite:///path/to/results.db (a relative path is relative to output_dir) or "
    "postgresql://user:password@host:port/database"
)

METADATA = sa.MetaData()
SCHEMA_VERSION_TABLE = sa.Table(
    "schema_version", METADATA, sa.Column("version", sa.Integer, nullable=False)
)
CELLS = sa.Table(
    "cells",
    METADATA,
    sa.Column("cell_id", sa.Text, primary_key=True),
    sa.Column("study", sa.Text, nullable=False),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("stage", sa.Text),
    sa.Column("pid", sa.Integer),
    sa.Column("host", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.Text, nullable=False),
)
STAGES_TABLE = sa.Table(
    "stages",
    METADATA,
    sa.Column("cell_id", sa.Text, primary_key=True),
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("completed_at", sa.Text, nullable=False),
    sa.Column("seconds", sa.Double),
)
RESULTS = sa.Table(
    "results",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cell_id", sa.Text, nullable=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("metric", sa.Text, nullable=False),
    sa.Column("attack", sa.Text, nullable=False, server_default=""),
    sa.Column("norm", sa.Text, nullable=False, server_default=""),
    sa.Column("eps", sa.Double, nullable=False, server_default="-1"),
    sa.Column("corruption", sa.Text, nullable=False, server_default=""),
    sa.Column("severity", sa.Integer, nullable=False, server_default="0"),
    sa.Column("epoch", sa.Integer, nullable=False, server_default="-1"),
    sa.Column("value", sa.Double),
    sa.Column("extra", sa.Text),
    sa.Column("git_sha", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.UniqueConstraint(
        "cell_id", "stage", "metric", "attack", "norm", "eps", "corruption", "severity", "epoch"
    ),
    sa.Index("results_cell", "cell_id", "stage"),
    sqlite_autoincrement=True,
)
LEASES = sa.Table(
    "leases",
    METADATA,
    sa.Column("cell_id", sa.Text, primary_key=True),
    sa.Column("stage_key", sa.Text, primary_key=True),
    sa.Column("worker", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column(
        "machine", sa.Text, nullable=False
    ),  # host + pid namespace: where `pid` means something
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("acquired_at", sa.Double, nullable=False),
    sa.Column("heartbeat_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
)

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


class LeaseLost(CslRobustError):
    """This worker's lease on a stage expired and another worker took it: its results are refused."""


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


@dataclass(frozen=True)
class Lease:
    """A stage lease as stored (times: epoch seconds of the database clock).

    Attributes:
        now: The database clock when the lease was read; ``expires_at - now`` is the time left.
    """

    cell_id: str
    stage_key: str
    worker: str
    host: str
    pid: int
    machine: str
    token: str
    acquired_at: float
    heartbeat_at: float
    expires_at: float
    now: float

    @property
    def expired(self) -> bool:
        """Whether the lease may be taken over by another worker."""
        return self.expires_at < self.now

    @property
    def stage(self) -> str:
        """The stage name of the key (``attack`` of ``attack:1a2b``)."""
        return self.stage_key.split(":", 1)[0]


@dataclass(frozen=True)
class Claim:
    """A lease this worker holds (what commit, heartbeat and release need)."""

    cell_id: str
    stage_key: str
    token: str
    took_over: str | None = None  # the expired holder ("worker on host") this claim replaced


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # malformed: mask what looks like user:password@
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def storage_url(url: str | None, base: Path) -> str:
    """The normalised SQLAlchemy URL of a storage setting (default ``sqlite:///results.db``).

    ``sqlite:///relative/path`` is resolved against ``base``; ``postgresql://`` URLs get the psycopg
    driver (``postgresql+psycopg://``).

    Raises:
        ConfigError: For another scheme or a malformed URL (one line naming it, password masked).
    """
    url = url or f"{_SQLITE_PREFIX}results.db"
    if url.startswith(_SQLITE_PREFIX):
        path = url.removeprefix(_SQLITE_PREFIX)
        if not path.strip():
            raise ConfigError(f"storage URL {url!r} is not supported; {_SUPPORTED}")
        file = Path(path) if Path(path).is_absolute() else base / path
        return f"{_SQLITE_PREFIX}{file}"
    if url.startswith(_POSTGRES_SCHEMES):
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            raise ConfigError(f"storage URL {mask_url(url)!r} is malformed; {_SUPPORTED}") from None
        if not parsed.host or not parsed.database:
            raise ConfigError(
                f"storage URL {mask_url(url)!r} names no host or database; {_SUPPORTED}"
            )
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ConfigError(f"storage URL {mask_url(url)!r} is not supported; {_SUPPORTED}")


def sqlite_file(url: str) -> Path | None:
    """The database file of a normalised ``sqlite:///`` URL; None for a server URL."""
    return Path(url.removeprefix(_SQLITE_PREFIX)) if url.startswith(_SQLITE_PREFIX) else None


def sqlite_path(url: str, base: Path) -> Path:
    """The file of a ``sqlite:///path`` URL (relative paths are relative to ``base``).

    Raises:
        ConfigError: For any other scheme.
    """
    file = sqlite_file(storage_url(url, base))
    if file is None:
        raise ConfigError(f"storage URL {mask_url(url)!r} is not a sqlite:/// URL")
    return file


def _machine() -> str:
    """Where this process's pid is meaningful: host name and pid namespace (containers differ)."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}/{namespace}"


_NETWORK = ("connection refused", "connection timed out", "unknown host")


def abandoned(lease: Lease) -> bool:
    """Whether a lease's holder is a process of this machine that no longer exists."""
    return lease.machine == _machine() and not pid_alive(lease.pid)


def _reason(err: BaseException) -> str:
    """One short line out of a driver's (often multi-line) connection error."""
    text = " ".join(str(getattr(err, "orig", None) or err).split())
    lowered = text.lower()
    for needle, short in (
        ("connection refused", "connection refused"),
        ("timeout expired", "connection timed out"),
        ("timed out", "connection timed out"),
        ("could not translate host name", "unknown host"),
        ("name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
    ):
        if needle in lowered:
            return short
    for marker in ("FATAL:", "ERROR:"):
        if marker in text:
            return text.split(marker, 1)[1].strip()
    return text.split(" (Background on this error")[0][:300]


class ResultsStore:
    """The results store of a study (see module docstring).

    Args:
        location: A SQLite database file, or a storage URL (``sqlite:///...`` with an absolute
            path, ``postgresql://...``); see :func:`storage_url`.

    Raises:
        ConfigError: If a SQLite file's folder cannot be created or written, the path is a folder or
            not a database, a server cannot be reached or refuses the credentials, or the database
            was written by a newer version (one line naming the file or the URL, password masked).
    """

    def __init__(self, location: Path | str) -> None:
        url = (
            f"{_SQLITE_PREFIX}{location}"
            if isinstance(location, Path)
            else storage_url(location, Path.cwd())
        )
        self.url = url
        self.path = sqlite_file(url)
        self.shown = repr(str(self.path)) if self.path is not None else mask_url(url)
        if self.path is not None:
            ensure_writable_dir(self.path.parent, "results database folder")
            if self.path.is_dir():
                raise ConfigError(
                    f"results database {str(self.path)!r} is a folder, expected a SQLite file"
                )
            self._engine = self._sqlite_engine(url)
        else:
            self._engine = sa.create_engine(
                url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, pool_pre_ping=True
            )
        self.dialect = self._engine.dialect.name
        try:
            self._upgrade()
        except ConfigError:
            self._engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as err:
            self._engine.dispose()
            if self.path is not None:
                raise ConfigError(
                    f"results database {self.shown} cannot be used: {_reason(err)}; expected a "
                    "SQLite file written by this tool"
                ) from None
            reason = _reason(err)
            verdict = "unreachable" if reason in _NETWORK else "cannot be used"
            raise ConfigError(f"results store {self.shown} {verdict}: {reason}") from None

    @staticmethod
    def _sqlite_engine(url: str) -> Engine:
        """A SQLite engine in WAL mode whose transactions take the write lock when they begin."""
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, record: Any) -> None:
            del record
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            read = conn.get_execution_options().get("cslrobust_read", False)
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

        return engine

    def _upgrade(self) -> None:
        """Create the tables, or bring an older database to :data:`SCHEMA_VERSION` in place."""
        with self.transaction() as conn:
            if self.dialect == "postgresql":  # serialise concurrent first openings (DDL races)
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(740181)"))
            inspector = sa.inspect(conn)
            existing = set(inspector.get_table_names())
            if "schema_version" in existing:
                found = conn.execute(sa.select(sa.func.max(SCHEMA_VERSION_TABLE.c.version)))
                version = found.scalar()
                if version is not None and version > SCHEMA_VERSION:
                    raise ConfigError(
                        f"results database {self.shown} has schema version {version}, newer than "
                        f"this cslrobust's {SCHEMA_VERSION}; upgrade cslrobust"
                    )
                if version == SCHEMA_VERSION:
                    return
            METADATA.create_all(conn)  # the tables missing (all of them for a new database)
            if "stages" in existing:  # version 1: stages.seconds came later
                columns = {c["name"] for c in inspector.get_columns("stages")}
                if "seconds" not in columns:
                    conn.execute(sa.text("ALTER TABLE stages ADD COLUMN seconds DOUBLE PRECISION"))
            conn.execute(sa.delete(SCHEMA_VERSION_TABLE))
            conn.execute(sa.insert(SCHEMA_VERSION_TABLE).values(version=SCHEMA_VERSION))

    def schema_version(self) -> int:
        """The schema version of the database."""
        with self._read() as conn:
            found = conn.execute(sa.select(sa.func.max(SCHEMA_VERSION_TABLE.c.version)))
            return int(found.scalar_one())

    def close(self) -> None:
        """Close every connection."""
        self._engine.dispose()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``), committed on success, else rolled back."""
        with self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction (SQLite: deferred, takes no write lock)."""
        with self._engine.connect() as conn:
            conn.execution_options(cslrobust_read=True)
            with conn.begin():
                yield conn

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT construct (with ``on_conflict_do_*``)."""
        module = pg_dialect if self.dialect == "postgresql" else sqlite_dialect
        return module.insert(table)

    def _db_now(self) -> sa.ColumnElement[float]:
        """The database clock as epoch seconds (the clock every lease is judged by)."""
        if self.dialect == "postgresql":
            return sa.literal_column(
                "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)", sa.Double
            )
        return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Double)

    # -- cells -------------------------------------------------------------------------------
    def register_cell(
        self, cell_id: str, study: str, method: str, seed: int, config: dict[str, Any]
    ) -> None:
        """Insert a cell if it is new (idempotent)."""
        statement = (
            self._insert(CELLS)
            .values(
                cell_id=cell_id,
                study=study,
                method=method,
                seed=seed,
                config=json.dumps(config, sort_keys=True),
                updated_at=_now(),
            )
            .on_conflict_do_nothing(index_elements=["cell_id"])
        )
        with self.transaction() as conn:
            conn.execute(statement)

    def _update_cell(self, cell_id: str, **values: Any) -> None:
        with self.transaction() as conn:
            conn.execute(
                sa.update(CELLS)
                .where(CELLS.c.cell_id == cell_id)
                .values(**values, updated_at=_now())
            )

    def mark_running(self, cell_id: str, stage: str) -> None:
        """Record that this process is running ``stage`` of the cell."""
        self._update_cell(
            cell_id,
            status="running",
            stage=stage,
            pid=os.getpid(),
            host=socket.gethostname(),
            error=None,
        )

    def mark_failed(self, cell_id: str, stage: str, error: str) -> None:
        """Record a failed stage with its one-line error."""
        self._update_cell(
            cell_id, status="failed", stage=stage, error=error.splitlines()[0] if error else ""
        )

    def mark_done(self, cell_id: str) -> None:
        """Record that every stage of the cell is complete."""
        self._update_cell(cell_id, status="done", stage=None, error=None)

    def completed_stages(self, cell_id: str) -> set[str]:
        """Stages of the cell whose rows are committed."""
        with self._read() as conn:
            found = conn.execute(
                sa.select(STAGES_TABLE.c.stage).where(STAGES_TABLE.c.cell_id == cell_id)
            )
            return {r.stage for r in found}

    def committed(self, cell_ids: Sequence[str] | None = None) -> set[tuple[str, str]]:
        """``(cell_id, stage key)`` of every committed stage (optionally of some cells)."""
        query = sa.select(STAGES_TABLE.c.cell_id, STAGES_TABLE.c.stage)
        if cell_ids is not None:
            query = query.where(STAGES_TABLE.c.cell_id.in_(list(cell_ids)))
        with self._read() as conn:
            return {(r.cell_id, r.stage) for r in conn.execute(query)}

    def cell_statuses(self, expected: dict[str, dict[str, str]]) -> list[CellStatus]:
        """Status of each cell given its expected stage keys (``{cell_id: {stage: key}}``).

        A cell is done when every expected stage key is committed; it is running while a worker holds a
        live lease on one of its stages; a cell marked running whose process is gone (same host) and
        that holds no live lease is reported as interrupted.
        """
        out = []
        host = socket.gethostname()
        with self._read() as conn:
            cells = {r.cell_id: r for r in conn.execute(sa.select(CELLS))}
        committed = self.committed(list(expected))
        live = {
            lease.cell_id
            for lease in self.leases(list(expected))
            if not lease.expired and not abandoned(lease)
        }
        for cell_id, keys in expected.items():
            row = cells.get(cell_id)
            finished = tuple(stage for stage, key in keys.items() if (cell_id, key) in committed)
            if row is None:
                out.append(CellStatus(cell_id, "?", -1, "pending", None, finished, None))
                continue
            if len(finished) == len(keys):
                state = "done"
            elif cell_id in live:
                state = "running"
            elif row.status == "running":
                alive = row.host != host or pid_alive(row.pid)
                state = "running" if alive else "interrupted"
            elif row.status == "failed":
                state = "failed"
            else:
                state = "pending"
            out.append(
                CellStatus(cell_id, row.method, row.seed, state, row.stage, finished, row.error)
            )
        return out

    # -- leases ------------------------------------------------------------------------------
    def claim(self, cell_id: str, stage_key: str, worker: str, lease_s: float) -> Claim | None:
        """Take the lease on a stage if it is free or expired and the stage is not committed.

        One transaction: insert the lease, or take over an expired one (compare-and-set on its
        expiry; or on its token when its holder is a process of this host that no longer exists),
        then check that the stage is still uncommitted (checked after the lease is ours,
        so a stage committed meanwhile by its previous holder is never run again).

        Returns:
            The claim, or None when another worker holds a live lease or the stage is committed.
        """
        token = secrets.token_hex(16)
        now = self._db_now()
        values = {
            "worker": worker,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "machine": _machine(),
            "token": token,
            "acquired_at": now,
            "heartbeat_at": now,
            "expires_at": now + lease_s,
        }
        insert = self._insert(LEASES).values(cell_id=cell_id, stage_key=stage_key, **values)
        upsert = insert.on_conflict_do_update(
            index_elements=["cell_id", "stage_key"],
            set_=values,
            where=LEASES.c.expires_at < now,
        ).returning(LEASES.c.token)
        key = (LEASES.c.cell_id == cell_id) & (LEASES.c.stage_key == stage_key)
        marker = (STAGES_TABLE.c.cell_id == cell_id) & (STAGES_TABLE.c.stage == stage_key)
        with self._engine.connect() as conn, conn.begin() as txn:
            previous = conn.execute(sa.select(LEASES.c.worker, LEASES.c.host).where(key)).first()
            won = conn.execute(upsert).first()
            if won is None:
                # A live lease of a process of this host that no longer exists (a worker killed
                # with SIGKILL) is taken over at once instead of after its expiry.
                holder = conn.execute(sa.select(LEASES).where(key)).first()
                if (
                    holder is not None
                    and holder.machine == values["machine"]
                    and not pid_alive(holder.pid)
                ):
                    swap = sa.update(LEASES).where(key & (LEASES.c.token == holder.token))
                    if conn.execute(swap.values(**values)).rowcount == 1:
                        previous = holder
                        won = conn.execute(sa.select(LEASES.c.token).where(key)).first()
            if won is None or won.token != token:
                txn.rollback()
                return None
            if conn.execute(sa.select(STAGES_TABLE.c.stage).where(marker)).first() is not None:
                txn.rollback()
                return None
        took_over = f"{previous.worker} on {previous.host}" if previous is not None else None
        return Claim(cell_id, stage_key, token, took_over)

    def heartbeat(self, claim: Claim, lease_s: float) -> bool:
        """Extend a held lease by ``lease_s`` from now; False if it is no longer this worker's."""
        now = self._db_now()
        with self.transaction() as conn:
            result = conn.execute(
                sa.update(LEASES)
                .where(
                    (LEASES.c.cell_id == claim.cell_id)
                    & (LEASES.c.stage_key == claim.stage_key)
                    & (LEASES.c.token == claim.token)
                )
                .values(heartbeat_at=now, expires_at=now + lease_s)
            )
            return bool(result.rowcount == 1)

    def release(self, claim: Claim) -> None:
        """Give a held lease back (no-op if it is no longer this worker's)."""
        with self.transaction() as conn:
            conn.execute(
                sa.delete(LEASES).where(
                    (LEASES.c.cell_id == claim.cell_id)
                    & (LEASES.c.stage_key == claim.stage_key)
                    & (LEASES.c.token == claim.token)
                )
            )

    def leases(self, cell_ids: Sequence[str] | None = None) -> list[Lease]:
        """Every lease (optionally of some cells), with the database clock's time of reading."""
        query = sa.select(LEASES, self._db_now().label("now")).order_by(
            LEASES.c.acquired_at, LEASES.c.cell_id
        )
        if cell_ids is not None:
            query = query.where(LEASES.c.cell_id.in_(list(cell_ids)))
        with self._read() as conn:
            return [Lease(**row._asdict()) for row in conn.execute(query)]

    def release_leases(
        self,
        cell_id: str | None = None,
        stage: str | None = None,
        *,
        force: bool = False,
        cell_ids: Sequence[str] | None = None,
    ) -> list[Lease]:
        """Delete leases (of a cell, of one of its stages); expired ones only unless ``force``.

        Args:
            cell_id: Only this cell's leases.
            stage: Only the leases of this stage (name or full key).
            force: Also live leases (their holders' commits are then refused).
            cell_ids: Only the leases of these cells.

        Returns:
            The leases deleted.
        """
        now = self._db_now()
        condition: sa.ColumnElement[bool] = sa.true()
        if cell_id is not None:
            condition = condition & (LEASES.c.cell_id == cell_id)
        if cell_ids is not None:
            condition = condition & LEASES.c.cell_id.in_(list(cell_ids))
        if stage is not None:
            condition = condition & (
                (LEASES.c.stage_key == stage) | LEASES.c.stage_key.startswith(f"{stage}:")
            )
        if not force:
            condition = condition & (LEASES.c.expires_at < now)
        with self.transaction() as conn:
            gone = [
                Lease(**row._asdict())
                for row in conn.execute(sa.select(LEASES, now.label("now")).where(condition))
            ]
            for lease in gone:
                conn.execute(
                    sa.delete(LEASES).where(
                        (LEASES.c.cell_id == lease.cell_id)
                        & (LEASES.c.stage_key == lease.stage_key)
                        & (LEASES.c.token == lease.token)
                    )
                )
        return gone

    # -- results -----------------------------------------------------------------------------
    def commit_stage(
        self,
        cell_id: str,
        stage: str,
        rows: Sequence[dict[str, Any]],
        git_sha: str,
        seconds: float | None = None,
        claim: Claim | None = None,
    ) -> None:
        """Write a stage's rows and its completion marker in one transaction (replacing a previous run).

        Each row has ``metric`` and ``value`` plus any of the condition keys in :data:`CONDITIONS`;
        other keys go to the JSON ``extra`` column. ``seconds`` is the stage's compute time. With a
        ``claim``, the same transaction first checks that the lease is still this worker's (and
        locks it), then releases it with the commit.

        Raises:
            LeaseLost: If ``claim`` no longer holds the lease (nothing is written).
        """
        now = _now()
        records = []
        for row in rows:
            cond = {
                k: (default if row.get(k) is None else row[k]) for k, default in CONDITIONS.items()
            }
            extra = {
                k: v for k, v in row.items() if k not in CONDITIONS and k not in ("metric", "value")
            }
            value = row["value"]
            records.append(
                {
                    "cell_id": cell_id,
                    "stage": stage,
                    "metric": row["metric"],
                    "attack": cond["attack"],
                    "norm": cond["norm"],
                    "eps": float(cond["eps"]),
                    "corruption": cond["corruption"],
                    "severity": int(cond["severity"]),
                    "epoch": int(cond["epoch"]),
                    "value": None if value is None else float(value),
                    "extra": json.dumps(extra, sort_keys=True, default=str) if extra else None,
                    "git_sha": git_sha,
                    "created_at": now,
                }
            )
        marker = self._insert(STAGES_TABLE).values(
            cell_id=cell_id, stage=stage, completed_at=now, seconds=seconds
        )
        marker = marker.on_conflict_do_update(
            index_elements=["cell_id", "stage"],
            set_={"completed_at": marker.excluded.completed_at, "seconds": marker.excluded.seconds},
        )
        with self.transaction() as conn:
            if claim is not None:
                held = (
                    (LEASES.c.cell_id == cell_id)
                    & (LEASES.c.stage_key == stage)
                    & (LEASES.c.token == claim.token)
                )
                found = conn.execute(sa.select(LEASES.c.token).where(held).with_for_update())
                if found.first() is None:
                    raise LeaseLost(
                        f"lease on {stage} of cell {cell_id[:8]} was taken by another worker; "
                        "its results are discarded"
                    )
            conn.execute(
                sa.delete(RESULTS).where(
                    (RESULTS.c.cell_id == cell_id) & (RESULTS.c.stage == stage)
                )
            )
            if records:
                conn.execute(sa.insert(RESULTS), records)
            conn.execute(marker)
            if claim is not None:
                conn.execute(
                    sa.delete(LEASES).where(
                        (LEASES.c.cell_id == cell_id) & (LEASES.c.stage_key == stage)
                    )
                )

    def rows(self, cell_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """All result rows (optionally of some cells) joined with their cell's method and seed."""
        query = sa.select(RESULTS, CELLS.c.method, CELLS.c.seed, CELLS.c.study).join(
            CELLS, CELLS.c.cell_id == RESULTS.c.cell_id
        )
        if cell_ids is not None:
            query = query.where(RESULTS.c.cell_id.in_(list(cell_ids)))
        out = []
        with self._read() as conn:
            for r in conn.execute(query.order_by(RESULTS.c.id)):
                row = dict(r._mapping)
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
        wanted = {(cell_id, stage) for cell_id, stages in keys.items() for stage in stages}
        query = sa.select(STAGES_TABLE.c.cell_id, STAGES_TABLE.c.stage, STAGES_TABLE.c.seconds)
        total, unknown = 0.0, 0
        with self._read() as conn:
            found = conn.execute(query.where(STAGES_TABLE.c.cell_id.in_(list(keys))))
            for row in found:
                if (row.cell_id, row.stage) not in wanted:
                    continue
                if row.seconds is None:
                    unknown += 1
                else:
                    total += float(row.seconds)
        return total, unknown

    def count_rows(self) -> int:
        """Number of result rows."""
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(RESULTS)).scalar_one())


def pack_bits(mask: Any) -> str:
    """Encode a boolean vector compactly (base64 of packed bits) for per-image bootstrap later."""
    bits = np.packbits(np.asarray(mask, dtype=bool))
    return base64.b64encode(bits.tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)
