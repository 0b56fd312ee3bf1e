"""Run every cell of a study, skipping stages whose results are already on disk.

A stage is done when its JSON record exists and belongs to the cell's run id (and, for the attack stage,
to the same attack settings); training resumes from its last checkpoint. Killing the runner and starting
it again therefore continues where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cslrobust.config import RunConfig
from cslrobust.study.spec import StudySpec, expand_study
from cslrobust.study.stages import (
    ATTACK_FILE,
    PROBE_FILE,
    TRAIN_FILE,
    run_attack,
    run_probe,
    run_train,
)


def _record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except json.JSONDecodeError:
        return None  # a torn write is treated as "not done"


def pending_stages(cfg: RunConfig) -> list[str]:
    """The stages of a cell that still have to run, in order."""
    run_dir = cfg.run_dir
    run_id = cfg.run_id()
    train = _record(run_dir / TRAIN_FILE)
    if train is None or train.get("run_id") != run_id or train.get("epochs") != cfg.train.epochs:
        return ["train", "probe", "attack"]
    probe = _record(run_dir / PROBE_FILE)
    if (
        probe is None
        or probe.get("run_id") != run_id
        or probe.get("checkpoint_epoch") != cfg.train.epochs
    ):
        return ["probe", "attack"]
    attack = _record(run_dir / ATTACK_FILE)
    if (
        attack is None
        or attack.get("run_id") != run_id
        or attack.get("checkpoint_epoch") != cfg.train.epochs
        or attack.get("attack_config") != cfg.attack.model_dump(mode="json")
    ):
        return ["attack"]
    return []


def run_study(
    spec: StudySpec,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[RunConfig]:
    """Run all pending stages of every cell; return the cells.

    Args:
        spec: The validated study.
        progress: Show progress bars.
        echo: Where one-line status messages go.
    """
    cells = expand_study(spec)
    for i, cfg in enumerate(cells, start=1):
        stages = pending_stages(cfg)
        label = f"[{i}/{len(cells)}] {cfg.name}"
        if not stages:
            echo(f"{label}: done, skipped")
            continue
        for stage in stages:
            tic = time.perf_counter()
            echo(f"{label}: {stage} ...")
            if stage == "train":
                run_train(cfg, resume=True, progress=progress)
            elif stage == "probe":
                record = run_probe(cfg.run_dir, progress=progress)
                echo(f"{label}: probe test accuracy {record['test_accuracy']:.4f}")
            else:
                run_attack(cfg.run_dir, progress=progress)
            echo(f"{label}: {stage} done in {time.perf_counter() - tic:.0f} s")
    return cells
