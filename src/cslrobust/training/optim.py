"""Optimisers keyed by ``train.optimizer.name`` (SGD, LARS, AdamW), with the usual parameter groups.

Every optimiser sees the same two parameter groups (:func:`parameter_groups`): weights of conv/linear
layers with ``train.weight_decay``, and biases and normalisation parameters without it. The learning
rate is set on every group by the loop at each step (:func:`set_lr`), so the warm-up + cosine schedule
drives all of them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from cslrobust.registry import ComponentRegistry
from cslrobust.sections import OptimizerSection

__all__ = [
    "DEFAULT_OPTIMIZER",
    "LARS",
    "OPTIMIZERS",
    "AdamWSection",
    "LARSSection",
    "OptimizerBuilder",
    "SGDSection",
    "TrainSettings",
    "build_optimizer",
    "build_sgd",
    "parameter_groups",
    "set_lr",
]

DEFAULT_OPTIMIZER = "sgd"
"""The optimiser of a config without ``train.optimizer`` (the only one before the registry)."""


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into decayed (weights of conv/linear) and non-decayed (biases, norm layers).

    Excluding biases and BatchNorm affine parameters from weight decay is standard practice for
    ResNets (Goyal et al. 2017) and SimCLR. A parameter with at most one dimension is a bias or a
    normalisation parameter.

    Returns:
        ``[{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0}]``.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_sgd(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float, nesterov: bool = False
) -> torch.optim.SGD:
    """SGD with momentum over :func:`parameter_groups`."""
    return torch.optim.SGD(
        parameter_groups(model, weight_decay),
        lr=lr,
        momentum=momentum,
        nesterov=nesterov and momentum > 0,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float | Tensor) -> None:
    """Set the learning rate of every parameter group (LARS scales it per layer by its trust ratio)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling: SGD with momentum on a per-tensor rescaled update.

    You et al. 2017, "Large Batch Training of Convolutional Networks": for each parameter tensor
    ``w`` with gradient ``g`` in a group with ``trust_adaptation``, the update
    ``d = g + weight_decay * w`` is multiplied by the trust ratio
    ``eta * ||w|| / (||g|| + weight_decay * ||w||)`` (1 when ``||w||`` or ``||g||`` is 0), then
    SGD momentum runs on ``d`` as in :class:`torch.optim.SGD`:
    ``buf = momentum * buf + d`` (``buf = d`` on the first step), ``w -= lr * buf``
    (``lr * (d + momentum * buf)`` with ``nesterov``). A group without ``trust_adaptation`` is plain
    SGD with momentum. The paper multiplies the global rate into the momentum buffer; applying it after
    the momentum, as SGD and solo-learn's LARS do, is the same at a constant rate and lets the schedule
    set ``lr`` like SGD's.

    Norms and the ratio stay on the device (no host synchronisation per step).

    Args:
        params: Parameters or parameter groups; a group may set any of the keywords below.
        lr: Global learning rate (the schedule overwrites it every step).
        momentum: Momentum factor in [0, 1).
        weight_decay: L2 penalty added to the gradient before the trust ratio.
        eta: Trust coefficient (the paper's and SimCLR's 0.001).
        nesterov: Nesterov momentum.
        trust_adaptation: Whether the group's updates are rescaled by the trust ratio.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
        trust_adaptation: bool = True,
    ) -> None:
        if lr < 0.0 or not 0.0 <= momentum < 1.0 or weight_decay < 0.0 or eta <= 0.0:
            raise ValueError(
                f"LARS needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0 and eta > 0; got "
                f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "nesterov": nesterov,
            "trust_adaptation": trust_adaptation,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient.

        Args:
            closure: Re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                update = grad.add(param, alpha=wd) if wd != 0 else grad.clone()
                if group["trust_adaptation"]:
                    w_norm = torch.linalg.vector_norm(param)
                    g_norm = torch.linalg.vector_norm(grad)
                    ratio = group["eta"] * w_norm / (g_norm + wd * w_norm)
                    # A zero weight (fresh bias) or zero gradient has no scale to adapt to.
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
                    update.mul_(ratio)
                if momentum != 0:
                    state = self.state[param]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = update.clone()
                    else:
                        buf.mul_(momentum).add_(update)
                    update = update.add(buf, alpha=momentum) if group["nesterov"] else buf
                if isinstance(lr, Tensor):
                    param.sub_(update * lr)
                else:
                    param.add_(update, alpha=-lr)
        return loss


class TrainSettings(Protocol):
    """What :func:`build_optimizer` reads from the ``train`` section (``TrainConfig`` has it all)."""

    @property
    def optimizer(self) -> OptimizerSection:
        """The chosen optimiser's section."""
        ...

    @property
    def momentum(self) -> float:
        """Momentum of SGD and LARS."""
        ...

    @property
    def nesterov(self) -> bool:
        """Nesterov momentum for SGD and LARS."""
        ...

    @property
    def weight_decay(self) -> float:
        """Weight decay of conv/linear weights (never of biases and norm parameters)."""
        ...

    def peak_lr(self) -> float:
        """The peak learning rate (the optimiser's initial rate; the schedule sets it per step)."""
        ...


class OptimizerBuilder(Protocol):
    """Signature of the builders of :data:`OPTIMIZERS`."""

    def __call__(
        self,
        section: Any,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        momentum: float,
        nesterov: bool,
    ) -> torch.optim.Optimizer:
        """Build the optimiser of ``model`` that ``section`` configures."""
        ...


OPTIMIZERS: ComponentRegistry[OptimizerSection, OptimizerBuilder] = ComponentRegistry(
    "optimizer", key="name", base=OptimizerSection
)
"""Optimisers keyed by ``train.optimizer.name``: each entry holds its section class and builder."""


class SGDSection(OptimizerSection):
    """Config section of ``sgd``: SGD with ``train.momentum`` (and ``train.nesterov``)."""

    name: Literal["sgd"] = "sgd"
    train_keys = frozenset({"momentum", "nesterov"})


class LARSSection(OptimizerSection):
    """Config section of ``lars`` (:class:`LARS`, with ``train.momentum`` and ``train.nesterov``).

    Attributes:
        eta: Trust coefficient (You et al. 2017 and SimCLR: 0.001).
        exclude_bias_n_norm: Leave biases and normalisation parameters out of the trust-ratio
            adaptation (SimCLR, solo-learn); they never get weight decay either way.
    """

    name: Literal["lars"] = "lars"
    train_keys = frozenset({"momentum", "nesterov"})
    eta: float = Field(default=0.001, gt=0.0, description="trust coefficient")
    exclude_bias_n_norm: bool = Field(
        default=True, description="biases and norm parameters skip the trust-ratio adaptation"
    )


class AdamWSection(OptimizerSection):
    """Config section of ``adamw`` (:class:`torch.optim.AdamW`, decoupled weight decay).

    ``train.momentum`` and ``train.nesterov`` do not apply (they must keep their defaults).
    """

    name: Literal["adamw"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0.0)

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        for beta in value:
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"beta {beta} outside [0, 1)")
        return value


