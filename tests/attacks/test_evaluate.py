from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from cslrobust.attacks import (
    AttackTarget,
    clean_accuracy,
    default_step_size,
    frozen_eval,
    robust_accuracy,
)
from cslrobust.attacks.threat_model import Norm
from cslrobust.errors import ConfigError

Data = tuple[Tensor, Tensor]


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_equals_clean_exactly(
    toy_model: nn.Module, toy_test_data: Data, attack: str, norm: Norm
) -> None:
    target = AttackTarget(toy_model)
    result = robust_accuracy(
        target,
        *toy_test_data,
        attack=attack,
        eps=0.0,
        norm=norm,
        random_start=True,
        restarts=2,
        seed=0,
    )
    assert result.robust_accuracy == result.clean_accuracy == clean_accuracy(target, *toy_test_data)
    assert torch.equal(result.robust_correct, result.clean_correct)
    assert result.max_perturbation == 0.0
    assert result.attack_success_rate == 0.0


def test_clean_accuracy_matches_direct_computation(
    toy_model: nn.Module, toy_test_data: Data
) -> None:
    images, labels = toy_test_data
    target = AttackTarget(toy_model)
    with torch.no_grad():
        expected = (toy_model(images).argmax(1) == labels).float().mean().item()
    assert clean_accuracy(target, images, labels, batch_size=37) == expected
    assert expected > 0.95  # the toy model learned its task


def test_attack_ordering_and_eps_sweep(toy_model: nn.Module, toy_test_data: Data) -> None:
    target = AttackTarget(toy_model)
    eps = 8 / 255
    fgsm_result = robust_accuracy(target, *toy_test_data, attack="fgsm", eps=eps, seed=0)
    pgd_result = robust_accuracy(target, *toy_test_data, attack="pgd", eps=eps, steps=10, seed=0)
    assert pgd_result.robust_accuracy <= fgsm_result.robust_accuracy < fgsm_result.clean_accuracy
    assert pgd_result.robust_accuracy < pgd_result.clean_accuracy - 0.3  # the attack really bites
    assert pgd_result.attack_success_rate >= fgsm_result.attack_success_rate
    for norm, radii in (
        ("linf", [0, 2 / 255, 4 / 255, 8 / 255, 16 / 255]),
        ("l2", [0, 0.1, 0.3, 1.0]),
    ):
        accuracies = [
            robust_accuracy(
                target, *toy_test_data, attack="pgd", eps=r, norm=norm, steps=5, seed=0
            ).robust_accuracy
            for r in radii
        ]
        assert accuracies == sorted(accuracies, reverse=True), (norm, accuracies)
        assert accuracies[-1] < 0.1 < accuracies[0]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_result_invariants(toy_model: nn.Module, toy_test_data: Data, norm: Norm) -> None:
    images, labels = toy_test_data
    labels = labels.clone()
    labels[::3] = (labels[::3] + 1) % 4  # a third of the labels wrong: misclassified from the start
    eps = 4 / 255 if norm == "linf" else 0.3
    result = robust_accuracy(
        AttackTarget(toy_model),
        images,
        labels,
        attack="pgd",
        eps=eps,
        norm=norm,
        seed=0,
        batch_size=50,
    )
    assert result.n == 256 and result.clean_correct.shape == result.robust_correct.shape == (256,)
    assert result.clean_correct.dtype == torch.bool and result.robust_correct.device.type == "cpu"
    assert not bool((result.robust_correct & ~result.clean_correct).any())  # robust implies clean
    assert not bool(result.clean_correct[::3].any())
    assert result.robust_accuracy == result.robust_correct.float().mean().item()
    flipped = (result.clean_correct & ~result.robust_correct).sum().item()
    assert result.attack_success_rate == flipped / result.clean_correct.sum().item()
    assert 0 < result.max_perturbation <= eps + 1e-6
    assert set(result.metrics()) == {
        "clean_accuracy",
        "robust_accuracy",
        "attack_success_rate",
        "max_perturbation",
        "n",
    }


