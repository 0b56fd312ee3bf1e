"""Per-channel pixel statistics of a uint8 image set, for the model's normalisation buffers."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from cslrobust.errors import DataError

_CHUNK_PIXELS = 4096 * 32 * 32  # pixels per channel summed at once (a 100 MB int64 chunk)


def channel_mean_std(
    images: torch.Tensor | Iterable[torch.Tensor],
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mean and (population) standard deviation of each channel, with pixels scaled to ``[0, 1]``.

    Sums are accumulated exactly in int64 over chunks, so the result does not depend on the chunk
    size and no float copy of the whole set is made.

    Args:
        images: uint8 images, channels first; or several such sets of any sizes (e.g. the frames
            of each video as a ``(T, 3, H, W)`` view), pooled as one set.

    Returns:
        ``(mean, std)``, each a tuple of three floats in ``[0, 1]``.

    Shape:
        images: ``(N, 3, H, W)`` uint8 (each set ``(N_i, 3, H_i, W_i)``; views need not be
        contiguous).

    Raises:
        DataError: If there is no pixel.
    """
    sets = [images] if isinstance(images, torch.Tensor) else list(images)
    total = torch.zeros(3, dtype=torch.int64)
    total_sq = torch.zeros(3, dtype=torch.int64)
    pixels = 0
    for image_set in sets:
        per_image = image_set.shape[2] * image_set.shape[3]
        for chunk in image_set.split(max(1, _CHUNK_PIXELS // max(1, per_image))):
            values = chunk.to(device="cpu", dtype=torch.int64)  # (n, 3, H, W)
            total += values.sum(dim=(0, 2, 3))
            total_sq += values.square().sum(dim=(0, 2, 3))
        pixels += image_set.shape[0] * per_image
    if pixels == 0:
        raise DataError("cannot compute channel mean/std of an empty image set; expected N >= 1")
    count = pixels * 255.0
    mean = total.double() / count
    var = total_sq.double() / (count * 255.0) - mean.square()
    std = var.clamp_min(0.0).sqrt()
    m0, m1, m2 = mean.tolist()
    s0, s1, s2 = std.tolist()
    return (m0, m1, m2), (s0, s1, s2)
