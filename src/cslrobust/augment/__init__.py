"""Batched view generation (SimCLR / supervised CIFAR recipes), one config section per preset; never normalises."""

from cslrobust.augment.fast_views import (
    SimCLRFastAugment,
    SimCLRFastAugmentSection,
    SimCLRViewParams,
)
from cslrobust.augment.views import (
    AUGMENTATIONS,
    AugmentParams,
    AugmentSection,
    CropFlipAugmentSection,
    NoAugmentSection,
    PipelineBuilder,
    ScheduledViews,
    SimCLRAugmentSection,
    SimCLRViewsSection,
    ViewAugment,
    build_augment,
)

__all__ = [
    "AUGMENTATIONS",
    "AugmentParams",
    "AugmentSection",
    "CropFlipAugmentSection",
    "NoAugmentSection",
    "PipelineBuilder",
    "ScheduledViews",
    "SimCLRAugmentSection",
    "SimCLRFastAugment",
    "SimCLRFastAugmentSection",
    "SimCLRViewParams",
    "SimCLRViewsSection",
    "ViewAugment",
    "build_augment",
]
