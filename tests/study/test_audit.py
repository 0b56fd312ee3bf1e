"""`cslrobust audit`: external weights in each format, audited end to end against a tiny reference."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.conftest import one_line_error
from typer.testing import CliRunner

from cslrobust.cli.main import app
from cslrobust.config import build_run_config
from cslrobust.models import build_encoder
from cslrobust.models.external_weights import KEY_MAPS
from cslrobust.study import run_folder
from cslrobust.study.probe import run_probe
from cslrobust.study.train import run_train
from cslrobust.training import load_weights

MEAN, STD = "0.45,0.44,0.40", "0.25,0.24,0.26"
SETTINGS = [
    "--set",
    "gates.n_images=20",
    "--set",
    "geometry.n_images=40",
    "--set",
    "geometry.sensitivity_images=8",
    "--set",
    "geometry.sensitivity_eps=[2/255]",
    "--set",
    "geometry.tsne_points=8",
]
HEADS = {
    "cslrobust": {"head.weight": (3, 32)},
    "solo-learn": {"projector.0.weight": (8, 32), "classifier.weight": (4, 32)},
    "lightly": {"projection_head.layers.0.weight": (8, 32)},
    "timm": {"fc.weight": (10, 32), "fc.bias": (10,)},
    "torchvision": {"fc.weight": (10, 32), "fc.bias": (10,)},
}


@pytest.fixture(scope="module")
def reference(synthetic_archive: Path, tmp_path_factory) -> Path:
    """A supervised ResNet-18 (width 4) trained for 1 epoch and probed on the synthetic images."""
    root = tmp_path_factory.mktemp("audit")
    mp = pytest.MonkeyPatch()
    mp.setenv("CSLROBUST_DATA", str(root / "cache"))
    cfg = build_run_config(
        {
            "name": "sl",
            "output_dir": str(root / "runs"),
            "data": {"name": "image_folder", "source": str(synthetic_archive), "val_per_class": 4},
            "model": {"width": 4, "proj_hidden_dim": 16, "proj_dim": 8, "channels_last": False},
            "objective": {"name": "supervised"},
            "train": {"epochs": 1, "batch_size": 32, "tensorboard": False, "log_every": 1},
            "probe": {"epochs": 3, "batch_size": 32},
            "attack": {"eps_linf": [0, "2/255"], "steps": 2, "n_images": 40, "batch_size": 40},
        }
    )
    run_train(cfg, progress=False)
    run_probe(cfg.run_dir, progress=False)
    yield cfg.run_dir
    mp.undo()


def _external_state(fmt: str, *, cifar_stem: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    """A small encoder's backbone in ``fmt``'s key layout, plus that format's head tensors."""
    torch.manual_seed(seed)
    encoder = build_encoder(
        "resnet18",
        width=4,
        head_kind="none",
        num_classes=4,
        proj_hidden_dim=8,
        proj_dim=8,
        mean=[0.45, 0.44, 0.40],
        std=[0.25, 0.24, 0.26],
        stem="cifar" if cifar_stem else "imagenet",
    )
    # Non-trivial BatchNorm statistics, so a wrong mapping of them would show.
    for name, value in encoder.backbone.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) * 0.2 + (0.9 if "var" in name else -0.1))
        elif name.endswith("bias"):  # positive BatchNorm shifts: no all-zero feature rows
            value.copy_(torch.rand_like(value) * 0.1 + 0.1)
    key_map = KEY_MAPS[fmt]
    state = {key_map.to_theirs(k): v.clone() for k, v in encoder.backbone.state_dict().items()}
    if fmt == "cslrobust":
        state["normalize.mean"] = encoder.normalize.mean.clone()
    for key, shape in HEADS[fmt].items():
        state[key] = torch.randn(shape)
    return state


