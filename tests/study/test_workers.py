"""Several worker processes on one study: every stage runs and commits exactly once, also with a
worker killed by SIGKILL mid-stage (both backends)."""

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from tests.study.conftest import ROWS_PER_STAGE

from cslrobust.study import store as store_module
from cslrobust.study.runner import open_store, study_cells, work_study
from cslrobust.study.spec import load_study

FORK = multiprocessing.get_context("fork")


def _worker(study: Path, url: str, log: Path, machine: str | None = None) -> None:
    if machine is not None:  # pretend to run on another machine: a dead pid proves nothing there
        store_module._machine = lambda: machine
    spec = load_study(study)
    with log.open("a") as handle:
        work_study(
            spec, progress=False, storage=url, echo=lambda m: print(m, file=handle, flush=True)
        )


def _start(study: Path, url: str, log: Path, machine: str | None = None):
    proc = FORK.Process(target=_worker, args=(study, url, log, machine))
    proc.start()
    return proc


def _attempts(study: Path) -> dict[str, list[str]]:
    folder = study.parent / "out" / "attempts"
    return {p.name: p.read_text().split() for p in sorted(folder.iterdir())}


def _check_complete(study: Path, url: str, cells: int) -> None:
    spec = load_study(study)
    expected = study_cells(spec)
    with open_store(spec, url) as store:
        keys = [(r["cell_id"], r["stage"], r["metric"], r["epoch"]) for r in store.rows()]
        assert len(keys) == len(set(keys)) == cells * 2 * ROWS_PER_STAGE, "lost or duplicated rows"
        assert store.committed() == {(c.cell_id, k) for c in expected for k in c.stages.values()}
        assert store.leases() == []
        statuses = store.cell_statuses({c.cell_id: c.stages for c in expected})
        assert {s.state for s in statuses} == {"done"}


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_workers_run_every_stage_exactly_once(
    tiny_study, store_url: str, tmp_path: Path, workers: int
):
    cells = 8
    study = tiny_study(cells=cells, seconds=0.1)
    procs = [_start(study, store_url, tmp_path / f"worker{i}.log") for i in range(workers)]
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0] * workers
    attempts = _attempts(study)
    assert len(attempts) == cells * 2
    assert all(len(pids) == 1 for pids in attempts.values()), attempts  # each body ran once
    assert len({pid for pids in attempts.values() for pid in pids}) >= 2  # the work was shared
    _check_complete(study, store_url, cells)


@pytest.mark.parametrize("machine", ["same", "other"])
def test_a_worker_killed_mid_stage_loses_its_lease_and_another_finishes(
    tiny_study, store_url: str, tmp_path: Path, machine: str
):
    """SIGKILL inside a stage: the lease expires (or, on this machine, its dead pid frees it)."""
    cells = 3
    study = tiny_study(cells=cells, lease_s=2.0, heartbeat_s=0.5)
    hold = study.parent / "out" / "hold-tiny_b"
    hold.parent.mkdir(parents=True)
    hold.touch()  # workers wait inside tiny_b until the file goes
    other = machine == "other"
    victim = _start(study, store_url, tmp_path / "victim.log", "A/1" if other else None)
    deadline = time.time() + 60
    folder = study.parent / "out" / "attempts"
    while time.time() < deadline and not (
        folder.is_dir() and any(p.name.endswith("tiny_b") for p in folder.iterdir())
    ):
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the stage, lease renewed meanwhile
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    killed_at = time.time()
    hold.unlink()
    (stuck,) = [p for p in folder.iterdir() if p.name.endswith("tiny_b")]
    heir = _start(study, store_url, tmp_path / "heir.log", "B/1" if other else None)
    heir.join(120)
    assert heir.exitcode == 0
    attempts = _attempts(study)
    assert attempts[stuck.name] == [str(victim.pid), str(heir.pid)]
    assert all(len(pids) == 1 for name, pids in attempts.items() if name != stuck.name)
    log = (tmp_path / "heir.log").read_text()
    assert "took over the lease on tiny_b of" in log
    if other:  # only the expiry (judged by the database clock) freed it
        assert stuck.stat().st_mtime - killed_at > 1.0
    _check_complete(study, store_url, cells)


def test_heartbeats_keep_a_stage_longer_than_its_lease(tiny_study, store_url: str, tmp_path: Path):
    """Stages of 1.5 s under leases of 0.6 s: renewed in time, never taken over."""
    study = tiny_study(cells=2, lease_s=0.6, heartbeat_s=0.15, seconds=1.5)
    procs = [_start(study, store_url, tmp_path / f"w{i}.log", f"machine-{i}/1") for i in range(2)]
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert all(len(pids) == 1 for pids in _attempts(study).values())
    assert not any("took over" in (tmp_path / f"w{i}.log").read_text() for i in range(2))
    _check_complete(study, store_url, 2)


def test_study_run_is_the_same_loop_with_one_worker(tiny_study, store_url: str):
    from cslrobust.study.runner import run_study

    study = tiny_study(cells=2)
    spec = load_study(study)
    messages: list[str] = []
    run_study(spec, progress=False, echo=messages.append, storage=store_url)
    assert sum(m.endswith(("tiny_a ...", "tiny_b ...")) for m in messages) == 4
    messages.clear()
    run_study(spec, progress=False, echo=messages.append, storage=store_url)
    assert sum("done, skipped" in m for m in messages) == 2 and len(messages) == 2
    _check_complete(study, store_url, 2)
