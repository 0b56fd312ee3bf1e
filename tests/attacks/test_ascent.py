"""The ascent core: classification PGD on it is bitwise the former PGD; the view attack raises its loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cslrobust.attacks import AttackTarget, pgd
from cslrobust.attacks.ascent import ViewAttack, projected_ascent
from cslrobust.attacks.threat_model import (
    Norm,
    ascent_direction,
    perturbation_norm,
    project,
    sample_ball,
)
from cslrobust.objectives import SimCLRObjective
from cslrobust.seeding import make_generator


def _former_pgd(
    target: AttackTarget,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm,
    random_start: bool,
    restarts: int,
    generator: torch.Generator | None,
) -> Tensor:
    """The PGD of the previous release, verbatim in its arithmetic (before the ascent core)."""

    def input_gradient(x_in: Tensor, y_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            x_var = x_in.detach().clone().requires_grad_(True)
            logits = target(x_var)
            loss = F.cross_entropy(logits, y_in, reduction="none")
            (grad,) = torch.autograd.grad(loss.sum(), x_var)
        return logits.detach(), loss.detach(), grad

    x = x.detach()
    best_x = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        index = (~fooled).nonzero().squeeze(1)
        if index.numel() == 0:
            break
        x_clean, y_active = x[index], y[index]
        if random_start:
            assert generator is not None
            x_k = project(x_clean + sample_ball(x_clean, eps, norm, generator), x_clean, eps, norm)
        else:
            x_k = x_clean
        for k in range(steps + 1):
            if k < steps:
                logits, loss, grad = input_gradient(x_k, y_active)
            else:
                with torch.no_grad():
                    logits = target(x_k)
                    loss = F.cross_entropy(logits, y_active, reduction="none")
            is_fooled = logits.argmax(dim=1) != y_active
            better = is_fooled | (loss > best_loss[index])
            best_x[index[better]] = x_k[better]
            best_loss[index[better]] = loss[better]
            fooled[index[is_fooled]] = True
            if k == steps:
                break
            keep = ~is_fooled
            if not bool(keep.any()):
                break
            index, x_clean, y_active = index[keep], x_clean[keep], y_active[keep]
            x_k = project(
                x_k[keep] + step_size * ascent_direction(grad[keep], norm), x_clean, eps, norm
            )
    return best_x


@pytest.mark.parametrize(
    ("norm", "eps", "random_start", "restarts", "steps"),
    [
        ("linf", 2 / 255, True, 1, 10),
        ("linf", 4 / 255, True, 3, 5),
        ("linf", 1 / 255, False, 1, 7),
        ("linf", 0.0, True, 2, 3),
        ("l2", 0.25, True, 2, 6),
        ("l2", 0.1, False, 1, 0),
    ],
)
def test_pgd_on_the_ascent_core_is_bitwise_the_former_pgd(
    toy_model: nn.Module,
    toy_test_data: tuple[Tensor, Tensor],
    norm: Norm,
    eps: float,
    random_start: bool,
    restarts: int,
    steps: int,
) -> None:
    x, y = toy_test_data
    target = AttackTarget(toy_model)
    kwargs = dict(
        eps=eps,
        step_size=2.5 * eps / max(steps, 1),
        steps=steps,
        norm=norm,
        random_start=random_start,
        restarts=restarts,
    )
    new = pgd(target, x, y, generator=make_generator(5, "pgd"), **kwargs)
    old = _former_pgd(target, x, y, generator=make_generator(5, "pgd"), **kwargs)
    assert torch.equal(new, old)
    if eps >= 2 / 255 and steps:
        assert not torch.equal(new, x)  # the attack moved something


def _embedder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 8),
    )


def test_view_attack_raises_the_contrastive_loss_and_stays_in_the_ball() -> None:
    model = _embedder().eval()
    g = make_generator(1, "views")
    x = torch.rand(16, 3, 8, 8, generator=g)  # 2 views x 8 instances, view-major
    x[:4, 0] = 0.0
    x[4:8, 1] = 1.0
    index = torch.arange(8)
    loss_of = SimCLRObjective(temperature=0.5)

    def loss_fn(views: Tensor) -> Tensor:
        return loss_of(model(views).view(2, 8, -1), index, index).loss

    eps = 8 / 255
    attack = ViewAttack(eps=eps, step_size=2 / 255, steps=5)
    adv = attack(loss_fn, x, generator=make_generator(2, "attack"))
    assert float(perturbation_norm(adv - x, "linf").max()) <= eps + 1e-7
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert float(loss_fn(adv)) > float(loss_fn(x)) + 0.01
        noise = project(x + sample_ball(x, eps, "linf", make_generator(3, "n")), x, eps, "linf")
        assert float(loss_fn(adv)) > float(loss_fn(noise))
    again = attack(loss_fn, x, generator=make_generator(2, "attack"))
    assert torch.equal(adv, again)  # the random start comes from the generator only


def test_ascent_never_touches_parameter_gradients_or_statistics() -> None:
    model = _embedder().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 3, 8, 8, generator=make_generator(4, "x"))
    adv = projected_ascent(
        lambda v, _: (model(v).square().sum(dim=1), None),
        x,
        eps=4 / 255,
        step_size=1 / 255,
        steps=3,
        random_start=True,
        generator=make_generator(5, "a"),
        keep="last",
    )
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert adv.shape == x.shape


def test_ascent_argument_errors() -> None:
    x = torch.rand(2, 3, 4, 4)
    fn = lambda v, _: (v.sum(dim=(1, 2, 3)), None)  # noqa: E731
    with pytest.raises(ValueError, match="keep='last' runs one restart"):
        projected_ascent(
            fn, x, eps=0.1, step_size=0.01, steps=1, random_start=True,
            generator=make_generator(0, "g"), restarts=2, keep="last",
        )  # fmt: skip
    with pytest.raises(ValueError, match="explicit generator"):
        projected_ascent(fn, x, eps=0.1, step_size=0.01, steps=1, random_start=True)
    with pytest.raises(ValueError, match="steps >= 0"):
        ViewAttack(eps=0.1, step_size=0.01, steps=-1)