def _write(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _audit(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["audit", *args, "--no-progress", *SETTINGS])
    assert result.exit_code == 0, result.output


def _direct_clean_accuracy(run_dir: Path, state: dict[str, torch.Tensor], fmt: str, stem: str):
    """The same external weights, evaluated directly: Normalize -> our backbone -> the audit's probe."""
    from cslrobust.config import load_saved_config

    cfg = load_saved_config(run_dir / "config.json")
    encoder = build_encoder(
        "resnet18",
        width=4,
        head_kind="none",
        num_classes=4,
        proj_hidden_dim=8,
        proj_dim=8,
        mean=[0.45, 0.44, 0.40],
        std=[0.25, 0.24, 0.26],
        stem=stem,
    ).eval()
    key_map = KEY_MAPS[fmt]
    backbone = {k: state[key_map.to_theirs(k)] for k in encoder.backbone.state_dict()}
    encoder.backbone.load_state_dict(backbone)
    head = torch.nn.Linear(encoder.feature_dim, 4)
    load_weights(head, run_dir / "probe.safetensors")
    _, images, labels = run_folder.test_subset(
        run_folder.load_data(cfg, progress=False), cfg.attack.n_images
    )
    with torch.no_grad():
        logits = head(encoder.features(images.float() / 255))
    return (logits.argmax(1) == labels).float().mean().item()


# One full audit takes minutes on a loaded 1-thread CPU: torchvision in the fast tier, the rest slow.
@pytest.mark.parametrize(
    ("fmt", "suffix", "cifar_stem"),
    [
        pytest.param("cslrobust", ".safetensors", True, marks=pytest.mark.slow),
        pytest.param("solo-learn", ".ckpt", True, marks=pytest.mark.slow),
        pytest.param("lightly", ".pth", False, marks=pytest.mark.slow),
        pytest.param("timm", ".safetensors", False, marks=pytest.mark.slow),
        ("torchvision", ".pth", False),
    ],
)
def test_audit_each_format_end_to_end(reference: Path, tmp_path: Path, fmt, suffix, cifar_stem):
    state = _external_state(fmt, cifar_stem=cifar_stem)
    saved = {"state_dict": state, "epoch": 3} if fmt == "solo-learn" else state
    if suffix == ".safetensors":
        saved = state
    checkpoint = _write(saved, tmp_path / f"enc{suffix}")
    out = tmp_path / "audit"
    args = [str(checkpoint), "--format", fmt, "--arch", "resnet18", "--mean", MEAN, "--std", STD]
    args += ["--reference", str(reference), "--out", str(out), "--name", "ext"]
    _audit(args + (["--cifar-stem"] if cifar_stem else []))

    report = (out / "report.md").read_text()
    assert (out / "report.html").is_file() and "ext" in report and "sl" in report
    assert "Dropped from the checkpoint" in report
    record = json.loads((out / "ext" / "audit.json").read_text())
    assert sorted(record["dropped_keys"]) == sorted(
        [*HEADS[fmt], *(["normalize.mean"] if fmt == "cslrobust" else [])]
    )
    attack = json.loads((out / "ext" / "attack.json").read_text())
    clean = attack["results"][0]["clean_accuracy"]
    stem = "cifar" if cifar_stem else "imagenet"
    assert clean == pytest.approx(_direct_clean_accuracy(out / "ext", state, fmt, stem), abs=1e-6)
    # Both models were attacked on the same images and radii; the reference keeps its run id.
    ref_attack = json.loads((reference / "attack.json").read_text())
    assert ref_attack["n_images"] == attack["n_images"]
    assert [r["eps"] for r in ref_attack["results"]] == [r["eps"] for r in attack["results"]]
    assert (out / "ext" / "gates.json").is_file() and (out / "ext" / "analysis.json").is_file()


class _Payload:
    """Unpickling this creates the marker file (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_refused_without_running_it(reference: Path, tmp_path: Path):
    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "evil.pth"
    with checkpoint.open("wb") as handle:
        pickle.dump({"conv1.weight": _Payload(marker)}, handle)
    line = one_line_error(
        [
            "audit",
            str(checkpoint),
            "--format",
            "torchvision",
            "--arch",
            "resnet18",
            "--mean",
            MEAN,
            "--std",
            STD,
            "--reference",
            str(reference),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert "refused as unsafe" in line
    assert not marker.exists()


def test_wrong_architecture_is_one_line_naming_mismatches(reference: Path, tmp_path: Path):
    checkpoint = _write(_external_state("timm", cifar_stem=False), tmp_path / "enc.safetensors")
    base = ["--format", "timm", "--mean", MEAN, "--std", STD, "--reference", str(reference)]
    base += ["--out", str(tmp_path / "o")]
    # resnet50 keys (conv3, bn3) are missing from a resnet18 file
    line = one_line_error(["audit", str(checkpoint), "--arch", "resnet50", *base])
    assert "resnet50" in line  # the reference is a resnet18: refused before any weights are read
    state = _external_state("timm", cifar_stem=False)
    del state["layer4.1.conv2.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    checkpoint = _write(state, tmp_path / "broken.safetensors")
    line = one_line_error(["audit", str(checkpoint), "--arch", "resnet18", *base])
    assert "1 missing (layer4.1.conv2.weight)" in line and "layer5.0.conv1.weight" in line
    line = one_line_error(["audit", str(checkpoint), "--arch", "resnet18", "--cifar-stem", *base])
    assert "drop --cifar-stem" in line and "conv1.weight (4, 3, 7, 7) vs (4, 3, 3, 3)" in line


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"--format": "keras"}, "unknown --format 'keras'"),
        ({"--mean": "0.5,0.5"}, "--mean '0.5,0.5': expected 3 numbers"),
        ({"--std": "0.2,0,0.2"}, "--std"),
        ({"--mean": "125,123,114"}, "in [0, 1]"),
        ({"checkpoint": "missing.pth"}, "does not exist"),
        ({"--reference": "nowhere"}, "is not a cslrobust run folder"),
        ({"--set": "model.width=8"}, "changes the trained model's section 'model'"),
    ],
)
def test_bad_inputs_are_one_line(reference: Path, tmp_path: Path, change, expected):
    checkpoint = _write(_external_state("timm", cifar_stem=False), tmp_path / "enc.safetensors")
    options = {
        "--format": "timm",
        "--arch": "resnet18",
        "--mean": MEAN,
        "--std": STD,
        "--reference": str(reference),
        "--out": str(tmp_path / "o"),
    }
    path = str(tmp_path / change.pop("checkpoint")) if "checkpoint" in change else str(checkpoint)
    options.update(change)
    args = ["audit", path] + [x for kv in options.items() for x in kv]
    assert expected in one_line_error(args)
