"""Sanity gates: checks over attack results that catch a broken or gradient-masked evaluation.

A robust-accuracy number is only as good as the attack behind it (Carlini et al., "On Evaluating
Adversarial Robustness", 2019; Athalye et al., ICML 2018). Each gate returns a :class:`GateResult`
with the numbers behind it, and never raises on a failure: the caller decides what a failed gate
blocks, and :func:`format_gates` shows failures prominently. Gates over results are pure functions;
:func:`check_eps_zero`, :func:`check_large_eps`, :func:`check_pgd_convergence`,
:func:`gate_adversarial_examples` and :func:`gate_input_gradients` take the target and run it.

Every gate below can fail; how, and with what tolerance:

- ``eps_zero_path`` (:func:`check_eps_zero`, always run with a target): the attack runs its whole
  code path at eps = 0 (random start, every step and restart, with the non-zero step size it would
  use at the large eps), and must return every input bit for bit with accuracy equal to clean
  accuracy. Fails on a projection that lets a step through, NaN steps, an attack that perturbs at
  eps = 0 (tested with such an attack), or a model whose clean and attacked paths differ.
  The attacks have no eps = 0 shortcut, so the row-based ``eps_zero`` gate (a sweep row at
  eps = 0 vs its clean accuracy, exact equality) fails on the same defects.
- ``large_eps`` (:func:`check_large_eps`, always run with a target, radius
  ``GateThresholds.large_eps``, default 16/255 L-inf as a fraction of [0,1]; also applied to every
  PGD/AutoAttack L-inf row at or above that radius): accuracy must fall to <= 2%. A
  non-adversarially trained classifier has no robustness there, so a higher number means gradient
  masking or a too weak attack (tested with a model that quantises its input, whose gradient is
  zero). FGSM is exempt: a single linearised step can stay well above 2%.
- ``input_gradients``: at least 99% of samples must have a non-zero loss gradient; fails on a
  detached output or a step-function input quantisation (AutoAttack's ``check_zero_gradients``).
- ``pgd_convergence``: doubling the steps, or adding restarts, must not lower accuracy by more than
  0.5 points; otherwise the attack has not converged and the reported number is too optimistic.
  (Restarts can only lower accuracy, since the first restart repeats the single run; the gate
  bounds by how much.)
- ``monotone_in_eps``: tolerance 0 by default. The same images (and, for PGD, the same
  random-start draws) are attacked at every eps, so there is no sampling noise between the points; a
  rise means the attack failed somewhere a smaller ball succeeded.
- ``attack_ordering`` (FGSM >= PGD >= AutoAttack): a weaker attack may beat a stronger one by
  chance on a few samples, so the stronger one may exceed the weaker by at most ``z`` binomial
  standard errors, ``z * sqrt(p * (1 - p) / n)`` with ``p`` the mean of the two (``z = 2``).
- ``adversarial_examples``: AutoAttack's returned points, re-evaluated from scratch, must reproduce
  its robust accuracy (up to ``max_mismatch`` samples) and lie in [0,1] and the eps-ball (``atol``
  1e-6 for float32).

Comparisons that hold by construction are not gates: clean accuracy >= robust accuracy (a sample is
robust only if it is also clean-correct, :mod:`~cslrobust.attacks.evaluate`), so "clean" is not part
of the ordering; and an eps = 0 comparison against an attack that returns its input early (the
former shortcut, now removed).
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from cslrobust.attacks.autoattack import AutoAttackResult
from cslrobust.attacks.checks import ThreatModelViolation
from cslrobust.attacks.evaluate import AttackResult, robust_accuracy
from cslrobust.attacks.pgd import default_step_size
from cslrobust.attacks.registry import AttackFn
from cslrobust.attacks.target import AttackTarget, frozen_eval, input_gradient
from cslrobust.attacks.threat_model import Norm, perturbation_norm, validate_norm
from cslrobust.distributed import sharded_batches

#: The expected strength order, weakest first; AutoAttack rows are named ``"autoattack"``. Clean
#: accuracy is not in it: robust <= clean holds by construction.
ATTACK_ORDER: tuple[str, ...] = ("fgsm", "pgd", "autoattack")

_EPS_MATCH = 1e-12  # two eps values closer than this are the same budget
# autograd's messages when the loss has no graph back to the input (a detached output)
_NO_GRAPH_ERRORS = ("does not require grad", "appears to not have been used in the graph")


@dataclass(frozen=True)
class GateResult:
    """The verdict of one gate.

    Attributes:
        name: Gate name and what it was applied to, e.g. ``"monotone_in_eps[pgd/linf]"``.
        passed: Whether the check holds.
        details: The numbers behind the verdict.
        message: One line, stating the failure (with numbers) or what was checked.
    """

    name: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class GateThresholds:
    """Tolerances of the gates (see the module docstring for the reasoning).

    Attributes:
        monotone_tolerance: Largest allowed rise in accuracy from a smaller to a larger eps.
        max_convergence_drop: Largest allowed accuracy drop from doubling PGD steps or adding
            restarts (0.005 = 0.5 points).
        ordering_z: Standard errors a stronger attack may exceed a weaker one by.
        large_eps: L-inf radius, a fraction of [0,1] (default 16/255), at which
            :func:`check_large_eps` always attacks, and from which accuracy of any row must be near
            zero. Keep it above the largest reported eps.
        large_eps_max_accuracy: The "near zero" threshold (0.02 = 2%).
        large_eps_attacks: Attacks the large-eps gate applies to. Not FGSM: one linearised step
            can legitimately leave a standard model well above 2% at 16/255.
        min_gradient_fraction: Fraction of samples that must have a non-zero input gradient.
        max_reevaluation_mismatch: Samples on which re-evaluated correctness may differ.
        atol: Tolerance for the [0,1] box and the eps-ball (float32 rounding).
    """

    monotone_tolerance: float = 0.0
    max_convergence_drop: float = 0.005
    ordering_z: float = 2.0
    large_eps: float = 16 / 255
    large_eps_max_accuracy: float = 0.02
    large_eps_attacks: tuple[str, ...] = ("pgd", "autoattack")
    min_gradient_fraction: float = 0.99
    max_reevaluation_mismatch: int = 0
    atol: float = 1e-6


class AccuracyPoint(Protocol):
    """One (attack, norm, eps) outcome; :class:`~cslrobust.attacks.sweep.SweepRow` is one."""

    @property
    def attack(self) -> str:
        """Attack name (``"fgsm"``, ``"pgd"``, ``"autoattack"``, ...)."""

    @property
    def norm(self) -> str:
        """``"linf"`` or ``"l2"``."""

    @property
    def eps(self) -> float:
        """Radius of the threat model."""

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the clean inputs."""

    @property
    def robust_accuracy(self) -> float:
        """Accuracy under the attack."""

    @property
    def n(self) -> int:
        """Number of evaluated samples."""


