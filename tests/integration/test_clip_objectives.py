"""Every objective and every false-negative detector trains on clips through the real train stage.

Clips are rendered from a tiny image folder (``synthetic_clips`` with an image-folder source), the
backbone is R3D-18 at width 4 (NCHW: the torch CPU crash with channels-last below width 8), and each
run is one epoch; the probe then reads the clip features (two averaged evaluation clips).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cslrobust.config import RunConfig, build_run_config
from cslrobust.objectives import FN_DETECTORS, OBJECTIVES
from cslrobust.study.probe import run_probe
from cslrobust.study.train import run_train

DETECTOR_SECTIONS = {
    "oracle": {"detector": "oracle"},
    "threshold": {"detector": "threshold", "threshold": 0.5},
    "topk": {"detector": "topk", "k": 2, "support_views": 1},
    "cluster": {"detector": "cluster", "n_clusters": 3},
}
OBJECTIVE_SECTIONS = {name: {"name": name} for name in OBJECTIVES.names()}
OBJECTIVE_SECTIONS["moco"] = {"name": "moco", "queue_size": 16}
for _adversarial in ("acl", "rocl", "dynacl"):
    OBJECTIVE_SECTIONS[_adversarial] = {
        "name": _adversarial,
        "attack": {"eps": "8/255", "step_size": "2/255", "steps": 1},
    }
CASES = [pytest.param(section, id=name) for name, section in OBJECTIVE_SECTIONS.items()] + [
    pytest.param({"name": "simclr_fnr", "fn": fn}, id=f"simclr_fnr-{name}")
    for name, fn in DETECTOR_SECTIONS.items()
]


def _write_folder(root: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 2)):
        for k, name in enumerate(("a", "b", "c", "d")):  # 4 classes: AutoAttack's APGD-T needs them
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                pixels[..., k % 3] = 255 if k < 3 else 0  # a class colour for the probe to find
                Image.fromarray(pixels, mode="RGB").save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("images"), 16)


def _clip_config(image_folder: Path, tmp_path: Path, **sections: dict) -> RunConfig:
    """A one-epoch R3D-18 (width 4) run on clips rendered from ``image_folder``, plus ``sections``."""
    return build_run_config(
        {
            "name": "clip",
            "output_dir": str(tmp_path),
            "data": {
                "name": "synthetic_clips",
                "source": str(image_folder),
                "root": str(tmp_path / "cache"),
                "frames": 4,
                "eval_clips": 2,
                "val_per_class": 2,
            },
            "augment": {"kind": "simclr_clip", "frames": 3},
            "model": {"arch": "r3d_18", "width": 4, "channels_last": False},
            "train": {"epochs": 1, "batch_size": 6, "lr": 0.05, "tensorboard": False},
            "probe": {"epochs": 2},
            **sections,
        }
    )


def test_every_objective_and_detector_is_covered() -> None:
    assert set(OBJECTIVE_SECTIONS) == set(OBJECTIVES.names())
    assert set(DETECTOR_SECTIONS) == set(FN_DETECTORS.names())


@pytest.mark.parametrize("objective", CASES)
def test_objective_trains_on_clips(objective: dict, image_folder: Path, tmp_path: Path) -> None:
    cfg = _clip_config(image_folder, tmp_path, objective=objective)
    record = run_train(cfg, progress=False)
    assert record["history"][-1]["epoch"] == 1
    assert np.isfinite(record["history"][-1]["loss"])
    probe = run_probe(cfg.run_dir, config=cfg, progress=False)
    assert 0.0 <= probe["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_every_evaluation_stage_runs_on_clips(tmp_path: Path) -> None:
    """attack, gates, analyze and evaluate (sweeps, AutoAttack, FAB, corruptions) on a clip run whose
    evaluation samples are two averaged clips; the eps-0 gates hold on the 5-D path."""
    from cslrobust.study.analyze import run_analyze
    from cslrobust.study.attack import run_attack
    from cslrobust.study.evaluate import run_evaluate
    from cslrobust.study.gates import run_gates_stage

    image_folder = _write_folder(tmp_path / "images", 32)  # corruptions take CIFAR's 32x32
    cfg = _clip_config(
        image_folder,
        tmp_path,
        objective={"name": "supervised"},
        attack={"attacks": ["fgsm", "pgd"], "eps_linf": ["1/255", "4/255"], "steps": 2},
        gates={"n_images": 6},
        geometry={"n_images": 6, "sensitivity_images": 4, "tsne_points": 4},
        evaluation={
            "n_images": 6,
            "eps_linf": ["1/255"],
            "eps_l2": [0.1],
            "steps": 2,
            "convergence_restarts": 2,
            "autoattack_eps_linf": ["1/255"],
            "fab_images": 3,
            "fab_n_iter": 3,
            "corruptions": ["gaussian_noise"],
            "severities": [1],
            "corruption_images": 6,
        },
    )
    run_train(cfg, progress=False)
    run_probe(cfg.run_dir, config=cfg, progress=False)
    attack = run_attack(cfg.run_dir, config=cfg, progress=False)
    for row in attack["results"]:
        assert row["robust_accuracy"] <= row["clean_accuracy"]
        assert row["max_perturbation"] <= row["eps"] + 1e-6
    gates = run_gates_stage(cfg.run_dir, config=cfg, progress=False)
    by_name = {g["name"]: g for g in gates["gates"]}
    assert by_name["eps_zero_path[pgd/linf]"]["passed"]
    assert by_name["input_gradients"]["passed"]
    analysis = run_analyze(cfg.run_dir, config=cfg, progress=False)
    assert np.isfinite(analysis["metrics"]["uniformity"])
    evaluation = run_evaluate(cfg.run_dir, config=cfg, progress=False)
    assert evaluation["autoattack"] and evaluation["corruptions"]["rows"] and evaluation["fab"]
