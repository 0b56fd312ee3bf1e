"""Contract tests every registered attack gets for free."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cslrobust.attacks import ATTACKS, AttackTarget, robust_accuracy
from cslrobust.attacks.threat_model import Norm, perturbation_norm
from cslrobust.seeding import make_generator


def test_builtin_attacks_registered() -> None:
    assert {"fgsm", "pgd"} <= set(ATTACKS.names())


def _run(
    name: str, target: AttackTarget, x: Tensor, y: Tensor, eps: float, norm: Norm, seed: int
) -> Tensor:
    return ATTACKS.get(name)(
        target,
        x,
        y,
        eps=eps,
        norm=norm,
        steps=4,
        step_size=eps / 2,
        random_start=True,
        restarts=2,
        generator=make_generator(seed, "attack"),
    )


@pytest.mark.parametrize("name", ATTACKS.names())
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attack_contract(
    name: str, norm: Norm, toy_model: nn.Module, toy_test_data: tuple[Tensor, Tensor]
) -> None:
    target = AttackTarget(toy_model)
    x, y = toy_test_data[0][:64].clone(), toy_test_data[1][:64]
    x[:8] = 0.0
    x[8:16] = 1.0
    eps = 8 / 255 if norm == "linf" else 0.3
    x_adv = _run(name, target, x, y, eps, norm, seed=0)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert perturbation_norm(x_adv.double() - x.double(), norm).max() <= eps + 1e-6
    assert torch.equal(_run(name, target, x, y, eps, norm, seed=0), x_adv)  # deterministic
    assert torch.equal(_run(name, target, x, y, 0.0, norm, seed=0), x)  # eps = 0 is the identity
    assert all(p.grad is None for p in toy_model.parameters())
    result = robust_accuracy(
        target, toy_test_data[0], toy_test_data[1], attack=name, eps=eps, norm=norm, steps=4, seed=0
    )
    assert result.robust_accuracy < result.clean_accuracy
