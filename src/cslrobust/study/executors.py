"""Executors: spread the cells of a study over machines (``study run --executor local|ray|slurm``).

The executors are thin. Each submits one task per cell that is not done yet; a task runs the worker
loop of :func:`~cslrobust.study.runner.work_study` restricted to its cell (``study work --cell``),
so every guarantee (one stage at a time per (cell, stage), fencing, resume after a crash) comes from
the leases in the results store, not from the scheduler. A cell with ``cluster.processes_per_cell``
> 1 runs as ``torchrun --standalone --nproc_per_node=P -m cslrobust study work STUDY --cell ID`` inside
its task.

- ``ray``: one ``ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell)`` task per cell, on the
  cluster of ``--ray-address`` (or ``RAY_ADDRESS``), else a local Ray started for the run.
- ``slurm``: one submitit job-array task per cell (partition, GPUs, CPUs, time limit, at most
  ``max_concurrent`` running); cells that are done or hold a live lease are not submitted, so
  submitting again fills only the gaps.

``ray`` and ``submitit`` are imported inside the functions that need them (the ``cluster`` extra).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cslrobust.errors import ConfigError, CslRobustError
from cslrobust.study.runner import Cell, open_store, study_cells, work_study
from cslrobust.study.spec import StudySpec, load_study

EXECUTORS = ("local", "ray", "slurm")
# Environment variables a task gets from the submitting process (data cache, import path).
_FORWARDED_PREFIXES = ("CSLROBUST_", "PYTHONPATH")


@dataclass(frozen=True)
class CellTask:
    """What one cell's task needs: the study file, its overrides, the store, the cell.

    Attributes:
        study_file: Absolute path of the study YAML (tasks load it themselves).
        overrides: ``--set`` overrides of the study file.
        storage: Results store URL overriding the study's ``storage`` (None: the study's).
        cell_id: The cell to run.
        name: The cell's run name (for messages).
        processes: Processes of the cell (> 1: torchrun inside the task).
        env: Environment variables set in the task before it runs.
    """

    study_file: str
    overrides: tuple[str, ...]
    storage: str | None
    cell_id: str
    name: str
    processes: int = 1
    env: tuple[tuple[str, str], ...] = ()


def missing_dependency(executor: str) -> ConfigError:
    """The one-line error of an executor whose optional dependency is not installed."""
    return ConfigError(
        f"executor {executor!r} needs the cluster extra: pip install 'cslrobust[cluster]'"
    )


def forwarded_env() -> tuple[tuple[str, str], ...]:
    """``CSLROBUST_*`` variables and ``PYTHONPATH`` (made absolute) of this process, for the tasks."""
    out = []
    for key, value in sorted(os.environ.items()):
        if not key.startswith(_FORWARDED_PREFIXES):
            continue
        if key == "PYTHONPATH":
            value = os.pathsep.join(str(Path(p).resolve()) for p in value.split(os.pathsep) if p)
        out.append((key, value))
    return tuple(out)


def cell_command(task: CellTask) -> list[str]:
    """The command a task of ``task.processes`` > 1 runs: ``study work`` of its cell under torchrun."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # = torchrun, without relying on PATH
        "--standalone",  # a free rendezvous port: several cells may share a node
        f"--nproc_per_node={task.processes}",
        "-m",
        "cslrobust",
        "study",
        "work",
        task.study_file,
        "--cell",
        task.cell_id,
        "--no-progress",
    ]
    if task.storage:
        command += ["--storage", task.storage]
    for override in task.overrides:
        command += ["--set", override]
    return command


def run_cell_task(task: CellTask) -> str:
    """Run one cell to completion (the body of a Ray task or a Slurm array task).

    Returns:
        A line saying which cell finished.

    Raises:
        CslRobustError: If the cell failed (or its torchrun launch exited non-zero).
    """
    os.environ.update(dict(task.env))
    if task.processes > 1:
        done = subprocess.run(cell_command(task), check=False)
        if done.returncode != 0:
            raise CslRobustError(f"cell {task.name}: torchrun exited with status {done.returncode}")
        return f"{task.name}: done"
    spec = load_study(Path(task.study_file), task.overrides)
    for _, sub in spec.budget_studies():
        if any(c.cell_id == task.cell_id for c in study_cells(sub)):
            work_study(sub, only=[task.cell_id], progress=False, storage=task.storage, echo=print)
    return f"{task.name}: done"


