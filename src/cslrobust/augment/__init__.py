"""Batched view generation (SimCLR / supervised CIFAR recipes); never normalises."""

from cslrobust.augment.views import (
    AUGMENTATIONS,
    AugmentParams,
    PipelineBuilder,
    ViewAugment,
    build_augment,
)

__all__ = ["AUGMENTATIONS", "AugmentParams", "PipelineBuilder", "ViewAugment", "build_augment"]