@OPTIMIZERS.register("sgd", SGDSection)
def _build_sgd(
    section: SGDSection,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
) -> torch.optim.Optimizer:
    return build_sgd(model, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register("lars", LARSSection)
def _build_lars(
    section: LARSSection,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
) -> torch.optim.Optimizer:
    decay, no_decay = parameter_groups(model, weight_decay)
    no_decay["trust_adaptation"] = not section.exclude_bias_n_norm
    return LARS(
        [decay, no_decay],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        eta=section.eta,
        nesterov=nesterov and momentum > 0,
    )


@OPTIMIZERS.register("adamw", AdamWSection)
def _build_adamw(
    section: AdamWSection,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        parameter_groups(model, weight_decay), lr=lr, betas=section.betas, eps=section.eps
    )


def build_optimizer(model: nn.Module, train: TrainSettings) -> torch.optim.Optimizer:
    """The optimiser of ``model`` that the ``train`` section configures.

    ``build_optimizer(encoder, cfg.train)``; the initial rate is ``train.peak_lr()`` (the loop sets
    the scheduled rate on every group at each step).

    Args:
        model: The module whose trainable parameters are optimised.
        train: The ``train`` config section (or anything with its fields).

    Returns:
        The optimiser, with biases and normalisation parameters in a group without weight decay.

    Raises:
        ConfigError: If ``train.optimizer`` is not the section of a registered optimiser.
    """
    entry = OPTIMIZERS.entry_for(train.optimizer)
    return entry.build(
        train.optimizer,
        model,
        lr=train.peak_lr(),
        weight_decay=train.weight_decay,
        momentum=train.momentum,
        nesterov=train.nesterov,
    )
