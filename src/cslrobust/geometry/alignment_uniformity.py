r"""Alignment and uniformity of features on the unit hypersphere (Wang & Isola, ICML 2020).

With :math:`f` the L2-normalised features (normalised inside these functions):

.. math::

    \mathcal{L}_{align} = \mathbb{E}_{(x, x^+)} \|f(x) - f(x^+)\|_2^\alpha, \qquad
    \mathcal{L}_{uniform} = \log \mathbb{E}_{x, y} e^{-t \|f(x) - f(y)\|_2^2}

with the paper's ``alpha = 2`` and ``t = 2``. Lower means "more" for both: alignment is 0 when
positive pairs coincide; uniformity lies in ``[-4 t, 0]``, is 0 when all features coincide and about
``-2 t`` (``-4``) for features spread uniformly over a high-dimensional sphere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cslrobust.geometry.inputs import (
    DEFAULT_CHUNK_SIZE,
    check_features,
    compute_dtype,
    normalize_rows,
    row_chunks,
)
from cslrobust.geometry.registry import GeometryInputs, register_metric

__all__ = ["alignment", "uniformity"]


@torch.no_grad()
def alignment(
    z1: Tensor, z2: Tensor, alpha: float = 2.0, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> float:
    """Mean ``||f(x_i) - f(x_i^+)||_2 ** alpha`` over the positive pairs ``(z1[i], z2[i])``.

    Both inputs are L2-normalised row-wise first, so the value lies in ``[0, 2 ** alpha]``.

    Args:
        z1: Features of the anchors.
        z2: Features of their positives (row ``i`` pairs with ``z1[i]``).
        alpha: Exponent ``> 0`` (Wang & Isola use 2).
        chunk_size: Rows normalised at a time.

    Shape:
        z1, z2: ``(N, D)``. Returns a Python float.

    Raises:
        ValueError: On mismatched or invalid inputs, or ``alpha <= 0``.
    """
    check_features(z1, "z1")
    check_features(z2, "z2")
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    dtype = compute_dtype(z1) if z1.dtype == z2.dtype else torch.float64
    total = torch.zeros((), dtype=torch.float64, device=z1.device)
    for rows in row_chunks(z1.shape[0], chunk_size):
        diff = normalize_rows(z1[rows], dtype) - normalize_rows(z2[rows], dtype)
        total += torch.linalg.vector_norm(diff, dim=1).pow(alpha).sum(dtype=torch.float64)
    return float(total) / z1.shape[0]


@torch.no_grad()
def uniformity(z: Tensor, t: float = 2.0, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """``log`` of the mean Gaussian potential ``exp(-t ||f(z_i) - f(z_j)||^2)`` over distinct pairs.

    The mean is over unordered pairs ``i < j`` (self-pairs excluded), which equals the mean over
    ordered pairs ``i != j``. It is computed as a log-sum-exp over blocks of ``chunk_size x
    chunk_size`` pairs (only blocks on or above the diagonal), minus ``log(N (N - 1) / 2)``: memory
    is ``O(chunk_size^2 + N D)``, never ``N x N``. Rows are L2-normalised first and squared distances
    come from ``2 - 2 cos``, clamped at 0. Computed in float32 (float64 for float64 input).

    Args:
        z: Features.
        t: Potential scale ``> 0`` (Wang & Isola use 2).
        chunk_size: Rows per block.

    Shape:
        z: ``(N, D)`` with ``N >= 2``. Returns a Python float ``<= 0``.

    Raises:
        ValueError: On invalid features, ``N < 2`` or ``t <= 0``.
    """
    check_features(z, "z", min_rows=2)
    if not t > 0:
        raise ValueError(f"t must be > 0, got {t}")
    zn = normalize_rows(z)
    n = zn.shape[0]
    block_lse: list[Tensor] = []
    chunks = list(row_chunks(n, chunk_size))
    for i, rows in enumerate(chunks):
        for cols in chunks[i:]:
            # -t ||z_i - z_j||^2 = 2 t (cos_ij - 1), with cos clamped to <= 1 against rounding.
            logits = (zn[rows] @ zn[cols].T).sub_(1).clamp_max_(0).mul_(2 * t)
            if cols == rows:  # diagonal block: keep the strict upper triangle (i < j)
                lower = torch.ones_like(logits, dtype=torch.bool).tril_()
                logits.masked_fill_(lower, -math.inf)
            block_lse.append(torch.logsumexp(logits.flatten(), dim=0))
    total = torch.logsumexp(torch.stack(block_lse).double(), dim=0)
    return float(total) - math.log(n * (n - 1) / 2)


@register_metric("alignment", needs=("paired",))
def _alignment_metric(inputs: GeometryInputs) -> dict[str, float]:
    assert inputs.paired is not None  # guaranteed by the "needs" declaration
    return {"alignment": alignment(inputs.features, inputs.paired, chunk_size=inputs.chunk_size)}


@register_metric("uniformity")
def _uniformity_metric(inputs: GeometryInputs) -> dict[str, float]:
    return {"uniformity": uniformity(inputs.features, chunk_size=inputs.chunk_size)}
