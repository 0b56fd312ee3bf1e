r"""Intra- and inter-class cosine distances, exactly, from class sums of normalised features.

With :math:`z_i` the L2-normalised features and :math:`s_c = \sum_{i: y_i = c} z_i` the class sums,
the mean cosine similarity between classes ``a != b`` over all cross pairs is
:math:`s_a \cdot s_b / (n_a n_b)`, and within class ``a`` over the pairs ``i != j`` it is
:math:`(\|s_a\|^2 - \sum_{i \in a} \|z_i\|^2) / (n_a (n_a - 1))` (self-pairs excluded). So every
number here costs ``O(N D)`` time and ``O(C D)`` memory, with no pairwise matrix. Cosine distance is
``1 - cos``, in ``[0, 2]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cslrobust.geometry.inputs import (
    DEFAULT_CHUNK_SIZE,
    check_features,
    check_labels,
    normalize_rows,
    row_chunks,
)
from cslrobust.geometry.registry import GeometryInputs, register_metric

__all__ = ["ClassDistances", "ClassSums", "class_distance_matrix", "class_distances", "class_sums"]


@dataclass(frozen=True)
class ClassSums:
    """Per-class sufficient statistics of L2-normalised features (float64, on the input device).

    Attributes:
        sums: ``(C, D)`` sum of the normalised features of each class.
        counts: ``(C,)`` samples per class (int64).
        sq_norms: ``(C,)`` sum of ``||z_i||^2`` per class (equal to ``counts`` up to rounding).
    """

    sums: Tensor
    counts: Tensor
    sq_norms: Tensor


@torch.no_grad()
def class_sums(
    features: Tensor,
    labels: Tensor,
    *,
    num_classes: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ClassSums:
    """Sum the L2-normalised features of each class, ``chunk_size`` rows at a time.

    Shape:
        features: ``(N, D)``; labels: ``(N,)`` in ``[0, C)``, ``C = num_classes or labels.max() + 1``.

    Raises:
        ValueError: On invalid features or labels.
    """
    check_features(features)
    c = check_labels(labels, features.shape[0], num_classes)
    d = features.shape[1]
    sums = torch.zeros(c, d, dtype=torch.float64, device=features.device)
    sq_norms = torch.zeros(c, dtype=torch.float64, device=features.device)
    for rows in row_chunks(features.shape[0], chunk_size):
        z = normalize_rows(features[rows], torch.float64)
        y = labels[rows].long()
        sums.index_add_(0, y, z)
        sq_norms.index_add_(0, y, z.pow(2).sum(dim=1))
    counts = torch.bincount(labels.long(), minlength=c)
    return ClassSums(sums, counts, sq_norms)


@dataclass(frozen=True)
class ClassDistances:
    """Pair-weighted mean cosine distances.

    Attributes:
        intra: Mean ``1 - cos`` over all same-class pairs ``i != j``.
        inter: Mean ``1 - cos`` over all different-class pairs.
        ratio: ``inter / intra`` (larger = better separated classes); ``inf`` if ``intra == 0``.
    """

    intra: float
    inter: float
    ratio: float


def class_distances(
    features: Tensor, labels: Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> ClassDistances:
    """Mean intra-class and inter-class cosine distance and their ratio.

    Means are over *pairs* (every same-class pair, resp. every cross-class pair, counts once), not
    over classes; on a class-balanced set the two agree up to ``O(1/n_c)``. The per-class view is
    :func:`class_distance_matrix`.

    Shape:
        features: ``(N, D)``; labels: ``(N,)``.

    Raises:
        ValueError: On invalid inputs, if no class has two samples (intra undefined) or fewer than
            two classes are present (inter undefined).
    """
    stats = class_sums(features, labels, chunk_size=chunk_size)
    counts = stats.counts.double()
    gram = stats.sums @ stats.sums.T
    intra_pairs = float((counts * (counts - 1)).sum())
    n = float(counts.sum())
    inter_pairs = n * n - float(counts.pow(2).sum())
    if intra_pairs == 0:
        raise ValueError("intra-class distance needs a class with at least two samples")
    if inter_pairs == 0:
        raise ValueError("inter-class distance needs samples of at least two classes")
    same_cos = float(torch.diagonal(gram).sum() - stats.sq_norms.sum())
    cross_cos = float(gram.sum() - torch.diagonal(gram).sum())
    intra = 1.0 - same_cos / intra_pairs
    inter = 1.0 - cross_cos / inter_pairs
    ratio = inter / intra if intra > 0 else math.inf
    return ClassDistances(intra=intra, inter=inter, ratio=ratio)


def class_distance_matrix(
    features: Tensor,
    labels: Tensor,
    *,
    num_classes: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Class-by-class mean cosine distance.

    Entry ``(a, b)``, ``a != b``, is the mean ``1 - cos(z_i, z_j)`` over ``i`` in class ``a`` and
    ``j`` in class ``b``; the diagonal ``(a, a)`` is the mean over pairs ``i != j`` within class
    ``a``. The matrix is symmetric. Entries involving a class with no sample are NaN, and so is a
    diagonal entry of a class with a single sample.

    Shape:
        features: ``(N, D)``; labels: ``(N,)``. Returns ``(C, C)`` float64 on the CPU, with
        ``C = num_classes or labels.max() + 1``.

    Raises:
        ValueError: On invalid inputs.
    """
    stats = class_sums(features, labels, num_classes=num_classes, chunk_size=chunk_size)
    counts = stats.counts.double()
    gram = stats.sums @ stats.sums.T
    pairs = torch.outer(counts, counts)
    pairs.diagonal().sub_(counts)
    gram.diagonal().sub_(stats.sq_norms)
    # No pair to average over (an empty class, or the diagonal of a singleton class): NaN.
    mean_cos = torch.where(pairs > 0, gram / pairs.clamp_min(1), math.nan)
    return (1.0 - mean_cos).cpu()


@register_metric("class_distance")
def _class_distance_metric(inputs: GeometryInputs) -> dict[str, float]:
    result = class_distances(inputs.features, inputs.labels, chunk_size=inputs.chunk_size)
    return {
        "class_distance_intra": result.intra,
        "class_distance_inter": result.inter,
        "class_distance_ratio": result.ratio,
    }
