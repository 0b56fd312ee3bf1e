from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from cslrobust.attacks import AttackTarget, pgd
from cslrobust.attacks.threat_model import Norm, perturbation_norm, sample_ball
from cslrobust.seeding import make_generator


def _extreme_inputs(n: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = make_generator(seed, "inputs")
    x = torch.rand((n, 3, 8, 8), generator=generator)
    x[: n // 2, 0] = 0.0  # pixels exactly at the box edges
    x[n // 4 :, 2, :, :3] = 1.0
    y = torch.randint(0, 4, (n,), generator=generator)
    return x, y


def test_zero_steps_without_random_start_returns_input(toy_model: nn.Module) -> None:
    x, y = _extreme_inputs()
    x_adv = pgd(
        AttackTarget(toy_model), x, y, eps=8 / 255, step_size=1 / 255, steps=0, random_start=False
    )
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_returns_input_with_random_start(toy_model: nn.Module, norm: Norm) -> None:
    x, y = _extreme_inputs()
    x_adv = pgd(
        AttackTarget(toy_model),
        x,
        y,
        eps=0.0,
        step_size=0.1,
        steps=5,
        norm=norm,
        random_start=True,
        restarts=3,
        generator=make_generator(0, "attack"),
    )
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_output_in_box_and_ball(toy_model: nn.Module, norm: Norm, random_start: bool) -> None:
    target = AttackTarget(toy_model)
    for seed, eps in enumerate([1 / 255, 8 / 255, 0.3] if norm == "linf" else [0.05, 0.5, 3.0]):
        x, y = _extreme_inputs(seed=seed)
        x_adv = pgd(
            target,
            x,
            y,
            eps=eps,
            step_size=eps / 2,
            steps=5,
            norm=norm,
            random_start=random_start,
            restarts=2 if random_start else 1,
            generator=make_generator(seed, "attack"),
        )
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert perturbation_norm(x_adv.double() - x.double(), norm).max() <= eps + 1e-6


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_same_result_and_global_rng_untouched(
    toy_model: nn.Module, toy_test_data: tuple[Tensor, Tensor], norm: Norm
) -> None:
    x, y = toy_test_data[0][:64], toy_test_data[1][:64]
    target = AttackTarget(toy_model)
    eps = 4 / 255 if norm == "linf" else 0.2

    def run(seed: int) -> Tensor:
        return pgd(
            target,
            x,
            y,
            eps=eps,
            step_size=eps / 4,
            steps=5,
            norm=norm,
            random_start=True,
            restarts=2,
            generator=make_generator(seed, "attack"),
        )

    state = torch.get_rng_state()
    first = run(0)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # a different global state changes nothing
    assert torch.equal(run(0), first)
    assert not torch.equal(run(1), first)


def test_argument_validation(toy_model: nn.Module) -> None:
    target = AttackTarget(toy_model)
    x, y = _extreme_inputs(4)
    common = {"eps": 0.1, "step_size": 0.01, "steps": 2}
    with pytest.raises(ValueError, match="explicit generator"):
        pgd(target, x, y, **common, random_start=True)
    with pytest.raises(ValueError, match="restarts > 1"):
        pgd(target, x, y, **common, random_start=False, restarts=2)
    with pytest.raises(ValueError, match="eps"):
        pgd(target, x, y, eps=-0.1, step_size=0.01, steps=2, random_start=False)
    with pytest.raises(ValueError, match="unknown norm"):
        pgd(target, x, y, **common, norm="l1", random_start=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        pgd(target, x, y.float(), **common, random_start=False)
    with pytest.raises(TypeError, match="AttackTarget"):
        pgd(toy_model, x, y, **common, random_start=False)  # type: ignore[arg-type]


def _naive_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm,
    start: Tensor | None,
) -> Tensor:
    """One sample at a time, written independently: first fooling iterate, else highest loss."""
    results = []
    for i in range(x.shape[0]):
        xi, yi = x[i : i + 1], y[i : i + 1]
        x_k = xi.clone() if start is None else (xi + start[i : i + 1]).clamp(0, 1)
        best, best_loss = xi.clone(), -math.inf
        for k in range(steps + 1):
            x_var = x_k.clone().requires_grad_(True)
            logits = model(x_var)
            loss = nn.functional.cross_entropy(logits, yi)
            if logits.argmax().item() != yi.item():
                best = x_k.detach().clone()
                break
            if loss.item() > best_loss:
                best, best_loss = x_k.detach().clone(), loss.item()
            if k == steps:
                break
            (grad,) = torch.autograd.grad(loss, x_var)
            if norm == "linf":
                x_k = x_k + step_size * grad.sign()
                delta = (x_k - xi).clamp(-eps, eps)
            else:
                g_norm = grad.norm()
                x_k = x_k + step_size * (grad / g_norm if g_norm > 0 else grad)
                delta = x_k - xi
                if delta.norm() > eps:
                    delta = delta * (eps / delta.norm())
            x_k = (xi + delta).clamp(0, 1).detach()
        results.append(best)
    return torch.cat(results)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_matches_naive_per_sample_loop(
    toy_model: nn.Module, toy_test_data: tuple[Tensor, Tensor], norm: Norm, random_start: bool
) -> None:
    # float64: batched and per-sample convolutions then agree far below a gradient-sign flip.
    model = toy_model.double()
    target = AttackTarget(model)
    x, y = toy_test_data[0][:48].double(), toy_test_data[1][:48]
    eps = 4 / 255 if norm == "linf" else 0.15
    settings = {"eps": eps, "step_size": 2.5 * eps / 7, "steps": 7, "norm": norm}
    start = sample_ball(x, eps, norm, make_generator(5, "attack")) if random_start else None
    batched = pgd(
        target, x, y, **settings, random_start=random_start, generator=make_generator(5, "attack")
    )
    naive = _naive_pgd(model, x, y, **settings, start=start)
    torch.testing.assert_close(batched, naive, rtol=0, atol=1e-6)
    # The case mix is interesting: some samples fooled, some not, some at the start already.
    with torch.no_grad():
        fooled = target(batched).argmax(1) != y
    assert 0 < int(fooled.sum()) < x.shape[0]


def test_restarts_only_add_fooled_samples(
    toy_model: nn.Module, toy_test_data: tuple[Tensor, Tensor]
) -> None:
    x, y = toy_test_data
    target = AttackTarget(toy_model)

    def fooled(restarts: int) -> Tensor:
        x_adv = pgd(
            target,
            x,
            y,
            eps=4 / 255,
            step_size=1 / 255,
            steps=3,
            random_start=True,
            restarts=restarts,
            generator=make_generator(0, "attack"),
        )
        with torch.no_grad():
            return target(x_adv).argmax(1) != y

    one, three = fooled(1), fooled(3)
    assert bool((three | ~one).all())  # fooled once stays fooled
    assert int(three.sum()) > int(one.sum())


def test_model_unchanged_and_no_weight_gradients(
    toy_model: nn.Module, toy_test_data: tuple[Tensor, Tensor]
) -> None:
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    x, y = toy_test_data
    x = x.clone().requires_grad_(True)  # a caller's tensor that requires grad is fine
    with torch.no_grad():  # and so is a caller under no_grad
        pgd(
            AttackTarget(toy_model),
            x,
            y,
            eps=8 / 255,
            step_size=2 / 255,
            steps=5,
            random_start=True,
            generator=make_generator(0, "attack"),
        )
    after = toy_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # includes BN running stats
    assert all(p.grad is None for p in toy_model.parameters())
    assert x.grad is None
