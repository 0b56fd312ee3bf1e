"""Image folders (``split/class/image``) from a directory or a tar archive, decoded once and cached.

The decoded uint8 arrays are cached as safetensors under ``cache_dir/<key>/``, where ``key`` is the
SHA-256 of the archive (or a digest of the directory's image files), so the cache can never serve
stale pixels for a changed source. The cache entry is written to a temporary directory and renamed
into place, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from cslrobust.data.archives import read_tar_entries, sha256_file
from cslrobust.data.raw import RawDataset
from cslrobust.errors import DataError

SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CACHE_FORMAT_VERSION = 1
_ARRAYS_FILE = "arrays.safetensors"
_META_FILE = "meta.json"


def load_image_folder(source: Path, cache_dir: Path, *, progress: bool = True) -> RawDataset:
    """Load an ImageFolder tree ``{train,test}/<class>/<image>`` into uint8 tensors.

    Classes are the sorted class-folder names and must be the same in both splits. Every image must
    decode to mode ``RGB`` and all images must share one size. Hidden entries (names starting with
    ``.``) and top-level entries other than ``train``/``test`` are ignored. Images are ordered by
    ``(class, file name)`` within each split, identically for a directory and an archive.

    Args:
        source: A directory, or a ``.tar``/``.tar.gz``/``.tgz`` archive read member by member
            (never extracted; member paths are checked as in :func:`~.archives.check_tar_member`).
        cache_dir: Where decoded arrays are cached; created if missing.
        progress: Show a progress bar while decoding.

    Returns:
        The data set, named after the source without its suffixes.

    Shape:
        Images ``(N, 3, H, W)`` uint8; labels ``(N,)`` int64 in ``[0, len(classes))``.

    Raises:
        DataError: If the source is missing or of an unsupported type, the archive is corrupt or has
            a refused member, an image cannot be decoded or has the wrong mode or size, a class
            folder is empty, the class sets of the splits differ, a split is missing, or the cache
            cannot be written. The message names the offending path.
    """
    name = _source_name(source)
    files: list[Path] | None = None  # the image files of a directory source
    if source.is_dir():
        files = _list_directory(source)
        key = _directory_digest(source, files)
    elif source.is_file() and source.name.endswith(ARCHIVE_SUFFIXES):
        key = sha256_file(source)
    elif source.exists():
        raise DataError(
            f"image folder source {source} is neither a directory nor a "
            f"{'/'.join(ARCHIVE_SUFFIXES)} archive"
        )
    else:
        raise DataError(f"image folder source {source} does not exist")

    entry = cache_dir / key
    cached = _read_cache(entry, key, name)
    if cached is not None:
        return cached
    collector = _Collector(source=source, progress=progress, total=len(files) if files else None)
    with collector.bar:
        if files is None:
            _collect_archive(source, collector)
        else:
            _collect_directory(source, files, collector)
    raw = collector.assemble(name)
    _write_cache(raw, entry, key)
    return raw


def _source_name(source: Path) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if source.name.endswith(suffix):
            return source.name.removesuffix(suffix)
    return source.name


def _decode_image(data: bytes, where: str) -> tuple[npt.NDArray[np.uint8], str]:
    """Decode one image file to ``(H, W, C)`` uint8 and report its Pillow mode.

    Raises:
        DataError: If Pillow cannot decode it; the message names ``where``.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image), image.mode
    except UnidentifiedImageError:
        raise DataError(
            f"cannot decode image {where}: unrecognised format; expected a readable image"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {where}: {err}; expected a readable image") from None


@dataclass
class _Image:
    class_name: str
    file_name: str
    pixels: npt.NDArray[np.uint8]  # (H, W, 3)


@dataclass
class _Collector:
    """Decodes images as they arrive and checks them against the first one (private, per call)."""

    source: Path
    progress: bool
    total: int | None
    images: dict[str, list[_Image]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    class_dirs: dict[str, dict[str, str]] = field(default_factory=lambda: {s: {} for s in SPLITS})
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    first: tuple[tuple[int, ...], str] | None = None  # (shape, where) of the first image
    bar: tqdm[None] = field(init=False)

    def __post_init__(self) -> None:
        self.bar = tqdm(
            total=self.total,
            desc=f"decoding {_source_name(self.source)}",
            unit="img",
            disable=not self.progress,
        )

    def add_class_dir(self, split: str, class_name: str, where: str) -> None:
        self.class_dirs[split].setdefault(class_name, where)

    def add_image(
        self, split: str, class_name: str, file_name: str, data: bytes, where: str
    ) -> None:
        if (split, class_name, file_name) in self.seen:
            raise DataError(f"duplicate image {where}; expected each path once")
        self.seen.add((split, class_name, file_name))
        pixels, mode = _decode_image(data, where)
        if mode != "RGB":
            raise DataError(f"image {where} has mode {mode}; expected RGB")
        if self.first is None:
            self.first = (pixels.shape, where)
        elif pixels.shape != self.first[0]:
            h, w = self.first[0][:2]
            raise DataError(
                f"image {where} is {pixels.shape[1]}x{pixels.shape[0]} (WxH); expected {w}x{h} "
                f"like {self.first[1]}"
            )
        self.images[split].append(_Image(class_name, file_name, pixels))
        self.bar.update()

    def assemble(self, name: str) -> RawDataset:
        """Check the collected layout and stack it into a :class:`RawDataset`."""
        counts = {s: {c: 0 for c in self.class_dirs[s]} for s in SPLITS}
        for split in SPLITS:
            if not self.class_dirs[split]:
                raise DataError(
                    f"image folder {self.source} has no class folders under '{split}/'; "
                    "expected the layout split/class/image with splits train and test"
                )
            for image in self.images[split]:
                counts[split][image.class_name] += 1
            for class_name, count in sorted(counts[split].items()):
                if count == 0:
                    where = self.class_dirs[split][class_name]
                    raise DataError(f"class folder {where} is empty; expected at least one image")
        train_classes, test_classes = (set(self.class_dirs[s]) for s in SPLITS)
        if train_classes != test_classes:
            raise DataError(
                f"image folder {self.source} has different classes in its splits: only in train "
                f"{sorted(train_classes - test_classes)}, only in test "
                f"{sorted(test_classes - train_classes)}; expected the same class folders"
            )
        classes = tuple(sorted(train_classes))
        label_of = {class_name: label for label, class_name in enumerate(classes)}
        tensors = []
        for split in SPLITS:
            ordered = sorted(self.images[split], key=lambda im: (im.class_name, im.file_name))
            pixels = np.stack([im.pixels for im in ordered])  # (N, H, W, 3)
            labels = np.array([label_of[im.class_name] for im in ordered], dtype=np.int64)
            images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
            tensors.append((images, torch.from_numpy(labels)))
        return RawDataset.from_splits(tensors, classes=classes, name=name)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _list_directory(source: Path) -> list[Path]:
    """The image files of a directory source, sorted; class folders are re-listed when collecting.

    Raises:
        DataError: If a split holds a file, or a class folder holds a folder.
    """
    files = []
    for split in SPLITS:
        split_dir = source / split
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(split_dir.iterdir()):
            if _is_hidden(class_dir.name):
                continue
            if not class_dir.is_dir():
                raise DataError(
                    f"unexpected file {class_dir}; expected only class folders in {split_dir}"
                )
            for path in sorted(class_dir.iterdir()):
                if _is_hidden(path.name):
                    continue
                if path.is_dir():
                    raise DataError(
                        f"unexpected folder {path}; expected only image files in {class_dir}"
                    )
                files.append(path)
    return files


def _directory_digest(source: Path, files: list[Path]) -> str:
    """SHA-256 over the sorted (relative path, size, content SHA-256) of the image files."""
    digest = hashlib.sha256(b"cslrobust image folder v1\0")
    for path in files:
        relative = path.relative_to(source).as_posix()
        digest.update(f"{relative}\0{path.stat().st_size}\0".encode())
        digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def _collect_directory(source: Path, files: list[Path], collector: _Collector) -> None:
    for split in SPLITS:
        split_dir = source / split
        if split_dir.is_dir():
            for class_dir in split_dir.iterdir():
                if not _is_hidden(class_dir.name):
                    collector.add_class_dir(split, class_dir.name, str(class_dir))
    for path in files:
        split, class_name, file_name = path.relative_to(source).parts
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read image {path}: {err}") from None
        collector.add_image(split, class_name, file_name, data, str(path))


def _collect_archive(source: Path, collector: _Collector) -> None:
    for entry in read_tar_entries(source):
        parts = entry.path.parts
        if not parts or parts[0] not in SPLITS or any(_is_hidden(part) for part in parts):
            continue
        depth = len(parts)
        if entry.is_dir:
            if depth == 2:
                collector.add_class_dir(parts[0], parts[1], entry.where)
            elif depth > 2:
                raise DataError(
                    f"unexpected folder {entry.where}; expected only image files in class folders"
                )
        elif depth == 3:
            collector.add_class_dir(parts[0], parts[1], f"{source}:{'/'.join(parts[:2])}")
            collector.add_image(parts[0], parts[1], parts[2], entry.data, entry.where)
        else:
            raise DataError(f"unexpected file {entry.where}; expected the layout split/class/image")


def _read_cache(entry: Path, key: str, name: str) -> RawDataset | None:
    """The cached data set, or None when the entry is absent, stale or unreadable."""
    if not (entry / _META_FILE).is_file() or not (entry / _ARRAYS_FILE).is_file():
        return None
    try:
        meta = json.loads((entry / _META_FILE).read_text(encoding="utf-8"))
        if meta.get("format_version") != CACHE_FORMAT_VERSION or meta.get("source_sha256") != key:
            return None
        arrays = load_file(entry / _ARRAYS_FILE)
        return RawDataset(
            train_images=arrays["train_images"],
            train_labels=arrays["train_labels"],
            test_images=arrays["test_images"],
            test_labels=arrays["test_labels"],
            classes=tuple(meta["classes"]),
            name=name,
        )
    # A damaged entry (bad JSON, truncated safetensors, missing key) is rebuilt, not reported.
    except Exception as err:
        warnings.warn(f"ignoring unreadable cache entry {entry}: {err!r}", stacklevel=3)
        return None


def _write_cache(raw: RawDataset, entry: Path, key: str) -> None:
    """Write ``raw`` to ``entry`` via a temporary sibling directory and an atomic rename."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=entry.parent))
    except OSError as err:
        raise DataError(f"cannot write cache under {entry.parent}: {err}") from None
    try:
        save_file(
            {
                "train_images": raw.train_images.contiguous(),
                "train_labels": raw.train_labels.contiguous(),
                "test_images": raw.test_images.contiguous(),
                "test_labels": raw.test_labels.contiguous(),
            },
            str(tmp / _ARRAYS_FILE),
        )
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "source_sha256": key,
            "classes": list(raw.classes),
            "image_size": list(raw.train_images.shape[2:]),
            "counts": {"train": len(raw.train_labels), "test": len(raw.test_labels)},
        }
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if entry.exists():  # a stale or damaged entry that _read_cache rejected
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            # Another process (e.g. another rank) wrote the same entry first; theirs is as good.
            if not (entry / _META_FILE).is_file():
                raise
    except OSError as err:
        raise DataError(f"cannot write cache entry {entry}: {err}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
