from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from cslrobust.geometry import alignment, uniformity


def _unit(x: Tensor) -> list[list[float]]:
    rows = x.tolist()
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def _naive_alignment(z1: Tensor, z2: Tensor, alpha: float) -> float:
    pairs = zip(_unit(z1), _unit(z2), strict=True)
    return sum(_dist(a, b) ** alpha for a, b in pairs) / len(z1)


def _naive_uniformity(z: Tensor, t: float) -> float:
    rows = _unit(z)
    terms = [
        math.exp(-t * _dist(rows[i], rows[j]) ** 2)
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
    ]
    return math.log(sum(terms) / len(terms))


@pytest.mark.parametrize("alpha", [2.0, 1.0, 0.5])
def test_alignment_matches_naive_loop(features: Tensor, gen: torch.Generator, alpha: float) -> None:
    paired = features + 0.5 * torch.randn(features.shape, generator=gen, dtype=features.dtype)
    expected = _naive_alignment(features, paired, alpha)
    assert alignment(features, paired, alpha) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t", [2.0, 0.5])
def test_uniformity_matches_naive_loop(features: Tensor, t: float) -> None:
    assert uniformity(features, t) == pytest.approx(_naive_uniformity(features, t), rel=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 7, 23, 100])
def test_chunked_equals_unchunked(features: Tensor, chunk_size: int) -> None:
    paired = features.flip(0)
    assert uniformity(features, chunk_size=chunk_size) == pytest.approx(
        uniformity(features, chunk_size=10_000), rel=1e-12
    )
    assert alignment(features, paired, chunk_size=chunk_size) == pytest.approx(
        alignment(features, paired, chunk_size=10_000), rel=1e-12
    )


def test_identical_pairs_have_zero_alignment(features: Tensor) -> None:
    assert alignment(features, features) == 0.0
    # Features are normalised inside: a positive rescaling is a perfect positive.
    assert alignment(features, 4 * features) == pytest.approx(0.0, abs=1e-24)


def test_antipodal_pairs_have_maximal_alignment(features: Tensor) -> None:
    assert alignment(features, -features) == pytest.approx(4.0)


def test_identical_features_have_zero_uniformity() -> None:
    z = torch.tensor([[1.0, 2.0, -2.0]]).repeat(50, 1)
    assert uniformity(z, chunk_size=7) == pytest.approx(0.0, abs=1e-6)


def test_two_antipodal_points_reach_the_lower_bound() -> None:
    z = torch.tensor([[0.0, 1.0], [0.0, -3.0]], dtype=torch.float64)
    assert uniformity(z, t=2.0) == pytest.approx(-8.0)


def test_uniformity_is_scale_invariant_and_float32_close(features: Tensor) -> None:
    expected = uniformity(features)
    assert uniformity(features * 0.01) == pytest.approx(expected, rel=1e-12)
    assert uniformity(features.float(), chunk_size=4) == pytest.approx(expected, rel=1e-5)


def test_errors(features: Tensor) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(features[:1])
    with pytest.raises(ValueError, match="t must be"):
        uniformity(features, t=0.0)
    with pytest.raises(ValueError, match="same shape"):
        alignment(features, features[:-1])
    with pytest.raises(ValueError, match="alpha"):
        alignment(features, features, alpha=0.0)
    zero_row = features.clone()
    zero_row[3] = 0
    with pytest.raises(ValueError, match="all-zero row"):
        uniformity(zero_row)
