"""Projected gradient descent on the cross-entropy (Madry et al., ICLR 2018), L-inf and L2.

Choices the papers leave open, made here and fixed by tests:

- The returned point is, per sample, the *first* iterate (over all steps and restarts, the start
  included) that the model misclassifies; a sample never fooled gets its highest-loss iterate. This
  is never weaker than returning the last iterate (AutoAttack's APGD keeps its best point likewise).
- A sample stops being attacked as soon as it is fooled, and later restarts run only on samples not
  yet fooled. Because the target is in eval mode, samples do not interact, so this only saves work.
- Random starts come from the caller's ``generator`` only; the global RNG is never used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cslrobust.attacks.ascent import projected_ascent
from cslrobust.attacks.registry import ATTACKS
from cslrobust.attacks.target import AttackTarget, validate_attack_inputs
from cslrobust.attacks.threat_model import Norm, validate_norm


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step size ``2.5 * eps / steps``, which lets PGD cross the ball from any start.

    Returns 0.0 for ``steps == 0``, where no step is taken.

    Raises:
        ValueError: If ``steps`` is negative.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return 2.5 * eps / steps if steps > 0 else 0.0


def pgd(
    target: AttackTarget,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    random_start: bool,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Maximise the cross-entropy within the eps-ball around ``x`` and the [0,1] box.

    Each step is ``x <- project(x + step_size * d)`` with ``d = sign(grad)`` (L-inf) or
    ``grad / ||grad||_2`` (L2); see :func:`~cslrobust.attacks.threat_model.project`. The start is
    ``x`` or, with ``random_start``, a uniform draw from the ball (clamped to [0,1]). There is no
    shortcut at ``eps == 0``: the random start and every step run, and the projection returns ``x``
    exactly, so the eps = 0 sanity gate tests the whole code path. ``steps == 0`` without random
    start returns ``x``.

    Args:
        target: The frozen eval-mode model.
        x: Clean inputs in [0,1].
        y: Integer labels.
        eps: Radius of the threat model, a fraction of the [0,1] range (e.g. 8/255).
        step_size: Step length in ``norm``; see :func:`default_step_size`.
        steps: Number of gradient steps per restart.
        norm: ``"linf"`` or ``"l2"``.
        random_start: Start from a uniform point in the ball instead of ``x``.
        restarts: Number of runs; each after the first starts afresh for samples not yet fooled.
        generator: Source of the random starts (on the device of ``x``); required for
            ``random_start``.

    Returns:
        ``x_adv``, detached; per sample the first fooling iterate, else the highest-loss one.

    Shape:
        x: ``(B, C, ...)``; y: ``(B,)``. Returns the shape of ``x``.

    Raises:
        ValueError: On invalid arguments, ``random_start`` without a generator, or ``restarts > 1``
            without ``random_start`` (the restarts would repeat the first run exactly).
        TypeError: If ``target`` is not an :class:`AttackTarget`.
    """
    norm = validate_norm(norm)
    validate_attack_inputs(target, x, y, eps)

    def cross_entropy(x_k: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample cross-entropy of the samples still attacked, and which are fooled."""
        labels = y[index]
        logits = target(x_k)
        loss = F.cross_entropy(logits, labels, reduction="none")
        return loss, logits.argmax(dim=1) != labels

    return projected_ascent(
        cross_entropy,
        x,
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=norm,
        random_start=random_start,
        generator=generator,
        restarts=restarts,
        keep="best",
    )


@ATTACKS.register("pgd")
def _pgd_attack(
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
    """Registry entry for :func:`pgd`."""
    return pgd(
        target,
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=norm,
        random_start=random_start,
        restarts=restarts,
        generator=generator,
    )