def pending_tasks(
    study_file: Path, overrides: Sequence[str], spec: StudySpec, storage: str | None
) -> list[CellTask]:
    """One task per cell of every budget that is not done and holds no live lease."""
    tasks = []
    env = forwarded_env()
    for _, sub in spec.budget_studies():
        cells: list[Cell] = study_cells(sub)
        with open_store(sub, storage) as store:
            for cell in cells:
                store.register_cell(
                    cell.cell_id,
                    sub.name,
                    cell.method,
                    cell.config.seed,
                    cell.config.model_dump(mode="json"),
                )
            committed = store.committed([c.cell_id for c in cells])
            leased = {lease.cell_id for lease in store.leases() if not lease.expired}
        for cell in cells:
            done = all((cell.cell_id, key) in committed for key in cell.stages.values())
            if done or cell.cell_id in leased:
                continue
            tasks.append(
                CellTask(
                    str(study_file.resolve()),
                    tuple(overrides),
                    storage,
                    cell.cell_id,
                    cell.config.name,
                    spec.cluster.processes_per_cell,
                    env,
                )
            )
    return tasks


def run_ray(
    tasks: Sequence[CellTask],
    spec: StudySpec,
    *,
    address: str | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Run every task as a Ray task with the study's per-cell resources; wait for all.

    Connects to ``address`` (else ``RAY_ADDRESS``, else a local Ray started here), unless Ray is
    already initialised in this process.

    Raises:
        ConfigError: If Ray is not installed or the cluster cannot be reached.
        CslRobustError: If a cell's task failed (after every task has ended).
    """
    try:
        import ray
    except ImportError:
        raise missing_dependency("ray") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot connect to Ray at {address!r}: {first}") from None
    cluster = spec.cluster
    remote = ray.remote(
        num_cpus=cluster.cpus_per_cell * cluster.processes_per_cell,
        num_gpus=cluster.gpus_per_cell,
        max_retries=0,  # a lost task's lease expires; running the executor again resubmits
    )(run_cell_task)
    refs = {remote.remote(task): task for task in tasks}
    echo(f"submitted {len(refs)} cell(s) to Ray")
    failures = []
    for ref, task in refs.items():
        try:
            echo(ray.get(ref))
        except Exception as err:  # noqa: BLE001 - a task's error, reported once all have ended
            line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            echo(f"{task.name}: FAILED: {line}")
            failures.append(f"{task.name}: {line}")
    if failures:
        raise CslRobustError(f"{len(failures)} cell task(s) failed; first: {failures[0]}")


def slurm_executor(spec: StudySpec, *, cluster: str = "slurm") -> Any:
    """A submitit executor set up from the study's ``cluster`` section.

    Args:
        spec: The study.
        cluster: submitit's cluster (``slurm``; ``local`` runs the tasks as local processes).

    Raises:
        ConfigError: If submitit is not installed.
    """
    try:
        import submitit
    except ImportError:
        raise missing_dependency("slurm") from None
    settings = spec.cluster
    slurm = settings.slurm
    folder = slurm.log_dir or Path("slurm")
    folder = folder if folder.is_absolute() else spec.output_dir / folder
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    extra: dict[str, Any] = {
        "slurm_partition": slurm.partition,
        "slurm_account": slurm.account,
        "slurm_qos": slurm.qos,
    }
    executor.update_parameters(
        name=f"cslrobust-{spec.name}",
        timeout_min=slurm.time_limit_min,
        nodes=1,
        tasks_per_node=1,  # torchrun (processes_per_cell > 1) starts the ranks inside the task
        gpus_per_node=settings.gpus_per_cell,
        cpus_per_task=settings.cpus_per_cell * settings.processes_per_cell,
        mem_gb=slurm.mem_gb,
        slurm_array_parallelism=slurm.max_concurrent,
        **{k: v for k, v in extra.items() if v is not None},
    )
    return executor


def run_slurm(
    tasks: Sequence[CellTask],
    spec: StudySpec,
    *,
    wait: bool = True,
    cluster: str = "slurm",
    echo: Callable[[str], None] = print,
) -> list[str]:
    """Submit one job-array task per cell; with ``wait``, wait for all of them.

    Returns:
        The job ids.

    Raises:
        ConfigError: If submitit is not installed or the submission fails.
        CslRobustError: If a cell's task failed (after every task has ended).
    """
    if not tasks:
        return []
    executor = slurm_executor(spec, cluster=cluster)
    try:
        jobs = executor.map_array(run_cell_task, list(tasks))
    except Exception as err:  # noqa: BLE001 - sbatch missing, refused submission, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"submitting the cells to {cluster} failed: {first}") from None
    ids = [job.job_id for job in jobs]
    echo(f"submitted {len(jobs)} cell(s) as job array {ids[0].split('_')[0]}")
    if not wait:
        return ids
    failures = []
    for job, task in zip(jobs, tasks, strict=True):
        try:
            echo(str(job.result()))
        except Exception as err:  # noqa: BLE001 - reported once every task has ended
            text = str(err).strip()
            line = text.splitlines()[-1] if text else type(err).__name__
            echo(f"{task.name}: FAILED: {line}")
            failures.append(f"{task.name}: {line}")
    if failures:
        raise CslRobustError(f"{len(failures)} cell task(s) failed; first: {failures[0]}")
    return ids
