"""Trajectory stage: probe and attack a run's checkpoints along training (the accuracy frontier).

The checkpoints of a trajectory are the epochs that are multiples of the run's ``train.keep_every``
and the final epoch (:func:`trajectory_epochs`); a study's ``trajectory_every`` sets ``keep_every`` on
every cell, and ``match_clean_accuracy`` sets 1 on the supervised reference. Each checkpoint is probed
(features extracted once) and attacked with the study's settings, its files tagged ``-epochNNNN``; rows
are the probe's and attack's own, prefixed ``trajectory/`` and carrying their ``epoch``.

Resume: a checkpoint whose tagged probe and attack records were written for the same run id, checkpoint
and settings is read back, not recomputed, so a killed stage continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cslrobust.config import RunConfig, section_identity
from cslrobust.errors import CheckpointError
from cslrobust.records import read_json_record
from cslrobust.run_files import Record
from cslrobust.study.attack import ATTACK_RECORD, attack_rows, run_attack
from cslrobust.study.probe import PROBE_RECORD, probe_rows, run_probe
from cslrobust.study.run_folder import (
    ATTACK_FILE,
    CHECKPOINT_DIR,
    PROBE_FILE,
    PROBE_WEIGHTS,
    run_settings,
    tagged,
)
from cslrobust.study.spec import trajectory_step
from cslrobust.study.stages import Rows, Stage, register_stage
from cslrobust.training import latest_checkpoint

TRAJECTORY_PREFIX = "trajectory/"
"""Prefix of the stage's metrics (``trajectory/robust_accuracy``, ``trajectory/probe/val_accuracy``)."""

PROBE_METRICS = ("probe/val_accuracy", "probe/test_accuracy")
"""Probe metrics kept per checkpoint."""


@dataclass(frozen=True)
class CheckpointResult:
    """The probe and attack records of one checkpoint of a trajectory."""

    epoch: int
    probe: dict[str, Any]
    attack: dict[str, Any]


def trajectory_epochs(final: int, every: int) -> list[int]:
    """Epochs of a trajectory: the multiples of ``every`` below ``final``, then ``final``.

    Args:
        final: The last trained epoch.
        every: The step (``train.keep_every``); 0 gives the final epoch only.

    Returns:
        Increasing epochs, ``final`` last.
    """
    periodic = list(range(every, final, every)) if every > 0 else []
    return [*periodic, final]


def checkpoint_tag(epoch: int) -> str:
    """Tag of a trajectory checkpoint's files: ``-epoch0003``."""
    return f"-epoch{epoch:04d}"


def _matching_record(
    path: Path, expected: Mapping[str, Any], spec: Record
) -> dict[str, Any] | None:
    """The record at ``path`` when it exists, is well formed and holds every ``expected`` value.

    These records are the stage's resume cache: a missing or damaged one (any field that is not
    what this version writes) is recomputed and replaced, never read.
    """
    try:
        record = read_json_record(path, spec=spec)
    except CheckpointError:
        return None
    return record if all(record.get(k) == v for k, v in expected.items()) else None


def _checkpoint_result(
    run_dir: Path, cfg: RunConfig, epoch: int, progress: bool
) -> CheckpointResult:
    """Probe and attack one checkpoint, reading back records of the same run, checkpoint and settings.

    The attack is reused only with a reused probe; before a probe is (re)computed the checkpoint's
    attack record is removed, so no attack of another probe survives.
    """
    tag = checkpoint_tag(epoch)
    same = {"run_id": cfg.run_id(), "checkpoint_epoch": epoch}
    probe = None
    if (run_dir / tagged(PROBE_WEIGHTS, tag)).is_file():
        probe = _matching_record(
            run_dir / tagged(PROBE_FILE, tag),
            {**same, "probe_config": cfg.probe.model_dump(mode="json")},
            PROBE_RECORD,
        )
    attack = None
    if probe is None:
        (run_dir / tagged(ATTACK_FILE, tag)).unlink(missing_ok=True)
        probe = run_probe(run_dir, epoch=epoch, config=cfg, progress=progress, tag=tag)
    else:
        attack = _matching_record(
            run_dir / tagged(ATTACK_FILE, tag),
            {**same, "attack_config": cfg.attack.model_dump(mode="json")},
            ATTACK_RECORD,
        )
    if attack is None:
        attack = run_attack(run_dir, config=cfg, progress=progress, tag=tag)
    return CheckpointResult(epoch, probe, attack)


def run_trajectory(
    run_dir: Path, *, config: RunConfig | None = None, progress: bool = True
) -> list[CheckpointResult]:
    """Probe and attack every checkpoint of a trained run's trajectory (see :func:`trajectory_epochs`).

    Args:
        run_dir: A run folder made by the train stage (its checkpoints of the trajectory kept).
        config: Probe and attack settings and device (default: the run's saved config).
        progress: Show progress bars.

    Returns:
        One result per checkpoint, in epoch order.

    Raises:
        CheckpointError: If the run has no checkpoint, or one of the trajectory is missing.
    """
    cfg = config if config is not None else run_settings(run_dir)
    latest = latest_checkpoint(run_dir / CHECKPOINT_DIR)
    if latest is None:
        raise CheckpointError(f"run folder {str(run_dir)!r} has no checkpoint; run 'train' first")
    epochs = trajectory_epochs(latest.epoch, cfg.train.keep_every)
    return [_checkpoint_result(run_dir, cfg, epoch, progress) for epoch in epochs]


def trajectory_rows(results: list[CheckpointResult]) -> Rows:
    """Rows of the trajectory stage: per checkpoint, probe accuracies and the attack rows, prefixed."""
    rows: Rows = []
    for result in results:
        probe = [r for r in probe_rows(result.probe) if r["metric"] in PROBE_METRICS]
        rows += [
            {**r, "metric": TRAJECTORY_PREFIX + r["metric"]}
            for r in probe + attack_rows(result.attack)
        ]
    return rows


def _has_trajectory(study: Mapping[str, Any], method: str) -> bool:
    """Every cell of a study with ``trajectory_every``; the supervised reference of a matched study."""
    return trajectory_step(study, method) > 0


register_stage(
    Stage(
        name="trajectory",
        order=60,
        run=lambda cfg, progress: trajectory_rows(
            run_trajectory(cfg.run_dir, config=cfg, progress=progress)
        ),
        needs=("probe",),
        key_inputs=lambda cfg: {"attack": section_identity(cfg, "attack"), "all_epochs": True},
        sections=("attacks", "frontier", "families"),
        also_when=_has_trajectory,
        version=2,  # 2: every method, `trajectory/` rows (was stage `epochs`, `sl_epoch/` rows)
    )
)
