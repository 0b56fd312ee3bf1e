"""Toy models shared by the training-loop tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cslrobust.models import Encoder, build_encoder
from cslrobust.objectives import (
    OBJECTIVES,
    HeadKind,
    MethodObjective,
    Objective,
    TrainingMethod,
    build_method,
    build_objective,
)
from cslrobust.training import build_sgd


def toy_setup(
    objective_name: str = "supervised",
    *,
    seed: int = 0,
    lr: float = 0.05,
    width: int = 4,
    weight_decay: float = 5e-4,
) -> tuple[Objective | TrainingMethod, Encoder, torch.optim.Optimizer]:
    """A small ResNet-18 for 4 classes (projector 4w -> 2w) with its objective and SGD (momentum 0.9).

    For an objective that brings its own method (BYOL, SimSiam) the method is returned in the
    objective's place and SGD covers its whole network (predictor included); :func:`as_method`
    turns either into what ``train`` takes.
    """
    torch.manual_seed(seed)
    objective = build_objective(OBJECTIVES.section(objective_name))
    encoder = build_encoder(
        "resnet18",
        width=width,
        head_kind=objective.head_kind,
        num_classes=4,
        proj_hidden_dim=4 * width,
        proj_dim=2 * width,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    trained: Objective | TrainingMethod = objective
    network: torch.nn.Module = encoder
    if isinstance(objective, MethodObjective):
        trained = build_method(objective, encoder)
        network = trained.network()
    return trained, encoder, build_sgd(network, lr=lr, momentum=0.9, weight_decay=weight_decay)


def as_method(objective: Objective | TrainingMethod, encoder: Encoder) -> TrainingMethod:
    """What ``toy_setup`` returned, as the method ``train`` takes."""
    if hasattr(objective, "network"):
        return objective  # type: ignore[return-value]
    return build_method(objective, encoder)  # type: ignore[arg-type]


@dataclass
class WrappedObjective:
    """An objective that delegates to ``inner``; tests override ``__call__`` to inject faults."""

    inner: Objective

    @property
    def n_views(self) -> int:
        return self.inner.n_views

    @property
    def head_kind(self) -> HeadKind:
        return self.inner.head_kind
