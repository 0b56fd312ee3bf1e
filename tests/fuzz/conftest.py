"""Pristine run folders and study folders, built once per session, that the fuzz cases damage copies of."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.study.conftest import make_archive
from typer.testing import CliRunner

from cslrobust.cli.main import app

RUN_CONFIG = """
name: run
output_dir: {output}
device: cpu
data: {{name: image_folder, source: {source}, val_per_class: 2}}
model: {{width: 8, proj_hidden_dim: 16, proj_dim: 8, channels_last: false}}
train: {{epochs: 3, batch_size: 16, lr: 0.05, tensorboard: false, log_every: 1, keep_last: 3}}
probe: {{epochs: 2, batch_size: 16}}
attack: {{eps_linf: [0, 2/255], steps: 1, n_images: 8, batch_size: 8}}
objective: {{name: {objective}}}
"""

STUDY = """
name: fuzz
output_dir: out
seeds: [0]
stages: [train, probe, attack]
base:
  data: {{name: image_folder, source: {source}, val_per_class: 2}}
  model: {{width: 8, proj_hidden_dim: 16, proj_dim: 8, channels_last: false}}
  train: {{epochs: 1, batch_size: 16, lr: 0.05, tensorboard: false, log_every: 1}}
  probe: {{epochs: 2, batch_size: 16}}
  attack: {{eps_linf: [0, 2/255], steps: 1, n_images: 8, batch_size: 8}}
methods:
  supervised: {{objective: {{name: supervised}}}}
"""


@dataclass(frozen=True)
class Pristine:
    """A session's pristine folders: a trained and probed run, and a finished tiny study."""

    root: Path
    archive: Path
    run_dir: Path
    config_yaml: Path
    study_dir: Path
    study_yaml: Path


def _ok(args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, (args, result.output, result.exception)


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    """Train (3 epochs, the last one then removed) and probe a width-8 run; run a one-cell study."""
    root = tmp_path_factory.mktemp("fuzz-pristine")
    archive = make_archive(root / "data.tar.gz", classes=3, train=12, test=4, size=8)
    config_yaml = root / "run.yaml"
    config_yaml.write_text(
        RUN_CONFIG.format(output=root / "runs", source=archive, objective="supervised")
    )
    _ok(["train", str(config_yaml)])
    run_dir = root / "runs" / "run"
    # An interrupted run: epoch 2 of 3 is its latest checkpoint, so `train --resume` reads it.
    shutil.rmtree(run_dir / "checkpoints" / "epoch-0003")
    (run_dir / "checkpoints" / "latest.json").write_text('{"epoch": 2, "path": "epoch-0002"}\n')
    (run_dir / "train.json").unlink()
    _ok(["probe", str(run_dir)])
    study_dir = root / "study"
    study_dir.mkdir()
    study_yaml = study_dir / "study.yaml"
    study_yaml.write_text(STUDY.format(source=archive))
    _ok(["study", "run", str(study_yaml)])
    return Pristine(root, archive, run_dir, config_yaml, study_dir, study_yaml)


def copy_pristine(pristine: Pristine, dest: Path) -> Pristine:
    """A private copy of the pristine folders.

    The run config's ``output_dir`` is pointed at the copy; data sources keep pointing at the
    pristine archive, since the source path is part of every run id.
    """
    shutil.copytree(pristine.root, dest)
    config_yaml = dest / pristine.config_yaml.relative_to(pristine.root)
    config_yaml.write_text(
        config_yaml.read_text().replace(
            f"output_dir: {pristine.root / 'runs'}", f"output_dir: {dest / 'runs'}"
        )
    )
    study_yaml = dest / pristine.study_yaml.relative_to(pristine.root)  # its output_dir is relative
    return Pristine(
        dest,
        dest / pristine.archive.relative_to(pristine.root),
        dest / pristine.run_dir.relative_to(pristine.root),
        config_yaml,
        dest / pristine.study_dir.relative_to(pristine.root),
        study_yaml,
    )
