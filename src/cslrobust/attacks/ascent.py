"""Projected gradient ascent on any loss of the input: the core of every iterative attack here.

Classification PGD (:func:`~cslrobust.attacks.pgd.pgd`: cross-entropy of a frozen classifier, per-sample
early stop, best iterate) and the training-time contrastive attack of adversarial contrastive learning
(:class:`ViewAttack`: the contrastive loss of a batch of views, last iterate) are two uses of
:func:`projected_ascent`. The geometry (ascent direction, projection onto the eps-ball intersected with
[0,1], uniform random starts) is :mod:`~cslrobust.attacks.threat_model`'s.

A loss function maps the current points ``x_k`` of the samples still attacked (and their positions
``index`` in the batch) to a per-sample loss (or one scalar for a batch whose samples interact) and,
optionally, a per-sample ``done`` flag (for PGD: misclassified). The gradient is taken with respect to
the input only: ``torch.autograd.grad`` never accumulates into parameters' ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from cslrobust.attacks.threat_model import (
    Norm,
    ascent_direction,
    project,
    sample_ball,
    validate_norm,
)

#: ``(x_k, index) -> (loss, done)``: loss ``(A,)`` per sample (or a scalar), done ``(A,)`` bool or None.
AscentLoss = Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]

__all__ = ["AscentLoss", "ViewAttack", "loss_gradient", "projected_ascent", "random_start_point"]


def loss_gradient(
    loss_fn: AscentLoss, x: Tensor, index: Tensor
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The loss (detached), the done flags and the gradient of the summed loss at ``x``.

    Works under ``torch.no_grad()`` (gradients are enabled locally). Summing makes each sample's
    gradient its own when samples are independent, unscaled by the batch size.

    Raises:
        RuntimeError: Under ``torch.inference_mode()``, where no gradient can be computed.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attacks need autograd; do not call them under torch.inference_mode()")
    with torch.enable_grad():
        # ``clone`` also turns an inference tensor (from feature extraction) into a normal one.
        x_var = x.detach().clone().requires_grad_(True)
        loss, done = loss_fn(x_var, index)
        (grad,) = torch.autograd.grad(loss.sum(), x_var)
    return loss.detach(), done, grad


def random_start_point(x: Tensor, eps: float, norm: Norm, generator: torch.Generator) -> Tensor:
    """A uniform draw from the eps-ball around ``x``, projected into [0,1]."""
    return project(x + sample_ball(x, eps, norm, generator), x, eps, norm)


def _check(eps: float, step_size: float, steps: int, restarts: int) -> None:
    if steps < 0 or restarts < 1 or not (0.0 <= step_size < float("inf")):
        raise ValueError(
            f"need steps >= 0, restarts >= 1 and a finite step_size >= 0; "
            f"got steps={steps}, restarts={restarts}, step_size={step_size}"
        )
    if not (0.0 <= eps < float("inf")):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")


def projected_ascent(
    loss_fn: AscentLoss,
    x: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    random_start: bool,
    generator: torch.Generator | None = None,
    restarts: int = 1,
    keep: Literal["best", "last"] = "best",
) -> Tensor:
    """Maximise ``loss_fn`` within the eps-ball around ``x`` and the [0,1] box.

    Each step is ``x <- project(x + step_size * d)`` with ``d = sign(grad)`` (L-inf) or
    ``grad / ||grad||_2`` (L2). The start is ``x`` or, with ``random_start``, a uniform draw from the
    ball (clamped to [0,1]) from ``generator`` only. There is no shortcut at ``eps == 0``.

    ``keep="best"`` (classification PGD): per sample the first iterate (over all steps and restarts,
    the start included) flagged ``done``, else the highest-loss one; a sample stops being attacked
    once done, and later restarts run only on samples not done. The loss must be per sample.

    ``keep="last"`` (attacks on a batch whose samples interact, e.g. a contrastive loss): every
    sample is attacked for all ``steps`` and the last iterate is returned; ``done`` is ignored and
    ``restarts`` must be 1. ``loss_fn`` always receives the whole batch (``index`` = all rows).

    Args:
        loss_fn: ``(x_k, index) -> (loss, done)``, see :data:`AscentLoss`.
        x: Clean inputs in [0,1].
        eps: Radius, a fraction of the [0,1] range for L-inf.
        step_size: Step length in ``norm``.
        steps: Gradient steps per restart.
        norm: ``"linf"`` or ``"l2"``.
        random_start: Start from a uniform point of the ball.
        generator: Source of the random starts (on the device of ``x``); required for
            ``random_start``.
        restarts: Runs (``keep="best"`` only).
        keep: Which iterate is returned, see above.

    Returns:
        The adversarial inputs, detached.

    Shape:
        x: ``(B, ...)``. Returns the shape of ``x``.

    Raises:
        ValueError: On invalid arguments, ``random_start`` without a generator, or ``restarts > 1``
            without ``random_start`` (or with ``keep="last"``).
    """
    norm = validate_norm(norm)
    _check(eps, step_size, steps, restarts)
    if random_start and generator is None:
        raise ValueError("random_start needs an explicit generator (the global RNG is never used)")
    if restarts > 1 and not random_start:
        raise ValueError(
            "restarts > 1 needs random_start=True; otherwise every restart is identical"
        )
    x = x.detach()
    if keep == "last":
        if restarts != 1:
            raise ValueError(f"keep='last' runs one restart, got restarts={restarts}")
        return _ascent_last(loss_fn, x, eps, step_size, steps, norm, random_start, generator)
    if keep != "best":
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    best_x = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        index = (~fooled).nonzero().squeeze(1)  # (A,) samples still to attack
        if index.numel() == 0:
            break
        x_clean = x[index]
        if random_start:
            assert generator is not None  # checked above; narrows the type
            x_k = random_start_point(x_clean, eps, norm, generator)
        else:
            x_k = x_clean
        for k in range(steps + 1):
            if k < steps:
                loss, done, grad = loss_gradient(loss_fn, x_k, index)
            else:  # the last iterate only needs evaluating
                with torch.no_grad():
                    loss, done = loss_fn(x_k, index)
            if done is None:
                done = torch.zeros_like(loss, dtype=torch.bool)
            better = done | (loss > best_loss[index])
            best_x[index[better]] = x_k[better]
            best_loss[index[better]] = loss[better]
            fooled[index[done]] = True
            if k == steps:
                break
            keep_rows = ~done
            if not bool(keep_rows.any()):
                break
            index, x_clean = index[keep_rows], x_clean[keep_rows]
            x_k = project(
                x_k[keep_rows] + step_size * ascent_direction(grad[keep_rows], norm),
                x_clean,
                eps,
                norm,
            )
    return best_x


def _ascent_last(
    loss_fn: AscentLoss,
    x: Tensor,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm,
    random_start: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """``steps`` ascent steps on every sample; the last iterate (see :func:`projected_ascent`)."""
    index = torch.arange(x.shape[0], device=x.device)
    if random_start:
        assert generator is not None
        x_k = random_start_point(x, eps, norm, generator)
    else:
        x_k = x
    for _ in range(steps):
        _, _, grad = loss_gradient(loss_fn, x_k, index)
        x_k = project(x_k + step_size * ascent_direction(grad, norm), x, eps, norm)
    return x_k.detach()


@dataclass(frozen=True)
class ViewAttack:
    """The training-time attack on views: ascent on a batch loss, last iterate.

    The composition root (the train stage) builds it from the method's attack settings and hands it
    to the training loop, which offers it to the method through its view runner; the method says
    what loss to raise. Adversarial contrastive learning (ACL, RoCL, DynACL) uses L-inf
    ``eps = 8/255``, ``step_size = 2/255`` and 5 steps (RoCL 7) from a uniform random start.

    Args:
        eps: Radius (a fraction of [0,1] for L-inf).
        step_size: Step length.
        steps: Ascent steps.
        norm: ``"linf"`` or ``"l2"``.
        random_start: Start from a uniform point of the ball.
    """

    eps: float
    step_size: float
    steps: int
    norm: Norm = "linf"
    random_start: bool = True

    def __post_init__(self) -> None:
        validate_norm(self.norm)
        _check(self.eps, self.step_size, self.steps, 1)

    def __call__(
        self,
        loss_fn: Callable[[Tensor], Tensor],
        x: Tensor,
        *,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Views ``x`` moved to raise ``loss_fn(x)`` (a scalar loss of the whole batch).

        Shape:
            x: ``(N, C, H, W)`` in [0,1]. Returns the same shape, detached, in the ball and [0,1].
        """
        return projected_ascent(
            lambda x_k, index: (loss_fn(x_k), None),
            x,
            eps=self.eps,
            step_size=self.step_size,
            steps=self.steps,
            norm=self.norm,
            random_start=self.random_start,
            generator=generator,
            keep="last",
        )