def _suffix(label: str) -> str:
    return f"[{label}]" if label else ""


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def gate_eps_zero(clean_accuracy: float, accuracy_at_zero: float, *, label: str = "") -> GateResult:
    """Accuracy under an attack with eps = 0 must equal clean accuracy exactly.

    Why: at eps = 0 the attack must return the input; any difference means the attack leaves the
    threat model, or the clean and attacked paths differ (normalisation, train mode, dtype).
    """
    passed = accuracy_at_zero == clean_accuracy
    details = {"clean_accuracy": clean_accuracy, "accuracy_at_zero": accuracy_at_zero}
    message = (
        f"accuracy at eps=0 equals clean accuracy ({_pct(clean_accuracy)})"
        if passed
        else f"accuracy at eps=0 is {_pct(accuracy_at_zero)} but clean accuracy is "
        f"{_pct(clean_accuracy)}: the attack leaves the threat model or the paths differ"
    )
    return GateResult(f"eps_zero{_suffix(label)}", passed, details, message)


def gate_monotone_in_eps(
    eps: Sequence[float], accuracy: Sequence[float], *, tolerance: float = 0.0, label: str = ""
) -> GateResult:
    """Robust accuracy must not rise with eps (beyond ``tolerance``) for one attack and norm.

    Every pair ``eps_i < eps_j`` is checked (against the running minimum), not only neighbours.
    """
    if len(eps) != len(accuracy):
        raise ValueError(f"eps and accuracy differ in length: {len(eps)} vs {len(accuracy)}")
    pairs = sorted(zip(eps, accuracy, strict=True))
    violations: list[dict[str, float]] = []
    best_eps, best = math.nan, math.inf
    for e, a in pairs:
        if a > best + tolerance:
            violations.append({"eps_low": best_eps, "eps_high": e, "rise": a - best})
        if a < best:
            best_eps, best = e, a
    details = {
        "eps": [e for e, _ in pairs],
        "accuracy": [a for _, a in pairs],
        "tolerance": tolerance,
        "violations": violations,
    }
    if not violations:
        return GateResult(
            f"monotone_in_eps{_suffix(label)}",
            True,
            details,
            f"accuracy non-increasing over {len(pairs)} eps values",
        )
    worst = max(violations, key=lambda v: v["rise"])
    message = (
        f"accuracy rises by {_pct(worst['rise'])} from eps={worst['eps_low']:.4g} to "
        f"eps={worst['eps_high']:.4g} ({len(violations)} violation(s)): the attack is not reliable"
    )
    return GateResult(f"monotone_in_eps{_suffix(label)}", False, details, message)


