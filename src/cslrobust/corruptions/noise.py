"""Noise corruptions: Gaussian, shot (Poisson) and impulse (salt-and-pepper) noise.

Constants are the CIFAR ones of ``make_cifar_c.py`` (see :mod:`cslrobust.corruptions`). All three are
vectorised over the batch: one draw of shape ``(N, H, W, 3)`` per call.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from cslrobust.corruptions.registry import CORRUPTIONS, unit_to_uint8

GAUSSIAN_NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_NOISE_PHOTONS = (500, 250, 100, 75, 50)
IMPULSE_NOISE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)


@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Add i.i.d. N(0, std^2) noise per pixel and channel in [0,1] units."""
    x = images / 255.0
    return unit_to_uint8(x + rng.normal(scale=GAUSSIAN_NOISE_STD[severity - 1], size=x.shape))


@CORRUPTIONS.register("shot_noise")
def shot_noise(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Replace each value v in [0,1] by Poisson(v * c) / c (fewer photons c = more noise)."""
    photons = SHOT_NOISE_PHOTONS[severity - 1]
    x = images / 255.0
    return unit_to_uint8(rng.poisson(x * photons) / photons)


@CORRUPTIONS.register("impulse_noise")
def impulse_noise(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Set each value independently with probability ``amount`` to 0 or 1 (equally likely).

    Same semantics as ``skimage.util.random_noise(mode="s&p", salt_vs_pepper=0.5)``, which the
    reference calls: two Bernoulli fields per pixel and channel.
    """
    amount = IMPULSE_NOISE_AMOUNT[severity - 1]
    x = images / 255.0
    flipped = rng.random(x.shape) < amount
    salted = rng.random(x.shape) < 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return unit_to_uint8(x)
