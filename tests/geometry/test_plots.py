from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from cslrobust.geometry import (
    plot_distance_matrix,
    plot_embedding,
    plot_metric_vs_robustness,
    spearman,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_distance_matrix(tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    matrix = torch.rand(3, 3, dtype=torch.float64)
    matrix[2, 2] = math.nan
    out = plot_distance_matrix(matrix, ["cat", "dog", "frog"], tmp_path / "matrix.png")
    assert out == tmp_path / "matrix.png" and _is_png(out)
    assert matplotlib.get_backend() == backend  # no global backend switch


def test_plot_embedding(tmp_path: Path) -> None:
    xy = np.random.default_rng(0).normal(size=(30, 2))
    labels = torch.arange(3).repeat(10)
    out = plot_embedding(xy, labels, ["a", "b", "c"], str(tmp_path / "tsne.png"))
    assert _is_png(out)


def test_plot_metric_vs_robustness(tmp_path: Path) -> None:
    out = plot_metric_vs_robustness(
        [0.1, 0.4, 0.3, 0.9],
        torch.tensor([0.2, 0.5, 0.35, 0.6]),
        ["simclr", "supcon", "fnr", "ce"],
        tmp_path / "corr.png",
        xlabel="inter/intra",
        ylabel="robust accuracy",
    )
    assert _is_png(out)
    # Undefined correlation (constant input) still plots.
    flat = plot_metric_vs_robustness(
        [1.0, 1.0], [0.1, 0.2], ["a", "b"], tmp_path / "flat.png", "x", "y"
    )
    assert _is_png(flat)


def test_spearman() -> None:
    rho, p = spearman([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 9.0, 16.0, 30.0])
    assert rho == pytest.approx(1.0) and 0 <= p < 0.05
    rho, _ = spearman([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0])
    assert rho == pytest.approx(-1.0)
    assert all(math.isnan(v) for v in spearman([1.0, 2.0], [3.0, 4.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])[0])


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        plot_distance_matrix(np.zeros((2, 3)), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="class_names"):
        plot_embedding(np.zeros((2, 2)), [0, 5], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="same length"):
        plot_metric_vs_robustness([1.0], [1.0, 2.0], ["a"], tmp_path / "x.png", "x", "y")
    assert not (tmp_path / "x.png").exists()