def gate_pgd_convergence(
    accuracy: float,
    accuracy_double_steps: float,
    *,
    steps: int,
    accuracy_restarts: float | None = None,
    restarts: int | None = None,
    max_drop: float = 0.005,
    label: str = "",
) -> GateResult:
    """PGD has converged if 2x steps (and restarts) lower accuracy by at most ``max_drop``.

    Args:
        accuracy: Robust accuracy of PGD with ``steps`` steps.
        accuracy_double_steps: Robust accuracy of PGD with ``2 * steps`` steps.
        steps: The base number of steps.
        accuracy_restarts: Optional robust accuracy of PGD with ``steps`` steps and ``restarts``.
        restarts: The number of restarts behind ``accuracy_restarts``.
        max_drop: Largest tolerated drop (0.005 = 0.5 points).
        label: Shown in the gate name.
    """
    drops = {"double_steps": accuracy - accuracy_double_steps}
    if accuracy_restarts is not None:
        drops["restarts"] = accuracy - accuracy_restarts
    details: dict[str, Any] = {
        "steps": steps,
        "accuracy": accuracy,
        "accuracy_double_steps": accuracy_double_steps,
        "accuracy_restarts": accuracy_restarts,
        "restarts": restarts,
        "drops": drops,
        "max_drop": max_drop,
    }
    failing = {k: v for k, v in drops.items() if v > max_drop}
    if not failing:
        return GateResult(
            f"pgd_convergence{_suffix(label)}",
            True,
            details,
            f"PGD-{steps} converged: largest drop {_pct(max(drops.values()))} <= {_pct(max_drop)}",
        )
    parts = []
    if "double_steps" in failing:
        parts.append(f"PGD-{2 * steps} is {_pct(failing['double_steps'])} lower than PGD-{steps}")
    if "restarts" in failing:
        parts.append(f"{restarts} restarts are {_pct(failing['restarts'])} lower")
    message = f"PGD-{steps} not converged: {'; '.join(parts)} (limit {_pct(max_drop)})"
    return GateResult(f"pgd_convergence{_suffix(label)}", False, details, message)


