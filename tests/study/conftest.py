"""A tiny synthetic ImageFolder archive and study file for runner tests (no real data needed)."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

STUDY = """
name: synthetic
output_dir: out
seeds: [0]
base:
  data: {{name: image_folder, source: {source}, val_per_class: 4}}
  model: {{width: 8, proj_hidden_dim: 32, proj_dim: 16, channels_last: false}}
  train: {{epochs: {epochs}, batch_size: 32, lr: 0.05, tensorboard: false, log_every: 1}}
  probe: {{epochs: 5, batch_size: 32}}
  attack: {{eps_linf: [0, 2/255], steps: 2, n_images: 40, batch_size: 40}}
methods:
  supervised: {{objective: {{name: supervised}}}}
  simclr: {{objective: {{name: simclr}}}}
  simclr_oracle: {{objective: {{name: simclr_fnr}}}}
"""


def make_archive(
    path: Path, classes: int = 4, train: int = 24, test: int = 10, size: int = 16
) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", train), ("test", test)):
            for c in range(classes):
                for i in range(n):
                    base = np.zeros((size, size, 3)) + rng.uniform(0, 255, 3) * 0.3
                    base[..., c % 3] += 120 + 40 * (c // 3)
                    img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(
                        np.uint8
                    )
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/class{c}/{i:03d}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


@pytest.fixture
def synthetic_study(tmp_path: Path):
    def build(epochs: int = 2, size: int = 16) -> Path:
        archive = make_archive(tmp_path / "data.tar.gz", size=size)
        study = tmp_path / "study.yaml"
        study.write_text(STUDY.format(source=archive, epochs=epochs))
        return study

    return build


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory) -> Path:
    """The archive of :func:`make_archive`, written once per session (for module-scoped runs)."""
    return make_archive(tmp_path_factory.mktemp("synthetic") / "data.tar.gz")
