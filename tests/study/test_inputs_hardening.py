"""Issue 17 (items 2, 3, 6) on real runs: study locations, failed starts, progress bars, wall time."""

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from tests.conftest import one_line_error, permissions_ignored
from typer.testing import CliRunner

from cslrobust.cli.main import app
from cslrobust.config import build_run_config, save_config
from cslrobust.errors import TrainingDivergedError
from cslrobust.study import train as train_stage
from cslrobust.study.store import ResultsStore
from cslrobust.study.train import run_train

runner = CliRunner()
SUPERVISED_ONLY = ["--set", "methods={supervised: {objective: {name: supervised}}}"]
RUN_YAML = """
name: tiny
data: {{name: image_folder, source: {source}, val_per_class: 4}}
model: {{width: 8, proj_hidden_dim: 32, proj_dim: 16, channels_last: false}}
objective: {{name: supervised}}
train: {{epochs: 1, batch_size: 32, tensorboard: false, log_every: 1}}
probe: {{epochs: 2, batch_size: 32}}
"""


@pytest.fixture
def study(synthetic_study, tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    return synthetic_study(epochs=1)


def _no_cells(folder: Path) -> bool:
    return not folder.exists() or not any(p.is_dir() for p in folder.iterdir())


# -- item 2: study locations ------------------------------------------------------------------
def test_study_run_refuses_an_output_path_that_is_a_file(study: Path, tmp_path: Path):
    (tmp_path / "out").write_text("keep")
    line = one_line_error(["study", "run", str(study)])
    assert line == f"error: output path {str(tmp_path / 'out')!r} is a file, expected a folder"
    assert (tmp_path / "out").read_text() == "keep"


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("storage=postgres://host/db", "storage URL 'postgres://host/db' is not supported"),
        ("storage=sqlite:///", "storage URL 'sqlite:///' is not supported"),
        ("storage=sqlite:///blocker/sub/results.db", "cannot create results database folder"),
        ("storage=sqlite:///", "storage URL 'sqlite:///' is not supported"),
        ("report_dir=blocker/report", "cannot create report folder"),
    ],
)
def test_study_run_checks_storage_and_report_before_any_work(
    study: Path, tmp_path: Path, setting: str, fragment: str
):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "blocker").write_text("keep")
    (tmp_path / "blocker").write_text("keep")
    line = one_line_error(["study", "run", str(study), "--set", setting])
    assert fragment in line
    assert _no_cells(tmp_path / "out")  # nothing trained
    assert (
        (tmp_path / "out" / "blocker").read_text() == (tmp_path / "blocker").read_text() == "keep"
    )


def test_study_report_refuses_a_report_path_that_is_a_file(study: Path, tmp_path: Path):
    (tmp_path / "report").write_text("keep")
    line = one_line_error(["study", "report", str(study), "--set", "report_dir=report"])
    assert "report path" in line and "is a file, expected a folder" in line
    assert (tmp_path / "report").read_text() == "keep"


@pytest.mark.skipif(permissions_ignored(), reason="this process ignores permission bits (root)")
def test_study_run_refuses_a_read_only_output_folder(study: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        line = one_line_error(["study", "run", str(study)])
    finally:
        out.chmod(0o755)
    assert line == f"error: output folder {str(out)!r} is not writable (permission denied)"


# -- item 3: study files ----------------------------------------------------------------------
def test_duplicate_seeds_and_method_names_are_refused(study: Path):
    for command in ("run", "status", "report"):
        line = one_line_error(["study", command, str(study), "--set", "seeds=[0, 1, 0]"])
        assert "seed 0 is listed twice" in line
    study.write_text(study.read_text() + "  simclr: {objective: {name: simclr}}\n")
    line = one_line_error(["study", "run", str(study)])
    assert re.fullmatch(r"error: study file '.*study.yaml' line \d+: duplicate key 'simclr'", line)


# -- item 6a: a failed start leaves no config.json ---------------------------------------------
def test_train_whose_data_fails_leaves_no_config(tmp_path: Path):
    out = tmp_path / "o"
    base = ["train", "--output-dir", str(out), "--name", "r", "--set", "data.name=image_folder"]
    line = one_line_error([*base, "--data-source", str(tmp_path / "missing.tar.gz")])
    assert "does not exist" in line
    assert not (out / "r" / "config.json").exists()
    # The name is free: another config fails on its own data, not on "holds a different config".
    line = one_line_error([*base, "--epochs", "3", "--data-source", str(tmp_path / "other.tar")])
    assert "other.tar does not exist" in line


def _tiny_config(tmp_path: Path, synthetic_study):
    synthetic_study()  # writes the synthetic archive tmp_path / "data.tar.gz"
    archive = tmp_path / "data.tar.gz"
    return build_run_config(
        {
            "name": "r",
            "output_dir": str(tmp_path / "out"),
            "data": {"name": "image_folder", "source": str(archive), "val_per_class": 4},
            "model": {"width": 8, "proj_hidden_dim": 32, "proj_dim": 16, "channels_last": False},
            "train": {"epochs": 1, "batch_size": 32, "tensorboard": False},
        }
    )


def test_training_that_fails_before_a_checkpoint_removes_only_its_own_config(
    tmp_path: Path, synthetic_study, monkeypatch
):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))

    def diverge(*args: object, **kwargs: object) -> None:
        raise TrainingDivergedError("loss is nan at epoch 1")

    monkeypatch.setattr(train_stage, "train", diverge)
    cfg = _tiny_config(tmp_path, synthetic_study)
    with pytest.raises(TrainingDivergedError):
        run_train(cfg, progress=False)
    assert not (cfg.run_dir / "config.json").exists()
    save_config(cfg, cfg.run_dir / "config.json")  # written earlier, by another call: kept
    before = (cfg.run_dir / "config.json").read_bytes()
    with pytest.raises(TrainingDivergedError):
        run_train(cfg, progress=False)
    assert (cfg.run_dir / "config.json").read_bytes() == before


