"""Per-sample margins: in feature space (class centroids) and at the linear probe (logits).

Positive margins mean the sample sits on its own class's side; negative margins mean it is already
closer to (or scored higher for) another class. Summaries report the distribution, including the
fraction of negative margins.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cslrobust.geometry.class_distances import class_sums
from cslrobust.geometry.inputs import (
    DEFAULT_CHUNK_SIZE,
    check_features,
    check_labels,
    normalize_rows,
    row_chunks,
)
from cslrobust.geometry.registry import GeometryInputs, register_metric
from cslrobust.geometry.summary import summarize_values

__all__ = ["centroid_margins", "logit_margins", "summarize_margins"]


@torch.no_grad()
def centroid_margins(
    features: Tensor,
    labels: Tensor,
    *,
    leave_one_out: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Cosine distance to the nearest other-class centroid minus cosine distance to the own centroid.

    Centroids are means of the L2-normalised features of a class (only their direction matters for a
    cosine distance). With ``leave_one_out=True`` (the default) a sample's own centroid is computed
    *without* the sample, so a sample cannot pull its own centroid towards itself, which inflates
    margins of small or spread-out classes; a sample whose class has no other member then gets NaN.
    With ``leave_one_out=False`` the own centroid includes the sample. Other-class centroids never
    include the sample. Since ``d = 1 - cos``, the margin equals ``cos(z, own) - max_c cos(z, c)``
    over the other classes ``c`` with at least one sample; it lies in ``[-2, 2]``.

    Shape:
        features: ``(N, D)``; labels: ``(N,)``. Returns ``(N,)`` float64 on the CPU.

    Raises:
        ValueError: On invalid inputs or fewer than two classes with samples.
    """
    stats = class_sums(features, labels, chunk_size=chunk_size)
    present = stats.counts > 0
    if int(present.sum()) < 2:
        raise ValueError("centroid margins need samples of at least two classes")
    centroid_norms = torch.linalg.vector_norm(stats.sums, dim=1)
    # An empty class never wins the max; a class whose features cancel exactly has cosine 0.
    absent = torch.where(present, 0.0, -math.inf).to(stats.sums)
    margins = []
    for rows in row_chunks(features.shape[0], chunk_size):
        z = normalize_rows(features[rows], torch.float64)
        y = labels[rows].long().unsqueeze(1)
        dots = z @ stats.sums.T  # (B, C) = z . s_c
        cos = dots / centroid_norms.clamp_min(torch.finfo(torch.float64).tiny) + absent
        cos_other = cos.scatter(1, y, -math.inf).amax(dim=1)
        if leave_one_out:
            own_dot = dots.gather(1, y).squeeze(1)
            z_sq = z.pow(2).sum(dim=1)
            own_sq = centroid_norms[y.squeeze(1)].pow(2)
            loo_norm = (own_sq - 2 * own_dot + z_sq).clamp_min(0).sqrt()  # ||s_y - z||
            cos_own = ((own_dot - z_sq) / loo_norm.clamp_min(1e-12)).clamp(-1, 1)
            cos_own = torch.where(stats.counts[y.squeeze(1)] > 1, cos_own, math.nan)
        else:
            cos_own = cos.gather(1, y).squeeze(1)
        margins.append(cos_own - cos_other)
    return torch.cat(margins).cpu()


def logit_margins(logits: Tensor, labels: Tensor) -> Tensor:
    """Logit of the true class minus the largest other logit (exact).

    Shape:
        logits: ``(N, C)`` with ``C >= 2``; labels: ``(N,)`` in ``[0, C)``. Returns ``(N,)``
        float64 on the CPU.

    Raises:
        ValueError: On invalid inputs or ``C < 2``.
    """
    check_features(logits, "logits")
    n, c = logits.shape
    check_labels(labels, n, c)
    if c < 2:
        raise ValueError(f"logit margins need at least 2 classes, got {c}")
    x = logits.detach().double()
    y = labels.long().unsqueeze(1)
    true = x.gather(1, y).squeeze(1)
    other = x.scatter(1, y, -math.inf).amax(dim=1)
    return (true - other).cpu()


def summarize_margins(margins: Tensor) -> dict[str, float]:
    """:func:`~cslrobust.geometry.summary.summarize_values` plus ``frac_negative``.

    NaN margins (singleton classes with leave-one-out centroids) are left out; ``frac_negative`` is
    the fraction of the remaining margins that are ``< 0`` (a tie, margin 0, is not negative).
    """
    summary = summarize_values(margins)
    kept = margins[~torch.isnan(margins)]
    summary["frac_negative"] = float((kept < 0).double().mean())
    return summary


def _prefixed(prefix: str, summary: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in summary.items()}


@register_metric("centroid_margin")
def _centroid_margin_metric(inputs: GeometryInputs) -> dict[str, float]:
    margins = centroid_margins(inputs.features, inputs.labels, chunk_size=inputs.chunk_size)
    return _prefixed("centroid_margin", summarize_margins(margins))


@register_metric("logit_margin", needs=("logits",))
def _logit_margin_metric(inputs: GeometryInputs) -> dict[str, float]:
    assert inputs.logits is not None  # guaranteed by the "needs" declaration
    return _prefixed("logit_margin", summarize_margins(logit_margins(inputs.logits, inputs.labels)))
