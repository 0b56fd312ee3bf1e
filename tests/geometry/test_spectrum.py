from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cslrobust.geometry import covariance_spectrum, effective_rank


def test_spectrum_matches_torch_cov(features: Tensor) -> None:
    z = features / features.norm(dim=1, keepdim=True)
    expected = torch.linalg.eigvalsh(torch.cov(z.T)).flip(0).clamp_min(0)
    torch.testing.assert_close(covariance_spectrum(features, chunk_size=4), expected)


def test_isotropic_features_have_full_rank() -> None:
    d = 6
    basis = torch.eye(d, dtype=torch.float64)
    features = torch.cat([basis, -basis]) * 3
    assert effective_rank(features) == pytest.approx(d)


def test_features_on_a_line_have_rank_one(gen: torch.Generator) -> None:
    v = torch.randn(8, generator=gen, dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    assert effective_rank(signs[:, None] * v) == pytest.approx(1.0)


def test_identical_features_have_rank_zero() -> None:
    assert effective_rank(torch.tensor([[1.0, 2.0, 3.0]]).repeat(10, 1)) == 0.0


@pytest.mark.parametrize("chunk_size", [1, 6])
def test_chunked_equals_unchunked(features: Tensor, chunk_size: int) -> None:
    assert effective_rank(features, chunk_size=chunk_size) == pytest.approx(
        effective_rank(features, chunk_size=1000), rel=1e-12
    )
    assert 1.0 <= effective_rank(features) <= features.shape[1]


def test_errors(features: Tensor) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        effective_rank(features[:1])
