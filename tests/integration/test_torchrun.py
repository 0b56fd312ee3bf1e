"""End to end under torchrun: two CPU processes (gloo) run a study as a user would launch it.

Rank 0 alone writes files and the results database; the evaluation is sharded and gathered, so
re-running the attack stage in one process on the same checkpoint gives the same accuracies.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STUDY = """
name: ddp
output_dir: out
base:
  data: {{train_per_class: 16, val_per_class: 4, source: {source}}}
  model: {{width: 8, channels_last: false}}
  train: {{epochs: 2, batch_size: 32, lr: 0.1, tensorboard: false}}
  probe: {{epochs: 5}}
  attack: {{attacks: [fgsm, pgd], eps_linf: [0, 2/255], steps: 3, n_images: 60, batch_size: 16}}
  geometry: {{n_images: 100, sensitivity_images: 20, sensitivity_eps: [1/255], tsne_points: 50}}
methods:
  supervised: {{objective: {{name: supervised}}}}
  simclr_oracle: {{objective: {{name: simclr_fnr, fn: {{detector: oracle, mode: eliminate}}}}}}
"""


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_study_under_torchrun_matches_one_process_evaluation(tmp_path: Path, cifar10_jpeg: Path):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(source=cifar10_jpeg))
    env = {**os.environ, "CSLROBUST_DATA": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

    launched = _run(
        [*torchrun, "-m", "cslrobust", "study", "run", str(study), "--no-progress"], env
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    # One report, printed once (rank 0).
    assert launched.stdout.count("wall time") == 1
    out = tmp_path / "out"
    assert (out / "report.md").is_file()
    for method in ("supervised", "simclr_oracle"):
        (run,) = out.glob(f"{method}-s0-*")
        train = json.loads((run / "train.json").read_text())
        assert train["processes"] == 2 and train["epochs"] == 2
        assert (run / "checkpoints" / "epoch-0002" / "model.safetensors").is_file()
        sharded = json.loads((run / "attack.json").read_text())

        # The same attack in one process on the same checkpoint and probe: identical numbers.
        single = _run(
            [sys.executable, "-m", "cslrobust", "attack", str(run), "--no-progress"],
            {**env, "OMP_NUM_THREADS": "2"},
        )
        assert single.returncode == 0, single.stderr[-3000:]
        alone = json.loads((run / "attack.json").read_text())
        key = ("attack", "norm", "eps", "clean_accuracy", "robust_accuracy")
        assert [[r[k] for k in key] for r in sharded["results"]] == [
            [r[k] for k in key] for r in alone["results"]
        ]

    # Running again under torchrun finds every stage done.
    again = _run([*torchrun, "-m", "cslrobust", "study", "run", str(study), "--no-progress"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done, skipped") == 2
