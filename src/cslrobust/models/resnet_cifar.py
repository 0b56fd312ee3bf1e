"""CIFAR-style ResNets (He et al., 2016) with a width multiplier.

Differences from the ImageNet ResNet: the stem is a single 3x3 convolution with stride 1 and there
is no max-pool, so a 32x32 input reaches the last stage at 4x4. This is the variant used by SimCLR,
SupCon and most CIFAR robustness work (e.g. ``kuangliu/pytorch-cifar``). ``stem="imagenet"`` builds
torchvision's stem instead (7x7 convolution with stride 2, then a 3x3 max-pool with stride 2), for
encoders trained elsewhere (``cslrobust audit``); module and parameter names are the same for both stems.

Reference:
    K. He, X. Zhang, S. Ren, J. Sun. "Deep Residual Learning for Image Recognition." CVPR 2016.
"""

from __future__ import annotations

import torch
from torch import nn

from cslrobust.errors import ConfigError
from cslrobust.models.backbone import MODELS, Backbone

__all__ = ["STEMS", "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]

STEMS = ("cifar", "imagenet")
"""Stems a :class:`ResNet` can be built with (the default, ``"cifar"``, first)."""


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut.

    Args:
        in_planes: Input channels.
        planes: Channels of both convolutions; the output has ``planes * expansion`` channels.
        stride: Stride of the first convolution (and of the projection shortcut).

    Shape:
        - Input: ``(B, in_planes, H, W)``.
        - Output: ``(B, planes, H / stride, W / stride)``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zero-initialised on request)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (see the class docstring for shapes)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), with the stride on the 3x3 convolution (ResNet v1.5).

    Args:
        in_planes: Input channels.
        planes: Bottleneck channels; the output has ``planes * expansion`` channels.
        stride: Stride of the 3x3 convolution (and of the projection shortcut).

    Shape:
        - Input: ``(B, in_planes, H, W)``.
        - Output: ``(B, 4 * planes, H / stride, W / stride)``.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zero-initialised on request)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (see the class docstring for shapes)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 convolution + BatchNorm projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResNet(Backbone):
    """CIFAR ResNet backbone: stem, four stages, global average pool; no classifier.

    Stage widths are ``width, 2*width, 4*width, 8*width`` (times the block expansion);
    ``width=64`` is the standard ResNet, ``width=16`` a cheap CPU variant.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: Blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        width: Channels of the stem and of the first stage.
        in_channels: Channels of the input image.
        zero_init_residual: Zero the last BatchNorm gamma of every residual branch so each block
            starts as the identity (Goyal et al., 2017, "Accurate, Large Minibatch SGD").
        stem: ``"cifar"`` (3x3 convolution, stride 1, no max-pool) or ``"imagenet"`` (7x7
            convolution, stride 2, 3x3 max-pool with stride 2: torchvision's ResNet).

    Attributes:
        feature_dim: Length of the pooled feature vector, ``8 * width * block.expansion``.

    Raises:
        ConfigError: If ``width`` or ``in_channels`` is not positive, or ``stem`` is unknown.

    Shape:
        - Input: ``(B, in_channels, H, W)``, already normalised
          (see :class:`~cslrobust.models.Normalize`).
        - Output: ``(B, feature_dim)``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        width: int = 64,
        in_channels: int = 3,
        *,
        zero_init_residual: bool = False,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if width <= 0 or in_channels <= 0:
            raise ConfigError(f"width and in_channels must be > 0; got {width} and {in_channels}")
        if stem not in STEMS:
            raise ConfigError(f"unknown stem {stem!r}; expected one of {list(STEMS)}")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages: list[nn.Module] = []
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks: list[nn.Module] = []
            for stride in strides:
                blocks.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = in_planes
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """Kaiming-normal (fan_out) convolutions, unit/zero BatchNorm."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-head features.

        Args:
            x: Normalised images.

        Returns:
            Globally average-pooled activations of the last stage.

        Shape:
            - x: ``(B, in_channels, H, W)``.
            - Returns: ``(B, feature_dim)``.
        """
        out = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (B, feature_dim, H/8, W/8)
        return torch.flatten(self.pool(out), 1)


@MODELS.register("resnet18")
def resnet18(
    width: int = 64, in_channels: int = 3, *, zero_init_residual: bool = False, stem: str = "cifar"
) -> ResNet:
    """ResNet-18 (BasicBlock, ``(2, 2, 2, 2)``); ``feature_dim = 8 * width``; CIFAR stem by default."""
    return ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        width,
        in_channels,
        zero_init_residual=zero_init_residual,
        stem=stem,
    )


@MODELS.register("resnet34")
def resnet34(
    width: int = 64, in_channels: int = 3, *, zero_init_residual: bool = False, stem: str = "cifar"
) -> ResNet:
    """ResNet-34 (BasicBlock, ``(3, 4, 6, 3)``); ``feature_dim = 8 * width``; CIFAR stem by default."""
    return ResNet(
        BasicBlock,
        (3, 4, 6, 3),
        width,
        in_channels,
        zero_init_residual=zero_init_residual,
        stem=stem,
    )


@MODELS.register("resnet50")
def resnet50(
    width: int = 64, in_channels: int = 3, *, zero_init_residual: bool = False, stem: str = "cifar"
) -> ResNet:
    """ResNet-50 (Bottleneck, ``(3, 4, 6, 3)``); ``feature_dim = 32 * width``; CIFAR stem by default."""
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        width,
        in_channels,
        zero_init_residual=zero_init_residual,
        stem=stem,
    )
