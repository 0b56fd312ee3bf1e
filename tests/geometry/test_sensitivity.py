from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.geometry import (
    SENSITIVITY_MEASURES,
    SensitivityInputs,
    feature_sensitivity,
    normalized_feature_sensitivity,
    perturbation_norms,
    random_like_norm,
    sensitivity_ratio,
    sensitivity_summaries,
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


A1, A2 = 2.0, 5.0
T = torch.tensor([1e-3, 0.1, 0.5, 2.0], dtype=torch.float64)  # perturbation sizes


def _toy(scale: float) -> SensitivityInputs:
    """f(x) = scale * diag(A1, A2) x at x = e1; adversarial d = t e2, random r = t e1.

    Closed forms: raw sensitivities ``scale * A2`` (adversarial) and ``scale * A1`` (random), so
    the ratio is ``A2 / A1``; on the sphere the adversarial step turns the feature by
    ``theta = atan(A2 t / A1)``, a chord of ``2 sin(theta / 2)``, and the radial random step
    does not move it at all.
    """
    t = T
    a = torch.tensor([A1, A2], dtype=torch.float64)
    x = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(4, 2)
    d = torch.stack([torch.zeros_like(t), t], dim=1)
    r = torch.stack([t, torch.zeros_like(t)], dim=1)
    return SensitivityInputs(
        f_clean=scale * x * a,
        f_adv=scale * (x + d) * a,
        f_random=scale * (x + r) * a,
        adv_norms=t,
        random_norms=t,
        chunk_size=3,
    )


@pytest.mark.parametrize("scale", [1e-3, 1.0, 37.5])
def test_normalized_sensitivity_and_ratio_closed_form_and_scale_free(scale: float) -> None:
    inputs = _toy(scale)
    theta = torch.atan(A2 * T / A1)
    expected = 2 * torch.sin(theta / 2) / T
    adv = normalized_feature_sensitivity(inputs.f_clean, inputs.f_adv, inputs.adv_norms)
    torch.testing.assert_close(adv, expected, rtol=1e-10, atol=1e-12)
    rnd = normalized_feature_sensitivity(inputs.f_clean, inputs.f_random, inputs.random_norms)
    torch.testing.assert_close(rnd, torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
    raw_adv = feature_sensitivity(inputs.f_clean, inputs.f_adv, inputs.adv_norms)
    raw_rnd = feature_sensitivity(inputs.f_clean, inputs.f_random, inputs.random_norms)
    torch.testing.assert_close(raw_adv, torch.full((4,), scale * A2, dtype=torch.float64))
    torch.testing.assert_close(sensitivity_ratio(raw_adv, raw_rnd), torch.full_like(T, A2 / A1))
    summaries = sensitivity_summaries(inputs)
    assert set(summaries) == {"pgd", "random", "pgd_normalized", "random_normalized", "ratio"}
    assert summaries["ratio"]["median"] == pytest.approx(A2 / A1, rel=1e-12)
    assert summaries["pgd"]["median"] == pytest.approx(scale * A2, rel=1e-12)
    assert summaries["pgd_normalized"]["mean"] == pytest.approx(float(expected.mean()), rel=1e-10)


def test_scale_free_measures_ignore_a_constant_feature_scale(gen: torch.Generator) -> None:
    """A random nonlinear map: every measure flagged scale_free is unchanged by f -> c f."""
    w = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    x = torch.rand(30, 10, generator=gen, dtype=torch.float64)
    d = 0.05 * torch.randn(30, 10, generator=gen, dtype=torch.float64)
    r = random_like_norm(d, "l2", gen)

    def f(v: Tensor) -> Tensor:
        return torch.relu(v @ w.T) + 0.1

    def at(scale: float) -> dict[str, dict[str, float]]:
        inputs = SensitivityInputs(
            scale * f(x), scale * f(x + d), scale * f(x + r), d.norm(dim=1), r.norm(dim=1)
        )
        return sensitivity_summaries(inputs)

    base, scaled = at(1.0), at(250.0)
    for name in SENSITIVITY_MEASURES.names():
        measure = SENSITIVITY_MEASURES.get(name)
        if measure.scale_free:
            assert scaled[name] == pytest.approx(base[name], rel=1e-9), name
        else:
            assert scaled[name]["median"] == pytest.approx(250 * base[name]["median"], rel=1e-9)
    assert {
        n for n in SENSITIVITY_MEASURES.names() if not SENSITIVITY_MEASURES.get(n).scale_free
    } == {
        "pgd",
        "random",
    }


def test_zero_perturbations_are_left_out_not_fatal(gen: torch.Generator) -> None:
    f0 = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    f1 = f0 + 0.1 * torch.randn(5, 4, generator=gen, dtype=torch.float64)
    norms = torch.tensor([0.0, 1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    inputs = SensitivityInputs(f0, f1, f1, norms, norms)
    per_sample = SENSITIVITY_MEASURES.get("pgd").fn(inputs)
    assert math.isnan(float(per_sample[0]))
    # The same values as the raw function on the perturbed rows only (the existing analysis keys).
    torch.testing.assert_close(per_sample[1:], feature_sensitivity(f0[1:], f1[1:], norms[1:]))
    summary = sensitivity_summaries(inputs, ["pgd", "ratio"])
    assert summary["pgd"] == summarize_sensitivity(feature_sensitivity(f0[1:], f1[1:], norms[1:]))
    assert summary["ratio"]["median"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="unknown sensitivity measure"):
        sensitivity_summaries(inputs, ["raw"])


def test_ratio_and_inputs_errors() -> None:
    ratio = sensitivity_ratio(torch.tensor([1.0, 2.0, float("nan")]), torch.tensor([0.5, 0.0, 1.0]))
    assert ratio[0] == 2.0 and math.isnan(ratio[1]) and math.isnan(ratio[2])
    with pytest.raises(ValueError, match="1-D"):
        sensitivity_ratio(torch.ones(3), torch.ones(2))
    f = torch.ones(3, 2)
    with pytest.raises(ValueError, match=">= 0"):
        SensitivityInputs(f, f, f, torch.tensor([1.0, -1.0, 1.0]), torch.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        SensitivityInputs(f, f[:2], f, torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="all-zero row"):
        normalized_feature_sensitivity(torch.zeros(3, 2), f, torch.ones(3))
