"""Heads on top of backbone features: the contrastive projector and the linear classifier."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from cslrobust.errors import ConfigError
from cslrobust.registry import Registry

__all__ = ["HEADS", "HeadBuilder", "LinearHead", "ProjectionHead"]


class ProjectionHead(nn.Module):
    """SimCLR-style MLP projector: ``(Linear -> BatchNorm -> ReLU) x (num_layers - 1) -> Linear``.

    SimCLR maps representations "to the space where contrastive loss is applied" with an MLP with
    one hidden layer, and shows that the representation *before* the projector is the better one for
    downstream tasks; the loss is applied to this head's output, probes read the backbone features.
    The hidden linear layers have no bias because the BatchNorm that follows cancels it.

    Reference:
        T. Chen, S. Kornblith, M. Norouzi, G. Hinton. "A Simple Framework for Contrastive Learning
        of Visual Representations." ICML 2020 (SimCLR; BatchNorm in the head follows SimCLR v2).

    Args:
        in_dim: Feature dimension of the backbone.
        hidden_dim: Width of each hidden layer.
        out_dim: Dimension of the projection (the embedding fed to the contrastive loss).
        num_layers: Number of linear layers (>= 1); ``1`` is a single linear map.

    Raises:
        ConfigError: If a dimension is not positive or ``num_layers < 1``.

    Shape:
        - Input: ``(B, in_dim)``.
        - Output: ``(B, out_dim)``, not normalised (the loss normalises).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) <= 0 or num_layers < 1:
            raise ConfigError(
                "projection head needs positive dims and num_layers >= 1; got "
                f"in_dim={in_dim}, hidden_dim={hidden_dim}, out_dim={out_dim}, "
                f"num_layers={num_layers}"
            )
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [
                nn.Linear(dim, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(),
            ]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.layers = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project features (see the class docstring for shapes)."""
        z: torch.Tensor = self.layers(x)
        return z


class LinearHead(nn.Module):
    """A linear classifier on backbone features (supervised head or linear probe).

    Args:
        in_dim: Feature dimension of the backbone.
        num_classes: Number of classes.

    Raises:
        ConfigError: If a dimension is not positive.

    Shape:
        - Input: ``(B, in_dim)``.
        - Output: ``(B, num_classes)`` logits.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        if in_dim <= 0 or num_classes <= 0:
            raise ConfigError(
                f"linear head needs positive dims; got in_dim={in_dim}, num_classes={num_classes}"
            )
        self.fc = nn.Linear(in_dim, num_classes)
        self.out_dim = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (see the class docstring for shapes)."""
        logits: torch.Tensor = self.fc(x)
        return logits


class HeadBuilder(Protocol):
    """Signature of the entries of :data:`HEADS`."""

    def __call__(
        self, in_dim: int, *, num_classes: int, proj_hidden_dim: int, proj_dim: int
    ) -> nn.Module:
        """Build a head on ``in_dim``-dimensional features."""
        ...


HEADS: Registry[HeadBuilder] = Registry("head")
"""Training-head builders keyed by the ``head_kind`` config value."""


@HEADS.register("projector")
def build_projector(
    in_dim: int, *, num_classes: int, proj_hidden_dim: int, proj_dim: int
) -> nn.Module:
    """Two-layer :class:`ProjectionHead` for contrastive objectives (``num_classes`` is unused)."""
    del num_classes
    return ProjectionHead(in_dim, proj_hidden_dim, proj_dim)


@HEADS.register("classifier")
def build_classifier(
    in_dim: int, *, num_classes: int, proj_hidden_dim: int, proj_dim: int
) -> nn.Module:
    """:class:`LinearHead` for the supervised objective (projector sizes are unused)."""
    del proj_hidden_dim, proj_dim
    return LinearHead(in_dim, num_classes)


@HEADS.register("none")
def build_no_head(
    in_dim: int, *, num_classes: int, proj_hidden_dim: int, proj_dim: int
) -> nn.Module:
    """No training head (the identity), for an encoder trained elsewhere (``cslrobust audit``)."""
    del in_dim, num_classes, proj_hidden_dim, proj_dim
    return nn.Identity()
