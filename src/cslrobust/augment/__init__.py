"""Batched view generation (SimCLR / supervised CIFAR recipes, SimCLR clips), one config section per preset; never normalises."""

from cslrobust.augment.clip_views import (
    ClipViewParams,
    SimCLRClipAugment,
    SimCLRClipAugmentSection,
)
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
    check_augment_layout,
)

__all__ = [
    "AUGMENTATIONS",
    "ClipViewParams",
    "SimCLRClipAugment",
    "SimCLRClipAugmentSection",
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
    "check_augment_layout",
]
