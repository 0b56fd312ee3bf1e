"""Epochs stage: probe and attack every kept checkpoint of the supervised reference.

It gives the matched-clean-accuracy comparison (MISSION.md): each other method is compared with the
supervised checkpoint whose validation clean accuracy is closest to its own. Metrics are ``sl_epoch/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cslrobust.config import RunConfig, section_identity
from cslrobust.study.attack import attack_rows, run_attack
from cslrobust.study.probe import probe_rows, run_probe
from cslrobust.study.run_folder import CHECKPOINT_DIR
from cslrobust.study.stages import Rows, Stage, register_stage
from cslrobust.training import list_checkpoints


def epoch_rows(cfg: RunConfig, progress: bool) -> Rows:
    """Probe and attack every kept checkpoint; metrics ``sl_epoch/``."""
    rows: Rows = []
    for checkpoint in list_checkpoints(cfg.run_dir / CHECKPOINT_DIR):
        tag = f"-epoch{checkpoint.epoch:04d}"
        probe = run_probe(
            cfg.run_dir, epoch=checkpoint.epoch, config=cfg, progress=progress, tag=tag
        )
        rows += [
            {**r, "metric": r["metric"].replace("probe/", "sl_epoch/")}
            for r in probe_rows(probe)
            if r["metric"] in ("probe/val_accuracy", "probe/test_accuracy")
        ]
        attack = run_attack(cfg.run_dir, config=cfg, progress=progress, tag=tag)
        rows += [{**r, "metric": f"sl_epoch/{r['metric']}"} for r in attack_rows(attack)]
    return rows


def _supervised_reference(study: Mapping[str, Any], method: str) -> bool:
    """Run on the supervised reference of a study that matches clean accuracy."""
    return bool(study.get("match_clean_accuracy")) and method == study.get("supervised_method")


register_stage(
    Stage(
        name="epochs",
        order=60,
        run=epoch_rows,
        needs=("probe",),
        key_inputs=lambda cfg: {"attack": section_identity(cfg, "attack"), "all_epochs": True},
        sections=("attacks",),
        also_when=_supervised_reference,
    )
)
