from __future__ import annotations

import pytest
import torch

from cslrobust.attacks.threat_model import (
    ascent_direction,
    perturbation_norm,
    project,
    sample_ball,
    validate_norm,
)
from cslrobust.seeding import make_generator


def _inputs_with_extremes(seed: int = 0) -> torch.Tensor:
    x = torch.rand((16, 3, 8, 8), generator=make_generator(seed, "test"))
    x[:, 0] = 0.0  # whole channels at the box edges
    x[:, 1, :4] = 1.0
    return x


def test_validate_norm() -> None:
    assert validate_norm("l2") == "l2"
    with pytest.raises(ValueError, match="unknown norm"):
        validate_norm("l1")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project_lands_in_ball_and_box(norm: str) -> None:
    n = validate_norm(norm)
    x = _inputs_with_extremes()
    wild = x + 3.0 * torch.randn(x.shape, generator=make_generator(1, "test"))
    eps = 0.05 if n == "linf" else 0.5
    out = project(wild, x, eps, n)
    assert out.min() >= 0 and out.max() <= 1
    assert (perturbation_norm(out - x, n) <= eps + 1e-6).all()
    # Points already feasible are unchanged.
    inside = project(x + 0.5 * (out - x), x, eps, n)
    torch.testing.assert_close(inside, x + 0.5 * (out - x), rtol=0, atol=1e-7)


def test_ascent_direction() -> None:
    grad = torch.randn((5, 3, 4, 4), generator=make_generator(0, "test"))
    grad[0] = 0.0
    l2 = ascent_direction(grad, "l2")
    norms = perturbation_norm(l2, "l2")
    assert norms[0] == 0.0
    torch.testing.assert_close(norms[1:], torch.ones(4))
    assert torch.equal(ascent_direction(grad, "linf"), grad.sign())


def test_sample_ball_linf_uniform() -> None:
    x = torch.zeros((4000, 3, 2, 2))
    delta = sample_ball(x, 0.1, "linf", make_generator(0, "test"))
    assert delta.abs().max() <= 0.1
    assert abs(delta.mean().item()) < 2e-3
    assert abs(delta.abs().mean().item() - 0.05) < 2e-3  # E|U(-a, a)| = a / 2


def test_sample_ball_l2_uniform_in_volume() -> None:
    # Uniform in a disk (d = 2): P(r <= eps/2) = 1/4 and E[r] = 2 eps / 3.
    x = torch.zeros((20000, 1, 1, 2))
    delta = sample_ball(x, 2.0, "l2", make_generator(0, "test"))
    radius = perturbation_norm(delta, "l2")
    assert radius.max() <= 2.0 + 1e-6
    assert abs((radius <= 1.0).float().mean().item() - 0.25) < 0.015
    assert abs(radius.mean().item() - 4.0 / 3.0) < 0.015


def test_sample_ball_uses_only_the_generator() -> None:
    x = torch.zeros((8, 3, 4, 4))
    state = torch.get_rng_state()
    a = sample_ball(x, 0.1, "l2", make_generator(3, "test"))
    torch.manual_seed(12345)  # moving the global RNG must not matter
    b = sample_ball(x, 0.1, "l2", make_generator(3, "test"))
    torch.set_rng_state(state)
    assert torch.equal(a, b)
