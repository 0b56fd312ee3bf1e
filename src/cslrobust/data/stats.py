"""Per-channel pixel statistics of a uint8 image set, for the model's normalisation buffers."""

from __future__ import annotations

import torch

from cslrobust.errors import DataError

_CHUNK_IMAGES = 4096


def channel_mean_std(
    images: torch.Tensor,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mean and (population) standard deviation of each channel, with pixels scaled to ``[0, 1]``.

    Sums are accumulated exactly in int64 over chunks, so the result does not depend on the chunk
    size and no float copy of the whole set is made.

    Args:
        images: uint8 images, channels first.

    Returns:
        ``(mean, std)``, each a tuple of three floats in ``[0, 1]``.

    Shape:
        images: ``(N, 3, H, W)`` uint8.

    Raises:
        DataError: If ``images`` is empty.
    """
    if images.numel() == 0:
        raise DataError("cannot compute channel mean/std of an empty image set; expected N >= 1")
    total = torch.zeros(3, dtype=torch.int64)
    total_sq = torch.zeros(3, dtype=torch.int64)
    for chunk in images.split(_CHUNK_IMAGES):
        values = chunk.to(device="cpu", dtype=torch.int64)  # (n, 3, H, W)
        total += values.sum(dim=(0, 2, 3))
        total_sq += values.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3] * 255.0
    mean = total.double() / count
    var = total_sq.double() / (count * 255.0) - mean.square()
    std = var.clamp_min(0.0).sqrt()
    m0, m1, m2 = mean.tolist()
    s0, s1, s2 = std.tolist()
    return (m0, m1, m2), (s0, s1, s2)
