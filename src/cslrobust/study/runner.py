"""Run the missing stages of every cell of a study, recording results in the study's database.

A cell is one (method, seed); its id is the hash of its training config (``RunConfig.run_id``). Each
evaluation stage has its own key, ``<stage>:<hash of the settings it depends on>``, so changing the attack
settings re-runs only the attack stage. The stages and their keys come from the stage registry
(:mod:`cslrobust.study.stages`); the runner has no per-stage code. A stage counts as done when its rows and marker are committed to
the store (one transaction). Training resumes from its last epoch checkpoint, so a runner killed at any
moment and started again finishes the study with no duplicated and no lost rows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
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
from cslrobust.study.store import ResultsStore, sqlite_path


class _StoreOnMain:
    """The runner's store calls, made on rank 0 only; every rank gets rank 0's answer.

    In one process this is the store itself. Under torchrun only rank 0 opens the database
    (``store`` is None elsewhere); the broadcast in :func:`on_main` also keeps the ranks in step.
    """

    def __init__(self, store: ResultsStore | None) -> None:
        self._store = store

    def _main(self) -> ResultsStore:
        assert self._store is not None, "the results store is open on rank 0 only"
        return self._store

    def register_cell(self, cell: Cell, study: str) -> None:
        cfg = cell.config
        config = cfg.model_dump(mode="json")
        on_main(
            lambda: self._main().register_cell(cell.cell_id, study, cell.method, cfg.seed, config)
        )

    def completed_stages(self, cell_id: str) -> set[str]:
        return on_main(lambda: self._main().completed_stages(cell_id))

    def mark_running(self, cell_id: str, stage: str) -> None:
        on_main(lambda: self._main().mark_running(cell_id, stage))

    def commit_stage(self, cell_id: str, key: str, rows: Rows, seconds: float) -> None:
        on_main(lambda: self._main().commit_stage(cell_id, key, rows, git_sha(), seconds))

    def mark_done(self, cell_id: str) -> None:
        on_main(lambda: self._main().mark_done(cell_id))

    def mark_failed(self, cell_id: str, stage: str, error: str) -> None:
        on_main(lambda: self._main().mark_failed(cell_id, stage, error))


def _silent(message: str) -> None:
    """Echo of the ranks other than 0 (they run the same stages quietly)."""


def store_path(spec: StudySpec) -> Path:
    """The file of the study's results database (default ``<output_dir>/results.db``).

    Raises:
        ConfigError: If ``spec.storage`` is not a ``sqlite:///`` URL.
    """
    return sqlite_path(spec.storage or "sqlite:///results.db", spec.output_dir)


def open_store(spec: StudySpec) -> ResultsStore:
    """The study's results database (default ``sqlite:///<output_dir>/results.db``)."""
    return ResultsStore(store_path(spec))


def check_locations(spec: StudySpec) -> None:
    """Check before any work that the study can write its cells, report and results database.

    Each folder is created if missing.

    Raises:
        ConfigError: If a location is a file, cannot be created or is not writable, or the storage
            URL is not supported (one line naming it).
    """
    ensure_writable_dir(spec.output_dir, "output folder")
    ensure_writable_dir(spec.report_folder, "report folder")
    database = store_path(spec)
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
) -> list[Cell]:
    """Run all pending stages of every cell; return the cells.

    A failing cell is recorded as failed (with its one-line error) and the runner goes on with the
    next cell; the error is raised again at the end so the command exits non-zero. The output
    folder's study lock is held throughout: another runner there makes this one refuse (or, with
    ``wait``, wait for it).
    """
    from cslrobust.errors import CslRobustError

    cells = study_cells(spec)
    failures: list[str] = []
    if cells:  # under torchrun: start the process group before deciding who talks to the store
        on_this_process(cells[0].config)
    on_main(lambda: check_locations(spec))
    main = is_main()
    if not main:  # under torchrun: every rank runs the stages, rank 0 alone talks to the store
        echo = _silent
    with (
        _study_lock(spec, main, wait, echo) as still_held,
        open_store(spec) if main else contextlib.nullcontext() as opened,
    ):
        store = _StoreOnMain(opened)
        for cell in cells:
            store.register_cell(cell, spec.name)
        for i, cell in enumerate(cells, start=1):
            still_held()
            cfg = cell.config
            label = f"[{i}/{len(cells)}] {cfg.name}"
            done = store.completed_stages(cell.cell_id)
            pending = [s for s, key in cell.stages.items() if key not in done]
            if not pending:
                echo(f"{label}: done, skipped")
                store.mark_done(cell.cell_id)
                continue
            try:
                for stage in pending:
                    tic = time.perf_counter()
                    echo(f"{label}: {stage} ...")
                    store.mark_running(cell.cell_id, stage)
                    rows = STAGES.get(stage).run(cfg, progress)
                    seconds = time.perf_counter() - tic
                    store.commit_stage(cell.cell_id, cell.stages[stage], rows, seconds)
                    echo(f"{label}: {stage} done in {time.perf_counter() - tic:.0f} s")
                store.mark_done(cell.cell_id)
            except CslRobustError as err:
                store.mark_failed(cell.cell_id, stage, str(err))
                echo(f"{label}: {stage} FAILED: {err}")
                failures.append(f"{cfg.name}: {err}")
    if failures:
        raise CslRobustError(f"{len(failures)} cell(s) failed; first: {failures[0]}")
    return cells
