"""Typed per-component config sections: dispatch by name, one-line errors, unchanged run ids.

The run ids below were computed with the code before typed sections (flat ``objective`` and
``augment`` sections); every config that was valid then and still is must keep its id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from cslrobust.augment import AUGMENTATIONS, ViewAugment, build_augment
from cslrobust.config import (
    RunConfig,
    build_run_config,
    load_run_config,
    load_saved_config,
    section_identity,
)
from cslrobust.errors import ConfigError
from cslrobust.objectives import (
    FN_DETECTORS,
    OBJECTIVES,
    FalseNegativeDetector,
    MethodObjective,
    SimCLRFNRSection,
    build_fn_detector,
    build_objective,
)
from cslrobust.study.spec import expand_study, load_study

REPO = Path(__file__).resolve().parents[1]
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_config"

CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "simclr_t02": {"objective": {"name": "simclr", "temperature": 0.2}},
    "supcon": {"objective": {"name": "supcon"}},
    "supcon_t01": {"objective": {"name": "supcon", "temperature": 0.1}},
    "supervised": {"objective": {"name": "supervised"}},
    "supervised_ls": {"objective": {"name": "supervised", "label_smoothing": 0.1}},
    "debiased": {"objective": {"name": "debiased"}},
    "debiased_custom": {"objective": {"name": "debiased", "tau_plus": 0.2, "temperature": 0.3}},
    "fnr_oracle": {"objective": {"name": "simclr_fnr"}},
    "fnr_oracle_custom": {
        "objective": {
            "name": "simclr_fnr",
            "temperature": 0.2,
            "fn": {
                "detector": "oracle",
                "removal_rate": 0.5,
                "mode": "attract",
                "warmup_epochs": 2,
            },
        }
    },
    "fnr_threshold": {
        "objective": {
            "name": "simclr_fnr",
            "fn": {"detector": "threshold", "threshold": 0.7, "warmup_epochs": 3},
        }
    },
    "fnr_threshold_support": {
        "objective": {
            "name": "simclr_fnr",
            "fn": {"detector": "threshold", "threshold": 0.5, "support_views": 2},
        }
    },
    "fnr_topk": {
        "objective": {
            "name": "simclr_fnr",
            "fn": {"detector": "topk", "k": 10, "support_views": 1, "warmup_epochs": 3},
        }
    },
    "fnr_topk_plain": {"objective": {"name": "simclr_fnr", "fn": {"detector": "topk", "k": 3}}},
    "fnr_cluster": {
        "objective": {
            "name": "simclr_fnr",
            "fn": {
                "detector": "cluster",
                "n_clusters": 10,
                "refresh_every": 2,
                "iters": 5,
                "warmup_epochs": 3,
            },
        }
    },
    "augment_simclr_custom": {
        "augment": {
            "kind": "simclr",
            "crop_scale": [0.3, 1.0],
            "jitter": [0.8, 0.8, 0.8, 0.2],
            "jitter_p": 0.5,
            "grayscale_p": 0.1,
            "flip_p": 0.4,
        }
    },
    "augment_simclr_fast": {"augment": {"kind": "simclr_fast"}},
    "augment_simclr_fast_custom": {
        "augment": {"kind": "simclr_fast", "crop_scale": [0.08, 1.0], "grayscale_p": 0.0}
    },
    "augment_crop_flip": {"augment": {"kind": "crop_flip"}},
    "augment_crop_flip_custom": {
        "augment": {"kind": "crop_flip", "crop_padding": 2, "flip_p": 0.3}
    },
    "augment_none": {"augment": {"kind": "none"}},
    "supervised_crop_flip": {"objective": {"name": "supervised"}, "augment": {"kind": "crop_flip"}},
}

LEGACY_RUN_IDS = {
    "default": "3d2fab66a8de",
    "simclr_t02": "bb365d755593",
    "supcon": "d0e68d7cf6e2",
    "supcon_t01": "d64949247fdf",
    "supervised": "b65042a0733c",
    "supervised_ls": "a427c1051e6e",
    "debiased": "e0db672fbcf5",
    "debiased_custom": "0f33a79a3828",
    "fnr_oracle": "10fc4a093737",
    "fnr_oracle_custom": "9cd3d1c7edcd",
    "fnr_threshold": "4be946f78f33",
    "fnr_threshold_support": "d0f1ef8332df",
    "fnr_topk": "ea1c8764582d",
    "fnr_topk_plain": "6e8c7f417d5b",
    "fnr_cluster": "edf2d28080d7",
    "augment_simclr_custom": "c02be4728076",
    "augment_simclr_fast": "ff369753a880",
    "augment_simclr_fast_custom": "406828315f51",
    "augment_crop_flip": "2fb4dc4adb60",
    "augment_crop_flip_custom": "3e375058806f",
    "augment_none": "67a3d82a7d92",
    "supervised_crop_flip": "739d9460ed59",
}

LEGACY_PRESET_RUN_IDS = {
    "cpu-fn": {
        "supervised-s0": "08c673c745fe",
        "simclr-s0": "55e0ee37d311",
        "simclr_oracle-s0": "67b240ee25b5",
        "supcon-s0": "1269e3e135e6",
        "fn_threshold-s0": "80a77a88b2c0",
        "fn_topk-s0": "507f2dd97cab",
        "fn_cluster-s0": "270848df687c",
        "debiased-s0": "08b2277739f2",
    },
    "cpu-seeds": {
        "supervised-s0": "03896db59202",
        "supervised-s1": "3094164db2dd",
        "supervised-s2": "951c492fd614",
        "simclr-s0": "55e0ee37d311",
        "simclr-s1": "da2cec259f61",
        "simclr-s2": "7cfc22f02f1b",
        "simclr_oracle-s0": "67b240ee25b5",
        "simclr_oracle-s1": "b3705b7a21a0",
        "simclr_oracle-s2": "7cdea03e76a2",
        "supcon-s0": "1269e3e135e6",
        "supcon-s1": "c0db28571509",
        "supcon-s2": "24b5797b57af",
    },
    "cpu-small": {
        "supervised-s0": "08c673c745fe",
        "simclr-s0": "55e0ee37d311",
        "simclr_oracle-s0": "67b240ee25b5",
        "supcon-s0": "1269e3e135e6",
    },
    "paper-cifar10": {
        "supervised-s0": "f9d1ab9e1f00",
        "supervised-s1": "c14504850397",
        "supervised-s2": "fdf4108a81bd",
        "simclr-s0": "919aa20032d0",
        "simclr-s1": "5d829ab61f9a",
        "simclr-s2": "03b6c77eeada",
        "simclr_oracle-s0": "bf0797a76957",
        "simclr_oracle-s1": "913bcef72cd4",
        "simclr_oracle-s2": "11db8e57dba8",
        "simclr_oracle_attract-s0": "bad54981b116",
        "simclr_oracle_attract-s1": "f389f875b09e",
        "simclr_oracle_attract-s2": "4bb3c55540a4",
        "supcon-s0": "fafc8ab11f2a",
        "supcon-s1": "65edbab3f011",
        "supcon-s2": "bac304b5cd13",
    },
    "paper-cifar100": {
        "supervised-s0": "9d4e575ae0c0",
        "supervised-s1": "6aad4354a623",
        "supervised-s2": "95c29f34f6ae",
        "simclr-s0": "96663a84027a",
        "simclr-s1": "471fb8002063",
        "simclr-s2": "f43a9d37611e",
        "simclr_oracle-s0": "b31ac734ef40",
        "simclr_oracle-s1": "724250b4ed22",
        "simclr_oracle-s2": "0eb2fd28f046",
        "simclr_oracle_attract-s0": "f9183afaef13",
        "simclr_oracle_attract-s1": "33150f98e20e",
        "simclr_oracle_attract-s2": "ae763b7539ab",
        "supcon-s0": "4adb0a439078",
        "supcon-s1": "c639c681745d",
        "supcon-s2": "8724ec439bfc",
    },
}


@pytest.mark.parametrize("label", sorted(CASES))
def test_run_ids_of_earlier_configs_are_unchanged(label: str) -> None:
    assert build_run_config(CASES[label]).run_id() == LEGACY_RUN_IDS[label]


@pytest.mark.parametrize("preset", sorted(LEGACY_PRESET_RUN_IDS))
def test_run_ids_of_the_presets_are_unchanged(preset: str) -> None:
    # cpu-small and cpu-fn keep a trajectory since issue 13 (train.keep_every = 3 is part of the cell
    # id: those cells hold more checkpoints); without it their cells are the earlier ones.
    cells = expand_study(load_study(REPO / "presets" / f"{preset}.yaml", ["trajectory_every=0"]))
    ids = {cell.name.rsplit("-", 1)[0]: cell.run_id() for cell in cells}
    assert ids == LEGACY_PRESET_RUN_IDS[preset]
    assert all(cell.name.endswith(cell.run_id()[:8]) for cell in cells)


def test_the_identity_has_the_legacy_flat_shape() -> None:
    identity = build_run_config(CASES["fnr_topk"]).training_identity()
    assert identity["objective"] == {
        "name": "simclr_fnr",
        "temperature": 0.5,
        "label_smoothing": 0.0,
        "tau_plus": 0.1,
        "fn": {
            "detector": "topk",
            "mode": "eliminate",
            "warmup_epochs": 3,
            "removal_rate": 1.0,
            "threshold": None,
            "k": 10,
            "support_views": 1,
            "n_clusters": None,
            "refresh_every": 1,
            "iters": 20,
        },
    }
    assert identity["augment"] == {
        "kind": "simclr",
        "crop_scale": [0.2, 1.0],
        "flip_p": 0.5,
        "jitter": [0.4, 0.4, 0.4, 0.1],
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
        "crop_padding": 4,
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["objective.name=supervised", "objective.temperature=0.2"],
            "invalid config: objective.temperature is not a parameter of objective 'supervised'",
        ),
        (
            ["objective.name=debiased", "objective.label_smoothing=0.1"],
            "invalid config: objective.label_smoothing is not a parameter of objective 'debiased'",
        ),
        (
            ["objective.fn.detector=oracle"],
            "invalid config: objective.fn is not a parameter of objective 'simclr'",
        ),
        (
            ["objective.name=simclr_fnr", "objective.fn.k=5"],
            "invalid config: objective.fn.k is not a parameter of detector 'oracle'",
        ),
        (
            [
                "objective.name=simclr_fnr",
                "objective.fn.detector=cluster",
                "objective.fn.n_clusters=10",
                "objective.fn.support_views=1",
            ],
            "invalid config: objective.fn.support_views is not a parameter of detector 'cluster'",
        ),
        (
            ["augment.kind=crop_flip", "augment.jitter_p=0.5"],
            "invalid config: augment.jitter_p is not a parameter of augmentation 'crop_flip'",
        ),
        (
            ["augment.kind=none", "augment.flip_p=0.5", "augment.crop_padding=2"],
            "invalid config: augment.flip_p is not a parameter of augmentation 'none'; "
            "augment.crop_padding is not a parameter of augmentation 'none'",
        ),
        (
            ["objective.name=swav"],
            "invalid config: objective.name='swav': unknown objective 'swav'; expected one of "
            "['acl', 'barlow', 'byol', 'debiased', 'dynacl', 'moco', 'rocl', 'simclr', 'simclr_fnr', 'simsiam', "
            "'supcon', 'supervised']",
        ),
        (
            ["objective.name=simclr_fnr", "objective.fn.detector=psychic"],
            "invalid config: objective.fn.detector='psychic': unknown detector 'psychic'; "
            "expected one of ['cluster', 'oracle', 'threshold', 'topk']",
        ),
        (
            ["augment.kind=autoaugment"],
            "invalid config: augment.kind='autoaugment': unknown augmentation 'autoaugment'; "
            "expected one of ['crop_flip', 'none', 'simclr', 'simclr_clip', 'simclr_fast']",
        ),
    ],
)
def test_a_key_the_component_does_not_take_is_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    assert str(info.value) == message


def test_values_are_range_checked_in_the_chosen_section() -> None:
    with pytest.raises(ConfigError, match=r"objective\.tau_plus=1\.0: Input should be less than 1"):
        load_run_config(None, ["objective.name=debiased", "objective.tau_plus=1.0"])
    with pytest.raises(ConfigError, match=r"objective\.fn\.threshold=2: Input should be less"):
        load_run_config(
            None,
            [
                "objective.name=simclr_fnr",
                "objective.fn.detector=threshold",
                "objective.fn.threshold=2",
            ],
        )
    with pytest.raises(ConfigError, match=r"augment\.crop_padding=-1: Input should be greater"):
        load_run_config(None, ["augment.kind=crop_flip", "augment.crop_padding=-1"])


def test_saved_config_round_trips_in_the_typed_shape(tmp_path: Path) -> None:
    from cslrobust.config import save_config

    cfg = build_run_config(CASES["fnr_cluster"] | CASES["augment_crop_flip_custom"])
    save_config(cfg, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["objective"] == {
        "name": "simclr_fnr",
        "temperature": 0.5,
        "fn": {
            "detector": "cluster",
            "mode": "eliminate",
            "warmup_epochs": 3,
            "n_clusters": 10,
            "refresh_every": 2,
            "iters": 5,
        },
    }
    assert saved["augment"] == {"kind": "crop_flip", "flip_p": 0.3, "crop_padding": 2}
    loaded = load_saved_config(tmp_path / "config.json")
    assert loaded == cfg and loaded.run_id() == cfg.run_id()


# config.json files written by the code before typed sections, and their run ids then.
LEGACY_FILES = {
    "supervised-crop_flip": "1d13da4b11d5",
    "simclr_fnr-topk": "31361b9a224d",
    "debiased-none": "c26124c97379",
}


@pytest.mark.parametrize("name", sorted(LEGACY_FILES))
def test_legacy_config_json_loads_with_its_run_id(name: str) -> None:
    path = LEGACY / f"{name}.json"
    flat = json.loads(path.read_text())
    assert "tau_plus" in flat["objective"] and "crop_padding" in flat["augment"]  # legacy shape
    cfg = load_saved_config(path)
    assert cfg.run_id() == LEGACY_FILES[name]
    assert cfg.objective.name == flat["objective"]["name"]
    assert cfg.augment.kind == flat["augment"]["kind"]


def test_legacy_config_keeps_the_values_its_components_take() -> None:
    cfg = load_saved_config(LEGACY / "simclr_fnr-topk.json")
    assert isinstance(cfg.objective, SimCLRFNRSection)
    assert cfg.objective.temperature == 0.2
    assert cfg.objective.fn.model_dump() == {
        "detector": "topk",
        "mode": "eliminate",
        "warmup_epochs": 3,
        "support_views": 1,
        "k": 10,
    }
    assert cfg.augment.model_dump(mode="json") == {
        "kind": "simclr_fast",
        "crop_scale": [0.2, 1.0],
        "flip_p": 0.5,
        "jitter": [0.4, 0.4, 0.4, 0.1],
        "jitter_p": 0.8,
        "grayscale_p": 0.1,
    }


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (
            "objective",
            "temperature",
            0.3,
            "objective.temperature is not a parameter of objective 'supervised'",
        ),
        (
            "augment",
            "jitter_p",
            0.5,
            "augment.jitter_p is not a parameter of augmentation 'crop_flip'",
        ),
    ],
)
def test_legacy_config_with_a_changed_unused_key_is_rejected(
    tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    data = json.loads((LEGACY / "supervised-crop_flip.json").read_text())
    data[section][key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_saved_config(path)
    assert str(info.value) == f"saved config {str(path)!r}: invalid config: {message}"


def test_legacy_config_with_a_changed_unused_detector_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    shutil.copy(LEGACY / "simclr_fnr-topk.json", path)
    data = json.loads(path.read_text())
    data["objective"]["fn"]["n_clusters"] = 10
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_saved_config(path)
    assert str(info.value) == (
        f"saved config {str(path)!r}: "
        "invalid config: objective.fn.n_clusters is not a parameter of detector 'topk'"
    )
    data["objective"] = {**data["objective"], "name": "supcon"}
    data["objective"]["fn"]["n_clusters"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="objective.fn is not a parameter of objective 'supcon'"):
        load_saved_config(path)  # fn holds a non-default detector setup (topk)


# Values for the parameters without a default (a threshold or k has no universal value).
REQUIRED: dict[tuple[str, str], dict[str, Any]] = {
    ("detector", "threshold"): {"threshold": 0.5},
    ("detector", "topk"): {"k": 3},
    ("detector", "cluster"): {"n_clusters": 3},
}
REGISTERED = (
    [("objective", name) for name in OBJECTIVES.names()]
    + [("detector", name) for name in FN_DETECTORS.names()]
    + [("augmentation", name) for name in AUGMENTATIONS.names()]
)


@pytest.mark.parametrize(("registry", "name"), REGISTERED, ids=lambda x: str(x))
def test_every_registered_section_builds_its_component_from_a_config(
    registry: str, name: str
) -> None:
    """Each section reaches its builder through the config: a config naming the component
    validates into that section, and the builder makes the component from it."""
    params = REQUIRED.get((registry, name), {})
    if registry == "objective":
        cfg = build_run_config({"objective": {"name": name}})
        assert type(cfg.objective) is OBJECTIVES.get(name).section
        objective = build_objective(cfg.objective)
        assert objective.head_kind == cfg.objective.head_kind
        if isinstance(objective, MethodObjective):  # its loss needs a network: its own tests
            assert callable(objective.make_method)
        else:
            outputs = torch.randn(
                objective.n_views, 6, 8, generator=torch.Generator().manual_seed(0)
            )
            loss = objective(outputs, torch.arange(6), torch.tensor([0, 1, 2, 0, 1, 2])).loss
            assert torch.isfinite(loss)
    elif registry == "detector":
        fn = {"detector": name, **params}
        cfg = build_run_config({"objective": {"name": "simclr_fnr", "fn": fn}})
        assert isinstance(cfg.objective, SimCLRFNRSection)
        assert type(cfg.objective.fn) is FN_DETECTORS.get(name).section
        detector = build_fn_detector(cfg.objective.fn)
        assert isinstance(detector, FalseNegativeDetector)
        assert build_objective(cfg.objective).n_views == 2 + detector.support_views
    else:
        clips = "image" not in AUGMENTATIONS.get(name).section.layouts
        data = {"data": {"name": "synthetic_clips"}, "model": {"arch": "r3d_18"}} if clips else {}
        cfg = build_run_config({"augment": {"kind": name}, **data})
        assert type(cfg.augment) is AUGMENTATIONS.get(name).section
        views = build_augment(cfg.augment)
        assert isinstance(views, ViewAugment)
        sample = (3, 8, 8) if "image" in type(cfg.augment).layouts else (3, 4, 8, 8)
        images = torch.rand(2, *sample, generator=torch.Generator().manual_seed(0))
        out = views(images, 3)
        assert out.shape == (6, *sample) and 0.0 <= out.min() and out.max() <= 1.0


def test_default_sections() -> None:
    cfg = RunConfig()
    assert cfg.objective == OBJECTIVES.section("simclr")
    assert cfg.augment == AUGMENTATIONS.section("simclr")
    assert RunConfig(objective={"temperature": 0.2}).objective.name == "simclr"
    assert build_run_config({"objective": {"name": "simclr_fnr"}}).objective == (
        SimCLRFNRSection(fn=FN_DETECTORS.section("oracle"))
    )


def test_a_section_key_added_later_is_hashed_only_when_changed() -> None:
    default = section_identity(RunConfig(), "attack")
    assert "precision" not in default  # stage keys of earlier results stay valid
    assert section_identity(RunConfig(attack={"precision": "fp32"}), "attack") == default
    assert section_identity(RunConfig(attack={"precision": "bf16"}), "attack") == {
        **default,
        "precision": "bf16",
    }
    with pytest.raises(ConfigError, match=r"attack\.precision"):
        build_run_config({"attack": {"precision": "fp16"}})


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "presets").glob("*.yaml")))
def test_every_preset_validates_into_its_cells(preset: str) -> None:
    """Every shipped preset loads, and each of its cells (each budget's) is a valid run config."""
    spec = load_study(REPO / "presets" / f"{preset}.yaml")
    cells = [cell for _, study in spec.budget_studies() for cell in expand_study(study)]
    assert len(cells) == len(spec.seeds) * len(spec.methods) * (len(spec.budgets) or 1)
    for cell in cells:
        assert cell.objective.name in OBJECTIVES.names()