def test_seed_determinism_and_default_step_size(toy_model: nn.Module, toy_test_data: Data) -> None:
    target = AttackTarget(toy_model)

    def run(seed: int, step_size: float | None) -> Tensor:
        return robust_accuracy(
            target,
            *toy_test_data,
            attack="pgd",
            eps=4 / 255,
            steps=4,
            step_size=step_size,
            seed=seed,
        ).robust_correct

    first = run(0, None)
    assert torch.equal(run(0, None), first)
    assert torch.equal(run(0, default_step_size(4 / 255, 4)), first)


def test_batch_size_does_not_matter_without_random_start(
    toy_model: nn.Module, toy_test_data: Data
) -> None:
    # float64: per-sample results must not depend on the batch the sample is attacked in.
    target = AttackTarget(toy_model.double())
    images, labels = toy_test_data[0].double(), toy_test_data[1]
    results = [
        robust_accuracy(
            target,
            images,
            labels,
            attack="pgd",
            eps=4 / 255,
            steps=5,
            random_start=False,
            seed=0,
            batch_size=b,
        )
        for b in (256, 37)
    ]
    assert torch.equal(results[0].robust_correct, results[1].robust_correct)


def test_model_left_unchanged(toy_model: nn.Module, toy_test_data: Data) -> None:
    toy_model.train()
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    with frozen_eval(toy_model):
        target = AttackTarget(toy_model)
        for attack in ("fgsm", "pgd"):
            robust_accuracy(
                target,
                *toy_test_data,
                attack=attack,
                eps=8 / 255,
                restarts=2,
                seed=0,
                progress=True,
            )
        clean_accuracy(target, *toy_test_data)
    after = toy_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and BN buffers
    assert all(p.grad is None for p in toy_model.parameters())
    assert all(m.training for m in toy_model.modules())
    assert all(p.requires_grad for p in toy_model.parameters())


def test_errors(toy_model: nn.Module, toy_test_data: Data) -> None:
    target = AttackTarget(toy_model)
    with pytest.raises(ConfigError, match="unknown attack 'cw'"):
        robust_accuracy(target, *toy_test_data, attack="cw", eps=0.1, seed=0)
    with pytest.raises(ValueError, match="labels"):
        clean_accuracy(target, toy_test_data[0], toy_test_data[1][:10])
    with pytest.raises(ValueError, match="batch_size"):
        clean_accuracy(target, *toy_test_data, batch_size=0)


def test_default_step_size() -> None:
    assert default_step_size(8 / 255, 10) == pytest.approx(2 / 255)
    assert default_step_size(0.5, 0) == 0.0
    with pytest.raises(ValueError):
        default_step_size(0.5, -1)


def test_success_rate_nan_without_correct_samples(
    toy_model: nn.Module, toy_test_data: Data
) -> None:
    images, labels = toy_test_data
    with torch.no_grad():
        wrong = (toy_model.eval()(images).argmax(1) + 1) % 4
    result = robust_accuracy(
        AttackTarget(toy_model), images, wrong, attack="fgsm", eps=0.01, seed=0
    )
    assert result.clean_accuracy == 0.0 and math.isnan(result.attack_success_rate)


def test_plain_model_is_frozen_for_the_call_and_restored(
    toy_model: nn.Module, toy_test_data: Data
) -> None:
    toy_model.train()
    toy_model[1].requires_grad_(False)
    flags = [p.requires_grad for p in toy_model.parameters()]
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    plain = robust_accuracy(toy_model, *toy_test_data, attack="pgd", eps=4 / 255, steps=3, seed=0)
    clean = clean_accuracy(toy_model, *toy_test_data)
    assert all(m.training for m in toy_model.modules())
    assert [p.requires_grad for p in toy_model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in toy_model.state_dict().items())
    wrapped = robust_accuracy(
        AttackTarget(toy_model), *toy_test_data, attack="pgd", eps=4 / 255, steps=3, seed=0
    )
    assert torch.equal(plain.robust_correct, wrapped.robust_correct)
    assert clean == wrapped.clean_accuracy
