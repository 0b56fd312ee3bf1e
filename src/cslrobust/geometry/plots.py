"""Figures of the geometry results, written as PNG files to a path the caller gives.

Each function builds a ``matplotlib.figure.Figure`` attached to an Agg canvas directly, without
``pyplot``: nothing global (backend, figure registry) changes, nothing happens at import time, and the
figure is freed when the function returns. matplotlib and scipy are imported inside the functions.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_distance_matrix", "plot_embedding", "plot_metric_vs_robustness", "spearman"]

ArrayLike = Tensor | npt.ArrayLike
PathLike = str | os.PathLike[str]


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=120, format="png")
    return out


def plot_distance_matrix(
    matrix: ArrayLike, class_names: Sequence[str], path: PathLike, *, title: str | None = None
) -> Path:
    """Heat map of a class-by-class cosine-distance matrix, each cell annotated with its value.

    Args:
        matrix: ``(C, C)`` distances (see :func:`~cslrobust.geometry.class_distance_matrix`);
            NaN cells are left blank.
        class_names: ``C`` names, for rows (anchor class) and columns.
        path: Output PNG file; its folder must exist.
        title: Figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If the matrix is not square or does not match ``class_names``.
    """
    values = _to_numpy(matrix).astype(np.float64)
    c = len(class_names)
    if values.shape != (c, c):
        raise ValueError(
            f"matrix must have shape ({c}, {c}) for {c} class names, got {values.shape}"
        )
    size = max(4.0, 0.6 * c + 2.0)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis")
    fig.colorbar(image, ax=ax, label="mean cosine distance (1 - cos)")
    ax.set_xticks(range(c), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(c), labels=list(class_names))
    if c <= 20:
        finite = values[np.isfinite(values)]
        middle = float(finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(c):
            for j in range(c):
                if math.isfinite(values[i, j]):
                    color = "black" if values[i, j] > middle else "white"
                    ax.text(
                        j,
                        i,
                        f"{values[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    ax.set_title(title or "Class-by-class cosine distance (diagonal: within class)")
    return _save(fig, path)


def plot_embedding(
    xy: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str],
    path: PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Scatter plot of a 2-D embedding coloured by class.

    Args:
        xy: ``(n, 2)`` coordinates (for example :func:`~cslrobust.geometry.tsne_2d`'s ``xy``).
        labels: ``(n,)`` integer class of each point, indexing ``class_names``.
        class_names: Name of each class (legend).
        path: Output PNG file; its folder must exist.
        title: Figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: On mismatched shapes or a label outside ``class_names``.
    """
    points = _to_numpy(xy).astype(np.float64)
    classes = _to_numpy(labels).astype(np.int64)
    if points.ndim != 2 or points.shape[1] != 2 or classes.shape != (points.shape[0],):
        raise ValueError(
            f"xy must be (n, 2) and labels (n,), got {points.shape} and {classes.shape}"
        )
    if classes.size and (classes.min() < 0 or classes.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names)}) to index class_names")
    fig = _new_figure(6.5, 5.0)
    ax = fig.add_subplot()
    colors = _class_colors(len(class_names))
    for c, name in enumerate(class_names):
        mine = classes == c
        if mine.any():
            ax.scatter(
                points[mine, 0], points[mine, 1], s=6, color=colors[c], label=name, alpha=0.8
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(
        loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2, frameon=False
    )
    ax.set_title(title or "t-SNE of features")
    return _save(fig, path)


def _class_colors(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def spearman(xs: ArrayLike, ys: ArrayLike) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (``scipy.stats.spearmanr``).

    Returns ``(nan, nan)`` when it is undefined (fewer than 3 points or a constant input).
    """
    x = _to_numpy(xs).astype(np.float64).ravel()
    y = _to_numpy(ys).astype(np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"xs and ys must have the same length, got {x.size} and {y.size}")
    if x.size < 3:
        return math.nan, math.nan
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def plot_metric_vs_robustness(
    xs: ArrayLike,
    ys: ArrayLike,
    labels: Sequence[str],
    path: PathLike,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Scatter plot of a geometry metric against a robustness measure, one point per model.

    The title reports the Spearman rank correlation (and p-value) of ``xs`` and ``ys``.

    Args:
        xs: ``(n,)`` metric values (for example inter/intra distance ratio per model).
        ys: ``(n,)`` robustness values (for example robust accuracy at one eps).
        labels: ``n`` point annotations (for example ``"simclr-s0"``).
        path: Output PNG file; its folder must exist.
        xlabel: x-axis label.
        ylabel: y-axis label.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``xs``, ``ys`` and ``labels`` differ in length.
    """
    x = _to_numpy(xs).astype(np.float64).ravel()
    y = _to_numpy(ys).astype(np.float64).ravel()
    if not x.size == y.size == len(labels):
        raise ValueError(
            f"xs, ys and labels must have the same length, got {x.size}, {y.size}, {len(labels)}"
        )
    rho, p_value = spearman(x, y)
    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=30)
    for xi, yi, text in zip(x, y, labels, strict=True):
        ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    stat = "n/a" if math.isnan(rho) else f"{rho:.2f} (p = {p_value:.2g}, n = {x.size})"
    ax.set_title(f"Spearman rank correlation: {stat}")
    return _save(fig, path)
