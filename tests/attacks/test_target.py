from __future__ import annotations

import pytest
import torch
from torch import nn

from cslrobust.attacks import AttackTarget, frozen_eval, input_gradient
from cslrobust.seeding import make_generator


def test_target_freezes_and_matches_eval_model(toy_model: nn.Module) -> None:
    x = torch.rand(6, 3, 8, 8)
    toy_model.eval()
    with torch.no_grad():
        expected = toy_model(x)
    toy_model.train()
    target = AttackTarget(toy_model)
    assert not any(m.training for m in toy_model.modules())
    assert not any(p.requires_grad for p in toy_model.parameters())
    with torch.no_grad():
        assert torch.equal(target(x), expected)


def test_target_rejects_out_of_range_inputs(toy_model: nn.Module) -> None:
    target = AttackTarget(toy_model)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        target(torch.full((1, 3, 8, 8), 1.5))
    with pytest.raises(ValueError, match="floating"):
        target(torch.zeros((1, 3, 8, 8), dtype=torch.uint8))
    unchecked = AttackTarget(toy_model, check_range=False)
    assert unchecked(torch.full((1, 3, 8, 8), 1.5)).shape == (1, 4)


def test_target_refuses_training_mode_and_unfreezing(toy_model: nn.Module) -> None:
    target = AttackTarget(toy_model)
    with pytest.raises(RuntimeError, match="evaluation-only"):
        target.train()
    target.eval()  # allowed
    x = torch.rand(2, 3, 8, 8)
    toy_model[2].train()  # the BatchNorm layer
    with pytest.raises(RuntimeError, match="training mode"):
        target(x)
    toy_model.eval()
    toy_model[1].weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="requires grad"):
        target(x)


def test_frozen_eval_restores_mixed_flags(toy_model: nn.Module) -> None:
    toy_model.train()
    toy_model[2].eval()  # a frozen BN inside a training model
    toy_model[1].requires_grad_(False)  # a frozen conv
    modes = [m.training for m in toy_model.modules()]
    flags = [p.requires_grad for p in toy_model.parameters()]
    with frozen_eval(toy_model) as model:
        assert model is toy_model
        assert not any(m.training for m in toy_model.modules())
        assert not any(p.requires_grad for p in toy_model.parameters())
    assert [m.training for m in toy_model.modules()] == modes
    assert [p.requires_grad for p in toy_model.parameters()] == flags


def test_frozen_eval_restores_on_exception(toy_model: nn.Module) -> None:
    toy_model.train()
    with pytest.raises(KeyError), frozen_eval(toy_model):
        raise KeyError("boom")
    assert all(m.training for m in toy_model.modules())
    assert all(p.requires_grad for p in toy_model.parameters())


def test_input_gradient_matches_finite_differences(toy_model: nn.Module) -> None:
    target = AttackTarget(toy_model.double())
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64) * 0.5 + 0.25
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():  # gradients are enabled locally
        _, loss, grad = input_gradient(target, x, y)
    # A tiny step: the ReLU kinks make larger finite differences inaccurate.
    direction = torch.randn(x.shape, generator=make_generator(0, "test"), dtype=x.dtype) * 1e-6
    with torch.no_grad():
        plus = nn.functional.cross_entropy(target(x + direction), y, reduction="none")
        minus = nn.functional.cross_entropy(target(x - direction), y, reduction="none")
    fd = (plus - minus) / 2
    torch.testing.assert_close(fd, (grad * direction).flatten(1).sum(1), rtol=1e-5, atol=1e-12)
    assert loss.shape == (3,)
    assert all(p.grad is None for p in toy_model.parameters())


def test_input_gradient_refuses_inference_mode(toy_model: nn.Module) -> None:
    target = AttackTarget(toy_model)
    with torch.inference_mode():
        x = torch.rand(2, 3, 8, 8)
        with pytest.raises(RuntimeError, match="inference_mode"):
            input_gradient(target, x, torch.tensor([0, 1]))
    # An inference tensor used outside inference mode is fine.
    _, _, grad = input_gradient(target, x, torch.tensor([0, 1]))
    assert grad.shape == x.shape
