"""One runner per study output folder at a time: a lock file with a heartbeat.

The lock is ``<output_dir>/.study.lock``, a JSON record ``{pid, host, study, started_at, heartbeat_at,
token}``. It protects the output folder (the cells' run folders and the results database), which
several studies may share, so the holder's study is named in every message.

- **Acquire**: the record is written to a private temporary file and hard-linked to the lock path
  (``os.link`` fails if the lock exists, and the lock never appears half-written); on a file system
  without hard links it is created with ``O_CREAT | O_EXCL``.
- **Heartbeat**: a daemon thread rewrites ``heartbeat_at`` every ``heartbeat_s`` seconds (temporary
  file + ``os.replace``), after checking that the lock still carries its token.
- **Stale**: the holder is gone when it ran on this host and its pid no longer exists, or when its
  heartbeat is older than ``stale_s`` (any host). An unreadable lock file counts as stale only once
  its mtime is older than ``stale_s``.
- **Take-over** of a stale lock happens under a guard file (``.study.lock.takeover``, created with
  ``O_EXCL``): the taker re-reads the lock, removes it only if its bytes are still those it judged
  stale, and creates its own. Two takers cannot both win: the second finds the guard, or a lock
  that differs from the stale one it saw.
- **Release**: the lock is removed only while it still carries this runner's token.

Residual races (documented in DESIGN.md): a holder judged stale (no heartbeat for ``stale_s``, e.g.
a suspended process) that wakes up between a taker's re-read and its removal keeps running until
its next :meth:`StudyLock.check`; a taker that dies holding the guard blocks take-overs for
``GUARD_STALE_S`` seconds, after which the guard is removed by the next taker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cslrobust.errors import CslRobustError

LOCK_NAME = ".study.lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0
POLL_S = 5.0
GUARD_STALE_S = 10.0
_FIELDS = {
    "pid": int,
    "host": str,
    "study": str,
    "started_at": str,
    "heartbeat_at": str,
    "token": str,
}
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


class StudyLockError(CslRobustError):
    """The study lock cannot be taken: another runner holds it, or its file cannot be used."""


def lock_path(output_dir: Path) -> Path:
    """The lock file of a study output folder."""
    return Path(output_dir) / LOCK_NAME


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _show(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LockHolder:
    """The runner recorded in a lock file."""

    pid: int
    host: str
    study: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    token: str

    def heartbeat_age(self) -> float:
        """Seconds since the last heartbeat (0 when the holder's clock is ahead)."""
        return max(0.0, (_now() - self.heartbeat_at).total_seconds())

    def describe(self) -> str:
        """``pid 1234 on host h since 2026-12-02 15:04:05 UTC (last heartbeat 3 s ago)``."""
        return (
            f"pid {self.pid} on host {self.host} since {_show(self.started_at)} "
            f"(last heartbeat {self.heartbeat_age():.0f} s ago)"
        )

    def gone(self, stale_s: float) -> str | None:
        """Why the holder is gone (its lock is stale), or None while it may still be running."""
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"process {self.pid} no longer exists"
        age = self.heartbeat_age()
        return f"no heartbeat for {age:.0f} s" if age > stale_s else None

    def to_json(self) -> str:
        """The lock file's content."""
        return json.dumps(
            {
                "pid": self.pid,
                "host": self.host,
                "study": self.study,
                "started_at": self.started_at.isoformat(timespec="milliseconds"),
                "heartbeat_at": self.heartbeat_at.isoformat(timespec="milliseconds"),
                "token": self.token,
            }
        )


def _parse(raw: bytes) -> LockHolder | str:
    """The holder recorded in ``raw``, or why it cannot be read."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not JSON"
    if not isinstance(data, dict):
        return "not a JSON object"
    for field, kind in _FIELDS.items():
        if not isinstance(data.get(field), kind):
            return f"field {field!r} missing or not a {kind.__name__}"
    try:
        started, beat = (dt.datetime.fromisoformat(data[k]) for k in ("started_at", "heartbeat_at"))
    except ValueError:
        return "times not in ISO format"
    if started.tzinfo is None or beat.tzinfo is None:
        return "times without a time zone"
    return LockHolder(data["pid"], data["host"], data["study"], started, beat, data["token"])


@dataclass(frozen=True)
class _Seen:
    """One reading of the lock file: its bytes, its holder (or why unreadable), its mtime."""

    path: Path
    raw: bytes
    holder: LockHolder | str
    mtime: float

    def gone(self, stale_s: float) -> str | None:
        if isinstance(self.holder, LockHolder):
            return self.holder.gone(stale_s)
        age = time.time() - self.mtime
        return f"unreadable ({self.holder}) for {age:.0f} s" if age > stale_s else None

    def owned_by(self, token: str) -> bool:
        return isinstance(self.holder, LockHolder) and self.holder.token == token


def _read(path: Path) -> _Seen | None:
    """The lock file as it is now; None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StudyLockError(
            f"cannot read the study lock {path}: {err.strerror}; expected a readable file"
        ) from None
    with os.fdopen(fd, "rb") as file:
        raw = file.read()
        mtime = os.fstat(file.fileno()).st_mtime
    return _Seen(path, raw, _parse(raw), mtime)


def read_holder(path: Path) -> LockHolder | None:
    """The runner holding the lock file ``path`` (live or stale); None when there is no lock.

    Raises:
        StudyLockError: If the file exists but cannot be read or parsed.
    """
    seen = _read(Path(path))
    if seen is None:
        return None
    if isinstance(seen.holder, str):
        raise StudyLockError(f"study lock {path} is unreadable ({seen.holder})")
    return seen.holder


def describe_lock(path: Path, stale_s: float = STALE_S) -> str | None:
    """One line on the lock of an output folder for ``study status``; None when there is none."""
    try:
        seen = _read(Path(path))
    except StudyLockError as err:
        return f"lock: {err}"
    if seen is None:
        return None
    gone = seen.gone(stale_s)
    if isinstance(seen.holder, str):
        state = f"stale ({gone})" if gone else "fresh, being written or damaged"
        return f"lock: {path} is unreadable ({seen.holder}); {state}"
    who = f"study '{seen.holder.study}' by {seen.holder.describe()}"
    if gone:
        return f"stale lock: {who}; {gone}; the next 'study run' takes it over"
    return f"running: {who}"


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def _create_exclusive(path: Path, text: str, scratch: Path) -> bool:
    """Create ``path`` holding ``text`` if it does not exist (atomically); False if it exists."""
    _write(scratch, text)
    try:
        os.link(scratch, path)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
    finally:
        scratch.unlink(missing_ok=True)
    try:  # no hard links here: exclusive create, then write (readers may see it empty briefly)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    return True


class StudyLock:
    """The lock of a study output folder, held by one runner from ``acquire`` to ``release``.

    Use as a context manager (released on any exception, KeyboardInterrupt included)::

        with StudyLock(lock_path(spec.output_dir), spec.name):
            ...

    Args:
        path: The lock file (see :func:`lock_path`).
        study_name: The study this runner runs (named in the messages of other runners).
        heartbeat_s: Seconds between heartbeats.
        stale_s: A holder without a heartbeat for this long is taken to be gone.
        wait: Wait (polling every ``poll_s``) while another runner holds the lock, instead of
            refusing.
        poll_s: Seconds between two looks at a held lock when waiting.
        echo: Where the notices go (taking over a stale lock, waiting).

    Raises:
        StudyLockError: From ``acquire``, if a live runner holds the lock (and ``wait`` is false),
            or the lock file cannot be written.
    """

    def __init__(
        self,
        path: Path,
        study_name: str,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
        wait: bool = False,
        poll_s: float = POLL_S,
        echo: Callable[[str], None] = print,
    ) -> None:
        if not 0 < heartbeat_s < stale_s:
            raise ValueError(f"need 0 < heartbeat_s < stale_s, got {heartbeat_s}, {stale_s}")
        self.path = Path(path)
        self.study_name = study_name
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.wait = wait
        self.poll_s = poll_s
        self.echo = echo
        self.token = secrets.token_hex(8)
        self._scratch = self.path.with_name(f"{self.path.name}.{self.token}.tmp")
        self._guard = self.path.with_name(f"{self.path.name}.takeover")
        self._started_at = _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the record -------------------------------------------------------------------------
    def _record(self) -> str:
        return LockHolder(
            os.getpid(),
            socket.gethostname(),
            self.study_name,
            self._started_at,
            _now(),
            self.token,
        ).to_json()

    def _oserror(self, err: OSError) -> StudyLockError:
        return StudyLockError(
            f"cannot write the study lock {self.path}: {err.strerror}; "
            "expected a writable output folder"
        )

    # -- acquire ----------------------------------------------------------------------------
    def _blocker(self, seen: _Seen) -> str:
        """Who holds the live lock ``seen``, in words."""
        if isinstance(seen.holder, str):
            age = time.time() - seen.mtime
            return f"study lock {self.path} is unreadable ({seen.holder}) and was written {age:.0f} s ago"
        holder = seen.holder
        if holder.study == self.study_name:
            return f"study '{holder.study}' is being run by {holder.describe()}"
        return (
            f"study '{self.study_name}' shares its output folder {self.path.parent} with "
            f"study '{holder.study}', which is being run by {holder.describe()}"
        )

    def _refusal(self, seen: _Seen) -> str:
        if isinstance(seen.holder, str):
            advice = (
                f"it is taken over once {self.stale_s:.0f} s old, or delete it if no runner "
                "uses this folder"
            )
        else:
            advice = "wait for it (study run --wait) or stop it"
        return f"{self._blocker(seen)}; {advice}"

    def _take_over(self, seen: _Seen) -> bool:
        """Replace the stale lock ``seen`` by ours, unless it changed; whether ours is in place."""
        if not _create_exclusive(self._guard, self.token, self._scratch):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - self._guard.stat().st_mtime > GUARD_STALE_S:
                    self._guard.unlink()  # a taker died holding it
            return False
        try:
            now = _read(self.path)
            if now is None or now.raw != seen.raw:
                return False
            self.path.unlink(missing_ok=True)
            return _create_exclusive(self.path, self._record(), self._scratch)
        finally:
            self._guard.unlink(missing_ok=True)

    def _try_acquire(self) -> _Seen | None:
        """Take the lock (a stale one included); the live lock in the way, else None."""
        while True:
            if _create_exclusive(self.path, self._record(), self._scratch):
                return None
            seen = _read(self.path)
            if seen is None:
                continue  # released meanwhile
            gone = seen.gone(self.stale_s)
            if gone is None:
                return seen
            if self._take_over(seen):
                who = (
                    f"study '{seen.holder.study}' by {seen.holder.describe()}"
                    if isinstance(seen.holder, LockHolder)
                    else "unknown holder"
                )
                self.echo(f"took over the stale study lock {self.path} of {who}: {gone}")
                return None
            time.sleep(0.05)  # another runner is taking it over: look again

    def acquire(self) -> None:
        """Take the lock (waiting if asked) and start the heartbeat.

        Raises:
            StudyLockError: If a live runner holds it and ``wait`` is false, or it cannot be written.
        """
        announced = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while (seen := self._try_acquire()) is not None:
                if not self.wait:
                    raise StudyLockError(self._refusal(seen))
                if not announced:
                    self.echo(f"waiting: {self._blocker(seen)}")
                    announced = True
                time.sleep(self.poll_s)
        except OSError as err:
            raise self._oserror(err) from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="study-lock", daemon=True)
        self._thread.start()

    # -- while held -------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError, StudyLockError):  # a missed beat is retried
                if not self._refresh():
                    return  # lost to another runner: check() reports it

    def _refresh(self) -> bool:
        """Rewrite our heartbeat; False if the lock is no longer ours."""
        seen = _read(self.path)
        if seen is None or not seen.owned_by(self.token):
            return False
        _write(self._scratch, self._record())
        try:
            os.replace(self._scratch, self.path)
        finally:
            self._scratch.unlink(missing_ok=True)
        return True

    def check(self) -> None:
        """Raise if the lock is no longer ours (another runner took it over after a long silence).

        Raises:
            StudyLockError: Naming the runner that holds it now.
        """
        seen = _read(self.path)
        if seen is not None and seen.owned_by(self.token):
            return
        now = (
            f"study '{seen.holder.study}' by {seen.holder.describe()}"
            if seen is not None and isinstance(seen.holder, LockHolder)
            else "nobody"
        )
        raise StudyLockError(
            f"study '{self.study_name}' lost its lock {self.path} (now held by {now}); "
            "stopped before the next cell"
        )

    # -- release ----------------------------------------------------------------------------
    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (never raises for I/O)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with contextlib.suppress(OSError, StudyLockError):
            seen = _read(self.path)
            if seen is not None and seen.owned_by(self.token):
                self.path.unlink()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()
