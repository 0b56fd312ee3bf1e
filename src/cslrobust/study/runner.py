"""Run the missing stages of every cell of a study, recording results in the study's results store.

A cell is one (method, seed); its id is the hash of its training config (``RunConfig.run_id``). Each
evaluation stage has its own key, ``<stage>:<hash of the settings it depends on>``, so changing the attack
settings re-runs only the attack stage. The stages and their keys come from the stage registry
(:mod:`cslrobust.study.stages`); the runner has no per-stage code. A stage counts as done when its rows
and marker are committed to the store (one transaction).

Every executor runs the same loop, :func:`work_study`: a worker claims a (cell, stage) with a lease in
the store, runs it while a thread renews the lease, and commits under the lease (fencing). Any number of
workers may share a study; a worker killed at any moment loses its lease (expiry by the database's clock,
or at once when its process is known dead), and another takes the stage over, training resuming from
its last epoch checkpoint, so the study finishes with no duplicated and no lost rows. :func:`run_study`
(``study run``, executor local) is that loop with one worker under the output folder's study lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from cslrobust.config import RunConfig
from cslrobust.distributed import is_main, on_main
from cslrobust.errors import ConfigError
from cslrobust.provenance import git_sha
from cslrobust.records import ensure_writable_dir
from cslrobust.study.lock import StudyLock, lock_path
from cslrobust.study.run_folder import on_this_process
from cslrobust.study.spec import StudySpec, expand_study, method_of
from cslrobust.study.stages import STAGES, Rows, stage_keys
from cslrobust.study.store import (
    Claim,
    LeaseLost,
    ResultsStore,
    abandoned,
    sqlite_file,
    sqlite_path,
    storage_url,
)


class _StoreOnMain:
    """The runner's store calls, made on rank 0 only; every rank gets rank 0's answer.

    In one process this is the store itself. Under torchrun only rank 0 opens the database
    (``store`` is None elsewhere) and renews the lease; the broadcast in :func:`on_main` also keeps
    the ranks in step.
    """

    def __init__(self, store: ResultsStore | None) -> None:
        self._store = store

    def _main(self) -> ResultsStore:
        assert self._store is not None, "the results store is open on rank 0 only"
        return self._store

    def register_cells(self, cells: list[Cell], study: str) -> None:
        def register() -> None:
            for cell in cells:
                cfg = cell.config
                config = cfg.model_dump(mode="json")
                self._main().register_cell(cell.cell_id, study, cell.method, cfg.seed, config)

        on_main(register)

    def committed(self, cells: list[Cell]) -> set[tuple[str, str]]:
        return on_main(lambda: self._main().committed([c.cell_id for c in cells]))

    def pick(self, cells: list[Cell], skip: set[str], worker: str, lease_s: float) -> _Pick:
        return on_main(lambda: _pick(self._main(), cells, skip, worker, lease_s))

    def mark_running(self, cell_id: str, stage: str) -> None:
        on_main(lambda: self._main().mark_running(cell_id, stage))

    def commit_stage(
        self, cell_id: str, key: str, rows: Rows, seconds: float, claim: Claim | None
    ) -> None:
        on_main(lambda: self._main().commit_stage(cell_id, key, rows, git_sha(), seconds, claim))

    def release(self, claim: Claim) -> None:
        on_main(lambda: self._main().release(claim))

    def mark_done(self, cell_id: str) -> None:
        on_main(lambda: self._main().mark_done(cell_id))

    def mark_failed(self, cell_id: str, stage: str, error: str) -> None:
        on_main(lambda: self._main().mark_failed(cell_id, stage, error))

    def heartbeat(
        self, claim: Claim, every_s: float, lease_s: float
    ) -> contextlib.AbstractContextManager[object]:
        """Renew the lease in a thread on rank 0 while the stage runs (nothing on other ranks)."""
        if self._store is None:
            return contextlib.nullcontext()
        return _Heartbeat(self._store, claim, every_s, lease_s)


@dataclass(frozen=True)
class _Pick:
    """The scheduler's answer: run ``stage`` of ``cells[index]`` under ``claim``, wait, or stop."""

    action: str  # run | wait | finished
    index: int = -1
    stage: str = ""
    claim: Claim | None = None
    waiting_on: int = 0  # stages leased by other workers


def _pick(
    store: ResultsStore, cells: list[Cell], skip: set[str], worker: str, lease_s: float
) -> _Pick:
    """The first (cell, stage) whose key is uncommitted, whose earlier stages are, and that we claim."""
    ids = [c.cell_id for c in cells]
    committed = store.committed(ids)
    # Stages held by a live lease are not tried (one read instead of a failed claim each); the
    # claim itself decides, so a lease that changes meanwhile is handled there.
    held = {
        (lease.cell_id, lease.stage_key)
        for lease in store.leases(ids)
        if not lease.expired and not abandoned(lease)
    }
    busy = 0
    for index, cell in enumerate(cells):
        if cell.cell_id in skip:
            continue
        pending = [s for s, key in cell.stages.items() if (cell.cell_id, key) not in committed]
        if not pending:
            continue
        stage = pending[0]  # earlier stages of the cell are committed: its upstream is ready
        if (cell.cell_id, cell.stages[stage]) in held:
            busy += 1
            continue
        claim = store.claim(cell.cell_id, cell.stages[stage], worker, lease_s)
        if claim is not None:
            return _Pick("run", index, stage, claim)
        busy += 1
    return _Pick("wait", waiting_on=busy) if busy else _Pick("finished")


