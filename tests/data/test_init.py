from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cslrobust.data import DataSplits, build_datasets, default_data_root
from cslrobust.errors import ConfigError, DataError


def _rows(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


def test_build_datasets_from_image_folder(make_folder, tmp_path: Path) -> None:
    source = make_folder(classes=("a", "b", "c"), per_split=(6, 2))
    splits = build_datasets(
        "image_folder",
        root=tmp_path / "data",
        source=source,
        train_per_class=3,
        val_per_class=2,
        seed=0,
    )
    assert isinstance(splits, DataSplits)
    assert splits.classes == ("a", "b", "c") and splits.num_classes == 3
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 6, 6)
    assert torch.bincount(splits.train.labels).tolist() == [3, 3, 3]
    assert torch.bincount(splits.val.labels).tolist() == [2, 2, 2]
    # Every image is distinct, so disjoint pixel sets mean disjoint splits.
    assert _rows(splits.train.images).isdisjoint(_rows(splits.val.images))
    assert _rows(splits.train.images).isdisjoint(_rows(splits.test.images))
    pixels = splits.train.images.double().div(255).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(torch.tensor(splits.mean, dtype=torch.float64), pixels.mean(1))
    torch.testing.assert_close(
        torch.tensor(splits.std, dtype=torch.float64), pixels.std(1, correction=0)
    )
    assert (tmp_path / "data" / "image_folder_cache").is_dir()


def test_build_datasets_is_deterministic_and_val_ignores_train_size(
    make_folder, tmp_path: Path
) -> None:
    source = make_folder(per_split=(8, 1))

    def build(seed: int, train_per_class: int | None) -> DataSplits:
        return build_datasets(
            "image_folder",
            root=tmp_path / "data",
            source=source,
            train_per_class=train_per_class,
            val_per_class=2,
            seed=seed,
        )

    a, b = build(1, 3), build(1, 3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.images, b.val.images)
    full = build(1, None)
    assert torch.equal(full.val.images, a.val.images)  # val is carved before the train subset
    assert len(full.train) == 12 and _rows(a.train.images) <= _rows(full.train.images)


def test_cifar10_from_source_requires_ten_classes(make_folder, tmp_path: Path) -> None:
    source = make_folder()
    with pytest.raises(DataError, match=f"{source} has 2 classes; expected 10 for cifar10"):
        build_datasets("cifar10", root=tmp_path, source=source, val_per_class=1, seed=0)


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="'svhn'; expected one of: cifar10, cifar100, image_folder"
    ):
        build_datasets("svhn", root=tmp_path, val_per_class=1, seed=0)


def test_image_folder_needs_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a source"):
        build_datasets("image_folder", root=tmp_path, val_per_class=1, seed=0)


def test_default_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "d"))
    assert default_data_root() == tmp_path / "d"
    monkeypatch.delenv("CSLROBUST_DATA")
    assert default_data_root() == Path.home() / ".cache" / "cslrobust"


@pytest.mark.slow
def test_cifar10_jpeg_archive_loads(cifar10_jpeg: Path, tmp_path: Path) -> None:
    # cifar10_jpeg (tests/conftest.py): ../shared/data/cifar10-jpeg.tar.gz beside the checkout or
    # $CSLROBUST_CIFAR10_JPEG; skipped when absent.
    source = cifar10_jpeg
    splits = build_datasets(
        "cifar10", root=tmp_path, source=source, train_per_class=None, val_per_class=0, seed=0
    )
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50_000, 0, 10_000)
    assert splits.classes == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
    )  # fmt: skip
    assert splits.train.images.shape == (50_000, 3, 32, 32)
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10
    # Published CIFAR-10 train statistics; JPEG re-encoding moves them only slightly.
    for got, ref in zip(
        splits.mean + splits.std, (0.4914, 0.4822, 0.4465, 0.2470, 0.2435, 0.2616), strict=True
    ):
        assert abs(got - ref) < 0.01
