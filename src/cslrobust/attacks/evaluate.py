"""Clean and robust accuracy of an :class:`AttackTarget` over a whole tensor data set.

Protocol (fixed here, documented for reports):

- Robust accuracy is the fraction of samples classified correctly both clean *and* after the attack,
  so ``robust_correct <= clean_correct`` element-wise and robust accuracy <= clean accuracy by
  construction; an already-misclassified sample counts as an attack success, not a robust sample.
- Robust correctness is recomputed from scratch on the attack's returned ``x_adv`` with the same
  target, never taken from the attack's internal bookkeeping.
- Every batch is checked: ``x_adv`` must lie in [0,1] and the eps-ball; the outputs must be logits.
- Batch ``i`` draws its random starts from ``make_generator(seed, "attack", i)``: results are
  reproducible, independent of every other random stream, and use the same draws at every eps
  (common random numbers make eps sweeps less noisy). They do depend on ``batch_size``.
- Clean accuracy goes through the same loop with the identity in place of the attack.
- Several processes (torchrun): batches are sharded across ranks (batch ``i`` on rank
  ``i % world_size``, with its own stream ``i``) and the per-sample outcomes gathered back in order,
  so every rank returns the :class:`AttackResult` one process would, and no batch runs twice.
- Both entry points accept an :class:`AttackTarget` or a plain model; a plain model is wrapped for
  the duration of the call inside :func:`frozen_eval`, so its training and ``requires_grad`` flags
  are restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cslrobust.attacks.checks import check_logits, check_perturbation
from cslrobust.attacks.pgd import default_step_size
from cslrobust.attacks.registry import ATTACKS, AttackFn
from cslrobust.attacks.target import AttackTarget, frozen_eval
from cslrobust.attacks.threat_model import Norm, perturbation_norm, validate_norm
from cslrobust.distributed import sharded_batches
from cslrobust.seeding import make_generator

# (target, batch index, clean batch, labels) -> attacked batch
_Perturb = Callable[[AttackTarget, int, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AttackResult:
    """Per-sample outcomes and summary numbers of one attack over a data set.

    Attributes:
        clean_correct: ``(N,)`` bool on CPU, prediction on the clean input is right.
        robust_correct: ``(N,)`` bool on CPU, right on the clean input *and* on ``x_adv``.
        clean_accuracy: Mean of ``clean_correct``.
        robust_accuracy: Mean of ``robust_correct``.
        attack_success_rate: Fraction of initially correct samples the attack flipped (NaN if none
            was correct); independent of clean accuracy.
        max_perturbation: Largest ``norm`` of ``x_adv - x`` observed (0.0 for clean evaluation).
        n: Number of samples.
    """

    clean_correct: Tensor
    robust_correct: Tensor
    clean_accuracy: float
    robust_accuracy: float
    attack_success_rate: float
    max_perturbation: float
    n: int

    def metrics(self) -> dict[str, float]:
        """The scalar fields, for long-format result rows."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attack_success_rate": self.attack_success_rate,
            "max_perturbation": self.max_perturbation,
            "n": float(self.n),
        }


def _evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    perturb: _Perturb | None,
    eps: float,
    norm: Norm,
    batch_size: int,
    device: str | torch.device,
    progress: bool,
    description: str,
) -> AttackResult:
    """The one evaluation loop: clean predictions, optional attack, checks, robust predictions."""
    if images.dim() < 2 or images.shape[0] == 0 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"expected images (N, C, ...) with N > 0 and labels (N,), "
            f"got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with contextlib.nullcontext() if isinstance(model, AttackTarget) else frozen_eval(model):
        target = model if isinstance(model, AttackTarget) else AttackTarget(model)
        result = _evaluate_target(
            target,
            images,
            labels,
            perturb=perturb,
            eps=eps,
            norm=norm,
            batch_size=batch_size,
            device=torch.device(device),
            progress=progress,
            description=description,
        )
    return result


