"""Video clips from files: PyAV decoding, a decoded-frame cache, UCF101/HMDB51 splits, clip sampling.

* :func:`decode_frames` decodes every frame of a video's first video stream with PyAV (FFmpeg; no
  torchvision), converted to RGB and resized by FFmpeg's ``AREA`` filter (an antialiased
  downscale). A file that cannot be opened or decoded, or that ends before the frame count its
  container declares (a truncated download), is one :class:`~cslrobust.errors.DataError` line naming
  the file.
* :class:`FrameCache` keeps each decoded video as one uint8 ``.npy`` array ``(T, H, W, 3)`` named by
  the SHA-256 of the file's bytes and the size, written atomically (temporary file + rename) and read
  with ``allow_pickle=False``, so every video is decoded once whatever its path.
* :func:`ucf101_split` and :func:`hmdb51_split` read the official split files into ``(path, label)``
  lists.
* :func:`build_video_datasets` turns an official split into :class:`~cslrobust.data.DataSplits`:
  training videos in host memory as a :class:`VideoClipDataset`, validation and test videos cut
  once into evaluation samples on the device.
* :func:`train_clip_indices` (``T`` frames with a stride at a random position, from an explicit
  generator) and :func:`eval_clip_indices` (several clips placed uniformly over the video) choose
  frames; :class:`VideoClipDataset` holds the decoded videos in memory, :class:`StreamingVideoDataset`
  reads one video per item from the cache (for DataLoader workers).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from cslrobust.data.archives import sha256_file
from cslrobust.data.tensor_data import Batch, count_batches, rank_batches
from cslrobust.errors import ConfigError, DataError
from cslrobust.layouts import Layout
from cslrobust.seeding import make_generator

if TYPE_CHECKING:  # the package imports this module
    from cslrobust.data import ClipSettings, DataSplits

__all__ = [
    "FrameCache",
    "LoadedVideos",
    "StreamingVideoDataset",
    "VideoClipDataset",
    "VideoEntry",
    "VideoSplit",
    "build_video_datasets",
    "decode_frames",
    "eval_clip_indices",
    "eval_windows",
    "hmdb51_split",
    "load_videos",
    "train_clip_indices",
    "ucf101_split",
]

Frames = npt.NDArray[np.uint8]


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def decode_frames(path: Path, size: tuple[int, int] | None = None) -> Frames:
    """Decode every frame of a video file to RGB, resized to ``size``.

    Args:
        path: The video file (any container/codec FFmpeg reads: MP4/H.264, AVI/MPEG-4, ...).
        size: Output ``(height, width)``; ``None`` keeps the stored size.

    Returns:
        The frames in display order.

    Raises:
        DataError: One line naming the file: it cannot be opened or decoded, has no video
            stream or no frame, or holds fewer frames than its container declares (truncated).

    Shape:
        - Returns: ``(T, H, W, 3)`` uint8.
    """
    import av  # imported here: only clip data sets need FFmpeg

    height, width = (None, None) if size is None else size
    frames: list[Frames] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"video {path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
            declared = stream.frames  # 0 when the container does not say
            for frame in container.decode(stream):
                rgb = frame.reformat(
                    width=width, height=height, format="rgb24", interpolation="AREA"
                )
                frames.append(np.asarray(rgb.to_ndarray(), dtype=np.uint8))
    except DataError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise DataError(f"cannot decode video {path}: {_one_line(error)}") from None
    if not frames:
        raise DataError(f"video {path} has no decodable frame")
    if declared and len(frames) < declared:
        raise DataError(
            f"video {path} is truncated: decoded {len(frames)} of the {declared} frames it declares"
        )
    return np.stack(frames)


class FrameCache:
    """Decoded videos on disk as uint8 ``.npy`` files keyed by the file's SHA-256 and the size.

    Args:
        root: The cache folder (created on first write).

    Every video is decoded once: a later request for the same bytes at the same size (under any
    path) reads the array back. With ``mmap`` the arrays are read-only memory maps of the cache
    files (``data.streaming``): frames are read from disk when indexed and the operating system
    may drop them from memory again, so a training set larger than the host's memory can be used. A cache file that does not hold a uint8 ``(T, H, W, 3)`` array of
    the expected size (damaged, or written by something else) is decoded again and replaced.
    """

    def __init__(self, root: Path, *, mmap: bool = False) -> None:
        self.root = Path(root)
        self.mmap = mmap

    def entry(self, digest: str, size: tuple[int, int] | None) -> Path:
        """The cache file of a video with SHA-256 ``digest`` decoded at ``size``."""
        tag = "native" if size is None else f"{size[0]}x{size[1]}"
        return self.root / f"{digest}-{tag}.npy"

    def frames(self, path: Path, size: tuple[int, int] | None = None) -> Frames:
        """The frames of ``path`` at ``size`` (see :func:`decode_frames`), from the cache if there.

        Raises:
            DataError: As :func:`decode_frames`, or the cache folder cannot be written.
        """
        try:
            digest = sha256_file(path)
        except OSError as error:
            raise DataError(f"cannot read video {path}: {_one_line(error)}") from None
        entry = self.entry(digest, size)
        cached = self._read(entry, size)
        if cached is not None:
            return cached
        frames = decode_frames(path, size)
        self._write(entry, frames)
        if self.mmap:  # hand out the file-backed copy: its pages can leave memory again
            return self._read(entry, size) or frames
        return frames

    def _read(self, entry: Path, size: tuple[int, int] | None) -> Frames | None:
        if not entry.is_file():
            return None
        try:
            array = np.load(entry, allow_pickle=False, mmap_mode="r" if self.mmap else None)
        except (OSError, ValueError):
            return None
        ok = array.dtype == np.uint8 and array.ndim == 4 and array.shape[0] > 0
        ok = ok and array.shape[3] == 3 and (size is None or array.shape[1:3] == tuple(size))
        return array if ok else None

    def _write(self, entry: Path, frames: Frames) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=entry.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.save(handle, frames, allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, entry)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as error:
            raise DataError(
                f"cannot write the frame cache {self.root}: {_one_line(error)}"
            ) from None


@dataclass(frozen=True)
class VideoEntry:
    """One labelled video file."""

    path: Path
    label: int


@dataclass(frozen=True)
class VideoSplit:
    """The train and test videos of one official split, with the class names (``classes[label]``)."""

    train: list[VideoEntry]
    test: list[VideoEntry]
    classes: tuple[str, ...]


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"cannot read split file {path}: {_one_line(error)}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_fold(fold: int, folds: Sequence[int]) -> None:
    if fold not in folds:
        raise ConfigError(f"split fold must be one of {list(folds)}; got {fold}")


def _existing(entries: list[VideoEntry], listed_in: Path) -> list[VideoEntry]:
    missing = [e.path for e in entries if not e.path.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} video(s) listed in {listed_in} are missing, first: {missing[0]}"
        )
    return entries


def ucf101_split(root: Path, split_dir: Path, fold: int = 1) -> VideoSplit:
    """UCF101's official split ``fold`` (1-3) as labelled video paths.

    Layout: ``root/<Class>/v_<Class>_gGG_cCC.avi``; ``split_dir`` is ``ucfTrainTestlist`` with
    ``classInd.txt`` (``"1 ApplyEyeMakeup"``, 1-based), ``trainlist0<fold>.txt``
    (``"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"``) and ``testlist0<fold>.txt`` (paths only).
    A video's class is its folder (the first path component), looked up in ``classInd.txt``; the
    label a train line states must agree with it. Labels are 0-based here.

    Raises:
        ConfigError: If ``fold`` is not 1, 2 or 3.
        DataError: One line naming the file: a split file is missing or malformed, a class is not
            in ``classInd.txt``, a stated label disagrees with the folder, or a listed video is absent.
    """
    _check_fold(fold, (1, 2, 3))
    index_file = split_dir / "classInd.txt"
    classes: list[str] = []
    for number, line in enumerate(_read_lines(index_file), start=1):
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(number):
            raise DataError(
                f"{index_file} line {number}: expected '{number} <ClassName>', got {line!r}"
            )
        classes.append(parts[1])
    label_of = {name: k for k, name in enumerate(classes)}

    def parse(list_file: Path, with_label: bool) -> list[VideoEntry]:
        entries = []
        for number, line in enumerate(_read_lines(list_file), start=1):
            parts = line.split()
            where = f"{list_file} line {number}"
            if len(parts) != (2 if with_label else 1) or "/" not in parts[0]:
                expected = (
                    "'<Class>/<video>.avi <label>'" if with_label else "'<Class>/<video>.avi'"
                )
                raise DataError(f"{where}: expected {expected}, got {line!r}")
            folder = parts[0].split("/")[0]
            if folder not in label_of:
                raise DataError(f"{where}: class {folder!r} is not in {index_file}")
            label = label_of[folder]
            if with_label and parts[1] != str(label + 1):
                raise DataError(f"{where}: label {parts[1]} but {folder!r} is class {label + 1}")
            entries.append(VideoEntry(root / parts[0], label))
        return _existing(entries, list_file)

    train = parse(split_dir / f"trainlist0{fold}.txt", with_label=True)
    test = parse(split_dir / f"testlist0{fold}.txt", with_label=False)
    return VideoSplit(train=train, test=test, classes=tuple(classes))


def hmdb51_split(root: Path, split_dir: Path, fold: int = 1) -> VideoSplit:
    """HMDB51's official split ``fold`` (1-3) as labelled video paths.

    Layout: ``root/<class>/<video>.avi``; ``split_dir`` is ``testTrainMulti_7030_splits`` with one
    file ``<class>_test_split<fold>.txt`` per class, lines ``"<video>.avi <flag>"``: 1 = train,
    2 = test, 0 = not used in this split. Classes are sorted by name (label = position).

    Raises:
        ConfigError: If ``fold`` is not 1, 2 or 3.
        DataError: One line naming the file: no split file for the fold, a malformed line, or a
            listed video is absent.
    """
    _check_fold(fold, (1, 2, 3))
    suffix = f"_test_split{fold}.txt"
    files = sorted(split_dir.glob(f"*{suffix}")) if split_dir.is_dir() else []
    if not files:
        raise DataError(f"no HMDB51 split files '*{suffix}' in {split_dir}")
    classes = tuple(f.name[: -len(suffix)] for f in files)
    train: list[VideoEntry] = []
    test: list[VideoEntry] = []
    for label, (name, list_file) in enumerate(zip(classes, files, strict=True)):
        for number, line in enumerate(_read_lines(list_file), start=1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(
                    f"{list_file} line {number}: expected '<video>.avi 0|1|2', got {line!r}"
                )
            entry = VideoEntry(root / name / parts[0], label)
            if parts[1] == "1":
                train.append(entry)
            elif parts[1] == "2":
                test.append(entry)
    _existing(train + test, split_dir)
    return VideoSplit(train=train, test=test, classes=classes)


def _span(frames: int, stride: int) -> int:
    if frames < 1 or stride < 1:
        raise ConfigError(f"clip frames and stride must be >= 1; got {frames} and {stride}")
    return (frames - 1) * stride + 1


def train_clip_indices(
    n_frames: int, frames: int, stride: int, generator: torch.Generator
) -> torch.Tensor:
    """Frame indices of one training clip: ``frames`` frames ``stride`` apart at a random start.

    The start is uniform over the positions where the clip fits; a video shorter than the clip's
    span starts at 0 and repeats its last frame (indices clamped).

    Shape:
        - Returns: ``(frames,)`` int64 in ``[0, n_frames)``.
    """
    span = _span(frames, stride)
    starts = max(1, n_frames - span + 1)
    start = int(torch.randint(starts, (1,), generator=generator))
    return (start + stride * torch.arange(frames)).clamp_(max=n_frames - 1)


def eval_clip_indices(n_frames: int, frames: int, stride: int, clips: int) -> torch.Tensor:
    """Frame indices of ``clips`` evaluation clips placed uniformly over the video.

    Starts are ``round(linspace(0, n_frames - span, clips))`` (the first clip at the start, the last
    ending at the last frame); short videos clamp as :func:`train_clip_indices`.

    Shape:
        - Returns: ``(clips, frames)`` int64.
    """
    span = _span(frames, stride)
    if clips < 1:
        raise ConfigError(f"evaluation clips per video must be >= 1; got {clips}")
    starts = torch.linspace(0, max(0, n_frames - span), clips).round().long()
    return (starts.view(-1, 1) + stride * torch.arange(frames)).clamp_(max=n_frames - 1)


def eval_windows(clips: torch.Tensor, frames: int, count: int) -> torch.Tensor:
    """Evaluation samples from fixed-length clips: ``count`` windows, concatenated along time.

    The windows are ``frames`` frames each, placed uniformly (:func:`eval_clip_indices`, stride 1).
    A model whose clip length is ``frames`` averages its features over the windows
    (:class:`~cslrobust.models.Encoder` with ``clip_frames``). With ``count == 1`` and
    ``frames == T`` the clips are returned as they are.

    Shape:
        - clips: ``(N, C, T, H, W)``.
        - Returns: ``(N, C, count * frames, H, W)``.
    """
    n_frames = clips.shape[2]
    if frames > n_frames:
        raise ConfigError(
            f"clips of {frames} frames do not fit in samples of {n_frames} frames; expected "
            f"augment.frames <= data.frames"
        )
    if count == 1 and frames == n_frames:
        return clips
    index = eval_clip_indices(n_frames, frames, 1, count).flatten()  # (count * frames,)
    return clips.index_select(2, index.to(clips.device))


def _clip(video: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(T_video, H, W, 3)`` uint8 frames -> the ``(3, T, H, W)`` clip at ``index``."""
    return video[index].permute(3, 0, 1, 2)


