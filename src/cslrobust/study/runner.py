"""Run the missing stages of every cell of a study, recording results in the study's database.

A cell is one (method, seed); its id is the hash of its training config (``RunConfig.run_id``). Each
evaluation stage has its own key, ``<stage>:<hash of the settings it depends on>``, so changing the attack
settings re-runs only the attack stage. A stage counts as done when its rows and marker are committed to
the store (one transaction). Training resumes from its last epoch checkpoint, so a runner killed at any
moment and started again finishes the study with no duplicated and no lost rows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cslrobust.config import RunConfig, canonical_hash
from cslrobust.distributed import is_main, on_main
from cslrobust.provenance import git_sha
from cslrobust.study.analyze import run_analyze
from cslrobust.study.evaluate import run_evaluate
from cslrobust.study.spec import StudySpec, expand_study, method_of
from cslrobust.study.stages import (
    CHECKPOINT_DIR,
    on_this_process,
    run_attack,
    run_probe,
    run_train,
)
from cslrobust.study.store import ResultsStore, sqlite_path
from cslrobust.training import list_checkpoints


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

    def commit_stage(self, cell_id: str, key: str, rows: list[dict[str, Any]]) -> None:
        on_main(lambda: self._main().commit_stage(cell_id, key, rows, git_sha()))

    def mark_done(self, cell_id: str) -> None:
        on_main(lambda: self._main().mark_done(cell_id))

    def mark_failed(self, cell_id: str, stage: str, error: str) -> None:
        on_main(lambda: self._main().mark_failed(cell_id, stage, error))


def _silent(message: str) -> None:
    """Echo of the ranks other than 0 (they run the same stages quietly)."""


STAGES = ("train", "probe", "attack", "analyze", "evaluate", "epochs")


def stage_keys(cfg: RunConfig) -> dict[str, str]:
    """The key of each stage of a cell: the stage name plus a hash of the settings it depends on."""
    probe = canonical_hash({"train": cfg.run_id(), "probe": cfg.probe.model_dump(mode="json")})
    attack = canonical_hash({"probe": probe, "attack": cfg.attack.model_dump(mode="json")})
    analyze = canonical_hash(
        {
            "probe": probe,
            "geometry": cfg.geometry.model_dump(mode="json"),
            "steps": cfg.attack.steps,
        }
    )
    evaluate = canonical_hash(
        {"probe": probe, "evaluation": cfg.evaluation.model_dump(mode="json")}
    )
    epochs = canonical_hash(
        {"probe": probe, "attack": cfg.attack.model_dump(mode="json"), "all_epochs": True}
    )
    return {
        "train": f"train:{cfg.run_id()}",
        "probe": f"probe:{probe}",
        "attack": f"attack:{attack}",
        "analyze": f"analyze:{analyze}",
        "evaluate": f"evaluate:{evaluate}",
        "epochs": f"epochs:{epochs}",
    }


def open_store(spec: StudySpec) -> ResultsStore:
    """The study's results database (default ``sqlite:///<output_dir>/results.db``)."""
    url = spec.storage or "sqlite:///results.db"
    return ResultsStore(sqlite_path(url, spec.output_dir))


def train_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the train stage: per-epoch means of every logged metric, and the wall time."""
    rows: list[dict[str, Any]] = [{"metric": "train_seconds", "value": summary["wall_seconds"]}]
    for record in summary["history"]:
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch":
                rows.append({"metric": f"train/{key}", "epoch": epoch, "value": value})
    return rows


def probe_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the probe stage."""
    keys = (
        "test_accuracy",
        "val_accuracy",
        "train_accuracy",
        "own_head_test_accuracy",
        "own_head_val_accuracy",
    )
    epoch = record["checkpoint_epoch"]
    return [
        {"metric": f"probe/{k}", "value": record[k], "epoch": epoch, "n_test": record["n_test"]}
        for k in keys
        if k in record
    ]


