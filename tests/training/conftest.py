"""Toy models shared by the training-loop tests."""

from __future__ import annotations

import torch

from cslrobust.models import Encoder, build_encoder
from cslrobust.objectives import OBJECTIVES, Objective, build_objective
from cslrobust.training import build_sgd


def toy_setup(
    objective_name: str = "supervised", *, seed: int = 0, lr: float = 0.05
) -> tuple[Objective, Encoder, torch.optim.Optimizer]:
    """A width-4 ResNet-18 for 4 classes with its objective and SGD (momentum 0.9, decay 5e-4)."""
    torch.manual_seed(seed)
    objective = build_objective(OBJECTIVES.section(objective_name))
    encoder = build_encoder(
        "resnet18",
        width=4,
        head_kind=objective.head_kind,
        num_classes=4,
        proj_hidden_dim=16,
        proj_dim=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    return objective, encoder, build_sgd(encoder, lr=lr, momentum=0.9, weight_decay=5e-4)
