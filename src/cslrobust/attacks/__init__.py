"""Adversarial attacks on frozen eval-mode models, and clean/robust accuracy evaluation.

Importing this package registers the built-in attacks (``fgsm``, ``pgd``) in :data:`ATTACKS`.
AutoAttack (:mod:`~cslrobust.attacks.autoattack`) is an adapter to the reference ``pyautoattack``,
imported when first used; :mod:`~cslrobust.attacks.gates` holds the sanity gates and
:mod:`~cslrobust.attacks.sweep` the eps sweeps, clean-accuracy-free measures and plots.
"""

from cslrobust.attacks.autoattack import (
    AUTOATTACK_ATTACKS,
    AutoAttackBudget,
    AutoAttackResult,
    run_autoattack,
)
from cslrobust.attacks.checks import ThreatModelViolation, check_logits, check_perturbation
from cslrobust.attacks.evaluate import AttackResult, clean_accuracy, robust_accuracy
from cslrobust.attacks.fgsm import fgsm
from cslrobust.attacks.gates import (
    AccuracyRow,
    ConvergenceSettings,
    GateAttack,
    GateResult,
    GateThresholds,
    check_eps_zero,
    check_large_eps,
    format_gates,
    run_gates,
)
from cslrobust.attacks.pgd import default_step_size, pgd
from cslrobust.attacks.registry import ATTACKS, AttackFn
from cslrobust.attacks.sweep import (
    DEFAULT_L2_EPS,
    DEFAULT_LINF_EPS,
    MinNormResult,
    SweepRow,
    SweepSummary,
    autoattack_sweep,
    default_eps,
    eps50,
    minimal_perturbation,
    plot_sweep,
    summarize_sweep,
    sweep,
)
from cslrobust.attacks.target import AttackTarget, frozen_eval, input_gradient
from cslrobust.attacks.threat_model import NORMS, Norm

__all__ = [
    "ATTACKS",
    "AccuracyRow",
    "AUTOATTACK_ATTACKS",
    "DEFAULT_L2_EPS",
    "DEFAULT_LINF_EPS",
    "NORMS",
    "AttackFn",
    "AttackResult",
    "AttackTarget",
    "AutoAttackBudget",
    "AutoAttackResult",
    "ConvergenceSettings",
    "GateAttack",
    "GateResult",
    "GateThresholds",
    "MinNormResult",
    "Norm",
    "SweepRow",
    "SweepSummary",
    "ThreatModelViolation",
    "autoattack_sweep",
    "check_eps_zero",
    "check_large_eps",
    "check_logits",
    "check_perturbation",
    "clean_accuracy",
    "default_eps",
    "default_step_size",
    "eps50",
    "fgsm",
    "format_gates",
    "frozen_eval",
    "input_gradient",
    "minimal_perturbation",
    "pgd",
    "plot_sweep",
    "robust_accuracy",
    "run_autoattack",
    "run_gates",
    "summarize_sweep",
    "sweep",
]