@dataclass(frozen=True)
class LoadedVideos:
    """Decoded videos with their labels, and the files that were skipped.

    Attributes:
        videos: ``(T_i, H, W, 3)`` uint8 frames per kept video.
        labels: Label per kept video.
        entries: The kept entries (same order).
        skipped: ``(path, one-line reason)`` of every entry left out (``skip_bad=True`` only).
    """

    videos: list[torch.Tensor]
    labels: list[int]
    entries: list[VideoEntry]
    skipped: list[tuple[Path, str]]


def load_videos(
    entries: Sequence[VideoEntry],
    cache: FrameCache,
    size: tuple[int, int],
    *,
    skip_bad: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "videos",
) -> LoadedVideos:
    """Decode (or read from the cache) every entry's frames at ``size``.

    Args:
        entries: The videos.
        cache: The decoded-frame cache.
        size: Frame ``(height, width)``.
        skip_bad: Leave out videos that cannot be decoded or are truncated, listing them in
            :attr:`LoadedVideos.skipped`; otherwise the first one is the error.
        transform: Applied to each video's ``(T, H, W, 3)`` frames as soon as they are read, and
            kept instead of them (e.g. cut the evaluation clips without holding every frame).
        progress: Show a progress bar.
        desc: The progress bar's label.

    Raises:
        DataError: The first bad video's one line (``skip_bad=False``), or no video was left.
    """
    kept = LoadedVideos([], [], [], [])
    for entry in tqdm(entries, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        try:
            frames = cache.frames(entry.path, size)
        except DataError as error:
            if not skip_bad:
                raise
            kept.skipped.append((entry.path, str(error)))
            continue
        with warnings.catch_warnings():  # memory maps are read-only; nothing here writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            video = torch.from_numpy(frames)
        kept.videos.append(video if transform is None else transform(video))
        kept.labels.append(entry.label)
        kept.entries.append(entry)
    if entries and not kept.videos:
        raise DataError(
            f"none of the {len(entries)} videos could be decoded, first: {kept.skipped[0][1]}"
        )
    return kept


class VideoClipDataset:
    """Decoded videos held in host memory; batches of one random training clip per video.

    Batched like :class:`~cslrobust.data.TensorImageDataset` (the training loop's protocol): one
    permutation per epoch, rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of it, and each
    batch is gathered on the host (uint8) and moved to :attr:`device` as float32 in [0, 1].

    Args:
        videos: ``(T_i, H, W, 3)`` uint8 frames per video (any lengths, one frame size).
        labels: Label per video.
        frames: Frames per clip.
        stride: Frame step inside a clip.
        device: Where batches (and :attr:`labels`) are produced; the frames stay on the host.

    Attributes:
        layout: ``"clip"``.
    """

    layout: ClassVar[Layout] = "clip"

    def __init__(
        self,
        videos: Sequence[torch.Tensor],
        labels: Sequence[int],
        *,
        frames: int,
        stride: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(videos) != len(labels):
            raise ValueError(f"{len(videos)} videos but {len(labels)} labels")
        _span(frames, stride)
        self.videos = list(videos)
        self.device = torch.device(device)
        self.labels = torch.tensor(list(labels), dtype=torch.int64, device=self.device)
        self.frames = frames
        self.stride = stride
        self._lengths = torch.tensor([v.shape[0] for v in self.videos], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.videos)

    def train_clip(self, i: int, generator: torch.Generator) -> torch.Tensor:
        """A random training clip of video ``i``: ``(3, frames, H, W)`` uint8."""
        video = self.videos[i]
        return _clip(video, train_clip_indices(video.shape[0], self.frames, self.stride, generator))

    def eval_clips(self, i: int, clips: int) -> torch.Tensor:
        """``clips`` uniformly placed clips of video ``i``: ``(clips, 3, frames, H, W)`` uint8."""
        video = self.videos[i]
        index = eval_clip_indices(video.shape[0], self.frames, self.stride, clips)
        return torch.stack([_clip(video, row) for row in index])

    def window_starts(self, generator: torch.Generator | None) -> torch.Tensor:
        """The first frame of every video's clip for one epoch.

        Uniform over the positions where the clip fits (as :func:`train_clip_indices`), one
        ``torch.rand`` draw of ``N`` numbers from ``generator``, so a video's window does not
        depend on the order, the batch size or the number of ranks. Without a generator every
        clip is centred (for un-augmented passes over the training set).

        Shape:
            - Returns: ``(N,)`` int64.
        """
        positions = (self._lengths - _span(self.frames, self.stride) + 1).clamp_(min=1)  # (N,)
        if generator is None:
            return torch.div(positions - 1, 2, rounding_mode="floor")
        draw = torch.rand(
            len(self), generator=generator, dtype=torch.float64, device=generator.device
        )
        return (draw.cpu() * positions).long().clamp_(max=positions - 1)

    def num_batches(self, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
        """Number of batches :meth:`batches` yields on every rank (as ``TensorImageDataset``)."""
        return count_batches(len(self), batch_size, drop_last, world_size)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """One epoch of :class:`Batch` es with ``(B, 3, frames, H, W)`` float32 clips in [0, 1].

        The video order (when ``shuffle``) is one ``randperm`` from ``generator``, then every
        video's window (:meth:`window_starts`) from the same generator: all ranks that share the
        generator state agree on both. Rank ``r`` takes positions ``r, r + world_size, ...`` of
        the order, padded by wrapping around without ``drop_last`` (exactly as
        :meth:`TensorImageDataset.batches <cslrobust.data.TensorImageDataset.batches>`).

        Raises:
            ValueError: On invalid sizes or ranks, or ``shuffle`` without a generator.
        """
        order = rank_batches(
            len(self),
            batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        starts = self.window_starts(generator)  # (N,), drawn after the order
        offsets = self.stride * torch.arange(self.frames)  # (frames,)
        pin = self.device.type == "cuda"
        for index in order:
            index = index.cpu()  # (B,)
            clips = torch.stack(
                [
                    self.videos[i][(starts[i] + offsets).clamp_(max=self.videos[i].shape[0] - 1)]
                    for i in index.tolist()
                ]
            )  # (B, frames, H, W, 3) uint8 on the host
            if pin:
                clips = clips.pin_memory()
            clips = clips.to(self.device, non_blocking=pin).permute(0, 4, 1, 2, 3)
            images = clips.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
            index = index.to(self.device)
            yield Batch(index=index, images=images, labels=self.labels[index])


class StreamingVideoDataset(torch.utils.data.Dataset[tuple[int, torch.Tensor, int]]):
    """One video read per item from the frame cache (decoded on first use): for DataLoader workers.

    Item ``i`` is ``(i, clip, label)`` with a ``(3, frames, H, W)`` uint8 training clip whose
    position comes from the stream ``(seed, "clip", epoch, i)``: the same in any worker and any
    order, and new each epoch (:meth:`set_epoch`). Nothing but the entry list is held in memory.

    Args:
        entries: The videos.
        cache: The decoded-frame cache.
        size: Frame ``(height, width)``.
        frames: Frames per clip.
        stride: Frame step inside a clip.
        seed: Run seed.
    """

    layout: ClassVar[Layout] = "clip"

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        cache: FrameCache,
        size: tuple[int, int],
        *,
        frames: int,
        stride: int = 1,
        seed: int = 0,
    ) -> None:
        _span(frames, stride)
        self.entries = list(entries)
        self.cache = cache
        self.size = size
        self.frames = frames
        self.stride = stride
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the clips of epoch ``epoch`` from now on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int]:
        entry = self.entries[i]
        video = torch.from_numpy(self.cache.frames(entry.path, self.size))
        generator = make_generator(self.seed, "clip", self.epoch, i)
        index = train_clip_indices(video.shape[0], self.frames, self.stride, generator)
        return i, _clip(video, index).contiguous(), entry.label


#: Official split readers of the video data sets, by ``data.name``.
_SPLIT_READERS: dict[str, Callable[[Path, Path, int], VideoSplit]] = {
    "ucf101": ucf101_split,
    "hmdb51": hmdb51_split,
}
#: Frame side when ``data.size`` is not set (the R3D/R(2+1)D papers' 112x112).
DEFAULT_VIDEO_SIZE = 112
#: Subfolder of the data cache holding decoded frames.
FRAME_CACHE_DIR = "video_frames"


def build_video_datasets(
    name: str,
    *,
    source: Path | None,
    cache_root: Path,
    train_per_class: int | None,
    val_per_class: int,
    seed: int,
    device: str | torch.device,
    progress: bool,
    clips: ClipSettings,
) -> DataSplits:
    """UCF101 / HMDB51 official split ``clips.fold`` as train / validation / test sets.

    The validation set is ``val_per_class`` videos per class held out of the official train list
    (:func:`~cslrobust.data.splits.train_val_split`), the optional training subset is drawn from
    the rest (:func:`~cslrobust.data.splits.stratified_subset`), both seeded and stratified on the
    listed labels before anything is decoded. Every video is decoded once at ``(size, size)``
    through the frame cache ``cache_root / "video_frames"``.

    * ``train``: a :class:`VideoClipDataset` (uint8 frames in host memory, batches on ``device``)
      handing out one random window of ``clips.frames`` frames ``clips.stride`` apart per video
      and epoch; the view preset may cut a ``clips.view_frames`` sub-window from it.
    * ``val`` / ``test`` (and ``train_eval``, the training videos cut the same way, for the
      probe): :class:`~cslrobust.data.TensorClipDataset` on ``device`` whose samples are
      ``clips.eval_clips`` uniformly placed clips of ``clips.view_frames`` frames
      (:func:`eval_clip_indices` at ``clips.stride``) concatenated along time; the encoder
      averages its features over them. Only the cut frames of these videos are kept.
    * ``mean`` / ``std``: per channel over every frame of the training videos.

    With ``clips.streaming`` the training videos are memory maps of the frame-cache files
    (:class:`FrameCache` with ``mmap``): the same frames, windows and numbers, read from disk
    when a batch indexes them instead of held in host memory.

    Args:
        name: ``"ucf101"`` or ``"hmdb51"``.
        source: The video folder (``<root>/<class>/<video>.avi``).
        cache_root: Data cache folder (the frame cache lives below it).
        train_per_class: Training videos per class; ``None`` keeps all.
        val_per_class: Validation videos per class, out of the official train list.
        seed: Run seed of both splits.
        device: Where batches and evaluation samples live.
        progress: Show a progress bar per split while decoding.
        clips: Clip lengths, stride, size, split folder and fold, ``skip_bad``.

    Returns:
        The splits; ``skipped`` lists ``(path, reason)`` of every video left out (``skip_bad``).

    Raises:
        ConfigError: Unknown ``name``, no ``source`` / ``clips.split_dir``, or views longer than
            the training window.
        DataError: One line naming the file: a split file is unreadable, a listed video is
            missing, or (without ``skip_bad``) cannot be decoded or is truncated.

    Shape:
        - train batches: ``(B, 3, frames, size, size)`` float32 in [0, 1].
        - val / test / train_eval images: ``(N, 3, eval_clips * view_frames, size, size)`` uint8.
    """
    from cslrobust.data import DataSplits
    from cslrobust.data.splits import stratified_subset, train_val_split
    from cslrobust.data.stats import channel_mean_std
    from cslrobust.data.tensor_data import TensorClipDataset

    if name not in _SPLIT_READERS:
        raise ConfigError(
            f"unknown video data set {name!r}; expected one of {list(_SPLIT_READERS)}"
        )
    if source is None or clips.split_dir is None:
        raise ConfigError(
            f"data set {name!r} needs source (the video folder) and split_dir (the official split "
            "files)"
        )
    if clips.view_frames > clips.frames:
        raise ConfigError(
            f"views of {clips.view_frames} frames do not fit in training windows of {clips.frames} "
            "frames; expected augment.frames <= data.frames"
        )
    split = _SPLIT_READERS[name](Path(source), Path(clips.split_dir), clips.fold)
    listed = torch.tensor([e.label for e in split.train], dtype=torch.int64)
    train_idx, val_idx = train_val_split(listed, val_per_class, seed)
    if train_per_class is not None:
        train_idx = train_idx[stratified_subset(listed[train_idx], train_per_class, seed)]
    side = DEFAULT_VIDEO_SIZE if clips.size is None else clips.size
    cache = FrameCache(Path(cache_root) / FRAME_CACHE_DIR, mmap=clips.streaming)

    def cut(video: torch.Tensor) -> torch.Tensor:
        """``(T, H, W, 3)`` frames -> ``(3, eval_clips * view_frames, H, W)`` evaluation sample."""
        index = eval_clip_indices(video.shape[0], clips.view_frames, clips.stride, clips.eval_clips)
        return _clip(video, index.flatten()).contiguous()

    def load(entries: list[VideoEntry], split_name: str, *, evaluation: bool) -> LoadedVideos:
        return load_videos(
            entries,
            cache,
            (side, side),
            skip_bad=clips.skip_bad,
            transform=cut if evaluation else None,
            progress=progress,
            desc=f"{name} {split_name}",
        )

    def evaluation_set(samples: list[torch.Tensor], labels: list[int]) -> TensorClipDataset:
        length = clips.eval_clips * clips.view_frames
        images = (
            torch.stack(samples)
            if samples
            else torch.empty((0, 3, length, side, side), dtype=torch.uint8)
        )
        return TensorClipDataset(images, torch.tensor(labels, dtype=torch.int64), device)

    train = load([split.train[i] for i in train_idx.tolist()], "train", evaluation=False)
    val = load([split.train[i] for i in val_idx.tolist()], "val", evaluation=True)
    test = load(split.test, "test", evaluation=True)
    # Every training frame as an image (a view of each video: no copy of the set).
    mean, std = channel_mean_std(video.permute(0, 3, 1, 2) for video in train.videos)
    skipped = tuple((str(path), reason) for s in (train, val, test) for path, reason in s.skipped)
    return DataSplits(
        train=VideoClipDataset(
            train.videos, train.labels, frames=clips.frames, stride=clips.stride, device=device
        ),
        val=evaluation_set(val.videos, val.labels),
        test=evaluation_set(test.videos, test.labels),
        classes=split.classes,
        mean=mean,
        std=std,
        skipped=skipped,
        train_eval=evaluation_set([cut(video) for video in train.videos], train.labels),
    )
