from __future__ import annotations

import pytest
import torch
from torch import nn

from cslrobust.attacks import (
    AttackTarget,
    check_eps_zero,
    clean_accuracy,
    frozen_eval,
    input_gradient,
    robust_accuracy,
)
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


# bf16 (issue 13, item 5): the model computes in bf16, everything the attack touches stays float32.
# Tolerance: input gradients within cosine 0.95 of fp32, per sample and over the batch.
MIN_GRADIENT_COSINE = 0.95


def test_bf16_target_gives_float32_logits_from_bf16_arithmetic(
    toy_model: nn.Module, toy_test_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, _ = toy_test_data
    with torch.no_grad():
        fp32 = AttackTarget(toy_model)(images)
        bf16 = AttackTarget(toy_model, precision="bf16")(images)
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32)  # autocast is active
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.1)
    assert (bf16.argmax(1) == fp32.argmax(1)).float().mean().item() > 0.95


def test_bf16_input_gradient_is_float32_and_aligned_with_fp32(
    toy_model: nn.Module, toy_test_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, labels = toy_test_data
    _, loss_32, grad_32 = input_gradient(AttackTarget(toy_model), images, labels)
    logits, loss_16, grad_16 = input_gradient(
        AttackTarget(toy_model, precision="bf16"), images, labels
    )
    assert logits.dtype == loss_16.dtype == grad_16.dtype == torch.float32
    assert not torch.equal(grad_16, grad_32)
    per_sample = nn.functional.cosine_similarity(grad_16.flatten(1), grad_32.flatten(1), dim=1)
    assert per_sample.min().item() > MIN_GRADIENT_COSINE, per_sample.min().item()
    overall = nn.functional.cosine_similarity(grad_16.flatten(), grad_32.flatten(), dim=0)
    assert overall.item() > MIN_GRADIENT_COSINE
    torch.testing.assert_close(loss_16, loss_32, rtol=0.05, atol=0.02)


def test_bf16_eps_zero_equals_clean_and_robust_is_below_clean(
    toy_model: nn.Module, toy_test_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, labels = toy_test_data
    target = AttackTarget(toy_model, precision="bf16")
    gate = check_eps_zero(target, images, labels, seed=0, batch_size=64)
    assert gate.passed, gate.message
    attacked = robust_accuracy(
        target, images, labels, attack="pgd", eps=4 / 255, steps=5, seed=0, batch_size=64
    )
    assert attacked.clean_accuracy == clean_accuracy(target, images, labels, batch_size=64)
    assert bool((attacked.robust_correct <= attacked.clean_correct).all())
    assert attacked.robust_accuracy < attacked.clean_accuracy  # the attack works in bf16 too
    assert attacked.max_perturbation <= 4 / 255 + 1e-7


def test_target_rejects_an_unknown_precision(toy_model: nn.Module) -> None:
    with pytest.raises(ValueError, match="precision"):
        AttackTarget(toy_model, precision="fp16")  # type: ignore[arg-type]
