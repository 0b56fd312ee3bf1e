from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cslrobust.geometry.summary import summarize_values


def test_summary_matches_numpy_and_ignores_nan() -> None:
    values = torch.tensor([3.0, -1.0, float("nan"), 0.5, 2.0, 7.0])
    kept = np.array([3.0, -1.0, 0.5, 2.0, 7.0])
    summary = summarize_values(values)
    assert set(summary) == {"mean", "median", "q10", "q25", "q75", "q90"}
    assert summary["mean"] == pytest.approx(kept.mean())
    assert summary["median"] == pytest.approx(2.0)
    for key, q in [("q10", 0.1), ("q25", 0.25), ("q75", 0.75), ("q90", 0.9)]:
        assert summary[key] == pytest.approx(float(np.quantile(kept, q)))
    assert all(isinstance(v, float) and math.isfinite(v) for v in summary.values())


def test_summary_errors() -> None:
    with pytest.raises(ValueError, match="no"):
        summarize_values(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        summarize_values(torch.zeros(2, 2))
