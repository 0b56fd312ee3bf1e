"""Optimiser construction with the usual parameter groups."""

from __future__ import annotations

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Split parameters into decayed (weights of conv/linear) and non-decayed (biases, norm layers).

    Excluding biases and BatchNorm affine parameters from weight decay is standard practice for
    ResNets (Goyal et al. 2017) and SimCLR.
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
        parameter_groups(model, weight_decay),  # type: ignore[arg-type]
        lr=lr,
        momentum=momentum,
        nesterov=nesterov and momentum > 0,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float | torch.Tensor) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