class _Heartbeat:
    """A daemon thread renewing a lease every ``every_s`` seconds until the block ends."""

    def __init__(self, store: ResultsStore, claim: Claim, every_s: float, lease_s: float) -> None:
        self._store, self._claim = store, claim
        self._every_s, self._lease_s = every_s, lease_s
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                if not self._store.heartbeat(self._claim, self._lease_s):
                    self.lost.set()  # taken over: the commit will be refused (fencing)
                    return
            except Exception:  # noqa: BLE001 - a store hiccup: try again at the next beat
                continue

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _silent(message: str) -> None:
    """Echo of the ranks other than 0 (they run the same stages quietly)."""


def store_url(spec: StudySpec, storage: str | None = None) -> str:
    """The normalised URL of the study's results store (``storage`` overrides ``spec.storage``).

    Default ``sqlite:///<output_dir>/results.db``; a relative SQLite path is relative to
    ``output_dir``.

    Raises:
        ConfigError: If the URL is not a supported one (one line, password masked).
    """
    return storage_url(storage or spec.storage, spec.output_dir)


def store_path(spec: StudySpec) -> Path:
    """The file of the study's SQLite results database.

    Raises:
        ConfigError: If the study's storage is not a ``sqlite:///`` URL.
    """
    return sqlite_path(spec.storage or "sqlite:///results.db", spec.output_dir)


def open_store(spec: StudySpec, storage: str | None = None) -> ResultsStore:
    """The study's results store (see :func:`store_url`)."""
    return ResultsStore(store_url(spec, storage))


def check_locations(spec: StudySpec, storage: str | None = None) -> None:
    """Check before any work that the study can write its cells, report and results database.

    Each folder is created if missing; the database folder is checked for SQLite URLs only (a
    server is checked when the store is opened).

    Raises:
        ConfigError: If a location is a file, cannot be created or is not writable, or the storage
            URL is not supported (one line naming it).
    """
    ensure_writable_dir(spec.output_dir, "output folder")
    ensure_writable_dir(spec.report_folder, "report folder")
    database = sqlite_file(store_url(spec, storage))
    if database is None:
        return
    ensure_writable_dir(database.parent, "results database folder")
    if database.is_dir():
        raise ConfigError(f"results database {str(database)!r} is a folder, expected a SQLite file")


@contextlib.contextmanager
def _study_lock(
    spec: StudySpec, main: bool, wait: bool, echo: Callable[[str], None]
) -> Iterator[Callable[[], None]]:
    """Hold the output folder's lock (rank 0) for the whole run; yields the every-rank lock check.

    Under torchrun every rank learns whether rank 0 got the lock (and stops with its error if not).
    """
    lock = StudyLock(lock_path(spec.output_dir), spec.name, wait=wait, echo=echo) if main else None
    on_main(lock.acquire if lock else _nothing)
    try:
        yield lambda: on_main(lock.check if lock else _nothing)
    finally:
        if lock:
            lock.release()


def _nothing() -> None:
    """What ranks other than 0 do with the study lock."""


@dataclass(frozen=True)
class Cell:
    """A study cell: its config, id and stage keys."""

    config: RunConfig
    cell_id: str
    method: str
    stages: dict[str, str]


def study_cells(spec: StudySpec) -> list[Cell]:
    """Expand a study into cells (with the stages the study asks for, in pipeline order)."""
    cells = []
    settings = spec.model_dump()
    for cfg in expand_study(spec):
        method = method_of(cfg)
        wanted = set(spec.stages) | {
            name
            for name in STAGES.names()
            if (when := STAGES.get(name).also_when) is not None and when(settings, method)
        }
        cells.append(Cell(cfg, cfg.run_id(), method, stage_keys(cfg, sorted(wanted))))
    return cells


def run_study(
    spec: StudySpec,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    wait: bool = False,
    storage: str | None = None,
) -> list[Cell]:
    """Run all pending stages of every cell (the local executor); return the cells.

    The lease loop of :func:`work_study` with one worker, holding the output folder's study lock
    throughout: another ``study run`` there makes this one refuse (or, with ``wait``, wait for it).
    Workers of ``study work`` take no study lock; stages they hold are waited for.

    Raises:
        CslRobustError: After the loop, if a cell failed (its one-line error is recorded).
    """
    cells = study_cells(spec)
    if cells:  # under torchrun: start the process group before deciding who talks to the store
        on_this_process(cells[0].config)
    on_main(lambda: check_locations(spec, storage))
    main = is_main()
    with _study_lock(spec, main, wait, echo if main else _silent) as still_held:
        return work_study(
            spec, progress=progress, echo=echo, storage=storage, before_each=still_held
        )


