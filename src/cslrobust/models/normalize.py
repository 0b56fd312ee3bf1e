"""Per-channel normalisation as the first layer of every model.

Inputs everywhere in cslrobust are images in [0, 1]; the model owns its mean/std so that attacks,
probes and evaluation all share one input contract (the AutoAttack / RobustBench
``ImageNormalizer`` convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cslrobust.errors import ConfigError
from cslrobust.layouts import Layout, batch_ndim


class Normalize(nn.Module):
    """Subtract a per-channel mean and divide by a per-channel standard deviation.

    The statistics are stored as (non-trainable) buffers, so they move with ``.to(device)`` and are
    saved in the state dict. Their shape broadcasts over the batch layout: ``(1, C, 1, 1)`` for
    images, ``(1, C, 1, 1, 1)`` for clips, so the channel statistics never align with the time axis.

    Args:
        mean: Per-channel mean, one value per input channel.
        std: Per-channel standard deviation, same length as ``mean``; every entry must be > 0.
        layout: Sample layout of the input (:data:`cslrobust.layouts.Layout`).

    Raises:
        ConfigError: If ``mean`` and ``std`` differ in length or are empty, if an entry of
            ``std`` is <= 0, or if ``layout`` is unknown.

    Shape:
        - Input: ``(B, C, H, W)`` (images) or ``(B, C, T, H, W)`` (clips) with values in [0, 1].
        - Output: the input's shape, ``(x - mean) / std`` per channel.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], layout: Layout = "image"
    ) -> None:
        super().__init__()
        ndim = batch_ndim(layout)
        if len(mean) == 0 or len(mean) != len(std):
            raise ConfigError(
                "mean and std must be non-empty and of equal length; "
                f"got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ConfigError(f"std entries must be > 0; got {list(std)}")
        self.layout: Layout = layout
        shape = (1, -1) + (1,) * (ndim - 2)  # (1, C, 1, 1) or (1, C, 1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` channel-wise (see the class docstring for shapes).

        Raises:
            ValueError: If ``x`` does not have the layout's number of dimensions.
        """
        if x.ndim != self.mean.ndim:
            raise ValueError(
                f"Normalize for {self.layout} samples expects a {self.mean.ndim}-D batch; "
                f"got shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        """Show the statistics in ``repr``."""
        return (
            f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}, "
            f"layout={self.layout!r}"
        )
