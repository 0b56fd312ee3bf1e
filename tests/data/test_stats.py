from __future__ import annotations

import pytest
import torch

from cslrobust.data.stats import channel_mean_std
from cslrobust.errors import DataError


def test_channel_mean_std_matches_float64_reference() -> None:
    images = torch.randint(
        0, 256, (5000, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    mean, std = channel_mean_std(images)
    pixels = images.double().div(255).permute(1, 0, 2, 3).reshape(3, -1)  # (3, N*H*W)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), pixels.mean(dim=1))
    torch.testing.assert_close(
        torch.tensor(std, dtype=torch.float64), pixels.std(dim=1, correction=0)
    )


def test_channel_mean_std_constant_images() -> None:
    images = torch.zeros(3, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    assert channel_mean_std(images) == ((0.0, 1.0, 0.0), (0.0, 0.0, 0.0))


def test_channel_mean_std_empty() -> None:
    with pytest.raises(DataError, match="empty"):
        channel_mean_std(torch.zeros(0, 3, 2, 2, dtype=torch.uint8))


def test_channel_mean_std_pools_sets_of_any_size_and_strided_views() -> None:
    gen = torch.Generator().manual_seed(1)
    videos = [torch.randint(0, 256, (t, 5, 7, 3), generator=gen, dtype=torch.uint8) for t in (3, 9)]
    frames = [v.permute(0, 3, 1, 2) for v in videos]  # (T, 3, H, W) views, not contiguous
    mean, std = channel_mean_std(iter(frames))
    pixels = torch.cat([v.reshape(-1, 3) for v in videos]).double() / 255  # (pixels, 3)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), pixels.mean(0))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), pixels.std(0, correction=0))
    assert channel_mean_std(torch.cat(frames)) == (mean, std)
    with pytest.raises(DataError, match="empty"):
        channel_mean_std([])
