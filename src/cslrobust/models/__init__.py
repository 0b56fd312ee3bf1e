"""Models: ``Normalize`` -> backbone -> head, with [0, 1] images as the only input contract.

Use :func:`build_encoder` to construct a training encoder from plain typed arguments; backbones are
looked up in :data:`MODELS`, training heads in :data:`HEADS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cslrobust.layouts import Layout, require_layout
from cslrobust.models.backbone import (
    MODELS,
    Backbone,
    backbone_class,
    backbone_layouts,
    check_backbone_layout,
)
from cslrobust.models.encoder import Classifier, Encoder
from cslrobust.models.heads import HEADS, LinearHead, ProjectionHead
from cslrobust.models.normalize import Normalize
from cslrobust.models.resnet_cifar import STEMS, BasicBlock, Bottleneck, ResNet
from cslrobust.models.video_resnet import (
    VIDEO_STEMS,
    Conv2Plus1d,
    VideoBasicBlock,
    VideoResNet,
    r2plus1d_18,
    r2plus1d_mid_channels,
    r3d_18,
)
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
    "VIDEO_STEMS",
    "Conv2Plus1d",
    "VideoBasicBlock",
    "VideoResNet",
    "backbone_class",
    "backbone_layouts",
    "build_encoder",
    "check_backbone_layout",
    "r2plus1d_18",
    "r2plus1d_mid_channels",
    "r3d_18",
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
    layout: Layout | None = None,
    clip_frames: int | None = None,
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
            max-pool), see :class:`~cslrobust.models.ResNet`; clip backbones take ``"cifar"``
            or ``"kinetics"`` (:class:`~cslrobust.models.VideoResNet`).
        layout: Sample layout the encoder takes; ``None`` is the backbone's first declared layout
            (``"image"`` for the image ResNets, ``"clip"`` for the video ones). Clip encoders use
            ``torch.channels_last_3d`` for ``channels_last``.
        clip_frames: Clip encoders: frames of one clip; a longer input of a whole number of
            clips is evaluated clip by clip with the features averaged.

    Returns:
        The encoder, in training mode, on the CPU.

    Raises:
        ConfigError: If ``arch`` or ``head_kind`` is unknown, a size/statistic is invalid, or the
            backbone does not take ``layout`` samples.
    """
    backbone_factory = MODELS.get(arch)
    head_builder = HEADS.get(head_kind)
    supported = backbone_layouts(arch)
    if layout is None:
        layout = supported[0]
    require_layout("model.arch", arch, supported, data="the encoder's input", layout=layout)
    normalize = Normalize(mean, std, layout)
    backbone = backbone_factory(width, len(mean), zero_init_residual=zero_init_residual, stem=stem)
    head = head_builder(
        backbone.feature_dim,
        num_classes=num_classes,
        proj_hidden_dim=proj_hidden_dim,
        proj_dim=proj_dim,
    )
    encoder = Encoder(normalize, backbone, head, clip_frames=clip_frames)
    if channels_last:
        # Conv3d weights are 5-D: channels-last there is channels_last_3d (NDHWC).
        fmt = torch.channels_last if layout == "image" else torch.channels_last_3d
        encoder = encoder.to(memory_format=fmt)
    return encoder
