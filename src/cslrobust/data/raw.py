"""The decoded form every data source is read into: uint8 images and int64 labels per split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cslrobust.errors import DataError


@dataclass(frozen=True)
class RawDataset:
    """A labelled image data set with its official train/test split, as stored on disk.

    Attributes:
        train_images: Training images, channels first.
        train_labels: Class index of each training image, in ``[0, len(classes))``.
        test_images: Test images, same height and width as the training images.
        test_labels: Class index of each test image.
        classes: Class names; ``classes[k]`` is the name of label ``k``.
        name: Short name of the data set, used in messages (e.g. ``"cifar10"``).

    Shape:
        - train_images: ``(N, 3, H, W)``, ``torch.uint8`` in ``[0, 255]``.
        - train_labels: ``(N,)``, ``torch.int64``.
        - test_images: ``(M, 3, H, W)``, ``torch.uint8``.
        - test_labels: ``(M,)``, ``torch.int64``.

    Raises:
        DataError: If dtypes, shapes or label ranges are inconsistent (checked on construction).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    name: str

    @classmethod
    def from_splits(
        cls,
        splits: Sequence[tuple[torch.Tensor, torch.Tensor]],
        *,
        classes: tuple[str, ...],
        name: str,
    ) -> RawDataset:
        """Build from the ``(images, labels)`` of the train split and then the test split.

        Args:
            splits: ``[(train_images, train_labels), (test_images, test_labels)]``.
            classes: Class names; ``classes[k]`` is the name of label ``k``.
            name: Short name of the data set.

        Returns:
            The data set (validated as on construction).

        Raises:
            ValueError: If ``splits`` does not hold exactly two pairs.
            DataError: As the constructor.
        """
        (train_images, train_labels), (test_images, test_labels) = splits
        return cls(
            train_images=train_images,
            train_labels=train_labels,
            test_images=test_images,
            test_labels=test_labels,
            classes=classes,
            name=name,
        )

    def __post_init__(self) -> None:
        splits = (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        )
        for split, images, labels in splits:
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
                raise DataError(
                    f"{self.name} {split} images have dtype {images.dtype} and shape "
                    f"{tuple(images.shape)}; expected torch.uint8 of shape (N, 3, H, W)"
                )
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise DataError(
                    f"{self.name} {split} labels have dtype {labels.dtype} and shape "
                    f"{tuple(labels.shape)}; expected torch.int64 of shape ({images.shape[0]},)"
                )
            if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise DataError(
                    f"{self.name} {split} labels span [{int(labels.min())}, {int(labels.max())}]; "
                    f"expected [0, {len(self.classes) - 1}] for {len(self.classes)} classes"
                )
        if self.train_images.shape[2:] != self.test_images.shape[2:]:
            raise DataError(
                f"{self.name} train images are {tuple(self.train_images.shape[2:])} but test "
                f"images are {tuple(self.test_images.shape[2:])}; expected one size"
            )
