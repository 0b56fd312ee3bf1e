"""Spherical k-means on L2-normalised features, batched and chunked, in plain torch.

Used by the ``cluster`` false-negative detector to turn a feature bank of the whole training set
into pseudo-labels. Everything runs on the device of the features: k-means++ seeding (Arthur &
Vassilvitskii, 2007) with an explicit generator, then Lloyd iterations on cosine similarity
(spherical k-means: centroids are re-normalised means; Dhillon & Modha, 2001).

Memory stays ``O(N * D + chunk_size * K)``: no ``(N, N)`` or full ``(N, K)`` matrix is ever built,
so ``N = 50,000`` rows of ``D = 128`` cluster in a few hundred megabytes at most.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KMeansResult", "spherical_kmeans"]


@dataclass(frozen=True)
class KMeansResult:
    """Outcome of :func:`spherical_kmeans`.

    Attributes:
        labels: Cluster of every row, consistent with ``centroids`` (nearest centroid).
        centroids: Unit-norm cluster centres.
        inertia: Sum over rows of the cosine distance ``1 - x . c`` to the assigned centroid
            (0-dim float tensor on the device of the features).
        iterations: Lloyd updates performed (fewer than asked when the assignment converged).

    Shape:
        - labels: ``(N,)`` int64, values in ``[0, K)``
        - centroids: ``(K, D)``
    """

    labels: Tensor
    centroids: Tensor
    inertia: Tensor
    iterations: int


def _assign(x: Tensor, centroids: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Nearest centroid (max cosine) of every row, in row chunks; ``(N,)`` labels and cosines."""
    labels, best = [], []
    for start in range(0, x.shape[0], chunk_size):
        sim = x[start : start + chunk_size] @ centroids.T  # (chunk, K)
        value, index = sim.max(dim=1)
        labels.append(index)
        best.append(value)
    return torch.cat(labels), torch.cat(best)


def _update(x: Tensor, labels: Tensor, best: Tensor, centroids: Tensor, chunk_size: int) -> Tensor:
    """Re-normalised cluster means; an empty cluster takes one of the worst-fitting rows."""
    k = centroids.shape[0]
    sums = torch.zeros_like(centroids)  # (K, D)
    for start in range(0, x.shape[0], chunk_size):
        one_hot = F.one_hot(labels[start : start + chunk_size], k).to(x.dtype)  # (chunk, K)
        # A matmul rather than index_add_: deterministic on CUDA (no atomics).
        sums += one_hot.T @ x[start : start + chunk_size]
    counts = torch.bincount(labels, minlength=k)  # (K,)
    empty = counts == 0
    # Re-seed empty clusters with the rows farthest from their centroids (the e-th empty cluster
    # takes the e-th worst row), with no host sync on how many are empty.
    worst = torch.argsort(best)[:k]  # (K,) rows by increasing cosine to their centroid
    rank = (torch.cumsum(empty.long(), dim=0) - 1).clamp(min=0)  # (K,)
    reseeded = x[worst[rank.clamp(max=worst.shape[0] - 1)]]  # (K, D)
    means = torch.where(empty[:, None], reseeded, sums)
    return F.normalize(means, dim=1)


def _plus_plus_init(x: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding with D^2 sampling (squared chord distance ``2 - 2 cos``); ``(K, D)``."""
    n = x.shape[0]
    # Uniform draws are made on the generator's device and moved, so a CPU generator can seed a
    # CUDA bank and vice versa; the inverse-CDF lookup below replaces torch.multinomial.
    draws = torch.rand(n_clusters, generator=generator, device=generator.device).to(x.device)
    first = (draws[0] * n).long().clamp(max=n - 1)
    chosen = [first]
    min_dist = (2.0 - 2.0 * (x @ x[first])).clamp(min=0.0)  # (N,)
    for c in range(1, n_clusters):
        cdf = torch.cumsum(min_dist.double(), dim=0)  # (N,)
        target = (draws[c] * cdf[-1]).reshape(1)
        # First row whose cumulative weight exceeds the target: never a zero-weight row.
        pick = torch.searchsorted(cdf, target, right=True).clamp(max=n - 1)[0]
        chosen.append(pick)
        min_dist = torch.minimum(min_dist, (2.0 - 2.0 * (x @ x[pick])).clamp(min=0.0))
    return x[torch.stack(chosen)]  # (K, D)


def spherical_kmeans(
    features: Tensor,
    n_clusters: int,
    *,
    iters: int = 20,
    generator: torch.Generator,
    chunk_size: int = 8192,
) -> KMeansResult:
    """Cluster rows by cosine similarity: k-means++ seeding, then Lloyd iterations.

    Rows are L2-normalised first (a zero row stays zero). Iterations stop early once the
    assignment no longer changes. Randomness comes only from ``generator`` (``n_clusters`` uniform
    draws for the seeding), so equal inputs and generator states give equal results; the row
    chunking changes the summation order only, not the result beyond float rounding.

    Args:
        features: Rows to cluster (any scale; normalised here, computed in float32 or wider).
        n_clusters: Number of clusters ``K``, at most the number of rows.
        iters: Maximum number of Lloyd updates (at least 1).
        generator: Source of the seeding randomness (any device).
        chunk_size: Rows per block in the assignment and update steps (memory ``chunk_size * K``).

    Returns:
        Labels, centroids, inertia and the number of updates.

    Shape:
        - features: ``(N, D)``
        - labels: ``(N,)``; centroids: ``(K, D)``

    Raises:
        ValueError: If ``features`` is not 2-D, ``n_clusters`` is not in ``[1, N]``, or ``iters``
            or ``chunk_size`` is below 1.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {tuple(features.shape)}")
    n = features.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}] (the number of rows), got {n_clusters}")
    if iters < 1 or chunk_size < 1:
        raise ValueError(f"iters and chunk_size must be >= 1, got {iters} and {chunk_size}")
    x = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=1)

    centroids = _plus_plus_init(x, n_clusters, generator)
    labels, best = _assign(x, centroids, chunk_size)
    iterations = 0
    for _ in range(iters):
        centroids = _update(x, labels, best, centroids, chunk_size)
        iterations += 1
        new_labels, best = _assign(x, centroids, chunk_size)
        converged = torch.equal(new_labels, labels)  # one host sync per iteration
        labels = new_labels
        if converged:
            break
    inertia = (1.0 - best).sum()
    return KMeansResult(labels=labels, centroids=centroids, inertia=inertia, iterations=iterations)
