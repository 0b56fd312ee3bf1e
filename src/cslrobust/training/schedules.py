"""Per-step learning-rate schedules, precomputed as arrays."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    peak: float, total_steps: int, warmup_steps: int, min_ratio: float = 0.0
) -> torch.Tensor:
    """Linear warm-up from ~0 to ``peak`` then cosine decay to ``min_ratio * peak``.

    Args:
        peak: Peak learning rate.
        total_steps: Number of optimiser steps.
        warmup_steps: Steps of linear warm-up (0: none).
        min_ratio: Final learning rate as a fraction of ``peak``.

    Returns:
        Float64 tensor of shape (total_steps,): the learning rate to use at each step.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    steps = torch.arange(total_steps, dtype=torch.float64)
    # Warm-up reaches peak at step ``warmup_steps`` (the first step uses peak/warmup, never 0).
    warm = peak * (steps + 1) / max(warmup_steps, 1)
    decay_len = max(total_steps - warmup_steps, 1)
    progress = (steps - warmup_steps).clamp(min=0) / decay_len
    cosine = min_ratio * peak + (1 - min_ratio) * peak * 0.5 * (1 + torch.cos(math.pi * progress))
    return torch.where(steps < warmup_steps, warm, cosine)
