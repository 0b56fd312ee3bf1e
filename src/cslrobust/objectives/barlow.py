"""Barlow Twins: redundancy reduction on the cross-correlation of two views (Zbontar et al., 2021).

The projections of the two views are standardised along the batch (zero mean, unit variance per
dimension, over the global batch), their ``D x D`` cross-correlation ``C = z1^T z2 / B`` is pushed to the
identity: ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``. No negative pairs: a control of the
false-negative explanation, like BYOL and SimSiam. The projector's sizes are the model's
``proj_hidden_dim`` / ``proj_dim`` (the paper: 8192-8192-8192 on ImageNet; solo-learn's CIFAR config
2048-2048).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from cslrobust.objectives.objective import (
    OBJECTIVES,
    HeadKind,
    LossOutput,
    ObjectiveSection,
    check_batch,
)

__all__ = ["BarlowTwinsObjective", "BarlowTwinsSection", "barlow_twins_loss"]


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float, eps: float = 1e-5) -> Tensor:
    """The Barlow Twins loss of two views' projections.

    Args:
        z1: Projections of view 1 of ``B`` samples.
        z2: Projections of view 2 of the same samples.
        lambda_offdiag: Weight of the redundancy (off-diagonal) term.
        eps: Added to the per-dimension variance before the square root (as BatchNorm does).

    Returns:
        Scalar loss.

    Shape:
        - z1, z2: ``(B, D)``, B >= 2
    """
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    c = a.T @ b / n  # (D, D)
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambda_offdiag * off


@dataclass(frozen=True)
class BarlowTwinsObjective:
    """Barlow Twins on two views.

    Args:
        lambda_offdiag: Off-diagonal weight; ``None`` means ``1 / D`` (the scaling the paper's
            appendix and solo-learn discuss for other projector sizes).
        scale_loss: Multiplies the loss (solo-learn's ``scale_loss``, 0.1 in its CIFAR config; 1 in
            the paper).
    """

    lambda_offdiag: float | None = 5e-3
    scale_loss: float = 1.0
    n_views: int = field(default=2, init=False)
    head_kind: HeadKind = field(default="projector", init=False)

    def __call__(
        self,
        outputs: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        epoch: int = 0,
    ) -> LossOutput:
        """The loss of ``outputs`` ``(2, B, D)``; labels are not used."""
        check_batch(outputs, index, labels, self.n_views)
        outputs = outputs.float()
        lam = self.lambda_offdiag if self.lambda_offdiag is not None else 1.0 / outputs.shape[-1]
        loss = self.scale_loss * barlow_twins_loss(outputs[0], outputs[1], lam)
        return LossOutput(loss, {"loss": loss.detach()})


class BarlowTwinsSection(ObjectiveSection):
    """``objective: {name: barlow, lambda_offdiag: 0.005 | "1/D", scale_loss: 1.0}``."""

    name: Literal["barlow"] = "barlow"
    head_kind: ClassVar[HeadKind] = "projector"
    family: ClassVar[str] = "negative_free"
    lambda_offdiag: float | Literal["1/D"] = Field(default=5e-3)
    scale_loss: float = Field(default=1.0, gt=0.0)


@OBJECTIVES.register("barlow", BarlowTwinsSection)
def build_barlow(section: BarlowTwinsSection) -> BarlowTwinsObjective:
    """The ``barlow`` objective of a config section."""
    lam = None if section.lambda_offdiag == "1/D" else float(section.lambda_offdiag)
    return BarlowTwinsObjective(lam, section.scale_loss)
