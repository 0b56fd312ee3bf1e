"""A linear head on standardised features, trained end to end and folded into a plain ``nn.Linear``.

The adversarial protocols (ALF, AFF) train a linear head through the whole model, on adversarial
images, so the probe's precomputed standardised features cannot be used. :class:`StandardizedLinear`
applies the same standardisation as :func:`~cslrobust.probe.linear.train_linear_probe` (training-split
mean and std, dead features set to 0) as fixed buffers inside the head, so one learning rate works
for every method's feature scale; :meth:`StandardizedLinear.folded` folds it exactly into a plain
``nn.Linear`` on raw features, and the evaluated model is ``normalise -> backbone -> nn.Linear`` as
for the probe.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cslrobust.probe.linear import DEAD_STD_FLOOR, dead_feature_mask, fold_standardisation


def standardization(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, clamped std and dead-feature mask of training features (the probe's rule).

    Shape:
        features: ``(N, F)``. Returns three ``(F,)`` tensors (the mask bool).
    """
    mean = features.mean(dim=0)
    raw_std = features.std(dim=0)
    dead = dead_feature_mask(raw_std)
    return mean, raw_std.clamp_min(DEAD_STD_FLOOR), dead


def init_linear(dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """A linear layer initialised as the probe's: weights uniform in ``+-1/sqrt(dim)``, bias 0."""
    layer = nn.Linear(dim, num_classes)
    bound = 1.0 / dim**0.5
    with torch.no_grad():
        layer.weight.copy_(
            torch.empty(layer.weight.shape).uniform_(-bound, bound, generator=generator)
        )
        layer.bias.zero_()
    return layer


class StandardizedLinear(nn.Module):
    """``Linear((h - mean) / std)`` with dead features set to 0; only the linear layer trains.

    The weights are initialised as the probe's: uniform in ``+-1/sqrt(F)`` from ``generator``, bias 0.

    Args:
        mean: ``(F,)`` training feature mean.
        std: ``(F,)`` training feature std (clamped, positive).
        dead: ``(F,)`` bool, features that get weight 0.
        num_classes: Number of classes K.
        generator: Source of the initial weights (CPU).
    """

    mean: Tensor
    std: Tensor
    dead: Tensor

    def __init__(
        self, mean: Tensor, std: Tensor, dead: Tensor, num_classes: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        dim = mean.shape[0]
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())
        self.register_buffer("dead", dead.detach().clone().bool())
        self.linear = init_linear(dim, num_classes, generator)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B, K)`` of raw features ``(B, F)``."""
        z = ((features - self.mean) / self.std).masked_fill(self.dead, 0.0)
        logits: Tensor = self.linear(z)
        return logits

    def folded(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` on raw features (see :func:`fold_standardisation`)."""
        return fold_standardisation(self.linear, self.mean, self.std, dead=self.dead)
