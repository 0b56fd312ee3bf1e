"""The study lock: one runner per output folder; stale locks (dead pid, old heartbeat) are taken over."""

import datetime as dt
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cslrobust.study.lock
from cslrobust.cli.main import app
from cslrobust.study.lock import (
    StudyLock,
    StudyLockError,
    describe_lock,
    lock_path,
    read_holder,
)

HOST = socket.gethostname()
LOCK_MODULE = Path(cslrobust.study.lock.__file__)


def _write_lock(path: Path, pid: int, host: str = HOST, age_s: float = 0.0, study: str = "s"):
    """A lock file as another runner would have written it, its last heartbeat ``age_s`` ago."""
    beat = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)
    started = beat - dt.timedelta(minutes=5)
    record = {
        "pid": pid,
        "host": host,
        "study": study,
        "started_at": started.isoformat(),
        "heartbeat_at": beat.isoformat(),
        "token": "0123456789abcdef",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield proc
    proc.kill()
    proc.wait()


def test_acquire_writes_holder_and_release_removes_everything(tmp_path: Path):
    path = lock_path(tmp_path / "out")
    with StudyLock(path, "cpu-small", heartbeat_s=0.05, stale_s=5) as lock:
        holder = read_holder(path)
        assert holder is not None
        assert (holder.pid, holder.host, holder.study) == (os.getpid(), HOST, "cpu-small")
        assert holder.token == lock.token
        assert describe_lock(path).startswith(f"running: study 'cpu-small' by pid {os.getpid()}")
    assert not path.exists()
    assert read_holder(path) is None and describe_lock(path) is None
    assert list((tmp_path / "out").iterdir()) == []  # no scratch or guard file left


def test_second_runner_is_refused_with_one_line_naming_the_holder(tmp_path: Path):
    path = lock_path(tmp_path)
    with StudyLock(path, "cpu-small", heartbeat_s=0.05, stale_s=5) as first:
        with pytest.raises(StudyLockError) as same:
            StudyLock(path, "cpu-small").acquire()
        with pytest.raises(StudyLockError) as other:
            StudyLock(path, "cpu-fn").acquire()
        assert read_holder(path).token == first.token  # untouched by the refused runners
    message = str(same.value)
    assert message.startswith(
        f"study 'cpu-small' is being run by pid {os.getpid()} on host {HOST} "
    )
    assert " UTC (last heartbeat " in message
    assert message.endswith("s ago); wait for it (study run --wait) or stop it")
    assert "\n" not in message
    assert f"study 'cpu-fn' shares its output folder {tmp_path}" in str(other.value)
    assert "study 'cpu-small', which is being run by pid" in str(other.value)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path):
    path = lock_path(tmp_path)
    pid = _dead_pid()
    _write_lock(path, pid)  # fresh heartbeat, but the process is gone
    assert describe_lock(path).startswith(f"stale lock: study 's' by pid {pid}")
    notices: list[str] = []
    with StudyLock(path, "s", echo=notices.append) as lock:
        assert read_holder(path).token == lock.token
    assert len(notices) == 1
    assert f"took over the stale study lock {path}" in notices[0]
    assert f"process {pid} no longer exists" in notices[0]


def test_other_host_lock_is_live_while_its_heartbeat_is_fresh_and_stale_after(tmp_path: Path):
    path = lock_path(tmp_path)
    _write_lock(path, 1, host="elsewhere", age_s=3)  # pid 1 exists here: only the heartbeat counts
    with pytest.raises(StudyLockError, match="pid 1 on host elsewhere since .* heartbeat 3 s ago"):
        StudyLock(path, "s", stale_s=60).acquire()
    _write_lock(path, 1, host="elsewhere", age_s=120)
    notices: list[str] = []
    with StudyLock(path, "s", stale_s=60, echo=notices.append):
        assert read_holder(path).pid == os.getpid()
    assert "no heartbeat for 120 s" in notices[0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "not JSON"), ('{"pid": 5, "host": "h"}', "field 'study' missing")],
)
def test_damaged_lock_is_refused_while_recent_and_taken_over_when_old(
    tmp_path: Path, content: str, problem: str
):
    path = lock_path(tmp_path)
    path.write_text(content)
    with pytest.raises(StudyLockError) as refused:
        StudyLock(path, "s", stale_s=60).acquire()
    assert str(refused.value).startswith(f"study lock {path} is unreadable ({problem}")
    assert "\n" not in str(refused.value)
    assert path.read_text() == content
    with pytest.raises(StudyLockError, match="unreadable"):
        read_holder(path)
    old = time.time() - 120
    os.utime(path, (old, old))
    notices: list[str] = []
    with StudyLock(path, "s", stale_s=60, echo=notices.append):
        assert read_holder(path).pid == os.getpid()
    assert "unknown holder" in notices[0] and problem in notices[0]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_lock_is_released_on_exception(tmp_path: Path, error: type[BaseException]):
    path = lock_path(tmp_path)
    with pytest.raises(error), StudyLock(path, "s", heartbeat_s=0.05, stale_s=5):
        raise error("boom")
    assert not path.exists()
    with StudyLock(path, "s"):  # free again
        pass