def worker_name() -> str:
    """This process's worker name: ``<host>:<pid>`` (Slurm job/task ids appended when present)."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        name += f":slurm-{job}" + (
            f"_{os.environ['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_TASK_ID" in os.environ else ""
        )
    return name


def select_cells(cells: list[Cell], wanted: Collection[str]) -> list[Cell]:
    """The cells named in ``wanted`` (cell id, a prefix of >= 8 hex digits, or the cell's run name)."""

    def matches(cell: Cell, name: str) -> bool:
        return name == cell.config.name or (len(name) >= 8 and cell.cell_id.startswith(name))

    return [c for c in cells if any(matches(c, name) for name in wanted)]


def work_study(
    spec: StudySpec,
    *,
    only: Collection[str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    storage: str | None = None,
    worker: str | None = None,
    before_each: Callable[[], None] | None = None,
) -> list[Cell]:
    """The worker loop: claim, run and commit stages until nothing is left; return the cells.

    Repeatedly picks the first (cell, stage) whose key is not committed, whose earlier stages are
    committed and whose lease it gets (free, expired, or held by a dead process of this host);
    runs it (training resumes from its last checkpoint by itself) while a thread renews the lease;
    commits its rows, marker and lease release in one transaction that first checks the lease is
    still its own. When every remaining stage is leased by other workers it polls every
    ``cluster.poll_s`` seconds until they finish or a lease expires. Any number of workers may run
    this on one study, on any machines sharing the store.

    A failing cell is recorded as failed (with its one-line error); this worker skips it from then
    on and goes on with the others; the error is raised again at the end so the command exits
    non-zero. A stage whose lease was taken meanwhile is discarded (:class:`LeaseLost`), not failed.

    Args:
        spec: The study.
        only: Cells to work on (see :func:`select_cells`); default every cell.
        progress: Progress bars in the stages.
        echo: Progress lines.
        storage: Results store URL overriding ``spec.storage``.
        worker: This worker's name in the leases (default :func:`worker_name`).
        before_each: Called before each stage (the study lock's check of ``study run``).

    Raises:
        ConfigError: If ``only`` names no cell.
        CslRobustError: After the loop, if a cell failed.
    """
    from cslrobust.errors import CslRobustError

    cells = study_cells(spec)
    if only is not None:
        cells = select_cells(cells, only)
    if cells:
        on_this_process(cells[0].config)
    main = is_main()
    if not main:  # under torchrun: every rank runs the stages, rank 0 alone talks to the store
        echo = _silent
    settings = spec.cluster
    worker = worker or worker_name()
    failures: list[str] = []
    skip: set[str] = set()
    labels = {c.cell_id: f"[{i}/{len(cells)}] {c.config.name}" for i, c in enumerate(cells, 1)}
    with open_store(spec, storage) if main else contextlib.nullcontext() as opened:
        store = _StoreOnMain(opened)
        store.register_cells(cells, spec.name)
        committed = store.committed(cells)
        for cell in cells:
            if all((cell.cell_id, key) in committed for key in cell.stages.values()):
                echo(f"{labels[cell.cell_id]}: done, skipped")
                store.mark_done(cell.cell_id)
        waiting = 0
        while True:
            if before_each is not None:
                before_each()
            pick = store.pick(cells, skip, worker, settings.lease_s)
            if pick.action == "finished":
                break
            if pick.action == "wait":
                if pick.waiting_on != waiting:
                    echo(f"waiting for {pick.waiting_on} stage(s) leased by other workers")
                    waiting = pick.waiting_on
                time.sleep(settings.poll_s)
                continue
            waiting = 0
            cell, stage, claim = cells[pick.index], pick.stage, pick.claim
            assert claim is not None
            label = labels[cell.cell_id]
            if claim.took_over:
                echo(f"{label}: took over the lease on {stage} of {claim.took_over}")
            committed_now = False
            try:
                tic = time.perf_counter()
                echo(f"{label}: {stage} ...")
                store.mark_running(cell.cell_id, stage)
                with store.heartbeat(claim, settings.heartbeat_s, settings.lease_s):
                    rows = STAGES.get(stage).run(cell.config, progress)
                seconds = time.perf_counter() - tic
                store.commit_stage(cell.cell_id, cell.stages[stage], rows, seconds, claim)
                committed_now = True
                echo(f"{label}: {stage} done in {time.perf_counter() - tic:.0f} s")
                if stage == list(cell.stages)[-1]:
                    store.mark_done(cell.cell_id)
            except LeaseLost as err:
                committed_now = True  # nothing of ours to release
                echo(f"{label}: {stage} {err}")
            except CslRobustError as err:
                store.mark_failed(cell.cell_id, stage, str(err))
                echo(f"{label}: {stage} FAILED: {err}")
                failures.append(f"{cell.config.name}: {err}")
                skip.add(cell.cell_id)
            finally:
                if not committed_now:
                    with contextlib.suppress(Exception):
                        store.release(claim)
    if failures:
        raise CslRobustError(f"{len(failures)} cell(s) failed; first: {failures[0]}")
    return cells
