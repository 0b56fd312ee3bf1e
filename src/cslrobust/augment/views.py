"""Batched view generation for contrastive and supervised training.

Views are produced on whole batches on the input's device with ``kornia.augmentation``: the
``n_views`` copies of a batch are stacked view-major and augmented in one pass with
``same_on_batch=False``, so every row (every view of every sample) draws its own parameters.
Random parameters come from the global torch RNG (kornia samples them on the CPU by default, so a
seed gives the same views on every device); the caller scopes that RNG, e.g. per epoch. The
``"simclr_fast"`` preset (:mod:`cslrobust.augment.fast_views`) draws the same view distribution with
batched tensor ops on the input's device and no host-device synchronisation.

Each preset registers its config section (an :class:`~cslrobust.sections.AugmentSection` subclass
whose ``kind`` defaults to the preset's name) with a pipeline builder that reads that section;
:func:`build_augment` turns a section into a :class:`ViewAugment`.

Augmentations never normalise: outputs are [0, 1] images and normalisation belongs to
:class:`cslrobust.models.Normalize`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import kornia.augmentation as K
import torch
from pydantic import Field, field_validator
from torch import nn

from cslrobust.errors import ConfigError
from cslrobust.layouts import Layout, batch_ndim, require_layout
from cslrobust.registry import ComponentRegistry
from cslrobust.sections import AugmentSection

__all__ = [
    "AUGMENTATIONS",
    "AugmentParams",
    "AugmentSection",
    "CropFlipAugmentSection",
    "NoAugmentSection",
    "PipelineBuilder",
    "ScheduledViews",
    "SimCLRAugmentSection",
    "SimCLRViewsSection",
    "ViewAugment",
    "build_augment",
    "check_augment_layout",
]


@dataclass(frozen=True)
class AugmentParams:
    """Strength settings of the SimCLR recipe (``"simclr"`` and ``"simclr_fast"``).

    Attributes:
        crop_scale: Range of the crop area as a fraction of the image.
        crop_ratio: Range of the crop aspect ratio ``w / h``, sampled log-uniformly.
        flip_p: Probability of a horizontal flip.
        jitter: Colour-jitter strengths ``(brightness, contrast, saturation, hue)`` with torchvision
            semantics: factors drawn from ``[1 - s, 1 + s]`` (hue shift from ``[-h, h]`` turns).
        jitter_p: Probability of applying colour jitter to a view.
        grayscale_p: Probability of converting a view to grayscale.

    Raises:
        ConfigError: If a probability is outside [0, 1], a range is empty or out of bounds, or a
            jitter strength is negative (or hue > 0.5).
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2

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
        if not _valid_jitter(self.jitter):
            raise ConfigError(f"jitter must be {_JITTER_EXPECTED}; got {self.jitter}")


_JITTER_EXPECTED = "4 non-negative strengths (brightness, contrast, saturation, hue), hue <= 0.5"


def _valid_jitter(jitter: tuple[float, ...]) -> bool:
    """Whether ``jitter`` is 4 non-negative strengths with hue <= 0.5."""
    return len(jitter) == 4 and min(jitter) >= 0.0 and jitter[3] <= 0.5


