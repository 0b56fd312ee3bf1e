"""CLI: bad input gives one line on stderr and exit code 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cslrobust.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--set", "train.lr=-1"], "train.lr=-1"),
        (["train", "--set", "train.nope=1"], "unknown key 'train.nope'"),
        (["train", "--objective", "swav"], "objective.name='swav'"),
        (
            ["train", "--objective", "supervised", "--set", "objective.tau_plus=0.2"],
            "objective.tau_plus is not a parameter of objective 'supervised'",
        ),
        (
            ["train", "--objective", "simclr_fnr", "--set", "objective.fn.k=3"],
            "objective.fn.k is not a parameter of detector 'oracle'",
        ),
        (
            ["train", "--set", "augment.kind=none", "--set", "augment.flip_p=0.5"],
            "augment.flip_p is not a parameter of augmentation 'none'",
        ),
        (["train", "missing.yaml"], "missing.yaml"),
        (["probe", "no/such/run"], "no saved config"),
        (["attack", "no/such/run"], "no saved config"),
        (["study", "run", "missing-study.yaml"], "missing-study.yaml"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, fragment, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert result.stdout == "" and fragment in result.stderr  # the one line is on stderr
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_attack_rejects_bad_eps_list(tmp_path: Path):
    from cslrobust.config import RunConfig, save_config

    save_config(RunConfig(), tmp_path / "config.json")
    result = runner.invoke(app, ["attack", str(tmp_path), "--eps", "1/255,two"])
    assert result.exit_code == 2, result.output
    assert "attack.eps_linf.1='two'" in result.output and "'8/255'" in result.output
    old_units = runner.invoke(app, ["attack", str(tmp_path), "--eps", "2"])
    assert old_units.exit_code == 2 and "write '2/255'" in old_units.output


def test_run_folder_commands_reject_overrides_of_the_trained_model(tmp_path: Path):
    from cslrobust.config import RunConfig, save_config

    save_config(RunConfig(), tmp_path / "config.json")
    before = (tmp_path / "config.json").read_bytes()
    for command in ("probe", "attack", "evaluate", "analyze"):
        result = runner.invoke(app, [command, str(tmp_path), "--set", "train.epochs=3"])
        assert result.exit_code == 2, (command, result.output)
        assert "changes the trained model's section 'train'" in result.output
    assert (tmp_path / "config.json").read_bytes() == before


def test_python_dash_m_entry_point_shows_help():
    out = subprocess.run(
        [sys.executable, "-m", "cslrobust", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for command in ("train", "probe", "attack", "study"):
        assert command in out.stdout
