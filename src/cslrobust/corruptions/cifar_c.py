"""Loader for the official CIFAR-10-C / CIFAR-100-C release (Hendrycks & Dietterich, 2019).

The release is a folder of ``<corruption>.npy`` files, each ``(5 * n, 32, 32, 3)`` uint8 holding
severities 1..5 in blocks of ``n`` (10,000 for the real data), and ``labels.npy`` of shape
``(5 * n,)``. Only the folder passed in is read; arrays are memory-mapped with
``allow_pickle=False`` and only the requested severity's block is copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from cslrobust.corruptions.registry import CORRUPTION_NAMES, OFFICIAL_EXTRA_NAMES, SEVERITIES
from cslrobust.errors import ConfigError, DataError

OFFICIAL_NAMES: tuple[str, ...] = CORRUPTION_NAMES + OFFICIAL_EXTRA_NAMES
"""Names with a file in the official release (the 15 benchmark corruptions and 4 held-out ones)."""


def _open(path: Path) -> NDArray[Any]:
    if not path.is_file():
        raise DataError(
            f"missing {path}; expected the official CIFAR-C .npy files in {path.parent}"
        )
    try:
        loaded: NDArray[Any] = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} as a .npy array: {err}") from None
    return loaded


def load_official(root: Path, name: str, severity: int) -> tuple[Tensor, Tensor]:
    """One corruption at one severity from an official CIFAR-10-C or CIFAR-100-C folder.

    Args:
        root: Folder holding ``<name>.npy`` and ``labels.npy``.
        name: One of :data:`OFFICIAL_NAMES`.
        severity: 1..5.

    Returns:
        ``(images, labels)``: images ``torch.uint8`` channels first, labels ``torch.int64``.

    Shape:
        images: ``(n, 3, 32, 32)``; labels: ``(n,)``, where the files hold ``5 * n`` rows.

    Raises:
        ConfigError: If ``name`` or ``severity`` is invalid.
        DataError: If a file is missing, unreadable, or has the wrong dtype or shape.
    """
    if name not in OFFICIAL_NAMES:
        raise ConfigError(
            f"unknown CIFAR-C corruption {name!r}; expected one of: {', '.join(OFFICIAL_NAMES)}"
        )
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int | np.integer)
        or severity not in SEVERITIES
    ):
        raise ConfigError(f"corruption severity must be an integer in 1..5, got {severity!r}")
    root = Path(root)
    images_path = root / f"{name}.npy"
    labels_path = root / "labels.npy"
    images = _open(images_path)
    labels = _open(labels_path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(
            f"{images_path} holds {images.dtype} {images.shape}; expected uint8 (5 * n, 32, 32, 3)"
        )
    total = images.shape[0]
    if total == 0 or total % len(SEVERITIES):
        raise DataError(
            f"{images_path} has {total} images; expected 5 severities x n images, n > 0"
        )
    if labels.shape != (total,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{labels_path} holds {labels.dtype} {labels.shape}; expected integer labels of shape ({total},)"
        )
    n = total // len(SEVERITIES)
    block = slice((severity - 1) * n, severity * n)
    chw = torch.from_numpy(np.array(images[block])).permute(0, 3, 1, 2).contiguous()  # a copy
    return chw, torch.from_numpy(np.array(labels[block], dtype=np.int64))
