"""CIFAR-10/100 and image folders as uint8 tensors, split reproducibly, served in [0, 1] batches.

Clips: synthetic labelled clips from real images (:mod:`cslrobust.data.synthetic_clips`) and video
files through PyAV with a decoded-frame cache and the UCF101/HMDB51 splits (:mod:`cslrobust.data.video`).

:func:`build_datasets` is the entry point: it loads a data set (downloading CIFAR or reading an
image-folder archive), carves a stratified validation split out of the official training set
*before* taking an optional per-class training subset (so validation never overlaps training and
model selection never sees the test set), and places the three splits on the device. Images stay
in ``[0, 1]``; normalisation belongs to the model, which gets the training-set ``mean``/``std``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cslrobust.data.archives import download, md5_file, safe_extract_tar, sha256_file
from cslrobust.data.cifar import load_cifar
from cslrobust.data.image_folder import load_image_folder
from cslrobust.data.raw import RawDataset
from cslrobust.data.splits import stratified_subset, train_val_split
from cslrobust.data.stats import channel_mean_std
from cslrobust.data.synthetic_clips import (
    MOTIONS,
    SyntheticClips,
    build_synthetic_clip_datasets,
    make_synthetic_clips,
)
from cslrobust.data.tensor_data import Batch, TensorClipDataset, TensorImageDataset
from cslrobust.data.video import (
    FrameCache,
    StreamingVideoDataset,
    VideoClipDataset,
    VideoEntry,
    VideoSplit,
    decode_frames,
    hmdb51_split,
    load_videos,
    ucf101_split,
)
from cslrobust.errors import ConfigError, DataError
from cslrobust.layouts import LAYOUTS, Layout

__all__ = [
    "DATASET_NAMES",
    "Batch",
    "DataSplits",
    "FrameCache",
    "LAYOUTS",
    "MOTIONS",
    "SyntheticClips",
    "Layout",
    "RawDataset",
    "StreamingVideoDataset",
    "TensorClipDataset",
    "TensorImageDataset",
    "VideoClipDataset",
    "VideoEntry",
    "VideoSplit",
    "build_datasets",
    "build_synthetic_clip_datasets",
    "channel_mean_std",
    "decode_frames",
    "default_data_root",
    "download",
    "hmdb51_split",
    "load_cifar",
    "load_image_folder",
    "load_videos",
    "make_synthetic_clips",
    "md5_file",
    "safe_extract_tar",
    "sha256_file",
    "stratified_subset",
    "train_val_split",
    "ucf101_split",
]

DATASET_NAMES = ("cifar10", "cifar100", "image_folder")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_IMAGE_FOLDER_CACHE = "image_folder_cache"


@dataclass(frozen=True)
class DataSplits:
    """Train, validation and test sets of one data set, plus what the model needs to know about it.

    Attributes:
        train: Training set (the optional per-class subset of the official train split minus val).
        val: Validation set, carved from the official train split; disjoint from ``train``.
        test: The official test split.
        classes: Class names; ``classes[k]`` names label ``k``.
        mean: Per-channel pixel mean of ``train`` in ``[0, 1]`` units (for ``Normalize``).
        std: Per-channel pixel standard deviation of ``train`` in ``[0, 1]`` units.

    The splits' :attr:`layout` (images or clips) is what augmentations and backbones must support.
    """

    train: TensorImageDataset
    val: TensorImageDataset
    test: TensorImageDataset
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def layout(self) -> Layout:
        """The sample layout of the three splits (``"image"`` or ``"clip"``)."""
        return self.train.layout


def default_data_root() -> Path:
    """The data directory: ``$CSLROBUST_DATA`` if set and non-empty, else ``~/.cache/cslrobust``."""
    root = os.environ.get("CSLROBUST_DATA")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "cslrobust"


def build_datasets(
    name: str,
    *,
    root: Path,
    source: Path | None = None,
    train_per_class: int | None = None,
    val_per_class: int,
    seed: int,
    device: str | torch.device = "cpu",
    download: bool = True,
    progress: bool = True,
) -> DataSplits:
    """Load a data set and split it into train / validation / test sets on ``device``.

    Args:
        name: ``"cifar10"``, ``"cifar100"`` or ``"image_folder"``.
        root: Data directory for downloads, extracted archives and the image-folder cache.
        source: An image folder (directory or ``.tar``/``.tar.gz``/``.tgz``). Required for
            ``"image_folder"``; for ``"cifar10"``/``"cifar100"`` it replaces the download (e.g. the
            offline ``cifar10-jpeg.tar.gz``) and must have 10/100 classes.
        train_per_class: Training examples per class, drawn after the validation split; ``None``
            keeps all remaining ones.
        val_per_class: Validation examples per class, held out of the official train split.
        seed: Run seed for both splits.
        device: Where the tensors live.
        download: Allow downloading CIFAR archives.
        progress: Show progress bars (download, decoding an image folder).

    Returns:
        The splits, with the training-set channel mean and std.

    Raises:
        ConfigError: If ``name`` is unknown or ``"image_folder"`` has no ``source``.
        DataError: If the data cannot be loaded, a class has too few examples for the requested
            split sizes, or a ``source`` for CIFAR has the wrong number of classes.
    """
    raw = _load_raw(name, root=root, source=source, download=download, progress=progress)
    train_idx, val_idx = train_val_split(raw.train_labels, val_per_class, seed)
    if train_per_class is not None:
        train_idx = train_idx[stratified_subset(raw.train_labels[train_idx], train_per_class, seed)]
    train_images = raw.train_images[train_idx]  # (N_train, 3, H, W)
    mean, std = channel_mean_std(train_images)
    return DataSplits(
        train=TensorImageDataset(train_images, raw.train_labels[train_idx], device),
        val=TensorImageDataset(raw.train_images[val_idx], raw.train_labels[val_idx], device),
        test=TensorImageDataset(raw.test_images, raw.test_labels, device),
        classes=raw.classes,
        mean=mean,
        std=std,
    )


def _load_raw(
    name: str, *, root: Path, source: Path | None, download: bool, progress: bool
) -> RawDataset:
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown data set {name!r}; expected one of: {', '.join(DATASET_NAMES)}")
    if source is None:
        if name == "image_folder":
            raise ConfigError("data set 'image_folder' needs a source (directory or tar archive)")
        return load_cifar(
            "cifar10" if name == "cifar10" else "cifar100",
            root,
            download=download,
            progress=progress,
        )
    raw = load_image_folder(source, root / _IMAGE_FOLDER_CACHE, progress=progress)
    if name == "image_folder":
        return raw
    expected = _NUM_CLASSES[name]
    if len(raw.classes) != expected:
        raise DataError(
            f"source {source} has {len(raw.classes)} classes; expected {expected} for {name}"
        )
    return dataclasses.replace(raw, name=name)
