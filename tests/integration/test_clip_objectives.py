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

from cslrobust.config import build_run_config
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


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 2)):
        for k, name in enumerate(("a", "b", "c")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
                pixels[..., k] = 255  # a class colour, so the probe has something to find
                Image.fromarray(pixels, mode="RGB").save(folder / f"{i}.png")
    return root


def test_every_objective_and_detector_is_covered() -> None:
    assert set(OBJECTIVE_SECTIONS) == set(OBJECTIVES.names())
    assert set(DETECTOR_SECTIONS) == set(FN_DETECTORS.names())


@pytest.mark.parametrize("objective", CASES)
def test_objective_trains_on_clips(objective: dict, image_folder: Path, tmp_path: Path) -> None:
    cfg = build_run_config(
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
            "objective": objective,
            "train": {"epochs": 1, "batch_size": 6, "lr": 0.05, "tensorboard": False},
            "probe": {"epochs": 2},
        }
    )
    record = run_train(cfg, progress=False)
    assert record["history"][-1]["epoch"] == 1
    assert np.isfinite(record["history"][-1]["loss"])
    probe = run_probe(cfg.run_dir, config=cfg, progress=False)
    assert 0.0 <= probe["test_accuracy"] <= 1.0
