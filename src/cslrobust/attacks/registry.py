"""The attack registry and the uniform signature its entries share.

Every entry takes the full set of attack settings, so the evaluation loop calls any attack the same
way; an attack ignores the settings it has no use for (FGSM ignores the step settings, restarts and
the generator). Adding an attack: a new ``attacks/<name>.py`` with one
``@ATTACKS.register("<name>")`` thin wrapper, imported in ``attacks/__init__.py``.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from cslrobust.attacks.target import AttackTarget
from cslrobust.attacks.threat_model import Norm
from cslrobust.registry import Registry


class AttackFn(Protocol):
    """An attack: returns ``x_adv`` in [0,1] and within ``eps`` of ``x`` in ``norm``.

    Shape:
        x: ``(B, C, ...)`` in [0,1]; y: ``(B,)`` integer labels. Returns the shape of ``x``.
    """

    def __call__(
        self,
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
        """Attack ``x`` (labels ``y``) and return ``x_adv``."""
        ...


ATTACKS: Registry[AttackFn] = Registry("attack")
