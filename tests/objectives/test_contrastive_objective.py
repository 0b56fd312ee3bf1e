from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives import (
    DebiasedObjective,
    SimCLRObjective,
    SupConObjective,
    expand_to_views,
    info_nce,
    negative_mask,
    normalize_views,
)
from cslrobust.objectives.contrastive_objective import ContrastiveObjective
from cslrobust.objectives.objective import HeadKind


@dataclass(frozen=True)
class _SameParity(ContrastiveObjective):
    """Toy objective: rows whose instance ids share a parity are positives."""

    temperature: float = 0.5
    n_views: int = 2
    head_kind: HeadKind = field(default="projector", init=False)

    name: ClassVar[str] = "same_parity"

    def positive_mask(self, index: Tensor, labels: Tensor) -> Tensor:
        parity = expand_to_views(index % 2, self.n_views)
        same = parity[:, None] == parity[None, :]
        return same & ~torch.eye(same.shape[0], dtype=torch.bool, device=same.device)


def test_call_is_info_nce_on_the_subclass_masks() -> None:
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    index = torch.arange(5)
    out = _SameParity(temperature=0.3, n_views=3)(outputs, index, torch.zeros(5).long())
    pos = _SameParity(n_views=3).positive_mask(index, index)
    expected = info_nce(normalize_views(outputs), pos, negative_mask(pos), 0.3)
    torch.testing.assert_close(out.loss, expected)
    assert list(out.metrics) == ["loss", "pos_sim", "neg_sim"]


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (SimCLRObjective, "simclr"),
        (SupConObjective, "supcon"),
        (DebiasedObjective, "debiased"),
        (_SameParity, "same_parity"),
    ],
)
def test_validation_names_the_objective(cls: type[ContrastiveObjective], name: str) -> None:
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        cls(temperature=0.0)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=f"n_views must be >= 2 for {name}, got 1"):
        cls(n_views=1)  # type: ignore[call-arg]


def test_debiased_adds_its_metric_last() -> None:
    outputs = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    out = DebiasedObjective()(outputs, torch.arange(4), torch.arange(4))
    assert list(out.metrics) == ["loss", "pos_sim", "neg_sim", "dcl_clamped_fraction"]


def test_base_needs_a_positive_mask() -> None:
    with pytest.raises(TypeError):
        ContrastiveObjective()  # type: ignore[abstract]