def binomial_tolerance(p: float, n: int, z: float = 2.0) -> float:
    """``z`` standard errors of an accuracy ``p`` estimated on ``n`` samples."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    p = min(max(p, 0.0), 1.0)
    return z * math.sqrt(p * (1.0 - p) / n)


def gate_attack_ordering(
    accuracies: Mapping[str, float],
    n: int,
    *,
    order: Sequence[str] = ATTACK_ORDER,
    z: float = 2.0,
    label: str = "",
) -> GateResult:
    """Stronger attacks must not leave a higher accuracy than weaker ones, beyond sampling noise.

    Every pair in ``order`` present in ``accuracies`` (weaker first) is checked:
    ``acc(stronger) <= acc(weaker) + z * sqrt(p (1 - p) / n)``, ``p`` the mean of the two. Names
    not in ``order`` (such as ``"clean"``, which no attack can exceed by construction) are ignored.

    Args:
        accuracies: Name -> accuracy, e.g. ``{"fgsm": .4, "pgd": .2, "autoattack": .1}``.
        n: Number of evaluated samples.
        order: Names from weakest to strongest.
        z: Standard errors of slack.
        label: Shown in the gate name.
    """
    present = [name for name in order if name in accuracies]
    violations: list[dict[str, Any]] = []
    for i, weaker in enumerate(present):
        for stronger in present[i + 1 :]:
            a, b = accuracies[weaker], accuracies[stronger]
            tol = binomial_tolerance((a + b) / 2, n, z)
            if b > a + tol:
                violations.append(
                    {"weaker": weaker, "stronger": stronger, "excess": b - a, "tolerance": tol}
                )
    details = {
        "accuracies": {k: accuracies[k] for k in present},
        "n": n,
        "z": z,
        "violations": violations,
    }
    if not violations:
        return GateResult(
            f"attack_ordering{_suffix(label)}",
            True,
            details,
            f"order {' >= '.join(present)} holds within {z:g} standard errors",
        )
    worst = max(violations, key=lambda v: v["excess"] - v["tolerance"])
    message = (
        f"{worst['stronger']} leaves {_pct(worst['excess'])} more accuracy than {worst['weaker']} "
        f"(noise allows {_pct(worst['tolerance'])}): the stronger attack is failing"
    )
    return GateResult(f"attack_ordering{_suffix(label)}", False, details, message)


def gate_large_eps(
    accuracy: float, *, eps: float, max_accuracy: float = 0.02, label: str = ""
) -> GateResult:
    """At a large eps (16/255 L-inf) a non-adversarially trained model must be near 0% accurate."""
    passed = accuracy <= max_accuracy
    details = {"eps": eps, "accuracy": accuracy, "max_accuracy": max_accuracy}
    message = (
        f"accuracy {_pct(accuracy)} <= {_pct(max_accuracy)} at eps={eps:.4g}"
        if passed
        else f"accuracy {_pct(accuracy)} at eps={eps:.4g} exceeds {_pct(max_accuracy)}: "
        "gradient masking suspected"
    )
    return GateResult(f"large_eps{_suffix(label)}", passed, details, message)


def gate_adversarial_examples(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    x_adv: Tensor,
    *,
    eps: float,
    norm: Norm,
    reported_robust_correct: Tensor | None = None,
    reported_robust_accuracy: float | None = None,
    max_mismatch: int = 0,
    atol: float = 1e-6,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    label: str = "",
) -> GateResult:
    """Re-evaluate returned adversarial examples from scratch; check the box, the ball, the number.

    A sample is robust if the target classifies both ``images[i]`` and ``x_adv[i]`` correctly.
    The re-evaluated robust accuracy must match the reported one: per sample when
    ``reported_robust_correct`` is given (up to ``max_mismatch`` samples), else in count
    (``round(reported_robust_accuracy * N)``, same slack).

    Shape:
        images, x_adv: ``(N, C, ...)``; labels: ``(N,)``; reported_robust_correct: ``(N,)`` bool.
    """
    norm = validate_norm(norm)
    if x_adv.shape != images.shape:
        raise ValueError(f"x_adv has shape {tuple(x_adv.shape)}, images {tuple(images.shape)}")
    if reported_robust_correct is None and reported_robust_accuracy is None:
        raise ValueError("give reported_robust_correct or reported_robust_accuracy")
    n = images.shape[0]
    device = torch.device(device)

    def reevaluate(position: int, rows: slice) -> Tensor:
        """(B, 5) float64: robust, perturbation norm, min pixel, max pixel, finite."""
        del position
        x = images[rows].to(device)
        xa = x_adv[rows].to(device)
        y = labels[rows].to(device)
        flat = xa.flatten(1).double()
        clean_ok = frozen(x).argmax(dim=1) == y
        # The wrapped model directly: an out-of-box x_adv is reported below, not raised on.
        adv_ok = frozen.model(xa).argmax(dim=1) == y
        return torch.stack(
            [
                (clean_ok & adv_ok).double(),
                perturbation_norm(xa.double() - x.double(), norm),
                flat.amin(dim=1),
                flat.amax(dim=1),
                torch.isfinite(flat).all(dim=1).double(),
            ],
            dim=1,
        )

    with _as_target(target) as frozen, torch.no_grad():
        table = sharded_batches(n, batch_size, reevaluate).cpu()  # (N, 5)
    robust = table[:, 0].bool()
    pert = table[:, 1]
    finite = bool(table[:, 4].all())
    low, high = float(table[:, 2].min()), float(table[:, 3].max())
    n_robust = int(robust.sum())
    if reported_robust_correct is not None:
        mismatch = int((robust != reported_robust_correct.cpu().bool()).sum())
        reported_acc = float(reported_robust_correct.float().mean())
    else:
        assert reported_robust_accuracy is not None
        reported_acc = reported_robust_accuracy
        mismatch = abs(n_robust - round(reported_robust_accuracy * n))
    n_outside_ball = int((pert > eps + atol).sum())
    in_box = finite and low >= -atol and high <= 1.0 + atol
    details = {
        "reevaluated_robust_accuracy": n_robust / n,
        "reported_robust_accuracy": reported_acc,
        "mismatched_samples": mismatch,
        "max_mismatch": max_mismatch,
        "max_perturbation": float(pert.max()),
        "eps": eps,
        "norm": norm,
        "n_outside_ball": n_outside_ball,
        "min_pixel": low,
        "max_pixel": high,
        "finite": finite,
    }
    problems = []
    if mismatch > max_mismatch:
        problems.append(
            f"re-evaluated robust accuracy {_pct(n_robust / n)} differs from the reported "
            f"{_pct(reported_acc)} on {mismatch} sample(s)"
        )
    if n_outside_ball:
        problems.append(
            f"{n_outside_ball} sample(s) outside the {norm} eps-ball (max perturbation "
            f"{float(pert.max()):.6g} > eps {eps:.6g})"
        )
    if not in_box:
        problems.append(f"x_adv leaves [0,1] (min {low:.6g}, max {high:.6g}, finite {finite})")
    name = f"adversarial_examples{_suffix(label)}"
    if problems:
        return GateResult(name, False, details, "; ".join(problems))
    return GateResult(
        name,
        True,
        details,
        f"x_adv in [0,1] and the eps-ball; re-evaluation reproduces {_pct(n_robust / n)}",
    )


def gate_input_gradients(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    min_fraction: float = 0.99,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    label: str = "",
) -> GateResult:
    """At least ``min_fraction`` of samples must have a non-zero cross-entropy input gradient.

    Zero gradients (a detached output, a step function, saturated softmax in float32) make gradient
    attacks fail silently and robust accuracy look high: the classic gradient-masking case.
    """
    device = torch.device(device)

    def zero_gradient(position: int, rows: slice) -> Tensor:
        """(B,) float64: 1 where the input gradient is exactly zero."""
        del position
        x = images[rows].to(device)
        y = labels[rows].to(device)
        try:
            _, _, grad = input_gradient(frozen, x, y)
        except RuntimeError as error:
            if not any(text in str(error) for text in _NO_GRAPH_ERRORS):
                raise
            grad = torch.zeros_like(x)  # the output does not depend on x through autograd
        return (grad.flatten(1).abs().sum(dim=1) == 0).double()

    with _as_target(target) as frozen:
        zero = sharded_batches(images.shape[0], batch_size, zero_gradient).cpu().bool()
    n = zero.numel()
    fraction = 1.0 - int(zero.sum()) / n
    details = {
        "nonzero_fraction": fraction,
        "n_zero": int(zero.sum()),
        "n": n,
        "min_fraction": min_fraction,
        "zero_indices": zero.nonzero().squeeze(1)[:20].tolist(),
    }
    passed = fraction >= min_fraction
    message = (
        f"{_pct(fraction)} of samples have a non-zero input gradient"
        if passed
        else f"only {_pct(fraction)} of samples have a non-zero input gradient (need "
        f"{_pct(min_fraction)}): gradient masking, gradient attacks are unreliable"
    )
    return GateResult(f"input_gradients{_suffix(label)}", passed, details, message)


@contextlib.contextmanager
def _as_target(model: nn.Module) -> Iterator[AttackTarget]:
    """Yield an :class:`AttackTarget` for any model; a plain model is restored on exit."""
    if isinstance(model, AttackTarget):
        yield model
        return
    with frozen_eval(model):
        yield AttackTarget(model)


@dataclass(frozen=True)
class GateAttack:
    """The attack behind the reported numbers, as the always-run gates re-run it.

    Attributes:
        attack: Name in :data:`~cslrobust.attacks.registry.ATTACKS`, or an attack function.
        norm: ``"linf"`` or ``"l2"``; the large-eps gate runs for L-inf attacks only.
        steps: Gradient steps per restart.
        relative_step_size: Step size as a multiple of eps; None: ``2.5 / steps`` (Madry).
        restarts: Random restarts.
    """

    attack: str | AttackFn = "pgd"
    norm: Norm = "linf"
    steps: int = 10
    relative_step_size: float | None = None
    restarts: int = 1

    @property
    def name(self) -> str:
        """The attack's registry name (or the function's name)."""
        if isinstance(self.attack, str):
            return self.attack
        return str(getattr(self.attack, "__name__", "attack"))

    def step_size(self, eps: float) -> float:
        """The step length used at radius ``eps``."""
        if self.relative_step_size is not None:
            return self.relative_step_size * eps
        return default_step_size(eps, self.steps)


def _attack_or_violation(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    settings: GateAttack,
    *,
    eps: float,
    step_size: float,
    seed: int,
    batch_size: int,
    device: str | torch.device,
) -> AttackResult | ThreatModelViolation:
    """:func:`robust_accuracy` with random start; a threat-model violation is returned, not raised."""
    try:
        return robust_accuracy(
            target,
            images,
            labels,
            attack=settings.attack,
            eps=eps,
            norm=settings.norm,
            steps=settings.steps,
            step_size=step_size,
            random_start=True,
            restarts=settings.restarts,
            seed=seed,
            batch_size=batch_size,
            device=device,
        )
    except ThreatModelViolation as violation:
        return violation


def check_eps_zero(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    settings: GateAttack | None = None,
    *,
    step_eps: float = 16 / 255,
    seed: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> GateResult:
    """Run the attack's whole code path at eps = 0; it must return every input exactly.

    Random start, every step and restart run, with the step size the attack uses at ``step_eps``
    (non-zero, so each step moves the point and the projection must bring it back). Passes iff the
    largest perturbation is exactly 0 and accuracy equals clean accuracy. Fails on an attack that
    perturbs at eps = 0 (a broken projection, NaN steps), a point outside [0,1], or a model whose
    clean and attacked paths differ.

    Args:
        target: An :class:`AttackTarget` or a model from [0,1] inputs to logits.
        images: Inputs in [0,1]; labels: integer labels.
        labels: Integer labels.
        settings: The attack; None: PGD-10, L-inf, default step size.
        step_eps: Radius whose step size the steps use (the large-eps gate's radius).
        seed: Seeds the per-batch attack streams.
        batch_size: Samples per batch.
        device: Where the batches are attacked.
    """
    settings = settings or GateAttack()
    step_size = settings.step_size(step_eps)
    name = f"eps_zero_path[{settings.name}/{settings.norm}]"
    details: dict[str, Any] = {
        "steps": settings.steps,
        "restarts": settings.restarts,
        "step_size": step_size,
    }
    result = _attack_or_violation(
        target,
        images,
        labels,
        settings,
        eps=0.0,
        step_size=step_size,
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
    if isinstance(result, ThreatModelViolation):
        details["error"] = str(result)
        return GateResult(
            name, False, details, f"at eps=0 the attack leaves the threat model: {result}"
        )
    details.update(
        clean_accuracy=result.clean_accuracy,
        accuracy_at_zero=result.robust_accuracy,
        max_perturbation=result.max_perturbation,
    )
    problems = []
    if result.max_perturbation != 0.0:
        problems.append(f"x_adv differs from x by up to {result.max_perturbation:.3g} at eps=0")
    if result.robust_accuracy != result.clean_accuracy:
        problems.append(
            f"accuracy at eps=0 is {_pct(result.robust_accuracy)} but clean accuracy is "
            f"{_pct(result.clean_accuracy)}"
        )
    if problems:
        return GateResult(name, False, details, "; ".join(problems))
    return GateResult(
        name,
        True,
        details,
        f"the whole attack path at eps=0 (random start, steps={settings.steps}, "
        f"restarts={settings.restarts}) returns the input; accuracy equals clean "
        f"({_pct(result.clean_accuracy)})",
    )


def check_large_eps(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    settings: GateAttack | None = None,
    *,
    eps: float = 16 / 255,
    max_accuracy: float = 0.02,
    seed: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> GateResult:
    """Attack at the large radius ``eps`` (a fraction of [0,1]) and apply :func:`gate_large_eps`.

    Args:
        target: An :class:`AttackTarget` or a model from [0,1] inputs to logits.
        images: Inputs in [0,1].
        labels: Integer labels.
        settings: The attack as used for the reported numbers; None: PGD-10, L-inf.
        eps: The radius, e.g. 16/255.
        max_accuracy: Largest accepted accuracy (0.02 = 2%).
        seed: Seeds the per-batch attack streams.
        batch_size: Samples per batch.
        device: Where the batches are attacked.
    """
    settings = settings or GateAttack()
    label = f"{settings.name}/{settings.norm}/eps={eps:.4g}"
    result = _attack_or_violation(
        target,
        images,
        labels,
        settings,
        eps=eps,
        step_size=settings.step_size(eps),
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
    if isinstance(result, ThreatModelViolation):
        return GateResult(
            f"large_eps{_suffix(label)}",
            False,
            {"eps": eps, "error": str(result)},
            f"the attack leaves the threat model: {result}",
        )
    gate = gate_large_eps(result.robust_accuracy, eps=eps, max_accuracy=max_accuracy, label=label)
    details = {
        **gate.details,
        "clean_accuracy": result.clean_accuracy,
        "steps": settings.steps,
        "restarts": settings.restarts,
        "step_size": settings.step_size(eps),
    }
    return GateResult(gate.name, gate.passed, details, gate.message)


@dataclass(frozen=True)
class ConvergenceSettings:
    """Where to test PGD convergence: one (norm, eps), base steps and the restart count."""

    eps: float
    norm: Norm = "linf"
    steps: int = 10
    restarts: int = 5


def check_pgd_convergence(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    settings: ConvergenceSettings,
    *,
    seed: int,
    max_drop: float = 0.005,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> GateResult:
    """Run PGD-k, PGD-2k and PGD-k with restarts (default step sizes) and apply the gate."""

    def run(steps: int, restarts: int) -> float:
        return robust_accuracy(
            target,
            images,
            labels,
            attack="pgd",
            eps=settings.eps,
            norm=settings.norm,
            steps=steps,
            restarts=restarts,
            seed=seed,
            batch_size=batch_size,
            device=device,
        ).robust_accuracy

    base = run(settings.steps, 1)
    doubled = run(2 * settings.steps, 1)
    restarted = run(settings.steps, settings.restarts) if settings.restarts > 1 else None
    return gate_pgd_convergence(
        base,
        doubled,
        steps=settings.steps,
        accuracy_restarts=restarted,
        restarts=settings.restarts if restarted is not None else None,
        max_drop=max_drop,
        label=f"{settings.norm}/eps={settings.eps:.4g}",
    )


@dataclass(frozen=True)
class AccuracyRow:
    """A plain :class:`AccuracyPoint` (e.g. a stored attack row, or an AutoAttack result)."""

    attack: str
    norm: str
    eps: float
    clean_accuracy: float
    robust_accuracy: float
    n: int


def _autoattack_row(result: AutoAttackResult) -> AccuracyRow:
    return AccuracyRow(
        "autoattack",
        result.norm,
        result.eps,
        result.clean_accuracy,
        result.robust_accuracy,
        result.n,
    )


def _eps_key(eps: float) -> float:
    return round(eps / _EPS_MATCH) * _EPS_MATCH


def run_gates(
    rows: Iterable[AccuracyPoint] = (),
    *,
    autoattack: Sequence[AutoAttackResult] = (),
    target: nn.Module | None = None,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    convergence: Sequence[ConvergenceSettings] = (),
    gate_attacks: Sequence[GateAttack] | None = None,
    seed: int = 0,
    thresholds: GateThresholds | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> list[GateResult]:
    """Apply every gate the given results allow.

    From ``rows`` (and the AutoAttack results, as attack ``"autoattack"``):

    - ``eps_zero`` for each row at eps = 0;
    - ``monotone_in_eps`` per (attack, norm) with at least two eps values;
    - ``attack_ordering`` per (norm, eps > 0) with at least two of FGSM/PGD/AutoAttack;
    - ``large_eps`` for each L-inf row of an attack in ``thresholds.large_eps_attacks`` (PGD,
      AutoAttack) at eps >= ``thresholds.large_eps``.

    With ``target``, ``images`` and ``labels`` (the images the results were computed on):

    - ``eps_zero_path`` for each of ``gate_attacks`` (None: PGD-10 L-inf), always;
    - ``large_eps`` at ``thresholds.large_eps`` for each L-inf one of ``gate_attacks`` in
      ``thresholds.large_eps_attacks``, always;
    - ``adversarial_examples`` for each AutoAttack result (its ``x_adv``);
    - ``input_gradients`` once;
    - ``pgd_convergence`` for each entry of ``convergence``.

    Pass as ``gate_attacks`` the attack settings the reported numbers were computed with.

    Raises:
        ValueError: If two rows share (attack, norm, eps), or rows disagree on n for one budget.
    """
    th = thresholds or GateThresholds()
    points: list[AccuracyPoint] = [*rows, *(_autoattack_row(r) for r in autoattack)]
    seen: set[tuple[str, str, float]] = set()
    by_curve: dict[tuple[str, str], list[AccuracyPoint]] = defaultdict(list)
    by_budget: dict[tuple[str, float], list[AccuracyPoint]] = defaultdict(list)
    for p in points:
        key = (p.attack, p.norm, _eps_key(p.eps))
        if key in seen:
            raise ValueError(f"two results for attack {p.attack!r}, {p.norm}, eps={p.eps:.6g}")
        seen.add(key)
        by_curve[(p.attack, p.norm)].append(p)
        by_budget[(p.norm, _eps_key(p.eps))].append(p)

    gates: list[GateResult] = []
    for p in points:
        if p.eps == 0.0:
            gates.append(
                gate_eps_zero(p.clean_accuracy, p.robust_accuracy, label=f"{p.attack}/{p.norm}")
            )
    for (attack, norm), curve in by_curve.items():
        if len(curve) >= 2:
            gates.append(
                gate_monotone_in_eps(
                    [p.eps for p in curve],
                    [p.robust_accuracy for p in curve],
                    tolerance=th.monotone_tolerance,
                    label=f"{attack}/{norm}",
                )
            )
    for (norm, eps), budget in sorted(by_budget.items()):
        if eps == 0.0:
            continue
        sizes = {p.n for p in budget}
        if len(sizes) != 1:
            raise ValueError(f"results at {norm} eps={eps:.6g} have different n: {sorted(sizes)}")
        accuracies = {p.attack: p.robust_accuracy for p in budget}
        if sum(name in accuracies for name in ATTACK_ORDER) >= 2:
            gates.append(
                gate_attack_ordering(
                    accuracies, sizes.pop(), z=th.ordering_z, label=f"{norm}/eps={eps:.4g}"
                )
            )
    for p in points:
        if (
            p.attack in th.large_eps_attacks
            and p.norm == "linf"
            and p.eps >= th.large_eps - _EPS_MATCH
        ):
            gates.append(
                gate_large_eps(
                    p.robust_accuracy,
                    eps=p.eps,
                    max_accuracy=th.large_eps_max_accuracy,
                    label=f"{p.attack}/{p.norm}",
                )
            )
    if target is not None and images is not None and labels is not None:
        common: dict[str, Any] = {"seed": seed, "batch_size": batch_size, "device": device}
        for gate_attack in (GateAttack(),) if gate_attacks is None else gate_attacks:
            gates.append(
                check_eps_zero(target, images, labels, gate_attack, step_eps=th.large_eps, **common)
            )
            if gate_attack.norm == "linf" and gate_attack.name in th.large_eps_attacks:
                gates.append(
                    check_large_eps(
                        target,
                        images,
                        labels,
                        gate_attack,
                        eps=th.large_eps,
                        max_accuracy=th.large_eps_max_accuracy,
                        **common,
                    )
                )
        for result in autoattack:
            gates.append(
                gate_adversarial_examples(
                    target,
                    images,
                    labels,
                    result.x_adv,
                    eps=result.eps,
                    norm=result.norm,
                    reported_robust_correct=result.robust_correct,
                    max_mismatch=th.max_reevaluation_mismatch,
                    atol=th.atol,
                    batch_size=batch_size,
                    device=device,
                    label=f"autoattack/{result.norm}/eps={result.eps:.4g}",
                )
            )
        gates.append(
            gate_input_gradients(
                target,
                images,
                labels,
                min_fraction=th.min_gradient_fraction,
                batch_size=batch_size,
                device=device,
            )
        )
        for settings in convergence:
            gates.append(
                check_pgd_convergence(
                    target,
                    images,
                    labels,
                    settings,
                    seed=seed,
                    max_drop=th.max_convergence_drop,
                    batch_size=batch_size,
                    device=device,
                )
            )
    return gates


def format_gates(gates: Sequence[GateResult]) -> str:
    """A plain-text report: a summary line, failures first (``GATE FAILED: ...``), then passes."""
    failed = [g for g in gates if not g.passed]
    lines = [
        f"sanity gates: {len(gates) - len(failed)} passed, {len(failed)} FAILED"
        if failed
        else f"sanity gates: all {len(gates)} passed"
    ]
    lines += [f"GATE FAILED: {g.name}: {g.message}" for g in failed]
    lines += [f"gate passed: {g.name}: {g.message}" for g in gates if g.passed]
    return "\n".join(lines)
