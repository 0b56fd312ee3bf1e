from pathlib import Path

import pytest

from cslrobust.config import RunConfig, apply_overrides, load_run_config, parse_override
from cslrobust.errors import ConfigError


def test_defaults_validate_and_hash_is_stable():
    a, b = RunConfig(), RunConfig()
    assert a.run_id() == b.run_id()
    assert len(a.run_id()) == 12


def test_run_id_ignores_name_and_paths_but_not_training_values():
    base = RunConfig()
    assert base.model_copy(update={"name": "other"}).run_id() == base.run_id()
    assert load_run_config(None, ["data.root=/tmp/x"]).run_id() == base.run_id()
    assert load_run_config(None, ["train.epochs=3"]).run_id() != base.run_id()


def test_overrides_are_yaml_typed_and_nested():
    path, value = parse_override("train.lr=0.05")
    assert path == ["train", "lr"] and value == 0.05
    data = apply_overrides({"train": {"epochs": 2}}, ["train.lr=0.1", "attack.eps_linf=[1, 2]"])
    assert data == {"train": {"epochs": 2, "lr": 0.1}, "attack": {"eps_linf": [1, 2]}}


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochs=0", "train.epochs=0"),
        ("train.lr=-1", "train.lr=-1"),
        ("objective.temperature=0", "objective.temperature=0"),
        ("objective.name=swav", "objective.name='swav'"),
        (
            "objective.fn={removal_rate: 1.5}",
            "objective.fn is not a parameter of objective 'simclr'",
        ),
        ("augment.kind=autoaugment", "augment.kind='autoaugment': unknown augmentation"),
        ("model.arch=vgg", "model.arch='vgg'"),
        ("attack.eps_linf=[300]", "attack.eps_linf"),
        ("train.typo=3", "unknown key 'train.typo'"),
        ("augment.crop_scale=[0.9, 0.1]", "augment.crop_scale"),
        ("device=gpu0", "device='gpu0'"),
        ("train.warmup_epochs=50", "warmup_epochs=50"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, [override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("objective.fn.removal_rate=1.5", "objective.fn.removal_rate=1.5"),
        ("objective.fn.detector=magic", "objective.fn.detector='magic'"),
        ("objective.fn.detector=topk", "objective.fn.k: Field required"),
    ],
)
def test_bad_detector_values_are_rejected_with_the_key_named(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, ["objective.name=simclr_fnr", override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_yaml_file_then_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.2\nobjective:\n  name: supcon\n")
    cfg = load_run_config(path, ["train.lr=0.01"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.01 and cfg.objective.name == "supcon"


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_run_config(scalar)
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_run_config(None, ["no_equals_sign"])


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        cfg.seed = 3  # type: ignore[misc]


def test_peak_lr_scales_with_the_global_batch():
    from cslrobust.config import TrainConfig

    assert TrainConfig(lr=0.3, batch_size=512).peak_lr() == 0.3
    assert TrainConfig(lr=0.3, batch_size=512, lr_scaling="linear").peak_lr() == pytest.approx(0.6)
    sqrt = TrainConfig(lr=0.3, batch_size=1024, lr_scaling="sqrt", lr_reference_batch=256)
    assert sqrt.peak_lr() == pytest.approx(0.6)


def test_run_id_ignores_compile_and_keeps_ids_of_earlier_runs():
    from cslrobust.config import RunConfig

    base = RunConfig()
    assert RunConfig(train={"compile": True}).run_id() == base.run_id()
    # Options added later count only when changed from their defaults.
    assert RunConfig(train={"precision": "fp32", "sync_batchnorm": True}).run_id() == base.run_id()
    assert RunConfig(train={"precision": "bf16"}).run_id() != base.run_id()
    assert RunConfig(train={"lr_scaling": "linear"}).run_id() != base.run_id()
