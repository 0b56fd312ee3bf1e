"""The backbone contract and the backbone registry.

A backbone maps normalised images to a pooled feature vector. Adding one means a new file with a
``@MODELS.register("<name>")`` constructor returning a :class:`Backbone`, plus an import in
``cslrobust.models.__init__``; the contract tests in ``tests/models`` then cover it automatically.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from cslrobust.layouts import Layout, require_layout
from cslrobust.registry import Registry

__all__ = ["MODELS", "Backbone", "backbone_class", "backbone_layouts", "check_backbone_layout"]


class Backbone(nn.Module):
    """Base class for conv trunks: ``forward_features`` returns pooled, pre-head features.

    Attributes:
        feature_dim: Length of the feature vector returned by :meth:`forward_features`.
        layouts: The sample layouts the backbone takes (``("image",)``: ``(B, C, H, W)``;
            ``("clip",)``: ``(B, C, T, H, W)``); read at config time, before building.

    Shape:
        - Input: ``(B, C, H, W)`` (or ``(B, C, T, H, W)`` for clip backbones), already normalised.
        - Output: ``(B, feature_dim)``.
    """

    feature_dim: int
    layouts: ClassVar[tuple[Layout, ...]] = ("image",)

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

Flags: ``zero_init_residual`` and ``stem`` (``"cifar"`` or ``"imagenet"`` for images; ``"cifar"``
or ``"kinetics"`` for clips). Each constructor's return annotation names its :class:`Backbone`
subclass, whose ``layouts`` say which samples it takes (:func:`backbone_layouts`).
"""


def backbone_class(arch: str) -> type[Backbone]:
    """The :class:`Backbone` subclass the constructor ``MODELS[arch]`` returns (by its annotation).

    Raises:
        ConfigError: If ``arch`` is not registered.
        TypeError: If the constructor's return annotation is not a Backbone subclass (a
            programming error of the registration).
    """
    factory = MODELS.get(arch)
    returned = typing.get_type_hints(factory).get("return")
    if not (isinstance(returned, type) and issubclass(returned, Backbone)):
        raise TypeError(f"model {arch!r}: its constructor must be annotated to return a Backbone")
    return returned


def backbone_layouts(arch: str) -> tuple[Layout, ...]:
    """The sample layouts backbone ``arch`` takes, known without building it.

    Raises:
        ConfigError: If ``arch`` is not registered.
    """
    return backbone_class(arch).layouts


def check_backbone_layout(arch: str, *, data: str, layout: Layout) -> None:
    """Raise one config-error line when backbone ``arch`` does not take ``layout`` samples.

    Raises:
        ConfigError: E.g. ``model.arch 'resnet18' supports image samples, data 'synthetic_clips'
            gives clip samples; expected one of model.arch: ['r2plus1d_18', 'r3d_18']``; or if
            ``arch`` is unknown.
    """
    fitting = [a for a in MODELS.names() if layout in backbone_layouts(a)]
    require_layout(
        "model.arch", arch, backbone_layouts(arch), data=data, layout=layout, alternatives=fitting
    )
