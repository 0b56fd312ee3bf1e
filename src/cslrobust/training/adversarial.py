"""Adversarial finetuning of a classifier: the training attacks, the TRADES loss and one epoch loop.

The evaluation protocols of adversarially pre-trained encoders (RobustSSL, Xu et al.; ACL, Jiang et al.
2020; DynACL, Luo et al. 2023) finetune a classifier on adversarial examples:

- ALF (adversarial linear finetuning): :func:`alf_loss`, the cross-entropy on PGD examples made
  through the whole frozen model (Madry et al. 2018). The caller freezes the encoder and optimises
  the head only; the model stays in eval mode, so BatchNorm statistics never move.
- AFF (adversarial full finetuning): :func:`trades_step`, TRADES (Zhang et al. 2019): the examples
  maximise ``KL(f(x) || f(x'))`` (:func:`trades_attack`, eval mode, start ``x + 0.001 N(0, 1)``), and
  the loss :func:`trades_loss` = ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` is computed in train mode.

The training attacks return the *last* iterate of a fixed number of steps (the training-time
convention of both papers), unlike the evaluation PGD of :mod:`cslrobust.attacks.pgd`, which stops
early per sample. They differentiate with respect to the input only (``torch.autograd.grad``), so no
gradient reaches the weights. Every random draw (data order, augmentation, random starts) comes from
generators the caller derives from the run seed (:func:`~cslrobust.seeding.make_generator`).

:func:`adversarial_finetune` is the loop: SGD with momentum 0.9, a cosine schedule per step, one
validation score per epoch (the caller's, e.g. robust accuracy on the validation split), and the
state of ``keep`` at the best epoch restored at the end (ties keep the earlier epoch).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from tqdm.auto import tqdm

from cslrobust.seeding import make_generator
from cslrobust.training.schedules import warmup_cosine

TRADES_START_STD = 0.001
"""Standard deviation of TRADES' Gaussian random start (Zhang et al.'s reference setting)."""

#: ``(x in [0,1], y, generator) -> scalar loss`` of one training batch.
StepLoss = Callable[[Tensor, Tensor, torch.Generator], Tensor]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode; restore each one's training flag on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def linf_project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """``x_adv`` clipped to the L-inf ball of radius ``eps`` around ``x`` and to the [0,1] box.

    Shape:
        x_adv, x: ``(B, ...)``. Returns the shape of ``x``.
    """
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def _ascent(model: nn.Module, x_adv: Tensor, loss_of_logits: Callable[[Tensor], Tensor]) -> Tensor:
    """The sign of the input gradient of ``loss_of_logits(model(x_adv))`` (weights get no gradient)."""
    with torch.enable_grad():
        x_var = x_adv.detach().requires_grad_(True)
        loss = loss_of_logits(model(x_var))
        (grad,) = torch.autograd.grad(loss, x_var)
    return grad.sign()


def pgd_ce(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator,
) -> Tensor:
    """L-inf PGD on the cross-entropy from a uniform random start; the last iterate (training attack).

    Runs ``model`` in eval mode (restored afterwards). ``generator`` lives on the device of ``x``.

    Shape:
        x: ``(B, C, H, W)`` in [0,1]; y: ``(B,)``. Returns the shape of ``x``, detached.
    """
    x = x.detach()
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = linf_project(x + (2 * noise - 1) * eps, x, eps)
    with eval_mode(model):
        for _ in range(steps):
            direction = _ascent(
                model, x_adv, lambda logits: F.cross_entropy(logits, y, reduction="sum")
            )
            x_adv = linf_project(x_adv + step_size * direction, x, eps)
    return x_adv.detach()


def trades_attack(
    model: nn.Module,
    x: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator,
) -> Tensor:
    """TRADES' inner maximisation: L-inf PGD on ``KL(f(x) || f(x'))`` in eval mode.

    The start is ``x + 0.001 * N(0, 1)`` (not clipped before the first step, as in TRADES); each step
    ascends the sign of the gradient and projects onto the ball and the [0,1] box. The natural
    distribution ``softmax(f(x))`` is fixed (no gradient) during the attack.

    Shape:
        x: ``(B, C, H, W)`` in [0,1]. Returns the shape of ``x``, detached.
    """
    x = x.detach()
    with eval_mode(model):
        with torch.no_grad():
            p_natural = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = x + TRADES_START_STD * noise
        for _ in range(steps):
            direction = _ascent(
                model,
                x_adv,
                lambda logits: F.kl_div(F.log_softmax(logits, dim=1), p_natural, reduction="sum"),
            )
            x_adv = linf_project(x_adv + step_size * direction, x, eps)
    return x_adv.detach()


def trades_loss(logits_natural: Tensor, logits_adv: Tensor, labels: Tensor, beta: float) -> Tensor:
    """TRADES: ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x'))``, both means over the batch.

    The KL term is ``sum_k p_k (log p_k - log q_k)`` per sample with ``p = softmax(f(x))``,
    ``q = softmax(f(x'))``, averaged over the batch (``batchmean``); gradients flow through both
    ``f(x)`` and ``f(x')``, as in TRADES.

    Shape:
        logits_natural, logits_adv: ``(B, K)``; labels: ``(B,)``. Returns a scalar.
    """
    natural = F.cross_entropy(logits_natural, labels)
    robust = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_natural, dim=1), reduction="batchmean"
    )
    return natural + beta * robust


def alf_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    *,
    eps: float,
    step_size: float,
    steps: int,
) -> Tensor:
    """ALF: cross-entropy of ``model`` (eval mode) on :func:`pgd_ce` examples of ``x``.

    The caller keeps the encoder frozen (no gradient, eval mode) and optimises the head only.
    """
    x_adv = pgd_ce(model, x, y, eps=eps, step_size=step_size, steps=steps, generator=generator)
    with eval_mode(model):
        return F.cross_entropy(model(x_adv), y)


def trades_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    *,
    eps: float,
    step_size: float,
    steps: int,
    beta: float,
) -> Tensor:
    """AFF: :func:`trades_attack` in eval mode, then :func:`trades_loss` with ``model`` in train mode.

    ``model`` is left in train mode.
    """
    x_adv = trades_attack(model, x, eps=eps, step_size=step_size, steps=steps, generator=generator)
    model.train()
    return trades_loss(model(x), model(x_adv), y, beta)


def crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop after zero padding by ``padding`` and a random horizontal flip, per image.

    Shape:
        x: ``(B, C, H, W)``. Returns the same shape.
    """
    b, c, h, w = x.shape
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    shifts = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=device)
    flip = torch.rand(b, generator=generator, device=device) < 0.5
    rows = shifts[0, :, None] + torch.arange(h, device=device)  # (B, H)
    cols = shifts[1, :, None] + torch.arange(w, device=device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


@dataclass
class FinetuneResult:
    """The outcome of :func:`adversarial_finetune`.

    Attributes:
        best_epoch: Selected epoch (1-based): the best validation score, ties to the earlier.
        best_score: Its validation score.
        history: Per epoch: ``epoch``, mean training ``loss``, ``val_score``, ``seconds``.
    """

    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)


def adversarial_finetune(
    model: nn.Module,
    parameters: Sequence[nn.Parameter],
    keep: nn.Module,
    step_loss: StepLoss,
    images: Tensor,
    labels: Tensor,
    *,
    validate: Callable[[], float],
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    stream: str,
    augment: bool,
    device: str | torch.device,
    progress: bool = False,
) -> FinetuneResult:
    """Train ``parameters`` of ``model`` with ``step_loss``; keep ``keep``'s state of the best epoch.

    Epoch ``e`` shuffles with stream ``(seed, stream + "_data", e)``; batch ``i`` draws augmentation
    and random starts from ``(seed, stream + "_attack", e, i)`` on ``device``. After each epoch
    ``validate()`` scores the model (the caller evaluates on validation data only); the best epoch's
    state of ``keep`` is restored at the end.

    Args:
        model: The classifier, from [0,1] images to logits (on ``device``).
        parameters: The parameters to optimise (the head for ALF, everything for AFF).
        keep: The module whose state is selected (holds every parameter that changes).
        step_loss: ``(x, y, generator) -> loss`` of one batch (:func:`alf_loss`, :func:`trades_step`).
        images: Training images, uint8 ``(N, C, H, W)`` (any device).
        labels: Their labels ``(N,)``.
        validate: Returns the epoch's validation score (higher is better).
        epochs: Passes over the training images.
        lr: Peak learning rate (cosine to 0 over all steps, no warm-up).
        weight_decay: SGD weight decay.
        batch_size: Images per step.
        seed: Run seed.
        stream: Name of the protocol's random streams (e.g. ``"alf"``).
        augment: Random crop (pad 4) and flip of each training batch.
        device: Where the batches are trained.
        progress: Show a progress bar over epochs.

    Raises:
        FloatingPointError: If an epoch's loss is not finite (the state is not kept).
    """
    device = torch.device(device)
    n = images.shape[0]
    steps_per_epoch = max(1, -(-n // batch_size))
    schedule = warmup_cosine(lr, epochs * steps_per_epoch, warmup_steps=0)
    optimizer = torch.optim.SGD(list(parameters), lr=lr, momentum=0.9, weight_decay=weight_decay)
    best_state = copy.deepcopy(keep.state_dict())
    result = FinetuneResult(best_epoch=0, best_score=-math.inf)
    bar = tqdm(range(epochs), desc=f"{stream} finetune", disable=not progress, leave=False)
    for epoch in bar:
        tic = time.perf_counter()
        order = torch.randperm(n, generator=make_generator(seed, f"{stream}_data", epoch))
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i, start in enumerate(range(0, n, batch_size)):
            for group in optimizer.param_groups:
                group["lr"] = float(schedule[epoch * steps_per_epoch + i])
            idx = order[start : start + batch_size].to(images.device)
            generator = make_generator(seed, f"{stream}_attack", epoch, i, device=device)
            x = images[idx].to(device).float().div_(255)
            y = labels[idx].to(device)
            if augment:
                x = crop_flip(x, generator)
            loss = step_loss(x, y, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * idx.numel()
        mean_loss = float(total) / n
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"{stream} finetuning: loss {mean_loss} in epoch {epoch + 1}")
        score = float(validate())
        result.history.append(
            {
                "epoch": epoch + 1,
                "loss": mean_loss,
                "val_score": score,
                "seconds": time.perf_counter() - tic,
            }
        )
        bar.set_postfix(loss=f"{mean_loss:.3f}", val=f"{score:.3f}")
        if score > result.best_score:  # strictly better: ties keep the earlier epoch
            result.best_epoch, result.best_score = epoch + 1, score
            best_state = copy.deepcopy(keep.state_dict())
    keep.load_state_dict(best_state)
    return result
