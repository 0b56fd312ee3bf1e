"""BYOL, SimSiam and Barlow Twins against their formulas, and the method seam they use."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cslrobust.errors import ConfigError
from cslrobust.models import build_encoder
from cslrobust.objectives import (
    FAMILIES,
    OBJECTIVES,
    BarlowTwinsObjective,
    ObjectiveMethod,
    build_method,
    build_objective,
    family_of,
)
from cslrobust.objectives.barlow import barlow_twins_loss
from cslrobust.objectives.method import cosine_momentum, ema_update, frozen_copy


def _runner(module: nn.Module, views: torch.Tensor, *, grad: bool = True) -> torch.Tensor:
    """The loop's runner in one process, fp32: (V*b, ...) -> (V, b, D)."""
    with torch.set_grad_enabled(grad):
        out = module(views).float()
    return out.view(2, views.shape[0] // 2, -1)


def _encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_encoder(
        "resnet18",
        width=4,
        head_kind="projector",
        num_classes=3,
        proj_hidden_dim=16,
        proj_dim=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def _method(name: str, **params):
    torch.manual_seed(1)
    return build_method(build_objective(OBJECTIVES.section(name, **params)), _encoder())


def _batch(b: int = 6):
    g = torch.Generator().manual_seed(3)
    views = torch.rand(2 * b, 3, 8, 8, generator=g)
    return views, torch.arange(b), torch.arange(b) % 3


def _loss(method, views, index, labels):
    return method.loss(_runner, method.network(), views, index, labels, generator=None, epoch=0)


# -- EMA and its schedule ---------------------------------------------------------------------------


def test_ema_update_follows_its_formula_and_leaves_buffers():
    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        target.weight.copy_(torch.tensor([5.0, 5.0, 5.0]))
        online.running_mean.fill_(7.0)
    ema_update(target, online, 0.9)
    torch.testing.assert_close(target.weight, 0.9 * torch.tensor(5.0) + 0.1 * online.weight)
    torch.testing.assert_close(target.running_mean, torch.zeros(3))  # its own statistics


def test_cosine_momentum_rises_from_base_to_one():
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(1 - 0.01 * 0.5)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    values = [cosine_momentum(0.996, k, 40) for k in range(41)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_byol_after_step_applies_the_scheduled_momentum():
    method = _method("byol", base_momentum=0.9, predictor_hidden_dim=8)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)  # online moved away from the target
    before = [p.clone() for p in method.target.parameters()]
    online = [p.clone() for p in method.encoder.parameters()]
    method.after_step(0, 10)
    for t, b, o in zip(method.target.parameters(), before, online, strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    assert method.momentum == pytest.approx(cosine_momentum(0.9, 1, 10))


# -- gradients: none to a target, none through a stop-gradient --------------------------------------


def test_no_gradient_reaches_the_byol_target():
    method = _method("byol", predictor_hidden_dim=8)
    out = _loss(method, *_batch())
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.target.parameters())
    assert any(p.grad is not None for p in method.network().parameters())
    assert {n for n, _ in method.network().named_parameters()} >= {
        n for n, _ in method.online.predictor.named_parameters(prefix="predictor")
    }


def test_simsiam_gradient_equals_the_gradient_with_a_constant_target():
    views, index, labels = _batch()
    method = _method("simsiam", predictor_hidden_dim=4)
    _loss(method, views, index, labels).loss.backward()
    grads = {n: p.grad.clone() for n, p in method.network().named_parameters()}

    # Independent computation: targets computed first and frozen as constants.
    method.network().zero_grad(set_to_none=True)
    out = _runner(method.network(), views)
    z, p = out.chunk(2, dim=-1)
    with torch.no_grad():
        t = _runner(method.network(), views)[..., : z.shape[-1]].clone()
    loss = -(F.cosine_similarity(p[0], t[1]).mean() + F.cosine_similarity(p[1], t[0]).mean()) / 2
    loss.backward()
    for name, param in method.network().named_parameters():
        torch.testing.assert_close(param.grad, grads[name], msg=name)


def test_byol_loss_is_its_papers_form():
    views, index, labels = _batch()
    method = _method("byol", predictor_hidden_dim=8)
    loss = _loss(method, views, index, labels).loss
    with torch.no_grad():
        out = _runner(method.network(), views)
        _, p = out.chunk(2, dim=-1)
        t = _runner(method.target, views)
        expected = sum(
            (2 - 2 * F.cosine_similarity(p[a], t[b])).mean() for a, b in ((0, 1), (1, 0))
        )
    torch.testing.assert_close(loss, expected)


# -- Barlow Twins -----------------------------------------------------------------------------------


def _barlow_naive(z1: torch.Tensor, z2: torch.Tensor, lam: float) -> float:
    n, d = z1.shape
    a, b = z1.double(), z2.double()
    a = (a - a.mean(0)) / (a.var(0, unbiased=False) + 1e-5).sqrt()
    b = (b - b.mean(0)) / (b.var(0, unbiased=False) + 1e-5).sqrt()
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[k, i] * b[k, j]) for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c**2
    return total


@pytest.mark.parametrize("lam", [5e-3, 0.25])
def test_barlow_twins_loss_matches_a_naive_loop(lam: float):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert float(barlow_twins_loss(z1, z2, lam)) == pytest.approx(_barlow_naive(z1, z2, lam), 1e-5)


def test_barlow_scaled_lambda_and_scale_loss():
    g = torch.Generator().manual_seed(1)
    outputs = torch.randn(2, 9, 4, generator=g)
    index, labels = torch.arange(9), torch.zeros(9, dtype=torch.long)
    scaled = build_objective(OBJECTIVES.section("barlow", lambda_offdiag="1/D", scale_loss=0.1))
    assert isinstance(scaled, BarlowTwinsObjective)
    expected = 0.1 * _barlow_naive(outputs[0], outputs[1], 1 / 4)
    assert float(scaled(outputs, index, labels).loss) == pytest.approx(expected, 1e-5)
    # identical views of decorrelated unit-variance dimensions: the loss is ~0
    x = torch.linalg.qr(torch.randn(64, 4, generator=g))[0] * 8
    same = torch.stack([x, x])
    assert float(scaled(same, torch.arange(64), torch.zeros(64, dtype=torch.long)).loss) < 1e-3


# -- the seam ---------------------------------------------------------------------------------------


def test_plain_objectives_become_methods_whose_network_is_the_encoder():
    encoder = _encoder()
    method = build_method(build_objective(OBJECTIVES.section("simclr")), encoder)
    assert isinstance(method, ObjectiveMethod)
    assert method.network() is encoder and method.state_dict() == {}


def test_method_state_round_trips_and_refuses_another_methods_state():
    byol = _method("byol", predictor_hidden_dim=8)
    byol.after_step(0, 5)
    state = byol.state_dict()
    fresh = _method("byol", predictor_hidden_dim=8)
    with torch.no_grad():
        for p in fresh.target.parameters():
            p.zero_()
    fresh.load_state_dict(state)
    for a, b in zip(fresh.target.parameters(), byol.target.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert fresh.momentum == pytest.approx(byol.momentum)
    simsiam = _method("simsiam", predictor_hidden_dim=8)
    with pytest.raises(KeyError, match="predictor"):
        simsiam.load_state_dict({})


def test_frozen_copy_is_independent_and_frozen():
    layer = nn.Linear(2, 2)
    copy = frozen_copy(layer)
    assert not any(p.requires_grad for p in copy.parameters())
    with torch.no_grad():
        layer.weight.add_(1)
    assert not torch.equal(copy.weight, layer.weight)


def test_families_of_every_registered_objective():
    assert family_of(OBJECTIVES.section("supervised")) == "supervised"
    assert family_of(OBJECTIVES.section("simclr")) == "contrastive"
    assert family_of(OBJECTIVES.section("simclr_fnr")) == "fn_removal"
    assert family_of(OBJECTIVES.section("supcon")) == "fn_removal"
    for name in ("byol", "simsiam", "barlow"):
        assert family_of(OBJECTIVES.section(name)) == "negative_free"
    for name in OBJECTIVES.names():
        assert family_of(OBJECTIVES.section(name)) in FAMILIES


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(ConfigError, match="base_momentum"):
        OBJECTIVES.section("byol", base_momentum=1.5)
    with pytest.raises(ConfigError, match="lambda_offdiag"):
        OBJECTIVES.section("barlow", lambda_offdiag="1/E")
    assert math.isfinite(cosine_momentum(0.99, 0, 0))
