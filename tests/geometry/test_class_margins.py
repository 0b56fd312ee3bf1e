from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from cslrobust.geometry import centroid_margins, logit_margins, summarize_margins


def _cos(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _naive_centroid_margins(features: Tensor, labels: Tensor, leave_one_out: bool) -> list[float]:
    z = features / features.norm(dim=1, keepdim=True)
    classes = sorted(set(labels.tolist()))
    margins = []
    for i in range(len(z)):
        own_members = [
            j for j in range(len(z)) if labels[j] == labels[i] and (j != i or not leave_one_out)
        ]
        own = torch.stack([z[j] for j in own_members]).mean(dim=0)
        others = [z[labels == c].mean(dim=0) for c in classes if c != int(labels[i])]
        d_own = 1 - _cos(z[i], own)
        d_other = min(1 - _cos(z[i], centroid) for centroid in others)
        margins.append(d_other - d_own)
    return margins


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_centroid_margins_match_naive_loop(
    features: Tensor, labels: Tensor, leave_one_out: bool
) -> None:
    margins = centroid_margins(features, labels, leave_one_out=leave_one_out)
    expected = torch.tensor(
        _naive_centroid_margins(features, labels, leave_one_out), dtype=torch.float64
    )
    assert margins.shape == (len(features),) and margins.dtype == torch.float64
    torch.testing.assert_close(margins, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 5, 8])
def test_chunked_equals_unchunked(features: Tensor, labels: Tensor, chunk_size: int) -> None:
    torch.testing.assert_close(
        centroid_margins(features, labels, chunk_size=chunk_size),
        centroid_margins(features, labels, chunk_size=1000),
    )


def test_hand_made_example() -> None:
    # Class 0 on the +x / +y axes, class 1 on the -x / -y axes; one class-0 point strays to class 1.
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    s = 1 / math.sqrt(2)
    # Leave-one-out: the own centroid is the other member (orthogonal, cos 0); the other class's
    # centroid points along -(1, 1) (cos -1/sqrt(2)). Margin = 0 - (-1/sqrt(2)).
    torch.testing.assert_close(
        centroid_margins(features, labels), torch.full((4,), s, dtype=torch.float64)
    )
    # Including the sample, the own centroid is along (1, 1): cos 1/sqrt(2); margin sqrt(2).
    torch.testing.assert_close(
        centroid_margins(features, labels, leave_one_out=False),
        torch.full((4,), 2 * s, dtype=torch.float64),
    )
    stray = torch.cat([features, torch.tensor([[-1.0, -0.2]], dtype=torch.float64)])
    margins = centroid_margins(stray, torch.tensor([0, 0, 1, 1, 0]))
    assert margins[4] < 0  # closer to class 1's centroid than to its own


def test_singleton_class_gets_nan_with_leave_one_out() -> None:
    features = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]], dtype=torch.float64)
    margins = centroid_margins(features, torch.tensor([0, 0, 1]))
    assert math.isnan(margins[2]) and not torch.isnan(margins[:2]).any()
    summary = summarize_margins(margins)
    assert summary["frac_negative"] == 0.0 and math.isfinite(summary["mean"])


def test_logit_margins_exact() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 5.0], [1.0, 1.0, -4.0]])
    margins = logit_margins(logits, torch.tensor([0, 1, 1]))
    assert margins.tolist() == [1.0, -2.0, 0.0]
    summary = summarize_margins(margins)
    assert summary["frac_negative"] == pytest.approx(1 / 3)  # a tie is not negative
    assert summary["median"] == 0.0 and summary["mean"] == pytest.approx(-1 / 3)


def test_logit_margins_match_naive(gen: torch.Generator) -> None:
    logits = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 6, (30,), generator=gen)
    expected = [
        float(row[y]) - max(float(v) for c, v in enumerate(row) if c != y)
        for row, y in zip(logits, labels.tolist(), strict=True)
    ]
    assert logit_margins(logits, labels).tolist() == expected


def test_summarize_margins_keys() -> None:
    summary = summarize_margins(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    assert set(summary) == {"mean", "median", "q10", "q25", "q75", "q90", "frac_negative"}
    assert summary["mean"] == 0.5 and summary["median"] == 0.5 and summary["frac_negative"] == 0.25


def test_errors(features: Tensor) -> None:
    with pytest.raises(ValueError, match="two classes"):
        centroid_margins(features, torch.zeros(len(features), dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes"):
        logit_margins(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        logit_margins(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
