"""The corruption registry, the 15 CIFAR-10-C names and families, and the shared signature.

A corruption is a pure function of a uint8 batch, a severity and an explicit
``numpy.random.Generator``; it never touches the global RNG. Adding a corruption: a function in one of
the family modules decorated with ``@CORRUPTIONS.register("<name>")``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from cslrobust.registry import Registry

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
"""The five severity levels of Hendrycks & Dietterich (2019)."""

FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
"""Family -> corruption names, in the order of the CIFAR-10-C release and the paper's tables."""

CORRUPTION_NAMES: tuple[str, ...] = tuple(name for names in FAMILIES.values() for name in names)
"""The 15 benchmark corruptions in canonical order."""

OFFICIAL_EXTRA_NAMES: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The four held-out corruptions that the official CIFAR-10-C release also ships (load-only here)."""


class CorruptionFn(Protocol):
    """A corruption at one severity.

    Shape:
        images: ``(N, 32, 32, 3)`` ``numpy.uint8``, channels last. Returns the same shape and dtype.
    """

    def __call__(
        self, images: NDArray[np.uint8], severity: int, rng: np.random.Generator
    ) -> NDArray[np.uint8]:
        """Corrupt ``images`` at ``severity`` (1..5), drawing all randomness from ``rng``."""
        ...


CORRUPTIONS: Registry[CorruptionFn] = Registry("corruption")


def family_of(name: str) -> str:
    """The family (``noise``, ``blur``, ``weather``, ``digital``) of a benchmark corruption.

    Raises:
        KeyError: If ``name`` is not one of :data:`CORRUPTION_NAMES`.
    """
    for family, names in FAMILIES.items():
        if name in names:
            return family
    raise KeyError(name)


def unit_to_uint8(x: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Clip ``x`` to [0, 1], scale to [0, 255] and truncate to uint8.

    This is the reference conversion ``np.uint8(np.clip(x, 0, 1) * 255)``: truncation, not rounding,
    so that generated sets have the statistics of the released ones.
    """
    out: NDArray[np.uint8] = (np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out
