"""Probe stage: fit the linear probe on frozen backbone features of a trained run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from cslrobust.config import RunConfig
from cslrobust.distributed import on_main
from cslrobust.probe import (
    accuracy,
    assert_frozen,
    extract_features,
    state_snapshot,
    train_linear_probe,
)
from cslrobust.provenance import provenance
from cslrobust.records import write_json_atomic
from cslrobust.run_files import Float, Int, Record
from cslrobust.study.run_folder import PROBE_FILE, PROBE_WEIGHTS, load_run, tagged
from cslrobust.study.stages import Rows, Stage, register_stage
from cslrobust.training import save_weights


def run_probe(
    run_dir: Path,
    *,
    epoch: int | None = None,
    config: RunConfig | None = None,
    progress: bool = True,
    tag: str = "",
) -> dict[str, Any]:
    """Fit the linear probe on frozen features of a trained run; write ``probe<tag>.json`` and weights.

    With several processes, feature extraction is sharded across ranks; rank 0 alone fits the head
    (seconds on cached features) and writes the files, and every rank returns its record.

    Args:
        run_dir: A run folder made by the train stage.
        epoch: Probe this epoch's checkpoint (default: the latest).
        config: Probe settings and device (default: the run's saved config).
        progress: Show progress bars (loading the data; the probe itself trains in seconds).
        tag: Suffix of the written files (see :func:`~cslrobust.study.run_folder.tagged`).
    """
    tic = time.perf_counter()
    run = load_run(run_dir, epoch=epoch, config=config, progress=progress)
    cfg, encoder, splits = run.config, run.encoder, run.splits
    reference = state_snapshot(encoder)
    batch = cfg.probe.batch_size

    def features(images: torch.Tensor) -> torch.Tensor:
        return extract_features(
            encoder.features, encoder, images, batch_size=batch, device=cfg.device
        )

    train = splits.probe_train  # clips: cut like the evaluation samples
    f_train, f_val, f_test = (features(s.images) for s in (train, splits.val, splits.test))
    assert_frozen(encoder, reference)

    def fit_and_write() -> dict[str, Any]:
        result = train_linear_probe(
            f_train,
            train.labels,
            f_val,
            splits.val.labels,
            num_classes=splits.num_classes,
            epochs=cfg.probe.epochs,
            lr=cfg.probe.lr,
            weight_decay=cfg.probe.weight_decay,
            batch_size=batch,
            seed=cfg.seed,
        )
        head = result.head
        record: dict[str, Any] = {
            "run_id": cfg.run_id(),
            "name": cfg.name,
            "objective": cfg.objective.name,
            "checkpoint_epoch": run.checkpoint.epoch,
            "probe_config": cfg.probe.model_dump(mode="json"),  # a trajectory reuses it when equal
            "best_epoch": result.best_epoch,
            "val_accuracy": result.best_val_accuracy,
            "train_accuracy": accuracy(head, f_train, train.labels),
            "test_accuracy": accuracy(head, f_test, splits.test.labels),
            "n_test": len(splits.test),
            "dead_features": result.dead_features,
            "history": result.history,
        }
        if run.head_kind == "classifier":
            # The supervised model's own classifier, evaluated through the same frozen features.
            record["own_head_test_accuracy"] = accuracy(encoder.head, f_test, splits.test.labels)
            record["own_head_val_accuracy"] = accuracy(encoder.head, f_val, splits.val.labels)
        record["wall_seconds"] = time.perf_counter() - tic
        record.update(provenance())
        save_weights(
            head,
            run_dir / tagged(PROBE_WEIGHTS, tag),
            {"checkpoint_epoch": str(run.checkpoint.epoch)},
        )
        write_json_atomic(run_dir / tagged(PROBE_FILE, tag), record)
        return record

    return on_main(fit_and_write)


PROBE_METRICS = (
    "test_accuracy",
    "val_accuracy",
    "train_accuracy",
    "own_head_test_accuracy",
    "own_head_val_accuracy",
    "dead_features",
)


#: What :func:`probe_rows` reads from ``probe.json`` (the trajectory stage reuses a checkpoint's record).
PROBE_RECORD = Record(
    required={
        "checkpoint_epoch": Int(minimum=0),
        "n_test": Int(minimum=0),
        "test_accuracy": Float(),
        "val_accuracy": Float(),
    },
    optional={
        "train_accuracy": Float(),
        "own_head_test_accuracy": Float(),
        "own_head_val_accuracy": Float(),
        "dead_features": Int(minimum=0),
    },
)


def probe_rows(record: dict[str, Any]) -> Rows:
    """Rows of the probe stage."""
    epoch = record["checkpoint_epoch"]
    return [
        {"metric": f"probe/{k}", "value": record[k], "epoch": epoch, "n_test": record["n_test"]}
        for k in PROBE_METRICS
        if k in record
    ]


register_stage(
    Stage(
        name="probe",
        order=20,
        run=lambda cfg, progress: probe_rows(run_probe(cfg.run_dir, config=cfg, progress=progress)),
        needs=("train",),
        key_inputs=lambda cfg: {"probe": cfg.probe.model_dump(mode="json")},
        sections=("clean",),
        settings=("probe",),
        version=2,  # 2: dead features get weight 0
    )
)
