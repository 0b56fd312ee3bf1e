"""End to end on real CIFAR-10 (offline JPEG copy): study file -> train -> probe -> PGD -> report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STUDY = """
name: tiny
output_dir: out
base:
  data: {{train_per_class: 20, val_per_class: 5, source: {source}}}
  model: {{width: 8, channels_last: false}}
  train: {{epochs: 2, batch_size: 64, lr: 0.1, tensorboard: false}}
  probe: {{epochs: 10}}
  attack: {{attacks: [fgsm, pgd], eps_linf: [0, 1/255, 8/255], steps: 3, n_images: 100}}
  geometry: {{n_images: 200, sensitivity_images: 50, sensitivity_eps: [1/255], tsne_points: 100}}
methods:
  supervised: {{objective: {{name: supervised}}}}
  simclr: {{objective: {{name: simclr}}}}
  simclr_oracle: {{objective: {{name: simclr_fnr, fn: {{detector: oracle, mode: eliminate}}}}}}
  supcon: {{objective: {{name: supcon}}}}
"""


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cslrobust", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path: Path, cifar10_jpeg: Path):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(source=cifar10_jpeg))
    env = {**os.environ, "CSLROBUST_DATA": str(tmp_path / "cache")}

    first = _cli("study", "run", str(study), "--no-progress", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "out"
    for method in ("supervised", "simclr", "simclr_oracle", "supcon"):
        (run,) = out.glob(f"{method}-s0-*")  # folder names carry the cell id
        assert (run / "checkpoints" / "epoch-0002" / "model.safetensors").is_file()
        probe = json.loads((run / "probe.json").read_text())
        assert 0.0 <= probe["test_accuracy"] <= 1.0 and probe["n_test"] == 10000
        attack = json.loads((run / "attack.json").read_text())
        rows = {(r["attack"], r["eps"]): r for r in attack["results"]}
        for name in ("fgsm", "pgd"):
            # eps = 0 equals clean accuracy exactly; robust never exceeds clean.
            assert rows[(name, 0.0)]["robust_accuracy"] == rows[(name, 0.0)]["clean_accuracy"]
            for row in attack["results"]:
                assert row["robust_accuracy"] <= row["clean_accuracy"]
        assert (
            rows[("pgd", 8 / 255)]["robust_accuracy"]
            <= rows[("fgsm", 8 / 255)]["robust_accuracy"] + 0.02
        )
    (sup_dir,) = out.glob("supervised-s0-*")
    supervised = json.loads((sup_dir / "probe.json").read_text())
    assert "own_head_test_accuracy" in supervised
    report = (out / "report.md").read_text()
    assert "simclr_oracle" in report and "PGD robust accuracy" in report and "| 1/255 |" in report
    assert "Representation geometry" in report
    assert (out / "robust_accuracy.png").stat().st_size > 1000
    assert "probe test" in first.stdout

    # Running again finds every stage done and recomputes nothing.
    second = _cli("study", "run", str(study), "--no-progress", env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("done, skipped") == 4

    # The single-stage commands work on a run folder too (attack with another budget).
    (simclr_dir,) = out.glob("simclr-s0-*")
    again = _cli(
        "attack", str(simclr_dir), "--eps", "2/255", "--attack", "pgd", "--no-progress", env=env
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "eps    2/255" in again.stdout