def _evaluate_target(
    target: AttackTarget,
    images: Tensor,
    labels: Tensor,
    *,
    perturb: _Perturb | None,
    eps: float,
    norm: Norm,
    batch_size: int,
    device: torch.device,
    progress: bool,
    description: str,
) -> AttackResult:
    """The loop of :func:`_evaluate` on a frozen target, sharded across ranks by whole batches."""
    n = images.shape[0]

    def outcome(batch_index: int, rows: slice) -> Tensor:
        """(B, 3) float64: clean correct, robust correct, perturbation norm."""
        x = images[rows].to(device, non_blocking=True)
        y = labels[rows].to(device, non_blocking=True)
        with torch.no_grad():
            logits = target(x)
        check_logits(logits)
        clean_correct = logits.argmax(dim=1) == y
        if perturb is None:
            robust_correct, size = clean_correct, torch.zeros_like(y, dtype=torch.float64)
        else:
            x_adv = perturb(target, batch_index, x, y)
            check_perturbation(x, x_adv, eps, norm)
            size = perturbation_norm(x_adv.double() - x.double(), norm)
            with torch.no_grad():
                robust_correct = clean_correct & (target(x_adv).argmax(dim=1) == y)
        return torch.stack([clean_correct.double(), robust_correct.double(), size], dim=1)

    table = sharded_batches(
        n, batch_size, outcome, description=description if progress else None
    ).cpu()  # (N, 3)
    clean = table[:, 0].bool()
    robust = table[:, 1].bool()
    n_clean = int(clean.sum())
    n_flipped = int((clean & ~robust).sum())
    return AttackResult(
        clean_correct=clean,
        robust_correct=robust,
        clean_accuracy=n_clean / n,
        robust_accuracy=int(robust.sum()) / n,
        attack_success_rate=n_flipped / n_clean if n_clean > 0 else math.nan,
        max_perturbation=float(table[:, 2].max()),
        n=n,
    )


def robust_accuracy(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    attack: str | AttackFn,
    eps: float,
    norm: Norm = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    seed: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> AttackResult:
    """Attack every sample with a registered attack and report clean and robust correctness.

    See the module docstring for the protocol. The target must already be on ``device``; each batch
    is moved there.

    Args:
        target: An :class:`AttackTarget`, or a model from [0,1] inputs to logits (frozen for the
            call, then restored).
        images: Inputs in [0,1] (any device).
        labels: Integer labels.
        attack: Name in :data:`~cslrobust.attacks.registry.ATTACKS` (``"fgsm"``, ``"pgd"``), or an
            :class:`~cslrobust.attacks.registry.AttackFn` (sanity gates, tests).
        eps: Radius of the threat model, a fraction of the [0,1] range (e.g. 8/255).
        norm: ``"linf"`` or ``"l2"``.
        steps: Gradient steps per restart (iterative attacks).
        step_size: Step length; ``None`` means :func:`~cslrobust.attacks.pgd.default_step_size`.
        random_start: Start from a uniform point in the ball (iterative attacks).
        restarts: Random restarts (iterative attacks).
        seed: Run seed; the per-batch attack generators derive from it.
        batch_size: Samples per attacked batch.
        device: Where the batches are attacked.
        progress: Show a tqdm progress bar.

    Returns:
        An :class:`AttackResult`.

    Shape:
        images: ``(N, C, ...)``; labels: ``(N,)``.

    Raises:
        ConfigError: If ``attack`` is not registered.
        ValueError: On invalid arguments, or when a batch fails a sanity check
            (:class:`~cslrobust.attacks.checks.ThreatModelViolation` for ``x_adv``).
    """
    attack_fn = ATTACKS.get(attack) if isinstance(attack, str) else attack
    attack_name = attack if isinstance(attack, str) else getattr(attack, "__name__", "attack")
    norm = validate_norm(norm)
    resolved_step_size = step_size if step_size is not None else default_step_size(eps, steps)
    device = torch.device(device)

    def perturb(frozen: AttackTarget, batch_index: int, x: Tensor, y: Tensor) -> Tensor:
        generator = make_generator(seed, "attack", batch_index, device=device)
        return attack_fn(
            frozen,
            x,
            y,
            eps=eps,
            norm=norm,
            steps=steps,
            step_size=resolved_step_size,
            random_start=random_start,
            restarts=restarts,
            generator=generator,
        )

    return _evaluate(
        target,
        images,
        labels,
        perturb=perturb,
        eps=eps,
        norm=norm,
        batch_size=batch_size,
        device=device,
        progress=progress,
        description=f"{attack_name} {norm} eps={eps:.4g}",
    )


def clean_accuracy(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> float:
    """Clean accuracy through the same loop and target as :func:`robust_accuracy`.

    ``target`` is an :class:`AttackTarget` or a plain model (frozen for the call, then restored).

    Shape:
        images: ``(N, C, ...)`` in [0,1]; labels: ``(N,)``.
    """
    result = _evaluate(
        target,
        images,
        labels,
        perturb=None,
        eps=0.0,
        norm="linf",
        batch_size=batch_size,
        device=device,
        progress=False,
        description="clean",
    )
    return result.clean_accuracy
