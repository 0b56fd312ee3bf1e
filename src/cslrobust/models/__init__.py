"""Models: ``Normalize`` -> backbone -> head, with [0, 1] images as the only input contract.

Use :func:`build_encoder` to construct a training encoder from plain typed arguments; backbones are
looked up in :data:`MODELS`, training heads in :data:`HEADS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cslrobust.models.backbone import MODELS, Backbone
from cslrobust.models.encoder import Classifier, Encoder
from cslrobust.models.heads import HEADS, LinearHead, ProjectionHead
from cslrobust.models.normalize import Normalize
from cslrobust.models.resnet_cifar import STEMS, BasicBlock, Bottleneck, ResNet
from cslrobust.sections import HeadKind

__all__ = [
    "HEADS",
    "MODELS",
    "Backbone",
    "BasicBlock",
    "Bottleneck",
    "Classifier",
    "Encoder",
    "LinearHead",
    "Normalize",
    "ProjectionHead",
    "ResNet",
    "STEMS",
    "build_encoder",
]


def build_encoder(
    arch: str,
    *,
    width: int,
    head_kind: HeadKind,
    num_classes: int,
    proj_hidden_dim: int,
    proj_dim: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = False,
    zero_init_residual: bool = False,
    stem: str = "cifar",
) -> Encoder:
    """Build ``Encoder(Normalize(mean, std), MODELS[arch](width, ...), HEADS[head_kind](...))``.

    Args:
        arch: Backbone name registered in :data:`MODELS` (e.g. ``"resnet18"``).
        width: Backbone width multiplier (64 is the standard ResNet, 16 the CPU default).
        head_kind: ``"projector"`` (contrastive objectives), ``"classifier"`` (supervised) or
            ``"none"`` (no training head: an encoder trained elsewhere, see ``cslrobust audit``).
        num_classes: Classes of the ``"classifier"`` head; ignored by ``"projector"``.
        proj_hidden_dim: Hidden width of the ``"projector"`` head; ignored by ``"classifier"``.
        proj_dim: Output dimension of the ``"projector"`` head; ignored by ``"classifier"``.
        mean: Per-channel input mean; its length sets the number of input channels.
        std: Per-channel input standard deviation.
        channels_last: Convert the module to ``torch.channels_last`` memory format (faster
            convolutions on recent GPUs and on CPU with oneDNN). Feed inputs in ``channels_last``
            too (``x.contiguous(memory_format=torch.channels_last)``) to avoid a layout conversion
            at the first convolution; contiguous inputs still work and give the same result.
        zero_init_residual: Zero the last BatchNorm gamma of every residual branch.
        stem: Backbone stem, ``"cifar"`` (3x3, no max-pool) or ``"imagenet"`` (7x7 stride 2 +
            max-pool), see :class:`~cslrobust.models.ResNet`.

    Returns:
        The encoder, in training mode, on the CPU.

    Raises:
        ConfigError: If ``arch`` or ``head_kind`` is unknown, or a size/statistic is invalid.
    """
    backbone_factory = MODELS.get(arch)
    head_builder = HEADS.get(head_kind)
    normalize = Normalize(mean, std)
    backbone = backbone_factory(width, len(mean), zero_init_residual=zero_init_residual, stem=stem)
    head = head_builder(
        backbone.feature_dim,
        num_classes=num_classes,
        proj_hidden_dim=proj_hidden_dim,
        proj_dim=proj_dim,
    )
    encoder = Encoder(normalize, backbone, head)
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    return encoder
