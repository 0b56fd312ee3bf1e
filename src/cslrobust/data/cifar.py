"""CIFAR-10 and CIFAR-100 from the authors' archives, without executing pickles.

The default is the **binary** release (fixed-size records read with ``numpy``). The **python**
release is supported through :class:`RestrictedUnpickler`, which admits only numpy array
reconstruction, so a tampered pickle cannot run code. Reference: A. Krizhevsky, *Learning Multiple
Layers of Features from Tiny Images*, 2009, https://www.cs.toronto.edu/~kriz/cifar.html (which
documents both layouts).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
import torch

from cslrobust.data.archives import download as download_file
from cslrobust.data.archives import md5_file, safe_extract_tar
from cslrobust.data.raw import RawDataset
from cslrobust.errors import ConfigError, DataError

CifarName = Literal["cifar10", "cifar100"]
CifarFormat = Literal["binary", "python"]

IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR release lives and how its files are laid out.

    Attributes:
        name: ``"cifar10"`` or ``"cifar100"``.
        fmt: ``"binary"`` or ``"python"``.
        url: Official download URL.
        md5: The MD5 published on the CIFAR page.
        folder: Top-level directory inside the archive.
        train_files: Training batch files inside ``folder``, in order.
        test_files: Test batch files inside ``folder``.
        meta_file: File with the class names inside ``folder``.
        num_classes: Number of (fine) classes.
        label_bytes: Binary format: label bytes that precede each image.
        label_offset: Binary format: which of those bytes is the label used (CIFAR-100: fine).
        labels_key: Python format: dictionary key of the labels.
        names_key: Python format: dictionary key of the class names in ``meta_file``.
    """

    name: str
    fmt: str
    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    num_classes: int
    label_bytes: int = 1
    label_offset: int = 0
    labels_key: str = "labels"
    names_key: str = "label_names"

    @property
    def archive_name(self) -> str:
        """File name of the downloaded archive."""
        return self.url.rsplit("/", 1)[-1]


_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

CIFAR_SPECS: Mapping[tuple[str, str], CifarSpec] = {
    ("cifar10", "binary"): CifarSpec(
        name="cifar10",
        fmt="binary",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        md5="c32a1d4ab5d03f1284b67883e8d87530",
        folder="cifar-10-batches-bin",
        train_files=tuple(f"{batch}.bin" for batch in _CIFAR10_TRAIN_BATCHES),
        test_files=("test_batch.bin",),
        meta_file="batches.meta.txt",
        num_classes=10,
    ),
    ("cifar100", "binary"): CifarSpec(
        name="cifar100",
        fmt="binary",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        md5="03b5dce01913d631647c71ecec9e9cb8",
        folder="cifar-100-binary",
        train_files=("train.bin",),
        test_files=("test.bin",),
        meta_file="fine_label_names.txt",
        num_classes=100,
        label_bytes=2,  # coarse label, then fine label
        label_offset=1,
    ),
    ("cifar10", "python"): CifarSpec(
        name="cifar10",
        fmt="python",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=_CIFAR10_TRAIN_BATCHES,
        test_files=("test_batch",),
        meta_file="batches.meta",
        num_classes=10,
    ),
    ("cifar100", "python"): CifarSpec(
        name="cifar100",
        fmt="python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        num_classes=100,
        labels_key="fine_labels",
        names_key="fine_label_names",
    ),
}


def cifar_spec(name: str, fmt: str = "binary") -> CifarSpec:
    """Look up the spec of a CIFAR release.

    Raises:
        ConfigError: If ``(name, fmt)`` is not a known release; the message lists the valid ones.
    """
    try:
        return CIFAR_SPECS[(name, fmt)]
    except KeyError:
        valid = ", ".join(f"{n}/{f}" for n, f in CIFAR_SPECS)
        raise ConfigError(f"unknown CIFAR release {name}/{fmt}; expected one of: {valid}") from None


