"""The backbone contract and the backbone registry.

A backbone maps normalised images to a pooled feature vector. Adding one means a new file with a
``@MODELS.register("<name>")`` constructor returning a :class:`Backbone`, plus an import in
``cslrobust.models.__init__``; the contract tests in ``tests/models`` then cover it automatically.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cslrobust.registry import Registry

__all__ = ["MODELS", "Backbone"]


class Backbone(nn.Module):
    """Base class for conv trunks: ``forward_features`` returns pooled, pre-head features.

    Attributes:
        feature_dim: Length of the feature vector returned by :meth:`forward_features`.

    Shape:
        - Input: ``(B, C, H, W)``, already normalised.
        - Output: ``(B, feature_dim)``.
    """

    feature_dim: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-head features; subclasses must override.

        Shape:
            - x: ``(B, C, H, W)``, normalised.
            - Returns: ``(B, feature_dim)``.
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward_features`; a backbone has no classifier."""
        return self.forward_features(x)


MODELS: Registry[Callable[..., Backbone]] = Registry("model")
"""Backbone constructors with signature ``(width: int = 64, in_channels: int = 3, **flags)``.

Flags: ``zero_init_residual`` and ``stem`` (``"cifar"`` or ``"imagenet"``).
"""
