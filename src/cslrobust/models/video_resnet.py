"""Video ResNets for clips: R3D-18 and R(2+1)D-18 (Tran et al., 2018) with a width multiplier.

Both are the 18-layer ResNet with its four stages of two basic blocks and widths
``width, 2 width, 4 width, 8 width`` (``width=64`` is the paper's), global average pooling over time
and space, and no classifier. R3D uses full 3x3x3 convolutions; R(2+1)D factorises each into a 1x3x3
spatial convolution to ``M`` channels, BatchNorm, ReLU and a 3x1x1 temporal convolution, with ``M``
chosen so that the factorised pair has about the parameters of the 3D convolution (paper, Sec. 3.5):

    M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)),  t = 3, d = 3 (blocks) or d = 7 (kinetics stem).

As in torchvision's implementation, ``M`` of a block is computed once from the block's input and output
channels and used by both of its convolutions, and the kinetics stem's factorised pair has
``45 * width / 64`` middle channels (torchvision's 45 at width 64; the formula would give 83). Module
shapes are then those of torchvision's ``r2plus1d_18`` (31,505,325 parameters with its 400-class
classifier; ours without one), so its Kinetics weights could be mapped onto this backbone later.

Stems (``stem=``):

* ``"kinetics"`` (112x112 inputs, the paper's): a 3x7x7 convolution with stride (1, 2, 2) (R(2+1)D: 1x7x7
  stride (1, 2, 2), then 3x1x1), no pooling; stages 2-4 halve time, height and width, so 16 x 112 x 112
  reaches the last stage at 2 x 7 x 7 and 8 frames at 1 x 7 x 7.
* ``"cifar"`` (32x32 inputs, the synthetic clips): a 3x3x3 convolution with stride 1 (R(2+1)D: the
  factorised pair), no pooling; 8 x 32 x 32 reaches the last stage at 1 x 4 x 4.

Reference:
    D. Tran, H. Wang, L. Torresani, J. Ray, Y. LeCun, M. Paluri. "A Closer Look at Spatiotemporal
    Convolutions for Action Recognition." CVPR 2018.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from cslrobust.errors import ConfigError
from cslrobust.layouts import Layout
from cslrobust.models.backbone import MODELS, Backbone

__all__ = [
    "VIDEO_STEMS",
    "Conv2Plus1d",
    "VideoBasicBlock",
    "VideoResNet",
    "r2plus1d_18",
    "r2plus1d_mid_channels",
    "r3d_18",
]

VIDEO_STEMS = ("cifar", "kinetics")
"""Stems a :class:`VideoResNet` can be built with (the default, ``"cifar"``, first)."""

ConvKind = Literal["3d", "2plus1d"]


def r2plus1d_mid_channels(in_channels: int, out_channels: int, t: int = 3, d: int = 3) -> int:
    """Channels between the spatial and the temporal convolution of a (2+1)D block (paper, Sec. 3.5).

    ``M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out))``: the factorised pair then has about the
    parameters of a ``t x d x d`` 3D convolution from ``N_in`` to ``N_out`` channels.
    """
    return (t * d * d * in_channels * out_channels) // (d * d * in_channels + t * out_channels)


class Conv2Plus1d(nn.Sequential):
    """A ``t x d x d`` convolution factorised into ``1 x d x d`` -> BN -> ReLU -> ``t x 1 x 1``.

    The spatial stride goes to the first convolution, the temporal stride to the second; the
    output is not normalised (the caller's BatchNorm follows).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        mid: Channels between the two convolutions (:func:`r2plus1d_mid_channels`).
        stride: ``(temporal, spatial)`` stride.
        t: Temporal kernel size.
        d: Spatial kernel size.

    Shape:
        - Input: ``(B, in_channels, T, H, W)``.
        - Output: ``(B, out_channels, T / stride[0], H / stride[1], W / stride[1])``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid: int,
        stride: tuple[int, int],
        t: int = 3,
        d: int = 3,
    ) -> None:
        st, ss = stride
        super().__init__(
            nn.Conv3d(
                in_channels,
                mid,
                (1, d, d),
                stride=(1, ss, ss),
                padding=(0, d // 2, d // 2),
                bias=False,
            ),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                mid, out_channels, (t, 1, 1), stride=(st, 1, 1), padding=(t // 2, 0, 0), bias=False
            ),
        )
        self.mid_channels = mid


def _conv(
    kind: ConvKind, in_channels: int, out_channels: int, mid: int, stride: tuple[int, int]
) -> nn.Module:
    """A 3x3x3 convolution (``"3d"``) or its (2+1)D factorisation through ``mid`` channels."""
    if kind == "2plus1d":
        return Conv2Plus1d(in_channels, out_channels, mid, stride)
    st, ss = stride
    return nn.Conv3d(in_channels, out_channels, 3, stride=(st, ss, ss), padding=1, bias=False)


class VideoBasicBlock(nn.Module):
    """Two 3x3x3 (or (2+1)D) convolutions with an identity or 1x1x1 projection shortcut.

    Args:
        kind: ``"3d"`` (R3D) or ``"2plus1d"`` (R(2+1)D).
        in_planes: Input channels.
        planes: Output channels.
        stride: ``(temporal, spatial)`` stride of the first convolution and the shortcut.

    Shape:
        - Input: ``(B, in_planes, T, H, W)``.
        - Output: ``(B, planes, T / stride[0], H / stride[1], W / stride[1])``.
    """

    def __init__(
        self, kind: ConvKind, in_planes: int, planes: int, stride: tuple[int, int] = (1, 1)
    ) -> None:
        super().__init__()
        mid = r2plus1d_mid_channels(in_planes, planes)  # both convolutions (torchvision's choice)
        self.conv1 = _conv(kind, in_planes, planes, mid, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv(kind, planes, planes, mid, (1, 1))
        self.bn2 = nn.BatchNorm3d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != (1, 1) or in_planes != planes:
            st, ss = stride
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_planes, planes, 1, stride=(st, ss, ss), bias=False),
                nn.BatchNorm3d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (see the class docstring for shapes)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _stem(kind: ConvKind, stem: str, in_channels: int, width: int) -> nn.Sequential:
    """The stem: convolution(s) + BN + ReLU, no pooling (see the module docstring)."""
    if stem == "kinetics":
        if kind == "3d":
            conv: nn.Module = nn.Conv3d(
                in_channels, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False
            )
        else:
            conv = Conv2Plus1d(in_channels, width, max(1, 45 * width // 64), (1, 2), t=3, d=7)
    else:
        conv = _conv(kind, in_channels, width, r2plus1d_mid_channels(in_channels, width), (1, 1))
    return nn.Sequential(conv, nn.BatchNorm3d(width), nn.ReLU(inplace=True))


class VideoResNet(Backbone):
    """R3D / R(2+1)D backbone: stem, four stages, global average pool over (T, H, W); no classifier.

    Args:
        kind: ``"3d"`` (R3D) or ``"2plus1d"`` (R(2+1)D).
        num_blocks: Blocks per stage, ``(2, 2, 2, 2)`` for the 18-layer networks.
        width: Channels of the stem and of the first stage (64 in the paper).
        in_channels: Channels of the input clip.
        zero_init_residual: Zero the last BatchNorm gamma of every residual branch.
        stem: ``"cifar"`` (32x32 clips) or ``"kinetics"`` (112x112 clips), see the module docstring.
        temporal_strides: Temporal stride of the first block of each stage; the paper's
            ``(1, 2, 2, 2)`` by default (spatial strides are always ``(1, 2, 2, 2)``).

    Attributes:
        feature_dim: ``8 * width``.

    Raises:
        ConfigError: If ``width`` or ``in_channels`` is not positive, ``stem`` is unknown or a
            temporal stride is not 1 or 2.

    Shape:
        - Input: ``(B, in_channels, T, H, W)``, already normalised.
        - Output: ``(B, feature_dim)``.
    """

    layouts: ClassVar[tuple[Layout, ...]] = ("clip",)

    def __init__(
        self,
        kind: ConvKind,
        num_blocks: tuple[int, int, int, int],
        width: int = 64,
        in_channels: int = 3,
        *,
        zero_init_residual: bool = False,
        stem: str = "cifar",
        temporal_strides: tuple[int, int, int, int] = (1, 2, 2, 2),
    ) -> None:
        super().__init__()
        if width <= 0 or in_channels <= 0:
            raise ConfigError(f"width and in_channels must be > 0; got {width} and {in_channels}")
        if stem not in VIDEO_STEMS:
            raise ConfigError(f"unknown video stem {stem!r}; expected one of {list(VIDEO_STEMS)}")
        if any(s not in (1, 2) for s in temporal_strides):
            raise ConfigError(f"temporal strides must be 1 or 2; got {temporal_strides}")
        self.kind = kind
        self.stem = _stem(kind, stem, in_channels, width)
        in_planes = width
        stages: list[nn.Module] = []
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            first = (temporal_strides[i], 1 if i == 0 else 2)
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(VideoBasicBlock(kind, in_planes, planes, first if j == 0 else (1, 1)))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.feature_dim: int = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, VideoBasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-head features.

        Args:
            x: Normalised clips.

        Returns:
            Globally average-pooled (time and space) activations of the last stage.

        Shape:
            - x: ``(B, in_channels, T, H, W)``.
            - Returns: ``(B, feature_dim)``.
        """
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, T, H, W) clip batch; got {tuple(x.shape)}")
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return torch.flatten(self.pool(out), 1)


@MODELS.register("r3d_18")
def r3d_18(
    width: int = 64, in_channels: int = 3, *, zero_init_residual: bool = False, stem: str = "cifar"
) -> VideoResNet:
    """R3D-18 (3x3x3 convolutions, ``(2, 2, 2, 2)``); ``feature_dim = 8 * width``; clips only."""
    return VideoResNet(
        "3d", (2, 2, 2, 2), width, in_channels, zero_init_residual=zero_init_residual, stem=stem
    )


@MODELS.register("r2plus1d_18")
def r2plus1d_18(
    width: int = 64, in_channels: int = 3, *, zero_init_residual: bool = False, stem: str = "cifar"
) -> VideoResNet:
    """R(2+1)D-18 ((2+1)D convolutions, ``(2, 2, 2, 2)``); ``feature_dim = 8 * width``; clips only."""
    return VideoResNet(
        "2plus1d",
        (2, 2, 2, 2),
        width,
        in_channels,
        zero_init_residual=zero_init_residual,
        stem=stem,
    )
