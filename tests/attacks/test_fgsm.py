from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cslrobust.attacks import AttackTarget, fgsm
from cslrobust.attacks.threat_model import Norm


def _manual_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x_var = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x_var), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_var)
    return grad


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_matches_closed_form(
    toy_model: nn.Module, toy_test_data: tuple[Tensor, Tensor], norm: Norm
) -> None:
    x, y = toy_test_data[0][:32], toy_test_data[1][:32]
    target = AttackTarget(toy_model)
    eps = 4 / 255 if norm == "linf" else 0.25
    grad = _manual_gradient(toy_model, x, y)
    if norm == "linf":
        expected = (x + eps * grad.sign()).clamp(0, 1)
    else:
        expected = (x + eps * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    x_adv = fgsm(target, x, y, eps=eps, norm=norm)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6)
    assert all(p.grad is None for p in toy_model.parameters())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_eps_zero_returns_input_exactly(toy_model: nn.Module, norm: Norm) -> None:
    x = torch.rand(8, 3, 8, 8)
    x_adv = fgsm(AttackTarget(toy_model), x, torch.zeros(8, dtype=torch.long), eps=0.0, norm=norm)
    assert torch.equal(x_adv, x) and x_adv is not x
