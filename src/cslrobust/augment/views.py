"""Batched view generation for contrastive and supervised training.

Views are produced on whole batches on the input's device with ``kornia.augmentation``: the
``n_views`` copies of a batch are stacked view-major and augmented in one pass with
``same_on_batch=False``, so every row (every view of every sample) draws its own parameters.
Random parameters come from the global torch RNG (kornia samples them on the CPU by default, so a
seed gives the same views on every device); the caller scopes that RNG, e.g. per epoch. The
``"simclr_fast"`` preset (:mod:`cslrobust.augment.fast_views`) draws the same view distribution with
batched tensor ops on the input's device and no host-device synchronisation.

Augmentations never normalise: outputs are [0, 1] images and normalisation belongs to
:class:`cslrobust.models.Normalize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import kornia.augmentation as K
import torch
from torch import nn

from cslrobust.errors import ConfigError
from cslrobust.registry import Registry

__all__ = ["AUGMENTATIONS", "AugmentParams", "PipelineBuilder", "ViewAugment", "build_augment"]


@dataclass(frozen=True)
class AugmentParams:
    """Strength settings shared by the view presets; each preset reads the fields it needs.

    Attributes:
        crop_scale: Range of the crop area as a fraction of the image (``"simclr"``).
        crop_ratio: Range of the crop aspect ratio ``w / h``, sampled log-uniformly (``"simclr"``).
        flip_p: Probability of a horizontal flip (``"simclr"``, ``"crop_flip"``).
        jitter: Colour-jitter strengths ``(brightness, contrast, saturation, hue)`` with torchvision
            semantics: factors drawn from ``[1 - s, 1 + s]`` (hue shift from ``[-h, h]`` turns).
        jitter_p: Probability of applying colour jitter to a view (``"simclr"``).
        grayscale_p: Probability of converting a view to grayscale (``"simclr"``).
        crop_padding: Zero padding on each side before the random crop (``"crop_flip"``).

    Raises:
        ConfigError: If a probability is outside [0, 1], a range is empty or out of bounds, a jitter
            strength is negative (or hue > 0.5), or the padding is negative.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    crop_padding: int = 4

    def __post_init__(self) -> None:
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1]; got {value}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"crop_scale must satisfy 0 < lo <= hi <= 1; got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(f"crop_ratio must satisfy 0 < lo <= hi; got {self.crop_ratio}")
        if len(self.jitter) != 4 or min(self.jitter) < 0.0 or self.jitter[3] > 0.5:
            raise ConfigError(
                "jitter must be 4 non-negative strengths (brightness, contrast, saturation, hue) "
                f"with hue <= 0.5; got {self.jitter}"
            )
        if self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0; got {self.crop_padding}")


class PipelineBuilder(Protocol):
    """Signature of the entries of :data:`AUGMENTATIONS`."""

    def __call__(self, params: AugmentParams, size: tuple[int, int]) -> nn.Module:
        """Build a per-row random pipeline mapping ``(N, C, *size)`` to ``(N, C, *size)``."""
        ...


AUGMENTATIONS: Registry[PipelineBuilder] = Registry("augmentation")
"""View presets keyed by the ``kind`` config value."""


@AUGMENTATIONS.register("simclr")
def build_simclr_pipeline(params: AugmentParams, size: tuple[int, int]) -> nn.Module:
    """SimCLR's CIFAR recipe: random resized crop, flip, colour jitter, grayscale; no blur.

    Reference:
        T. Chen, S. Kornblith, M. Norouzi, G. Hinton. "A Simple Framework for Contrastive Learning
        of Visual Representations." ICML 2020, Appendix B.9 (Gaussian blur is dropped on CIFAR-10).
    """
    brightness, contrast, saturation, hue = params.jitter
    return nn.Sequential(
        K.RandomResizedCrop(size, scale=params.crop_scale, ratio=params.crop_ratio),
        K.RandomHorizontalFlip(p=params.flip_p),
        # ColorJitter (not ColorJiggle) keeps torchvision's formulas and its random per-call order
        # of the four adjustments, so strengths mean what they mean in the SimCLR/SupCon code.
        K.ColorJitter(brightness, contrast, saturation, hue, p=params.jitter_p),
        K.RandomGrayscale(p=params.grayscale_p),
    )


@AUGMENTATIONS.register("crop_flip")
def build_crop_flip_pipeline(params: AugmentParams, size: tuple[int, int]) -> nn.Module:
    """The standard supervised CIFAR recipe: zero-pad, random crop back to ``size``, flip."""
    return nn.Sequential(
        K.RandomCrop(size, padding=params.crop_padding),
        K.RandomHorizontalFlip(p=params.flip_p),
    )


@AUGMENTATIONS.register("none")
def build_identity_pipeline(params: AugmentParams, size: tuple[int, int]) -> nn.Module:
    """No augmentation: every view is an exact copy of its sample."""
    del params, size
    return nn.Identity()


class ViewAugment(nn.Module):
    """Make ``n_views`` independently augmented views of every image in a batch.

    The pipeline depends on the image size, so one is built per ``(H, W)`` on first use and reused;
    it holds no state that affects the output.

    Args:
        kind: Preset name registered in :data:`AUGMENTATIONS` (``"simclr"``, ``"simclr_fast"``,
            ``"crop_flip"``, ``"none"``).
        params: Strength settings; the defaults are the SimCLR CIFAR values.

    Raises:
        ConfigError: If ``kind`` is unknown.

    Shape:
        - images: ``(B, C, H, W)`` floating point in [0, 1] (``C = 3`` for the SimCLR presets).
        - Output: ``(n_views * B, C, H, W)`` in [0, 1], same dtype and device, view-major: row
          ``v * B + b`` is view ``v`` of sample ``b``.
    """

    def __init__(self, kind: str, params: AugmentParams | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.params = params if params is not None else AugmentParams()
        self._builder = AUGMENTATIONS.get(kind)
        self._pipelines: dict[tuple[int, int], nn.Module] = {}

    def forward(self, images: torch.Tensor, n_views: int) -> torch.Tensor:
        """Return ``n_views`` augmented views of ``images`` (see the class docstring for shapes).

        Raises:
            ValueError: If ``images`` is not a 4-D floating-point tensor or ``n_views < 1``.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"expected a (B, C, H, W) float tensor; got {tuple(images.shape)} {images.dtype}"
            )
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1; got {n_views}")
        views = images.repeat(n_views, 1, 1, 1)  # (V*B, C, H, W), view-major
        size = (images.shape[-2], images.shape[-1])
        pipeline = self._pipelines.get(size)
        if pipeline is None:
            pipeline = self._pipelines[size] = self._builder(self.params, size)
        # Crops/flips/grayscale are convex combinations and ColorJitter clamps, so this clamp only
        # removes floating-point round-off.
        out: torch.Tensor = pipeline(views)
        return out.clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        """Show the preset and its parameters in ``repr``."""
        return f"kind={self.kind!r}, params={self.params}"


def build_augment(kind: str, params: AugmentParams | None = None) -> ViewAugment:
    """Build the :class:`ViewAugment` for preset ``kind``.

    Args:
        kind: Preset name registered in :data:`AUGMENTATIONS`.
        params: Strength settings; ``None`` uses the :class:`AugmentParams` defaults.

    Returns:
        The view generator.

    Raises:
        ConfigError: If ``kind`` is unknown or ``params`` is invalid.
    """
    return ViewAugment(kind, params)
