"""Small, real-looking test images: smooth random colour fields, 32x32, uint8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage


def smooth_images(n: int, seed: int) -> np.ndarray:
    """``(n, 32, 32, 3)`` uint8: low-pass filtered noise stretched into a random sub-range of [0, 255]."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((n, 32, 32, 3)), sigma=(0, 3, 3, 0))
    low = field.min(axis=(1, 2, 3), keepdims=True)
    high = field.max(axis=(1, 2, 3), keepdims=True)
    field = (field - low) / (high - low)
    floor = rng.uniform(0.1, 0.4, (n, 1, 1, 1))
    ceiling = rng.uniform(0.6, 0.9, (n, 1, 1, 1))
    return (255 * (floor + (ceiling - floor) * field)).astype(np.uint8)


@pytest.fixture(scope="session")
def images_hwc() -> np.ndarray:
    return smooth_images(8, seed=0)


@pytest.fixture(scope="session")
def images(images_hwc: np.ndarray) -> torch.Tensor:
    """The same 8 images as a ``(8, 3, 32, 32)`` uint8 tensor."""
    return torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous()
