from __future__ import annotations

import pytest
import torch

from cslrobust.data.raw import RawDataset
from cslrobust.errors import DataError


def _raw(**overrides: object) -> RawDataset:
    fields: dict[str, object] = {
        "train_images": torch.zeros(4, 3, 2, 2, dtype=torch.uint8),
        "train_labels": torch.tensor([0, 1, 0, 1]),
        "test_images": torch.zeros(2, 3, 2, 2, dtype=torch.uint8),
        "test_labels": torch.tensor([1, 0]),
        "classes": ("a", "b"),
        "name": "toy",
    }
    fields.update(overrides)
    return RawDataset(**fields)  # type: ignore[arg-type]


def test_valid_raw_dataset_is_frozen() -> None:
    raw = _raw()
    with pytest.raises(AttributeError):
        raw.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_images": torch.zeros(4, 2, 2, 3, dtype=torch.uint8)}, "toy train images"),
        ({"test_images": torch.zeros(2, 3, 2, 2)}, "toy test images have dtype torch.float32"),
        ({"train_labels": torch.tensor([0, 1, 0])}, r"expected torch.int64 of shape \(4,\)"),
        ({"test_labels": torch.tensor([0, 2])}, r"labels span \[0, 2\]; expected \[0, 1\]"),
        ({"test_images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)}, "expected one size"),
    ],
)
def test_inconsistent_raw_dataset(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        _raw(**overrides)


def test_from_splits_takes_train_then_test() -> None:
    raw = _raw()
    splits = [(raw.train_images, raw.train_labels), (raw.test_images, raw.test_labels)]
    built = RawDataset.from_splits(splits, classes=raw.classes, name=raw.name)
    assert built.train_labels is raw.train_labels and built.test_labels is raw.test_labels
    assert built.train_images is raw.train_images and built.test_images is raw.test_images
    assert (built.classes, built.name) == (raw.classes, raw.name)
    with pytest.raises(DataError, match="toy test labels span"):
        RawDataset.from_splits(
            [splits[0], (raw.test_images, torch.tensor([0, 2]))], classes=raw.classes, name="toy"
        )