def load_cifar(
    name: CifarName,
    root: Path,
    *,
    download: bool = True,
    fmt: CifarFormat = "binary",
    progress: bool = True,
) -> RawDataset:
    """Load CIFAR-10 or CIFAR-100 (fine labels), downloading and extracting it under ``root``.

    The archive is kept as ``root/<archive name>`` and extracted to ``root/<folder>``; later calls
    read the extracted files directly. Extracted files are written atomically from a
    checksum-verified archive, so they are trusted without re-hashing; their sizes are validated.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: Data directory (created if missing).
        download: Download the archive if it is not under ``root``.
        fmt: ``"binary"`` (default; no pickle at all) or ``"python"`` (restricted unpickler).
        progress: Show download progress.

    Returns:
        The official train (50,000) and test (10,000) splits.

    Shape:
        Images ``(N, 3, 32, 32)`` uint8; labels ``(N,)`` int64 in ``[0, num_classes)``.

    Raises:
        ConfigError: If ``name``/``fmt`` is unknown.
        DataError: If the archive is missing (with ``download=False``), fails its checksum, lacks a
            file, or a file is malformed.
    """
    spec = cifar_spec(name, fmt)
    folder = root / spec.folder
    if _missing_files(spec, folder):
        archive = root / spec.archive_name
        if download:
            download_file(spec.url, archive, checksum=spec.md5, algorithm="md5", progress=progress)
        elif not archive.is_file():
            raise DataError(
                f"{archive} does not exist and download=False; expected the {spec.name} "
                f"{spec.fmt} archive from {spec.url} there"
            )
        elif (got := md5_file(archive)) != spec.md5:
            raise DataError(f"checksum mismatch for {archive}: expected md5 {spec.md5}, got {got}")
        safe_extract_tar(archive, root)
        if missing := _missing_files(spec, folder):
            raise DataError(
                f"archive {archive} lacks member {spec.folder}/{missing[0]}; "
                f"expected the official {spec.name} {spec.fmt} layout"
            )
    return read_cifar_folder(folder, spec)


def _missing_files(spec: CifarSpec, folder: Path) -> list[str]:
    names = (*spec.train_files, *spec.test_files, spec.meta_file)
    return [name for name in names if not (folder / name).is_file()]


def read_cifar_folder(folder: Path, spec: CifarSpec) -> RawDataset:
    """Read an extracted CIFAR release (the directory named ``spec.folder`` in its archive).

    Args:
        folder: Directory holding the batch files and the meta file.
        spec: Which release and format the files follow.

    Returns:
        The train and test splits.

    Shape:
        Images ``(N, 3, 32, 32)`` uint8; labels ``(N,)`` int64.

    Raises:
        DataError: If a file is missing or malformed; the message names the file.
    """
    if spec.fmt == "binary":
        classes = _read_binary_class_names(folder / spec.meta_file, spec)
        read_batch = _read_binary_batch
    else:
        classes = _read_python_class_names(folder / spec.meta_file, spec)
        read_batch = _read_python_batch
    splits = []
    for files in (spec.train_files, spec.test_files):
        batches = [read_batch(folder / file, spec) for file in files]
        images = np.concatenate([images for images, _ in batches])  # (N, 3072), a fresh array
        labels = np.concatenate([labels for _, labels in batches])
        splits.append((torch.from_numpy(images).view(-1, 3, 32, 32), torch.from_numpy(labels)))
    return RawDataset.from_splits(splits, classes=classes, name=spec.name)


