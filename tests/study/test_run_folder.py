"""Run folder: what loading a trained encoder needs is in its checkpoint; loading builds no objective."""

import json
from pathlib import Path

import pytest
import torch

from cslrobust.config import RunConfig, build_run_config
from cslrobust.errors import CheckpointError
from cslrobust.models import LinearHead, ProjectionHead
from cslrobust.study import train as train_stage
from cslrobust.study.run_folder import load_run
from cslrobust.study.train import run_train
from cslrobust.training import latest_checkpoint, save_weights
from cslrobust.training.checkpoint import read_metadata


def _train(tmp_path: Path, synthetic_study, objective: dict[str, object]) -> RunConfig:
    synthetic_study()  # writes the synthetic archive tmp_path / "data.tar.gz"
    cfg = build_run_config(
        {
            "name": str(objective["name"]),
            "output_dir": str(tmp_path / "out"),
            "data": {
                "name": "image_folder",
                "source": str(tmp_path / "data.tar.gz"),
                "val_per_class": 4,
            },
            "model": {"width": 8, "proj_hidden_dim": 32, "proj_dim": 16, "channels_last": False},
            "objective": objective,
            "train": {"epochs": 1, "batch_size": 32, "tensorboard": False, "log_every": 1},
        }
    )
    run_train(cfg, progress=False)
    return cfg


def _no_objective(*args: object, **kwargs: object) -> None:
    raise AssertionError("loading a run must not build its objective")


@pytest.mark.parametrize(
    ("objective", "head", "n_views"),
    [
        ({"name": "supervised"}, LinearHead, "1"),
        (
            {"name": "simclr_fnr", "fn": {"detector": "topk", "k": 2, "support_views": 1}},
            ProjectionHead,
            "3",
        ),
    ],
    ids=["supervised", "simclr_fnr"],
)
def test_checkpoint_records_what_loading_needs(
    tmp_path: Path, synthetic_study, monkeypatch, objective, head, n_views
):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    cfg = _train(tmp_path, synthetic_study, objective)
    checkpoint = latest_checkpoint(cfg.run_dir / "checkpoints")
    assert checkpoint is not None
    metadata = read_metadata(checkpoint.model_file)
    assert metadata["head_kind"] == cfg.objective.head_kind
    assert metadata["n_views"] == n_views and metadata["run_id"] == cfg.run_id()

    monkeypatch.setattr(train_stage, "build_objective", _no_objective)
    run = load_run(cfg.run_dir)
    assert isinstance(run.encoder.head, head)
    assert metadata["feature_dim"] == str(run.encoder.feature_dim)


def test_older_run_loads_from_its_legacy_config_and_header(
    tmp_path: Path, synthetic_study, monkeypatch
):
    """A run written before typed sections: flat config.json, no head kind in the header."""
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    cfg = _train(tmp_path, synthetic_study, {"name": "supervised", "label_smoothing": 0.1})
    reference = load_run(cfg.run_dir).encoder.state_dict()

    legacy = cfg.model_dump(mode="json")
    identity = cfg.training_identity()  # the flat sections older code saved
    legacy["objective"], legacy["augment"] = identity["objective"], identity["augment"]
    assert "temperature" in legacy["objective"] and "jitter" in legacy["augment"]
    (cfg.run_dir / "config.json").write_text(json.dumps(legacy))
    checkpoint = latest_checkpoint(cfg.run_dir / "checkpoints")
    assert checkpoint is not None
    old_header = {"config": json.dumps(legacy), "run_id": cfg.run_id(), "epoch": "1"}
    run = load_run(cfg.run_dir)
    save_weights(run.encoder, checkpoint.model_file, old_header)

    monkeypatch.setattr(train_stage, "build_objective", _no_objective)
    run = load_run(cfg.run_dir)
    assert run.config.run_id() == cfg.run_id()
    assert isinstance(run.encoder.head, LinearHead)  # from the section class: supervised
    for key, value in run.encoder.state_dict().items():
        assert torch.equal(value, reference[key]), key

    save_weights(run.encoder, checkpoint.model_file, {**old_header, "feature_dim": "7"})
    with pytest.raises(CheckpointError, match="feature_dim=7"):
        load_run(cfg.run_dir)
