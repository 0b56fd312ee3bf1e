from __future__ import annotations

import pytest
import torch

from cslrobust.geometry import tsne_2d


@pytest.fixture
def clusters() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    centres = 3 * torch.randn(3, 10, generator=gen)
    return centres.repeat_interleave(15, dim=0) + torch.randn(45, 10, generator=gen)


def test_tsne_shape_finite_and_deterministic(clusters: torch.Tensor) -> None:
    xy, indices = tsne_2d(clusters, seed=0, max_iter=250)
    assert xy.shape == (45, 2) and xy.dtype == torch.float32
    assert torch.isfinite(xy).all()
    assert torch.equal(indices, torch.arange(45))
    again, _ = tsne_2d(clusters, seed=0, max_iter=250)
    assert torch.equal(xy, again)


def test_tsne_subsamples_deterministically(clusters: torch.Tensor) -> None:
    first = tsne_2d(clusters, seed=5, max_points=20, max_iter=250)
    second = tsne_2d(clusters, seed=5, max_points=20, max_iter=250)
    other = tsne_2d(clusters, seed=6, max_points=20, max_iter=250)
    assert first.xy.shape == (20, 2)
    assert torch.equal(first.indices, second.indices) and torch.equal(first.xy, second.xy)
    assert first.indices.unique().numel() == 20
    assert torch.equal(first.indices, first.indices.sort().values)
    assert not torch.equal(first.indices, other.indices)


def test_tiny_input_lowers_perplexity() -> None:
    xy, _ = tsne_2d(
        torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), seed=1, max_iter=250
    )
    assert xy.shape == (5, 2) and torch.isfinite(xy).all()


def test_errors(clusters: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="at least 4"):
        tsne_2d(clusters[:3], seed=0)
    with pytest.raises(ValueError, match="max_points"):
        tsne_2d(clusters, seed=0, max_points=2)
    with pytest.raises(ValueError, match="max_iter"):
        tsne_2d(clusters, seed=0, max_iter=10)
