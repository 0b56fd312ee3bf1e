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
    eval_windows,
    hmdb51_split,
    load_videos,
    ucf101_split,
)
from cslrobust.errors import ConfigError, DataError
from cslrobust.layouts import LAYOUTS, Layout

__all__ = [
    "CLIP_DATASET_NAMES",
    "DATASET_NAMES",
    "Batch",
    "ClipSettings",
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
CLIP_DATASET_NAMES = ("synthetic_clips", "ucf101", "hmdb51")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_IMAGE_FOLDER_CACHE = "image_folder_cache"


@dataclass(frozen=True)
class DataSplits:
    """Train, validation and test sets of one data set, plus what the model needs to know about it.

    Attributes:
        train: Training set (the optional per-class subset of the official train split minus val);
            videos: a :class:`VideoClipDataset` (frames in host memory, a new window each epoch).
        val: Validation set, carved from the official train split; disjoint from ``train``.
        test: The official test split.
        classes: Class names; ``classes[k]`` names label ``k``.
        mean: Per-channel pixel mean of ``train`` in ``[0, 1]`` units (for ``Normalize``).
        std: Per-channel pixel standard deviation of ``train`` in ``[0, 1]`` units.
        skipped: ``(path, reason)`` of every video left out with ``skip_bad`` (clip data sets).
        train_eval: The training samples cut as evaluation samples (clip data sets whose evaluation
            samples differ from training clips), see :attr:`probe_train`.

    The splits' :attr:`layout` (images or clips) is what augmentations and backbones must support.
    """

    train: TensorImageDataset | VideoClipDataset
    val: TensorImageDataset
    test: TensorImageDataset
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skipped: tuple[tuple[str, str], ...] = ()
    train_eval: TensorImageDataset | None = None

    @property
    def probe_train(self) -> TensorImageDataset:
        """The training samples in evaluation form (what a linear probe trains on).

        The training set itself, except for clip data whose evaluation samples are several
        (or shorter) clips than the training clips, or videos (always): then ``train_eval``.
        """
        if self.train_eval is not None:
            return self.train_eval
        if isinstance(self.train, VideoClipDataset):
            raise DataError("a video training set needs train_eval (its evaluation samples)")
        return self.train

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def layout(self) -> Layout:
        """The sample layout of the three splits (``"image"`` or ``"clip"``)."""
        return self.train.layout


@dataclass(frozen=True)
class ClipSettings:
    """How a clip data set is cut into clips (``data`` keys of the clip data sets).

    Attributes:
        variant: ``synthetic_clips``: ``"camera"`` or ``"motion_only"``.
        frames: Frames per training clip the data hands out (synthetic: frames rendered).
        view_frames: Frames of one clip as the model sees it (<= ``frames``; shorter when the view
            preset jitters in time).
        eval_clips: Clips of ``view_frames`` per evaluation sample, uniformly placed, averaged by
            the model.
        stride: Videos: frame step inside a clip.
        size: Videos: frame side in pixels (``None``: 112).
        split_dir: Videos: the folder of the official split files.
        fold: Videos: official split 1-3.
        skip_bad: Videos: leave out undecodable files (listed in :attr:`DataSplits.skipped`).
        streaming: Videos: training frames as memory maps of the frame cache (read when used).
    """

    variant: str = "camera"
    frames: int = 8
    view_frames: int = 8
    eval_clips: int = 1
    stride: int = 1
    size: int | None = None
    split_dir: Path | None = None
    fold: int = 1
    skip_bad: bool = False
    streaming: bool = False


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
    clips: ClipSettings | None = None,
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
        clips: Required by the clip data sets (``synthetic_clips``: clips rendered from CIFAR-10 or
            the image folder ``source``; ``ucf101`` / ``hmdb51``: the video folder ``source``).

    Returns:
        The splits, with the training-set channel mean and std.

    Raises:
        ConfigError: If ``name`` is unknown or ``"image_folder"`` has no ``source``.
        DataError: If the data cannot be loaded, a class has too few examples for the requested
            split sizes, or a ``source`` for CIFAR has the wrong number of classes.
    """
    if name in CLIP_DATASET_NAMES:
        if clips is None:
            raise ConfigError(f"data set {name!r} gives clips and needs clip settings")
        return _build_clip_datasets(
            name,
            root=root,
            source=source,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            seed=seed,
            device=device,
            download=download,
            progress=progress,
            clips=clips,
        )
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


def _build_clip_datasets(
    name: str,
    *,
    root: Path,
    source: Path | None,
    train_per_class: int | None,
    val_per_class: int,
    seed: int,
    device: str | torch.device,
    download: bool,
    progress: bool,
    clips: ClipSettings,
) -> DataSplits:
    if name != "synthetic_clips":
        from cslrobust.data.video import build_video_datasets

        return build_video_datasets(
            name,
            source=source,
            cache_root=root,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            seed=seed,
            device=device,
            progress=progress,
            clips=clips,
        )
    # Synthetic clips are rendered from CIFAR-10 (or the image folder ``source``).
    raw = _load_raw(
        "image_folder" if source is not None else "cifar10",
        root=root,
        source=source,
        download=download,
        progress=progress,
    )
    splits = build_synthetic_clip_datasets(
        raw,
        variant=clips.variant,  # type: ignore[arg-type]
        frames=clips.frames,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        seed=seed,
        device=device,
    )
    return _with_eval_windows(splits, clips)


def _with_eval_windows(splits: DataSplits, clips: ClipSettings) -> DataSplits:
    """Validation and test samples as ``eval_clips`` uniformly placed model-length clips."""
    if clips.eval_clips == 1 and clips.view_frames == clips.frames:
        return splits

    def windows(data: TensorImageDataset | VideoClipDataset) -> TensorClipDataset:
        if not isinstance(data, TensorImageDataset):
            raise TypeError("synthetic clips are held as tensors")
        images = eval_windows(data.images, clips.view_frames, clips.eval_clips)
        return TensorClipDataset(images, data.labels, data.device)

    return dataclasses.replace(
        splits,
        val=windows(splits.val),
        test=windows(splits.test),
        train_eval=windows(splits.train),
    )
