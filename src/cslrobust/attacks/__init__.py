"""Adversarial attacks on frozen eval-mode models, and clean/robust accuracy evaluation.

Importing this package registers the built-in attacks (``fgsm``, ``pgd``) in :data:`ATTACKS`.
"""

from cslrobust.attacks.checks import check_logits, check_perturbation
from cslrobust.attacks.evaluate import AttackResult, clean_accuracy, robust_accuracy
from cslrobust.attacks.fgsm import fgsm
from cslrobust.attacks.pgd import default_step_size, pgd
from cslrobust.attacks.registry import ATTACKS, AttackFn
from cslrobust.attacks.target import AttackTarget, frozen_eval, input_gradient
from cslrobust.attacks.threat_model import NORMS, Norm

__all__ = [
    "ATTACKS",
    "NORMS",
    "AttackFn",
    "AttackResult",
    "AttackTarget",
    "Norm",
    "check_logits",
    "check_perturbation",
    "clean_accuracy",
    "default_step_size",
    "fgsm",
    "frozen_eval",
    "input_gradient",
    "pgd",
    "robust_accuracy",
]
