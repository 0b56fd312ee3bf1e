"""2-D t-SNE embedding of features for plots (scikit-learn's TSNE, imported lazily)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from cslrobust.geometry.inputs import check_features, normalize_rows

__all__ = ["Embedding2D", "tsne_2d"]

_MIN_POINTS = 4


class Embedding2D(NamedTuple):
    """A 2-D embedding of a (subsampled) feature set.

    Attributes:
        xy: ``(n, 2)`` float32 coordinates on the CPU.
        indices: ``(n,)`` int64 rows of the input that were embedded, ascending (select labels with
            ``labels[indices]``).
    """

    xy: Tensor
    indices: Tensor


def tsne_2d(
    features: Tensor,
    *,
    seed: int,
    max_points: int = 2000,
    perplexity: float = 30.0,
    max_iter: int = 1000,
) -> Embedding2D:
    """t-SNE of the L2-normalised features (Euclidean distance on the sphere, i.e. cosine order).

    If ``N > max_points`` a subset of ``max_points`` rows is drawn without replacement by a
    ``torch.Generator`` seeded with ``seed`` (the global RNG is not touched). t-SNE uses PCA
    initialisation and ``random_state=seed``, so the same inputs and seed give the same embedding.
    ``perplexity`` is lowered to ``(n - 1) / 3`` for tiny inputs (scikit-learn requires
    ``perplexity < n``).

    Args:
        features: Features to embed.
        seed: Seed for the subsample and for t-SNE.
        max_points: Largest number of points embedded (t-SNE is ``O(n log n)`` per iteration).
        perplexity: t-SNE perplexity.
        max_iter: t-SNE iterations (scikit-learn requires at least 250).

    Shape:
        features: ``(N, D)`` with ``N >= 4``.

    Raises:
        ValueError: On invalid features, fewer than 4 points, or bad settings.
    """
    check_features(features)
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < _MIN_POINTS:
        raise ValueError(f"max_points must be an integer >= {_MIN_POINTS}, got {max_points!r}")
    if not perplexity > 0:
        raise ValueError(f"perplexity must be > 0, got {perplexity}")
    if max_iter < 250:
        raise ValueError(f"max_iter must be >= 250 (scikit-learn's minimum), got {max_iter}")
    n = features.shape[0]
    if n < _MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {_MIN_POINTS} points, got {n}")
    if n > max_points:
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(n, generator=generator)[:max_points].sort().values
    else:
        index = torch.arange(n)
    points = normalize_rows(features.detach()[index.to(features.device)], torch.float64)

    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    tsne = TSNE(
        n_components=2,
        perplexity=min(perplexity, (len(index) - 1) / 3),
        max_iter=max_iter,
        init="pca",
        random_state=seed,
    )
    # torch and scikit-learn ship separate OpenMP runtimes; after torch has run, their thread pools
    # oversubscribe the cores and t-SNE slows down up to 100x (measured: 0.2 s -> 15 s for 45 points
    # on 2 cores). One OpenMP thread inside the fit avoids that; the limit is restored afterwards.
    with threadpool_limits(limits=1, user_api="openmp"):
        xy = tsne.fit_transform(points.cpu().numpy())
    return Embedding2D(torch.from_numpy(np.asarray(xy, dtype=np.float32)), index)