def attack_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the attack stage: clean, robust accuracy and success rate per (attack, norm, eps)."""
    rows = []
    for r in record["results"]:
        cond = {
            "attack": r["attack"],
            "norm": r["norm"],
            "eps": r["eps"],
            "epoch": record["checkpoint_epoch"],
        }
        meta = {"n": r["n"], "steps": r["steps"], "restarts": r["restarts"]}
        rows.append({**cond, **meta, "metric": "clean_accuracy", "value": r["clean_accuracy"]})
        rows.append(
            {
                **cond,
                **meta,
                "metric": "robust_accuracy",
                "value": r["robust_accuracy"],
                "correct_bits": r.get("robust_correct_bits"),
                "clean_bits": r.get("clean_correct_bits"),
            }
        )
        rows.append(
            {**cond, **meta, "metric": "attack_success_rate", "value": r["attack_success_rate"]}
        )
    return rows


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
    for cfg in expand_study(spec):
        keys = stage_keys(cfg)
        wanted = set(spec.stages)
        if spec.match_clean_accuracy and method_of(cfg) == spec.supervised_method:
            wanted.add("epochs")  # probe + attack every kept epoch of the supervised reference
        stages = {s: keys[s] for s in STAGES if s in wanted}
        cells.append(Cell(cfg, cfg.run_id(), method_of(cfg), stages))
    return cells


def run_study(
    spec: StudySpec,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[Cell]:
    """Run all pending stages of every cell; return the cells.

    A failing cell is recorded as failed (with its one-line error) and the runner goes on with the
    next cell; the error is raised again at the end so the command exits non-zero.
    """
    from cslrobust.errors import CslRobustError

    cells = study_cells(spec)
    failures: list[str] = []
    if cells:  # under torchrun: start the process group before deciding who talks to the store
        on_this_process(cells[0].config)
    main = is_main()
    if not main:  # under torchrun: every rank runs the stages, rank 0 alone talks to the store
        echo = _silent
    with open_store(spec) if main else contextlib.nullcontext() as opened:
        store = _StoreOnMain(opened)
        for cell in cells:
            store.register_cell(cell, spec.name)
        for i, cell in enumerate(cells, start=1):
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
                    rows = _run_stage(stage, cfg, progress)
                    store.commit_stage(cell.cell_id, cell.stages[stage], rows)
                    echo(f"{label}: {stage} done in {time.perf_counter() - tic:.0f} s")
                store.mark_done(cell.cell_id)
            except CslRobustError as err:
                store.mark_failed(cell.cell_id, stage, str(err))
                echo(f"{label}: {stage} FAILED: {err}")
                failures.append(f"{cfg.name}: {err}")
    if failures:
        raise CslRobustError(f"{len(failures)} cell(s) failed; first: {failures[0]}")
    return cells


def analyze_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the analyze stage: one per geometry metric."""
    epoch = record["checkpoint_epoch"]
    return [
        {"metric": f"geometry/{k}", "value": v, "epoch": epoch}
        for k, v in record["metrics"].items()
    ]


def evaluate_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the evaluate stage (metrics prefixed ``eval/`` so they never mix with the attack stage)."""
    epoch = record["checkpoint_epoch"]
    rows: list[dict[str, Any]] = []
    for r in record["sweeps"]:
        cond = {"attack": r["attack"], "norm": r["norm"], "eps": r["eps"], "epoch": epoch}
        for key in (
            "clean_accuracy",
            "robust_accuracy",
            "attack_success_rate",
            "robust_clean_ratio",
        ):
            extra = (
                {"correct_bits": r["robust_correct_bits"], "n": r["n"]}
                if key == "robust_accuracy"
                else {}
            )
            rows.append({**cond, **extra, "metric": f"eval/{key}", "value": r[key]})
    for s in record["eps50"]:
        rows.append(
            {
                "attack": s["attack"],
                "norm": s["norm"],
                "epoch": epoch,
                "metric": "eval/eps50",
                "value": s["eps50"],
            }
        )
    for aa in record["autoattack"]:
        cond = {"attack": "autoattack", "norm": aa["norm"], "eps": aa["eps"], "epoch": epoch}
        rows.append(
            {
                **cond,
                "metric": "eval/robust_accuracy",
                "value": aa["robust_accuracy"],
                "flags": aa["flags"],
            }
        )
        rows.append({**cond, "metric": "eval/clean_accuracy", "value": aa["clean_accuracy"]})
    for norm, fab in record["fab"].items():
        rows.append(
            {
                "attack": "fab",
                "norm": norm,
                "epoch": epoch,
                "metric": "eval/min_norm_median",
                "value": fab["min_norm_median"],
            }
        )
    for c in record.get("corruptions", {}).get("rows", []):
        rows.append(
            {
                "corruption": c["corruption"],
                "severity": c["severity"],
                "epoch": epoch,
                "metric": "corruption_accuracy",
                "value": c["accuracy"],
                "family": c["family"],
            }
        )
    for g in record["gates"]:
        rows.append(
            {
                "metric": f"gate/{g['name']}",
                "value": float(g["passed"]),
                "message": g["message"],
            }
        )
    return rows


def epoch_rows(cfg: RunConfig, progress: bool) -> list[dict[str, Any]]:
    """Probe and attack every kept checkpoint (the matched-clean-accuracy reference); metrics ``sl_epoch/``."""
    rows: list[dict[str, Any]] = []
    for checkpoint in list_checkpoints(cfg.run_dir / CHECKPOINT_DIR):
        tag = f"-epoch{checkpoint.epoch:04d}"
        probe = run_probe(cfg.run_dir, epoch=checkpoint.epoch, progress=progress, tag=tag)
        rows += [
            {**r, "metric": r["metric"].replace("probe/", "sl_epoch/")}
            for r in probe_rows(probe)
            if r["metric"] in ("probe/val_accuracy", "probe/test_accuracy")
        ]
        attack = run_attack(cfg.run_dir, progress=progress, tag=tag)
        rows += [{**r, "metric": f"sl_epoch/{r['metric']}"} for r in attack_rows(attack)]
    return rows


def _run_stage(stage: str, cfg: RunConfig, progress: bool) -> list[dict[str, Any]]:
    if stage == "train":
        return train_rows(run_train(cfg, resume=True, progress=progress))
    if stage == "probe":
        return probe_rows(run_probe(cfg.run_dir, progress=progress))
    if stage == "attack":
        return attack_rows(run_attack(cfg.run_dir, progress=progress))
    if stage == "epochs":
        return epoch_rows(cfg, progress)
    if stage == "analyze":
        return analyze_rows(run_analyze(cfg.run_dir, progress=progress, tsne=True))
    return evaluate_rows(run_evaluate(cfg.run_dir, progress=progress))