def _read_binary_batch(
    path: Path, spec: CifarSpec
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Records of ``label_bytes`` label bytes followed by 3072 pixel bytes (R, G, B planes)."""
    record = spec.label_bytes + IMAGE_BYTES
    if not path.is_file():
        raise DataError(f"CIFAR batch file {path} does not exist")
    size = path.stat().st_size
    if size == 0 or size % record:
        raise DataError(
            f"CIFAR batch file {path} has {size} bytes; expected a positive multiple of the "
            f"{record}-byte {spec.name} record"
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    labels = records[:, spec.label_offset].astype(np.int64)
    _check_labels(labels, path, spec)
    return records[:, spec.label_bytes :], labels


def _read_binary_class_names(path: Path, spec: CifarSpec) -> tuple[str, ...]:
    if not path.is_file():
        raise DataError(f"CIFAR class-name file {path} does not exist")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return _check_class_names(tuple(name for name in names if name), path, spec)


def _check_labels(labels: npt.NDArray[np.int64], path: Path, spec: CifarSpec) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(
            f"CIFAR batch file {path} has labels in [{labels.min()}, {labels.max()}]; "
            f"expected [0, {spec.num_classes - 1}]"
        )


def _check_class_names(names: tuple[str, ...], path: Path, spec: CifarSpec) -> tuple[str, ...]:
    if len(names) != spec.num_classes:
        raise DataError(
            f"CIFAR class-name file {path} lists {len(names)} classes; expected {spec.num_classes}"
        )
    return names


# (module, name) pairs a CIFAR python batch may reference: numpy's array reconstruction, under its
# numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) module paths.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds dicts, lists, strings, numbers and numpy arrays, nothing else.

    Every global a pickle references passes through :meth:`find_class`; only numpy array
    reconstruction is admitted, so a pickle referencing e.g. ``os.system`` fails before anything is
    called. Strings are decoded as latin-1, the encoding that round-trips the Python 2 ``str``
    objects in the official CIFAR pickles.

    Args:
        file: A binary file positioned at the pickle.
        source: The file's path, named in error messages.
    """

    def __init__(self, file: BinaryIO, source: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Return numpy's reconstruction callables; refuse every other global.

        Raises:
            DataError: If ``module.name`` is not numpy array reconstruction.
        """
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(
                f"refusing pickle {self.source}: it references {module}.{name}; expected only "
                "numpy array reconstruction (numpy.core.multiarray._reconstruct, numpy.ndarray, "
                "numpy.dtype)"
            )
        if name == "_reconstruct":
            # The live function, whatever module path this numpy version keeps it under.
            return np.empty(0).__reduce__()[0]
        return np.ndarray if name == "ndarray" else np.dtype


def load_restricted_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    Raises:
        DataError: If the file is missing, references a forbidden global, or is not a valid pickle.
    """
    if not path.is_file():
        raise DataError(f"pickle file {path} does not exist")
    with path.open("rb") as f:
        try:
            return RestrictedUnpickler(f, source=path).load()
        except DataError:
            raise
        except Exception as err:  # unpickling malformed bytes can raise nearly anything
            raise DataError(
                f"cannot unpickle {path}: {err!r}; expected a CIFAR python batch"
            ) from None


def _as_str(value: object) -> object:
    """Decode bytes as latin-1 (pickles written from ``encoding='bytes'`` loads have bytes keys)."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _load_dict(path: Path) -> dict[object, Any]:
    obj = load_restricted_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"pickle {path} holds a {type(obj).__name__}; expected a dict")
    return {_as_str(key): value for key, value in obj.items()}


def _read_python_batch(
    path: Path, spec: CifarSpec
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """A dict with ``data`` (uint8, ``(n, 3072)``) and ``spec.labels_key`` (n ints)."""
    batch = _load_dict(path)
    data = batch.get("data")
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == IMAGE_BYTES
    ):
        described = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataError(
            f"pickle {path} key 'data' is a {described}; expected a uint8 array of shape (n, 3072)"
        )
    try:
        labels = np.asarray(batch.get(spec.labels_key), dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(
            f"pickle {path} key {spec.labels_key!r} is not a list of ints: {err}"
        ) from None
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"pickle {path} key {spec.labels_key!r} has shape {labels.shape}; "
            f"expected ({data.shape[0]},) to match 'data'"
        )
    _check_labels(labels, path, spec)
    return data, labels


def _read_python_class_names(path: Path, spec: CifarSpec) -> tuple[str, ...]:
    names = _load_dict(path).get(spec.names_key)
    if not isinstance(names, list) or not all(isinstance(n, str | bytes) for n in names):
        raise DataError(f"pickle {path} key {spec.names_key!r} is not a list of class names")
    return _check_class_names(tuple(str(_as_str(n)) for n in names), path, spec)
