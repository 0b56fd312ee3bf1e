r"""Covariance spectrum of L2-normalised features and its effective rank (Roy & Vetterli, 2007).

With :math:`\lambda_k` the eigenvalues of the feature covariance and :math:`p_k = \lambda_k /
\sum_j \lambda_j`, the effective rank is :math:`\exp(-\sum_k p_k \log p_k)`: 1 for features on one
line, ``D`` for isotropic features. Contrastive features that spread over the sphere use many
directions; collapsed or low-dimensional class structure uses few.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cslrobust.geometry.inputs import (
    DEFAULT_CHUNK_SIZE,
    check_features,
    normalize_rows,
    row_chunks,
)
from cslrobust.geometry.registry import GeometryInputs, register_metric

__all__ = ["covariance_spectrum", "effective_rank"]


@torch.no_grad()
def covariance_spectrum(features: Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Eigenvalues of the covariance of the L2-normalised features, largest first.

    The covariance (unbiased, divided by ``N - 1``) is accumulated in float64 in two chunked passes
    (mean, then centred products): ``O(N D^2)`` time, ``O(D^2)`` memory. Tiny negative eigenvalues
    from rounding are clamped to 0.

    Shape:
        features: ``(N, D)`` with ``N >= 2``. Returns ``(D,)`` float64 on the CPU.

    Raises:
        ValueError: On invalid features or ``N < 2``.
    """
    check_features(features, min_rows=2)
    n, d = features.shape
    total = torch.zeros(d, dtype=torch.float64, device=features.device)
    for rows in row_chunks(n, chunk_size):
        total += normalize_rows(features[rows], torch.float64).sum(dim=0)
    mean = total / n
    cov = torch.zeros(d, d, dtype=torch.float64, device=features.device)
    for rows in row_chunks(n, chunk_size):
        centred = normalize_rows(features[rows], torch.float64) - mean
        cov += centred.T @ centred
    eigenvalues: Tensor = torch.linalg.eigvalsh(cov / (n - 1)).clamp_min(0)
    return eigenvalues.flip(0).cpu()


def effective_rank(features: Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """Effective rank (exponential of the spectral entropy) of the feature covariance.

    Returns 0.0 when the covariance vanishes (all normalised features identical, up to rounding).

    Shape:
        features: ``(N, D)`` with ``N >= 2``. Returns a Python float in ``[0, D]``.

    Raises:
        ValueError: On invalid features or ``N < 2``.
    """
    spectrum = covariance_spectrum(features, chunk_size=chunk_size)
    total = float(spectrum.sum())
    if total <= 1e-12:  # the trace is (1 - ||mean||^2) N / (N - 1) for unit vectors
        return 0.0
    p = spectrum[spectrum > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


@register_metric("effective_rank")
def _effective_rank_metric(inputs: GeometryInputs) -> dict[str, float]:
    return {"effective_rank": effective_rank(inputs.features, chunk_size=inputs.chunk_size)}
