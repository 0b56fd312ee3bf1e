"""Checks and preparation shared by every geometry metric: shapes, L2 normalisation, row chunks.

Every metric of :mod:`cslrobust.geometry` takes features as an ``(N, D)`` floating tensor (one row per
sample) and, where classes matter, integer labels ``(N,)``. Rows are L2-normalised inside the metric
(the metrics are about directions on the unit hypersphere); an all-zero or non-finite row is an error.
Work is done ``chunk_size`` rows at a time so that no ``N x N`` matrix is ever formed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "check_chunk_size",
    "check_features",
    "check_labels",
    "compute_dtype",
    "count_classes",
    "normalize_rows",
    "row_chunks",
]

DEFAULT_CHUNK_SIZE = 2048
"""Rows per block: a ``2048 x 2048`` float32 block of pair values is 16 MiB."""


def check_features(features: Tensor, name: str = "features", *, min_rows: int = 1) -> None:
    """Check that ``features`` is a finite floating ``(N, D)`` tensor with ``N >= min_rows``.

    Raises:
        ValueError: On a wrong rank or dtype, too few rows, zero columns or a non-finite value.
    """
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a 2-D (N, D) tensor, got {shape}")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {features.dtype}")
    n, d = features.shape
    if n < min_rows or d < 1:
        raise ValueError(f"{name} needs at least {min_rows} row(s) and 1 column, got ({n}, {d})")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} contain NaN or infinite values")


def check_labels(labels: Tensor, n: int, num_classes: int | None = None) -> int:
    """Check integer labels ``(n,)`` in ``[0, num_classes)`` and return the number of classes.

    Args:
        labels: Class index per sample.
        n: Expected number of samples.
        num_classes: Number of classes; ``None`` means ``labels.max() + 1``.

    Raises:
        ValueError: On a wrong shape or dtype, a negative label, or a label ``>= num_classes``.
    """
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D tensor of length {n}, got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if n == 0:
        return num_classes or 0
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"labels must be non-negative, got {low}")
    if num_classes is None:
        return high + 1
    if high >= num_classes:
        raise ValueError(f"label {high} is out of range for num_classes={num_classes}")
    return num_classes


def check_chunk_size(chunk_size: int) -> None:
    """Raise ValueError unless ``chunk_size`` is a positive integer."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def compute_dtype(features: Tensor) -> torch.dtype:
    """The dtype metrics compute in: float64 stays float64, anything narrower becomes float32."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def normalize_rows(features: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """L2-normalise each row, in ``dtype`` (default :func:`compute_dtype`).

    Raises:
        ValueError: If a row is all zeros (it has no direction).
    """
    x = features.to(dtype or compute_dtype(features))
    norms: Tensor = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("features contain an all-zero row, which cannot be L2-normalised")
    return x / norms


def row_chunks(n: int, chunk_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``chunk_size`` rows covering ``range(n)``."""
    check_chunk_size(chunk_size)
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def count_classes(labels: Tensor, num_classes: int) -> Tensor:
    """Samples per class, ``(num_classes,)`` int64 on the labels' device."""
    return torch.bincount(labels.long(), minlength=num_classes)
