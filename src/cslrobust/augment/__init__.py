"""Batched view generation (SimCLR / supervised CIFAR recipes); never normalises."""

from cslrobust.augment.fast_views import SimCLRFastAugment, SimCLRViewParams
from cslrobust.augment.views import (
    AUGMENTATIONS,
    AugmentParams,
    PipelineBuilder,
    ViewAugment,
    build_augment,
)

__all__ = [
    "AUGMENTATIONS",
    "AugmentParams",
    "PipelineBuilder",
    "SimCLRFastAugment",
    "SimCLRViewParams",
    "ViewAugment",
    "build_augment",
]