# -- item 6b: --no-progress silences every bar ---------------------------------------------------
def test_no_progress_silences_every_bar(tmp_path: Path, synthetic_study, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CSLROBUST_DATA", str(cache))
    synthetic_study()
    archive = tmp_path / "data.tar.gz"
    config = tmp_path / "run.yaml"
    config.write_text(RUN_YAML.format(source=archive))
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", str(config), "--output-dir", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    run_dir = out / "tiny"
    attack = [
        "attack",
        str(run_dir),
        "--attack",
        "pgd",
        "--n-images",
        "8",
        "--eps",
        "1/255",
        "--steps",
        "1",
    ]
    for args in (["probe", str(run_dir)], attack):
        shutil.rmtree(cache)  # the data are decoded again, as on a fresh machine
        result = runner.invoke(app, [*args, "--no-progress"])
        assert result.exit_code == 0, result.output
        assert result.stderr == "", args
    shutil.rmtree(cache)
    shown = runner.invoke(app, attack)  # the bars exist and go to stderr
    assert shown.exit_code == 0 and "decoding data" in shown.stderr and "pgd" in shown.stderr
    # Item 3: an image count above the test set (40 images) is an error, not a silent clamp.
    line = one_line_error(["attack", str(run_dir), "--n-images", "41", "--no-progress"])
    assert line == (
        "error: attack.n_images=41 exceeds the 40 test images; expected at most 40 (or null for all)"
    )


# -- item 6c: the report's time is the work done, the same after a rerun that skips ------------
def test_report_compute_time_is_the_same_after_a_rerun_that_skips(study: Path, tmp_path: Path):
    args = [
        "study",
        "run",
        str(study),
        "--no-progress",
        "--set",
        "stages=[train]",
        *SUPERVISED_ONLY,
    ]
    times = []
    for _ in range(2):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        report = (tmp_path / "out" / "report.md").read_text()
        found = re.search(r"Compute time of all stages \(summed over cells\): ([\d.]+) s;", report)
        assert found, report
        times.append(float(found.group(1)))
    assert "done, skipped" in result.stdout
    assert times[0] == times[1] > 0


def test_store_upgrades_an_older_database_and_keeps_its_rows(tmp_path: Path):
    db = tmp_path / "results.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE stages (cell_id TEXT NOT NULL, stage TEXT NOT NULL, "
            "completed_at TEXT NOT NULL, PRIMARY KEY (cell_id, stage))"
        )
        conn.execute("INSERT INTO stages VALUES ('c', 'train:1', '2026-01-01T00:00:00+00:00')")
    conn.close()
    with ResultsStore(db) as store:
        assert store.completed_stages("c") == {"train:1"}
        assert store.stage_seconds({"c": ["train:1"]}) == (0.0, 1)
        store.commit_stage("c", "probe:1", [{"metric": "m", "value": 1.0}], "sha", seconds=4.5)
        assert store.stage_seconds({"c": ["train:1", "probe:1", "attack:1"]}) == (4.5, 1)
