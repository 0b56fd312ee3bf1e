"""Issue 17 (items 2, 3): output locations, YAML files, devices and image counts give one line."""

from pathlib import Path

import pytest
import torch
from tests.conftest import one_line_error, permissions_ignored
from typer.testing import CliRunner

from cslrobust.config import RunConfig, build_run_config, parse_override, read_yaml, save_config
from cslrobust.distributed import check_device_available
from cslrobust.errors import ConfigError
from cslrobust.records import ensure_writable_dir
from cslrobust.study.run_folder import checked_count, on_this_process, run_settings

runner = CliRunner()


SKIP_ROOT = pytest.mark.skipif(
    permissions_ignored(), reason="this process ignores permission bits (root)"
)


@pytest.fixture
def read_only(tmp_path: Path):
    """A folder without write permission (restored afterwards so tmp_path can be cleaned)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


# -- output locations -------------------------------------------------------------------------
def test_ensure_writable_dir_creates_a_missing_folder(tmp_path: Path):
    target = tmp_path / "a" / "b"
    assert ensure_writable_dir(target) == target and target.is_dir()
    assert list(target.iterdir()) == []  # the write probe is gone


def test_ensure_writable_dir_refuses_a_file_and_a_folder_under_a_file(tmp_path: Path):
    file = tmp_path / "f"
    file.write_text("keep")
    with pytest.raises(ConfigError, match=r"^output path '.*/f' is a file, expected a folder$"):
        ensure_writable_dir(file)
    with pytest.raises(
        ConfigError, match=r"^cannot create output folder '.*/f/x': '.*/f' is a file$"
    ):
        ensure_writable_dir(file / "x")
    assert file.read_text() == "keep"


@SKIP_ROOT
def test_ensure_writable_dir_refuses_a_read_only_folder(read_only: Path):
    with pytest.raises(
        ConfigError, match=r"^report folder '.*/ro' is not writable \(permission denied\)$"
    ):
        ensure_writable_dir(read_only, "report folder")
    with pytest.raises(
        ConfigError, match=r"^cannot create output folder '.*/ro/x': permission denied$"
    ):
        ensure_writable_dir(read_only / "x")


def test_train_refuses_an_output_path_that_is_a_file(tmp_path: Path):
    file = tmp_path / "runs"
    file.write_text("keep")
    line = one_line_error(["train", "--output-dir", str(file), "--name", "r"])
    assert "is a file" in line and str(file) in line
    assert file.read_text() == "keep"


@SKIP_ROOT
def test_train_refuses_a_read_only_output_folder_before_writing(read_only: Path):
    line = one_line_error(["train", "--output-dir", str(read_only), "--name", "r"])
    assert line.startswith("error: cannot create output folder") and "permission denied" in line
    assert list(read_only.iterdir()) == []


@SKIP_ROOT
def test_evaluation_commands_refuse_a_read_only_run_folder(tmp_path: Path):
    run_dir = tmp_path / "run"
    save_config(RunConfig(), run_dir / "config.json")
    before = (run_dir / "config.json").read_bytes()
    run_dir.chmod(0o555)
    try:
        for command in ("probe", "attack", "evaluate", "analyze"):
            line = one_line_error([command, str(run_dir)])
            assert line == f"error: run folder {str(run_dir)!r} is not writable (permission denied)"
    finally:
        run_dir.chmod(0o755)
    assert (run_dir / "config.json").read_bytes() == before


# -- YAML -------------------------------------------------------------------------------------
def test_non_utf8_yaml_names_the_file_and_byte_offset(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"seed: 1\nname: caf\xe9\n")
    with pytest.raises(
        ConfigError, match=r"^config file '.*run.yaml' is not UTF-8 text: byte 0xe9 at offset 17$"
    ):
        read_yaml(path)
    assert "is not UTF-8 text" in one_line_error(["train", str(path)])


def test_duplicate_keys_anywhere_name_the_key_and_line(tmp_path: Path):
    path = tmp_path / "study.yaml"
    path.write_text("name: x\nmethods:\n  simclr: {}\n  supervised: {}\n  simclr: {}\n")
    with pytest.raises(
        ConfigError, match=r"^study file '.*study.yaml' line 5: duplicate key 'simclr'$"
    ):
        read_yaml(path, "study file")
    path.write_text("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    line = one_line_error(["train", str(path)])
    assert line.endswith("line 4: duplicate key 'lr'")


def test_merge_keys_may_still_be_overridden(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("defaults: &d {lr: 0.1, epochs: 2}\ntrain:\n  <<: *d\n  lr: 0.2\n")
    assert read_yaml(path)["train"] == {"lr": 0.2, "epochs": 2}


def test_override_values_refuse_duplicate_keys():
    assert parse_override("train={lr: 0.1, epochs: 2}") == (["train"], {"lr": 0.1, "epochs": 2})
    assert parse_override("name=[not yaml") == (["name"], "[not yaml")  # plain string, as before
    with pytest.raises(
        ConfigError, match=r"^override 'train=\{lr: 1, lr: 2\}': duplicate key 'lr'$"
    ):
        parse_override("train={lr: 1, lr: 2}")


# -- devices ----------------------------------------------------------------------------------
def _fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_unavailable_device_lists_what_is_available(monkeypatch):
    _fake_cuda(monkeypatch, 0)
    check_device_available("cpu")
    with pytest.raises(
        ConfigError, match=r"^device 'cuda' is not available on this machine; available: cpu$"
    ):
        check_device_available("cuda")
    with pytest.raises(ConfigError, match=r"available: cpu$"):
        check_device_available("mps")
    _fake_cuda(monkeypatch, 2)
    check_device_available("cuda:1")
    with pytest.raises(ConfigError, match=r"^device 'cuda:2' .*; available: cpu, cuda:0, cuda:1$"):
        check_device_available("cuda:2")


def test_train_with_unavailable_device_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch):
    _fake_cuda(monkeypatch, 0)
    line = one_line_error(["train", "--device", "cuda", "--output-dir", str(tmp_path / "o")])
    assert line == "error: device 'cuda' is not available on this machine; available: cpu"
    assert not (tmp_path / "o").exists()


def test_a_config_saved_on_a_gpu_machine_loads_and_takes_device_cpu(tmp_path: Path, monkeypatch):
    _fake_cuda(monkeypatch, 0)
    save_config(RunConfig(device="cuda"), tmp_path / "config.json")
    saved = run_settings(tmp_path)  # loading does not need the device
    assert saved.device == "cuda"
    with pytest.raises(ConfigError, match="not available"):
        on_this_process(saved)
    assert on_this_process(run_settings(tmp_path, ["device=cpu"])).device == "cpu"


# -- image counts -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key", ["attack.n_images", "evaluation.n_images", "geometry.n_images", "gates.n_images"]
)
def test_an_image_count_above_the_test_set_is_an_error(key: str):
    section, field = key.split(".")
    cfg = build_run_config({section: {field: 20000}})
    with pytest.raises(ConfigError, match=rf"^{key}=20000 exceeds the 10000 test images; "):
        checked_count(cfg, key, 10000)
    assert checked_count(cfg, key, 20000) == 20000
    assert checked_count(build_run_config({section: {field: None}}), key, 10) is None


def test_the_default_image_count_still_takes_a_smaller_test_set():
    cfg = RunConfig()
    assert cfg.attack.n_images == 1000 and checked_count(cfg, "attack.n_images", 40) == 1000
