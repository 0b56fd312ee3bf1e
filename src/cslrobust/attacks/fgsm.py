"""Fast gradient sign method (L-inf) and fast gradient method (L2).

Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015; the L2
variant (FGM) takes a step of length eps along the normalised gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cslrobust.attacks.registry import ATTACKS
from cslrobust.attacks.target import AttackTarget, input_gradient, validate_attack_inputs
from cslrobust.attacks.threat_model import Norm, ascent_direction, project, validate_norm


def fgsm(target: AttackTarget, x: Tensor, y: Tensor, *, eps: float, norm: Norm = "linf") -> Tensor:
    """One step of size ``eps`` along the ``norm``-steepest ascent direction of the cross-entropy.

    The result is projected onto the eps-ball (a no-op up to rounding) and onto [0,1]. There is no
    shortcut at ``eps == 0``: the gradient step runs and the projection returns ``x`` exactly.

    Args:
        target: The frozen eval-mode model.
        x: Clean inputs in [0,1].
        y: Integer labels.
        eps: Radius of the threat model, a fraction of the [0,1] range (e.g. 8/255).
        norm: ``"linf"`` (FGSM) or ``"l2"`` (FGM).

    Returns:
        ``x_adv``, detached.

    Shape:
        x: ``(B, C, ...)``; y: ``(B,)``. Returns the shape of ``x``.

    Raises:
        TypeError, ValueError: On invalid arguments (see :func:`validate_attack_inputs`).
    """
    norm = validate_norm(norm)
    validate_attack_inputs(target, x, y, eps)
    x = x.detach()
    _, _, grad = input_gradient(target, x, y)
    return project(x + eps * ascent_direction(grad, norm), x, eps, norm)


@ATTACKS.register("fgsm")
def _fgsm_attack(
    target: AttackTarget,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    step_size: float,
    random_start: bool,
    restarts: int,
    generator: torch.Generator | None,
) -> Tensor:
    """Registry entry for :func:`fgsm`; the step settings, restarts and generator are unused."""
    del steps, step_size, random_start, restarts, generator
    return fgsm(target, x, y, eps=eps, norm=norm)
