"""Small random inputs shared by the geometry tests (float64, seeded)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def features(gen: torch.Generator) -> Tensor:
    return torch.randn(23, 5, generator=gen, dtype=torch.float64) * 3


@pytest.fixture
def labels(gen: torch.Generator) -> Tensor:
    # 23 samples over 4 classes, every class with at least two samples.
    base = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return torch.cat([base, torch.randint(0, 4, (15,), generator=gen)])
