from __future__ import annotations

import pytest
import torch

from cslrobust.geometry import (
    feature_sensitivity,
    perturbation_norms,
    random_like_norm,
    summarize_sensitivity,
)


def test_linear_map_gives_exact_ratio(gen: torch.Generator) -> None:
    a = torch.randn(7, 12, generator=gen, dtype=torch.float64)
    x = torch.randn(20, 12, generator=gen, dtype=torch.float64)
    delta = torch.randn(20, 12, generator=gen, dtype=torch.float64)
    norms = perturbation_norms(delta, "l2")
    ratio = feature_sensitivity(x @ a.T, (x + delta) @ a.T, norms, chunk_size=3)
    expected = (delta @ a.T).norm(dim=1) / delta.norm(dim=1)
    assert ratio.shape == (20,) and ratio.dtype == torch.float64
    torch.testing.assert_close(ratio, expected, rtol=1e-12, atol=0)


def test_orthogonal_map_has_unit_sensitivity(gen: torch.Generator) -> None:
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    delta = 1e-2 * torch.randn(10, 6, generator=gen, dtype=torch.float64)
    ratio = feature_sensitivity(x @ q, (x + delta) @ q, delta.norm(dim=1))
    torch.testing.assert_close(ratio, torch.ones(10, dtype=torch.float64))
    assert summarize_sensitivity(ratio)["median"] == pytest.approx(1.0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_like_norm_preserves_norms(gen: torch.Generator, norm: str) -> None:
    delta = torch.randn(5, 3, 4, 4, generator=gen) * torch.tensor([0.0, 0.01, 0.1, 1.0, 3.0]).view(
        5, 1, 1, 1
    )
    r = random_like_norm(delta, norm, torch.Generator().manual_seed(1))  # type: ignore[arg-type]
    assert r.shape == delta.shape and r.dtype == delta.dtype
    torch.testing.assert_close(perturbation_norms(r, norm), perturbation_norms(delta, norm))  # type: ignore[arg-type]
    assert (r[0] == 0).all()
    again = random_like_norm(delta, norm, torch.Generator().manual_seed(1))  # type: ignore[arg-type]
    assert torch.equal(r, again)
    assert not torch.equal(r, random_like_norm(delta, norm, torch.Generator().manual_seed(2)))  # type: ignore[arg-type]


def test_linf_random_is_signs_times_eps(gen: torch.Generator) -> None:
    eps = 8 / 255
    delta = (torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1) * eps
    delta[:, 0, 0, 0] = eps  # the L-inf norm is exactly eps in every sample
    r = random_like_norm(delta, "linf", gen)
    torch.testing.assert_close(r.abs(), torch.full_like(r, eps))
    assert 0.3 < float((r > 0).float().mean()) < 0.7


def test_perturbation_norms() -> None:
    delta = torch.tensor([[[3.0, -4.0]], [[0.0, 0.5]]])
    assert perturbation_norms(delta, "l2").tolist() == [5.0, 0.5]
    assert perturbation_norms(delta, "linf").tolist() == [4.0, 0.5]


def test_errors() -> None:
    f = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="> 0"):
        feature_sensitivity(f, f, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        feature_sensitivity(f, f[:2], torch.ones(3))
    with pytest.raises(ValueError, match="delta_norms"):
        feature_sensitivity(f, f, torch.ones(2))
    with pytest.raises(ValueError, match="unknown norm"):
        random_like_norm(torch.zeros(2, 3), "l1", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating"):
        random_like_norm(torch.zeros(2, 3, dtype=torch.long), "l2", None)