class SimCLRViewsSection(AugmentSection):
    """The strengths of the SimCLR recipe: the section of ``simclr`` and ``simclr_fast``.

    The crop aspect-ratio range is SimCLR's (3/4, 4/3) and not configurable.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = Field(default=0.5, ge=0.0, le=1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = Field(default=0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(default=0.2, ge=0.0, le=1.0)

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"expected 0 < low <= high <= 1, got {value}")
        return value

    @field_validator("jitter")
    @classmethod
    def _jitter_strengths(
        cls, value: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float]:
        if not _valid_jitter(value):
            raise ValueError(f"expected {_JITTER_EXPECTED}")
        return value

    def at_strength(self, strength: float) -> SimCLRViewsSection:
        """These strengths scaled by ``strength`` in [0, 1] (DynACL's annealing).

        As DynACL's code (PKU-ML/DYNACL ``reload``), from this section's values: the crop's
        smallest area ``hi - (hi - lo) * s`` (DynACL: ``1 - 0.9 s``), jitter strengths, jitter and
        grayscale probabilities times ``s``; the flip is kept. ``s = 1`` is this section.

        Raises:
            ValueError: If ``strength`` is outside [0, 1].
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
        low, high = self.crop_scale
        return self.model_copy(
            update={
                "crop_scale": (low + (high - low) * (1.0 - strength), high),
                "jitter": tuple(j * strength for j in self.jitter),
                "jitter_p": self.jitter_p * strength,
                "grayscale_p": self.grayscale_p * strength,
            }
        )

    def params(self) -> AugmentParams:
        """These strengths as the recipe's :class:`AugmentParams`."""
        return AugmentParams(
            crop_scale=self.crop_scale,
            flip_p=self.flip_p,
            jitter=self.jitter,
            jitter_p=self.jitter_p,
            grayscale_p=self.grayscale_p,
        )


class SimCLRAugmentSection(SimCLRViewsSection):
    """Config section of ``simclr`` (kornia), the default of every method."""

    kind: Literal["simclr"] = "simclr"


class CropFlipAugmentSection(AugmentSection):
    """Config section of ``crop_flip``: zero-pad, random crop, horizontal flip."""

    kind: Literal["crop_flip"] = "crop_flip"
    flip_p: float = Field(default=0.5, ge=0.0, le=1.0)
    crop_padding: int = Field(default=4, ge=0, description="zero padding before the crop")


class NoAugmentSection(AugmentSection):
    """Config section of ``none``: every view is a copy of its image (no parameters)."""

    kind: Literal["none"] = "none"


class PipelineBuilder(Protocol):
    """Signature of the builders of :data:`AUGMENTATIONS`: the preset's section and image size."""

    def __call__(self, section: Any, size: tuple[int, int]) -> nn.Module:
        """Build a per-row random pipeline mapping ``(N, C, *size)`` to ``(N, C, *size)``."""
        ...


AUGMENTATIONS: ComponentRegistry[AugmentSection, PipelineBuilder] = ComponentRegistry(
    "augmentation", key="kind", base=AugmentSection
)
"""View presets keyed by the ``augment.kind`` config value: section class and builder each."""


@AUGMENTATIONS.register("simclr", SimCLRAugmentSection)
def build_simclr_pipeline(section: SimCLRViewsSection, size: tuple[int, int]) -> nn.Module:
    """SimCLR's CIFAR recipe: random resized crop, flip, colour jitter, grayscale; no blur.

    Reference:
        T. Chen, S. Kornblith, M. Norouzi, G. Hinton. "A Simple Framework for Contrastive Learning
        of Visual Representations." ICML 2020, Appendix B.9 (Gaussian blur is dropped on CIFAR-10).
    """
    params = section.params()
    brightness, contrast, saturation, hue = params.jitter
    return nn.Sequential(
        K.RandomResizedCrop(size, scale=params.crop_scale, ratio=params.crop_ratio),
        K.RandomHorizontalFlip(p=params.flip_p),
        # ColorJitter (not ColorJiggle) keeps torchvision's formulas and its random per-call order
        # of the four adjustments, so strengths mean what they mean in the SimCLR/SupCon code.
        K.ColorJitter(brightness, contrast, saturation, hue, p=params.jitter_p),
        K.RandomGrayscale(p=params.grayscale_p),
    )


@AUGMENTATIONS.register("crop_flip", CropFlipAugmentSection)
def build_crop_flip_pipeline(section: CropFlipAugmentSection, size: tuple[int, int]) -> nn.Module:
    """The standard supervised CIFAR recipe: zero-pad, random crop back to ``size``, flip."""
    return nn.Sequential(
        K.RandomCrop(size, padding=section.crop_padding),
        K.RandomHorizontalFlip(p=section.flip_p),
    )


@AUGMENTATIONS.register("none", NoAugmentSection)
def build_identity_pipeline(section: NoAugmentSection, size: tuple[int, int]) -> nn.Module:
    """No augmentation: every view is an exact copy of its sample."""
    del section, size
    return nn.Identity()


class ViewAugment(nn.Module):
    """Make ``n_views`` independently augmented views of every image in a batch.

    The pipeline depends on the image size, so one is built per ``(H, W)`` on first use and reused;
    it holds no state that affects the output.

    Args:
        section: The section of a preset registered in :data:`AUGMENTATIONS` (``"simclr"``,
            ``"simclr_fast"``, ``"crop_flip"``, ``"none"``), e.g. ``SimCLRAugmentSection()`` or
            ``AUGMENTATIONS.section("crop_flip", crop_padding=2)``.

    Raises:
        ConfigError: If ``section`` is not a registered preset's section.

    Shape:
        - images: ``(B, C, H, W)`` floating point in [0, 1] (``C = 3`` for the SimCLR presets).
        - Output: ``(n_views * B, C, H, W)`` in [0, 1], same dtype and device, view-major: row
          ``v * B + b`` is view ``v`` of sample ``b``.
    """

    def __init__(self, section: AugmentSection) -> None:
        super().__init__()
        self.section = section
        self._builder = AUGMENTATIONS.entry_for(section).build
        self._pipelines: dict[tuple[int, int], nn.Module] = {}

    def forward(self, images: torch.Tensor, n_views: int) -> torch.Tensor:
        """Return ``n_views`` augmented views of ``images`` (see the class docstring for shapes).

        Clip presets (``layouts = ("clip",)``) take ``(B, C, T, H, W)`` clips instead and return
        ``(n_views * B, C, T', H, W)`` (``T'`` the preset's clip length).

        Raises:
            ValueError: If ``images`` is not a floating-point batch of the preset's layout (4-D for
                images, 5-D for clips) or ``n_views < 1``.
        """
        ndims = {batch_ndim(layout) for layout in self.section.layouts}
        if images.ndim not in ndims or not images.is_floating_point():
            expected = "(B, C, H, W)" if 4 in ndims else "(B, C, T, H, W)"
            raise ValueError(
                f"expected a {expected} float tensor; got {tuple(images.shape)} {images.dtype}"
            )
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1; got {n_views}")
        views = images.repeat(n_views, *(1,) * (images.ndim - 1))  # (V*B, ...), view-major
        size = (images.shape[-2], images.shape[-1])
        pipeline = self._pipelines.get(size)
        if pipeline is None:
            pipeline = self._pipelines[size] = self._builder(self.section, size)
        # Crops/flips/grayscale are convex combinations and ColorJitter clamps, so this clamp only
        # removes floating-point round-off.
        out: torch.Tensor = pipeline(views)
        return out.clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        """Show the preset's section in ``repr``."""
        return repr(self.section)


class ScheduledViews:
    """Views whose augmentation strength changes with the epoch (DynACL's annealing).

    The loop calls :meth:`set_epoch` before each epoch; the views of that epoch come from the
    section at ``strength_of(epoch)`` (:meth:`SimCLRViewsSection.at_strength`). Random draws are as
    :class:`ViewAugment`'s (the caller scopes the global RNG per epoch).

    Args:
        section: A section with strengths (``simclr`` or ``simclr_fast``).
        strength_of: 0-based epoch -> strength in [0, 1].
        device: Where the pipelines run.

    Raises:
        ConfigError: If the section has no strengths to anneal.
    """

    def __init__(
        self,
        section: AugmentSection,
        strength_of: Callable[[int], float],
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(section, SimCLRViewsSection):
            raise ConfigError(
                f"augment.kind {section.kind!r} has no strengths to anneal; expected 'simclr' or "
                "'simclr_fast' (DynACL anneals the SimCLR recipe's strengths)"
            )
        self.section = section
        self.strength_of = strength_of
        self.device = device
        self._views: dict[float, ViewAugment] = {}
        self.strength = 1.0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Use the strength of ``epoch`` (0-based) from now on."""
        self.strength = float(self.strength_of(epoch))
        if self.strength not in self._views:
            assert isinstance(self.section, SimCLRViewsSection)
            scaled = self.section.at_strength(self.strength)
            self._views[self.strength] = build_augment(scaled).to(self.device)

    def __call__(self, images: torch.Tensor, n_views: int) -> torch.Tensor:
        """``n_views`` views of ``images`` at the current strength (shapes as :class:`ViewAugment`)."""
        return self._views[self.strength](images, n_views)


def build_augment(section: AugmentSection) -> ViewAugment:
    """Build the :class:`ViewAugment` of the preset that ``section`` configures.

    Args:
        section: A registered preset's section (from a config, ``AUGMENTATIONS.section(kind,
            ...)`` or the section class itself).

    Returns:
        The view generator.

    Raises:
        ConfigError: If ``section`` is not a registered preset's section.
    """
    return ViewAugment(section)


def check_augment_layout(section: AugmentSection, *, data: str, layout: Layout) -> None:
    """Raise one config-error line when preset ``section.kind`` does not take ``layout`` samples.

    Args:
        section: The chosen preset's section.
        data: The data set's name, for the message.
        layout: The layout of the data set's samples.

    Raises:
        ConfigError: E.g. ``augment.kind 'simclr' supports image samples, data 'synthetic_clips'
            gives clip samples; expected one of augment.kind: ['simclr_clip']``.
    """
    fitting = [k for k in AUGMENTATIONS.names() if layout in AUGMENTATIONS.get(k).section.layouts]
    require_layout(
        "augment.kind",
        section.kind,
        type(section).layouts,
        data=data,
        layout=layout,
        alternatives=fitting,
    )