def test_heartbeat_refreshes_the_record(tmp_path: Path):
    path = lock_path(tmp_path)
    with StudyLock(path, "s", heartbeat_s=0.05, stale_s=5):
        first = read_holder(path)
        time.sleep(0.4)
        later = read_holder(path)
    assert later.heartbeat_at > first.heartbeat_at
    assert (later.started_at, later.token, later.pid) == (first.started_at, first.token, first.pid)


def test_a_runner_that_lost_its_lock_stops_and_leaves_the_new_holders_lock(tmp_path: Path):
    path = lock_path(tmp_path)
    lock = StudyLock(path, "s", heartbeat_s=0.05, stale_s=5)
    lock.acquire()
    lock.check()
    _write_lock(path, 4242, host="elsewhere", study="other")  # taken over while we were silent
    with pytest.raises(StudyLockError, match="lost its lock .* study 'other' by pid 4242"):
        lock.check()
    lock.release()
    assert read_holder(path).pid == 4242  # not ours: left in place


def test_two_runners_taking_over_the_same_stale_lock_cannot_both_win(tmp_path: Path):
    path = lock_path(tmp_path)
    _write_lock(path, _dead_pid())
    start = threading.Barrier(6)
    won: list[StudyLock] = []
    refused: list[str] = []

    def contend() -> None:
        lock = StudyLock(path, "s", echo=lambda _: None)
        start.wait()
        try:
            lock.acquire()
            won.append(lock)
        except StudyLockError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    assert read_holder(path).token == won[0].token
    won[0].release()
    assert list(tmp_path.iterdir()) == []


def test_wait_polls_until_the_holder_releases(tmp_path: Path):
    path = lock_path(tmp_path)
    first = StudyLock(path, "s", heartbeat_s=0.05, stale_s=5)
    first.acquire()
    timer = threading.Timer(0.3, first.release)
    timer.start()
    notices: list[str] = []
    tic = time.perf_counter()
    with StudyLock(path, "s", wait=True, poll_s=0.05, echo=notices.append) as second:
        assert read_holder(path).token == second.token
    assert time.perf_counter() - tic >= 0.25
    assert len(notices) == 1 and notices[0].startswith("waiting: study 's' is being run by pid")
    timer.join()


def test_unwritable_output_folder_is_one_line(tmp_path: Path):
    (tmp_path / "file").write_text("")
    path = lock_path(tmp_path / "file" / "out")
    with pytest.raises(StudyLockError, match=r"cannot write the study lock .*out/\.study\.lock: "):
        StudyLock(path, "s").acquire()


def test_sigkilled_holder_leaves_its_lock_and_the_next_runner_takes_it_over(tmp_path: Path):
    path = lock_path(tmp_path)
    code = (  # loads lock.py alone: importing cslrobust.study would import torch (seconds)
        "import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('study_lock', {str(LOCK_MODULE)!r})\n"
        "module = sys.modules['study_lock'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"lock = module.StudyLock({str(path)!r}, 's', heartbeat_s=0.1, stale_s=5)\n"
        "lock.acquire(); print('held', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StudyLockError, match=f"pid {proc.pid}"):
            StudyLock(path, "s").acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert read_holder(path).pid == proc.pid  # SIGKILL leaves the lock behind
    notices: list[str] = []
    with StudyLock(path, "s", echo=notices.append):
        assert read_holder(path).pid == os.getpid()
    assert f"process {proc.pid} no longer exists" in notices[0]


def _snapshot(folder: Path) -> dict[str, tuple[float, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_study_run_refuses_while_a_live_runner_holds_the_lock(
    synthetic_study, sleeper, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    study = synthetic_study(epochs=1)
    out = tmp_path / "out"
    _write_lock(lock_path(out), sleeper.pid, study="synthetic")
    (out / "supervised-s0").mkdir()
    (out / "supervised-s0" / "config.json").write_text("{}")
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(app, ["study", "run", str(study), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith(
        f"error: study 'synthetic' is being run by pid {sleeper.pid} on host"
    )
    assert _snapshot(tmp_path) == before  # nothing written: no database, no run folder, no cache
    status = CliRunner().invoke(app, ["study", "status", str(study)])
    assert status.exit_code == 0, status.output
    assert f"running: study 'synthetic' by pid {sleeper.pid} on host {HOST}" in status.stdout
