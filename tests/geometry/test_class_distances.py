from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from cslrobust.geometry import class_distance_matrix, class_distances, class_sums


def _cos_dist(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _naive_matrix(features: Tensor, labels: Tensor, c: int) -> Tensor:
    rows, ys = features.tolist(), labels.tolist()
    total = [[0.0] * c for _ in range(c)]
    count = [[0] * c for _ in range(c)]
    for i in range(len(rows)):
        for j in range(len(rows)):
            if i != j:
                total[ys[i]][ys[j]] += _cos_dist(rows[i], rows[j])
                count[ys[i]][ys[j]] += 1
    return torch.tensor(total, dtype=torch.float64) / torch.tensor(count, dtype=torch.float64)


def _naive_means(features: Tensor, labels: Tensor) -> tuple[float, float]:
    rows, ys = features.tolist(), labels.tolist()
    same, cross = [], []
    for i in range(len(rows)):
        for j in range(len(rows)):
            if i != j:
                d = _cos_dist(rows[i], rows[j])
                (same if ys[i] == ys[j] else cross).append(d)
    return sum(same) / len(same), sum(cross) / len(cross)


def test_class_distances_match_naive_loop(features: Tensor, labels: Tensor) -> None:
    intra, inter = _naive_means(features, labels)
    result = class_distances(features, labels)
    assert result.intra == pytest.approx(intra, rel=1e-12)
    assert result.inter == pytest.approx(inter, rel=1e-12)
    assert result.ratio == pytest.approx(inter / intra, rel=1e-12)


def test_matrix_matches_naive_loop(features: Tensor, labels: Tensor) -> None:
    matrix = class_distance_matrix(features, labels)
    assert matrix.shape == (4, 4) and matrix.dtype == torch.float64
    torch.testing.assert_close(matrix, _naive_matrix(features, labels, 4), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(matrix, matrix.T)


@pytest.mark.parametrize("chunk_size", [1, 4, 9])
def test_chunked_equals_unchunked(features: Tensor, labels: Tensor, chunk_size: int) -> None:
    full = class_distances(features, labels, chunk_size=1000)
    chunked = class_distances(features, labels, chunk_size=chunk_size)
    assert chunked.intra == pytest.approx(full.intra, rel=1e-12)
    assert chunked.inter == pytest.approx(full.inter, rel=1e-12)
    torch.testing.assert_close(
        class_distance_matrix(features, labels, chunk_size=chunk_size),
        class_distance_matrix(features, labels, chunk_size=1000),
    )


def test_antipodal_tight_clusters(gen: torch.Generator) -> None:
    v = torch.randn(16, generator=gen, dtype=torch.float64)
    noise = 1e-3 * torch.randn(40, 16, generator=gen, dtype=torch.float64)
    features = torch.cat([v.expand(20, 16), -v.expand(20, 16)]) + noise
    labels = torch.tensor([0] * 20 + [1] * 20)
    result = class_distances(features, labels, chunk_size=7)
    assert result.intra == pytest.approx(0.0, abs=1e-4)
    assert result.inter == pytest.approx(2.0, abs=1e-4)
    assert result.ratio > 1e3


def test_orthonormal_class_centres_have_inter_one() -> None:
    basis = torch.eye(5, dtype=torch.float64)
    labels = torch.arange(5).repeat_interleave(3)
    features = 2.0 * basis[labels]
    result = class_distances(features, labels)
    assert result.inter == pytest.approx(1.0, abs=1e-12)
    assert result.intra == pytest.approx(0.0, abs=1e-12)
    assert result.ratio == math.inf
    expected = torch.ones(5, 5, dtype=torch.float64) - torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(class_distance_matrix(features, labels), expected)


def test_matrix_nan_for_empty_and_singleton_classes() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 2])
    matrix = class_distance_matrix(features, labels, num_classes=4)
    assert matrix.shape == (4, 4)
    assert matrix[0, 0] == pytest.approx(1.0)  # orthogonal pair within class 0
    assert matrix[0, 2] == pytest.approx(1 - 1 / math.sqrt(2))
    assert math.isnan(matrix[2, 2])  # single sample: no pair within the class
    assert torch.isnan(matrix[1]).all() and torch.isnan(matrix[:, 3]).all()


def test_class_sums() -> None:
    features = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    stats = class_sums(features, torch.tensor([1, 1, 0]), chunk_size=2)
    torch.testing.assert_close(
        stats.sums, torch.tensor([[-1.0, 0.0], [0.6, 1.8]], dtype=torch.float64)
    )
    assert stats.counts.tolist() == [1, 2]
    torch.testing.assert_close(stats.sq_norms, torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_errors(features: Tensor) -> None:
    with pytest.raises(ValueError, match="two classes"):
        class_distances(features, torch.zeros(len(features), dtype=torch.long))
    with pytest.raises(ValueError, match="two samples"):
        class_distances(features[:4], torch.arange(4))
    with pytest.raises(ValueError, match="labels"):
        class_distances(features, torch.zeros(3, dtype=torch.long))
