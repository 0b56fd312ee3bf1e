"""Boolean pair masks that define positives and negatives for :func:`~.contrastive.info_nce`.

Every contrastive objective in cslrobust is one call to ``info_nce`` with different masks: SimCLR
takes its positives from instance ids, SupCon from labels, and false-negative removal edits the
negative mask.

Rows are laid out view-major: with ``V`` views of ``B`` batch samples, row ``v * B + b`` holds view
``v`` of sample ``b``. :func:`expand_to_views` turns per-sample values ``(B,)`` into per-row values
``(V*B,)`` in that layout. Every mask here excludes the diagonal (an anchor is never its own
positive or negative).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "expand_to_views",
    "instance_positive_mask",
    "label_positive_mask",
    "negative_mask",
]


def expand_to_views(values: Tensor, n_views: int) -> Tensor:
    """Repeat per-sample values for each view in the view-major row layout.

    Args:
        values: Per-sample values, e.g. dataset indices or labels.
        n_views: Number of views ``V`` (at least 1).

    Returns:
        Per-row values: ``out[v * B + b] == values[b]``.

    Shape:
        - values: ``(B,)``
        - output: ``(V * B,)``

    Raises:
        ValueError: If ``values`` is not 1-D or ``n_views < 1``.
    """
    if values.dim() != 1:
        raise ValueError(f"values must be 1-D (B,), got shape {tuple(values.shape)}")
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    return values.repeat(n_views)


def _same_value_off_diagonal(values: Tensor) -> Tensor:
    """Pairs of distinct rows that share a value; ``(M,) -> (M, M)`` bool."""
    if values.dim() != 1:
        raise ValueError(f"expected a 1-D tensor (M,), got shape {tuple(values.shape)}")
    same = values[:, None] == values[None, :]  # (M, M)
    return same.fill_diagonal_(False)


def instance_positive_mask(sample_ids: Tensor) -> Tensor:
    """Positives of instance discrimination: the other views of the same instance.

    Args:
        sample_ids: Instance id of every row (for a view-major batch,
            ``expand_to_views(index, n_views)``).

    Returns:
        ``mask[i, j]`` is True iff rows ``i != j`` come from the same instance.

    Shape:
        - sample_ids: ``(M,)`` integer
        - output: ``(M, M)`` bool, symmetric, False on the diagonal
    """
    return _same_value_off_diagonal(sample_ids)


def label_positive_mask(labels: Tensor) -> Tensor:
    """Positives of supervised contrastive learning: every other row with the same label.

    Args:
        labels: Class label of every row (for a view-major batch,
            ``expand_to_views(labels, n_views)``).

    Returns:
        ``mask[i, j]`` is True iff rows ``i != j`` share a label (this includes the other views of
        the same instance).

    Shape:
        - labels: ``(M,)`` integer
        - output: ``(M, M)`` bool, symmetric, False on the diagonal
    """
    return _same_value_off_diagonal(labels)


def negative_mask(pos_mask: Tensor) -> Tensor:
    """Negatives: every pair that is neither a positive nor the anchor itself.

    Args:
        pos_mask: Positive pairs.

    Returns:
        ``~pos_mask`` with the diagonal set to False.

    Shape:
        - pos_mask: ``(M, M)`` bool
        - output: ``(M, M)`` bool, False on the diagonal

    Raises:
        ValueError: If ``pos_mask`` is not a square bool matrix.
    """
    square = pos_mask.dim() == 2 and pos_mask.shape[0] == pos_mask.shape[1]
    if pos_mask.dtype != torch.bool or not square:
        raise ValueError(
            f"pos_mask must be a square bool (M, M) tensor, got {pos_mask.dtype} "
            f"of shape {tuple(pos_mask.shape)}"
        )
    return (~pos_mask).fill_diagonal_(False)
