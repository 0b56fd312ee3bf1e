"""Cheap sanity checks an evaluation runs on every batch, each with the failure it guards against.

Modelled on AutoAttack's ``checks.py``, but the checks raise instead of printing, and keep no state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cslrobust.attacks.threat_model import Norm, perturbation_norm, validate_norm


class ThreatModelViolation(ValueError):
    """An attack returned a point outside [0,1] or the eps-ball, or a non-finite one."""


def check_perturbation(
    x: Tensor, x_adv: Tensor, eps: float, norm: Norm, *, atol: float = 1e-6
) -> None:
    """Raise unless ``x_adv`` is finite, in [0,1] and within ``eps`` of ``x`` in ``norm``.

    Why: an attack that leaves the threat model reports a robust accuracy that is too low, silently.
    Norms are computed in float64 so that the check itself adds no rounding error.

    Args:
        x: Clean inputs.
        x_adv: Attacked inputs.
        eps: Radius of the threat model.
        norm: ``"linf"`` or ``"l2"``.
        atol: Absolute tolerance for the box and the ball (float32 rounding).

    Shape:
        x, x_adv: ``(B, ...)``, same shape.

    Raises:
        ValueError: If the shapes differ.
        ThreatModelViolation: With the offending numbers (and sample index) when ``x_adv`` is
            non-finite, leaves [0,1] or leaves the eps-ball.
    """
    norm = validate_norm(norm)
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv has shape {tuple(x_adv.shape)}, x has {tuple(x.shape)}")
    if x_adv.numel() == 0:
        return
    if not bool(torch.isfinite(x_adv).all()):
        raise ThreatModelViolation("x_adv contains NaN or infinite values")
    low, high = torch.aminmax(x_adv)
    if low.item() < -atol or high.item() > 1.0 + atol:
        raise ThreatModelViolation(
            f"x_adv leaves [0,1]: min {low.item():.9g}, max {high.item():.9g}"
        )
    norms = perturbation_norm(x_adv.double() - x.double(), norm)
    worst = int(norms.argmax())
    if norms[worst].item() > eps + atol:
        raise ThreatModelViolation(
            f"sample {worst}: {norm} perturbation {norms[worst].item():.9g} exceeds eps {eps:.9g} "
            f"(tolerance {atol:g})"
        )


def check_logits(logits: Tensor, *, atol: float = 1e-4) -> None:
    """Raise if the model output looks like probabilities rather than logits.

    Why: cross-entropy on softmax outputs saturates, gradients vanish and gradient attacks fail, so
    robust accuracy is overestimated (AutoAttack's ``check_if_softmax``). The test: every row lies
    in [0,1] and sums to 1.

    Shape:
        logits: ``(B, K)``.

    Raises:
        ValueError: If every row is a probability vector.
    """
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        return
    in_unit = bool(((logits >= 0) & (logits <= 1)).all())
    if in_unit and bool(((logits.sum(dim=1) - 1.0).abs() <= atol).all()):
        raise ValueError(
            "the model returns probabilities (rows in [0,1] summing to 1); return logits"
        )
