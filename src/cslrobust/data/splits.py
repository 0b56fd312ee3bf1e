"""Deterministic, class-stratified subsets and train/validation splits of a labelled set.

Randomness comes from :func:`cslrobust.seeding.make_generator` on the ``"split"`` stream (with a
sub-key per purpose), so a split depends only on ``(labels, sizes, seed)``: never on the global RNG,
the device, or how many other random numbers the run has drawn.
"""

from __future__ import annotations

import torch

from cslrobust.errors import DataError
from cslrobust.seeding import make_generator


def stratified_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Pick ``per_class`` random indices of every class present in ``labels``.

    Args:
        labels: Integer class labels.
        per_class: How many indices to keep per class (``>= 0``).
        seed: Run seed; the same seed and labels always give the same subset.

    Returns:
        Sorted indices into ``labels``.

    Shape:
        - labels: ``(N,)``.
        - Returns: ``(per_class * C,)`` int64, where ``C`` is the number of distinct labels.

    Raises:
        DataError: If ``per_class`` is negative or a class has fewer than ``per_class`` examples.
    """
    generator = make_generator(seed, "split", "subset")
    return torch.sort(_sample_per_class(labels, per_class, generator, reserve=0)).values


def train_val_split(
    labels: torch.Tensor, val_per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``val_per_class`` random examples of every class for validation.

    Args:
        labels: Integer class labels of the training set.
        val_per_class: Validation examples per class (``>= 0``; ``0`` gives an empty
            validation set).
        seed: Run seed.

    Returns:
        ``(train_idx, val_idx)``: disjoint, sorted indices into ``labels`` that together cover it.

    Shape:
        - labels: ``(N,)``.
        - train_idx: ``(N - val_per_class * C,)`` int64.
        - val_idx: ``(val_per_class * C,)`` int64.

    Raises:
        DataError: If ``val_per_class`` is negative or would leave a class without training
            examples.
    """
    generator = make_generator(seed, "split", "val")
    val_idx = torch.sort(_sample_per_class(labels, val_per_class, generator, reserve=1)).values
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx


def _sample_per_class(
    labels: torch.Tensor, per_class: int, generator: torch.Generator, *, reserve: int
) -> torch.Tensor:
    """``per_class`` random indices per class (classes in ascending order), leaving ``reserve``."""
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(labels.shape)}")
    if per_class < 0:
        raise DataError(f"per-class count {per_class} is negative; expected >= 0")
    labels = labels.cpu()
    chosen = [torch.empty(0, dtype=torch.int64)]
    for label in torch.unique(labels).tolist():  # sorted
        members = torch.nonzero(labels == label).flatten()  # (n_c,)
        if members.numel() < per_class + reserve:
            needed = f"at least {per_class + reserve}" if reserve else f"{per_class}"
            raise DataError(
                f"class {label} has {members.numel()} examples; expected {needed} to take "
                f"{per_class} per class" + (" and keep some for training" if reserve else "")
            )
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[:per_class]])
    return torch.cat(chosen)
