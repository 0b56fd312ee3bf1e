"""Fixtures shared by the data tests: tiny image folders and tar archives built on the fly."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FolderBuilder = Callable[..., Path]
TarBuilder = Callable[[Path, Path], Path]


def _write_tree(
    root: Path,
    *,
    classes: tuple[str, ...] = ("cat", "dog"),
    per_split: tuple[int, int] = (3, 2),
    size: tuple[int, int] = (8, 8),
    seed: int = 0,
) -> Path:
    """Write ``{train,test}/<class>/<k>.png`` with distinct random RGB pixels; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_split, strict=True):
        for class_name in classes:
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels, mode="RGB").save(folder / f"{k:04d}.png")
    return root


@pytest.fixture
def make_folder(tmp_path: Path) -> FolderBuilder:
    """Builder of tiny ImageFolder trees under ``tmp_path`` (2 classes, 3 train + 2 test, 8x8)."""

    def build(name: str = "folder", **kwargs: object) -> Path:
        return _write_tree(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return build


@pytest.fixture
def make_tar() -> TarBuilder:
    """Pack a directory's content into a tar (compression from the suffix), rooted at ``./``."""

    def build(source: Path, archive: Path) -> Path:
        mode = "w:gz" if archive.name.endswith((".gz", ".tgz")) else "w"
        with tarfile.open(archive, mode) as tar:
            tar.add(source, arcname=".")
        return archive

    return build
