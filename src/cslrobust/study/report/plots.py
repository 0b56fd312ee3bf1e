"""The report's PNG plots: robust accuracy vs eps, gap closure, detector quality, accuracy frontier.

Each plot is drawn on its own ``matplotlib.figure.Figure`` attached to a ``FigureCanvasAgg``: no pyplot
state, no backend switch, nothing at import time (matplotlib is imported inside the functions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cslrobust.statistics import Estimate
from cslrobust.study.report.results import StudyResults, accuracy_estimate

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120


def new_figure(
    figsize: tuple[float, float], ncols: int = 1, *, sharey: bool = False
) -> tuple[Figure, Any]:
    """A figure with its own Agg canvas and a row of ``ncols`` axes (one Axes when ``ncols`` is 1)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, sharey=sharey)


def save_png(fig: Figure, path: Path) -> Path:
    """Lay out and write ``fig`` as PNG to ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _line_with_band(
    ax: Any,
    xs: Sequence[float] | np.ndarray,
    ys: Sequence[float] | np.ndarray,
    band: tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray] | None,
    **style: Any,
) -> str:
    """Draw a line (``style`` as for ``Axes.plot``) and, when given, its ``(low, high)`` band.

    Returns:
        The line's colour (the band has the same).
    """
    (line,) = ax.plot(xs, ys, **style)
    colour: str = line.get_color()
    if band is not None:
        ax.fill_between(xs, band[0], band[1], alpha=0.2, color=colour)
    return colour


def plot_robust(res: StudyResults, attack: str, path: Path) -> Path | None:
    """Robust accuracy vs L-inf eps with 95% bands, one line per method.

    Args:
        res: The study's results.
        attack: Attack whose robust accuracy is drawn.
        path: Output PNG file; its folder must exist.

    Returns:
        ``path``, or None when ``attack`` has no L-inf budget.
    """
    budgets = [b for b in res.budgets(attack) if b[0] == "linf"]
    if not budgets:
        return None
    fig, ax = new_figure((6.4, 4.2))
    for method in res.methods:
        xs, ys, lo, hi = [], [], [], []
        for norm, eps in budgets:
            est = accuracy_estimate(res, method, attack=attack, norm=norm, eps=eps)
            xs.append(eps * 255)
            ys.append(100 * est.value)
            lo.append(100 * (est.low if not math.isnan(est.low) else est.value))
            hi.append(100 * (est.high if not math.isnan(est.high) else est.value))
        _line_with_band(ax, xs, ys, (lo, hi), marker="o", label=method)
    ax.set_xscale("log")
    ticks = [eps * 255 for _, eps in budgets]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("eps (L-inf, x/255)")
    ax.set_ylabel(f"{attack.upper()} robust accuracy (%)")
    ax.set_title("Robust accuracy vs perturbation size (95% bands)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)


def plot_gap_closure(plot_data: dict[str, list[tuple[str, Estimate]]], path: Path) -> Path | None:
    """Bars of the gap fraction closed per method and eps, with bootstrap error bars.

    Args:
        plot_data: Per method, ``(eps label, gap-closed estimate)`` in budget order (every method the
            same labels), as returned by ``gap_table``.
        path: Output PNG file; its folder must exist.

    Returns:
        ``path``, or None when ``plot_data`` is empty.
    """
    if not plot_data:
        return None
    labels = [label for label, _ in next(iter(plot_data.values()))]
    width = 0.8 / len(plot_data)
    fig, ax = new_figure((6.4, 4.2))
    for i, (method, items) in enumerate(plot_data.items()):
        xs = np.arange(len(items)) + i * width
        vals = np.array([100 * e.value for _, e in items])
        err = np.array(
            [
                [100 * (e.value - e.low) if not math.isnan(e.low) else 0 for _, e in items],
                [100 * (e.high - e.value) if not math.isnan(e.high) else 0 for _, e in items],
            ]
        )
        ax.bar(xs, vals, width, yerr=np.clip(err, 0, None), capsize=3, label=method)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(labels)) + width * (len(plot_data) - 1) / 2, labels)
    ax.set_ylabel("robustness gap closed (%)")
    ax.set_title("Gap closed relative to SL - CSL (95% bootstrap)")
    ax.legend()
    return save_png(fig, path)


def plot_detector_quality(res: StudyResults, path: Path) -> Path | None:
    """Precision and recall of each false-negative detector over training epochs (means over seeds).

    Args:
        res: The study's results (``train/fn_precision`` and ``train/fn_recall`` rows per epoch).
        path: Output PNG file; its folder must exist.

    Returns:
        ``path``, or None when no method has detector rows.
    """
    methods = [m for m in res.methods if res.values(m, "train/fn_precision")]
    if not methods:
        return None
    fig, axes = new_figure((9, 3.6), 2, sharey=True)
    for ax, key in zip(axes, ("fn_precision", "fn_recall"), strict=True):
        for method in methods:
            by_epoch: dict[int, list[float]] = {}
            for r in res.rows:
                if (
                    r["method"] == method
                    and r["metric"] == f"train/{key}"
                    and r["value"] is not None
                ):
                    by_epoch.setdefault(int(r["epoch"]), []).append(float(r["value"]))
            epochs = sorted(by_epoch)
            ax.plot(epochs, [100 * np.mean(by_epoch[e]) for e in epochs], marker=".", label=method)
        ax.set_title(key.removeprefix("fn_"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[1].legend(fontsize=7)
    return save_png(fig, path)


def plot_frontier(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    attack: str,
    path: Path,
    *,
    colours: Mapping[str, str] | None = None,
) -> Path | None:
    """Robust against clean accuracy along training: one panel per budget, one line per method.

    Each line goes through a method's checkpoints in epoch order at the means over its seeds; with
    >= 2 seeds a band spans the lowest to the highest robust accuracy of its seeds at each checkpoint.
    The final checkpoint is marked with a star. A method keeps its colour in every panel.

    Args:
        panels: Per budget label, per method, ``(clean, robust)`` accuracies (fractions), each
            ``(S, E)``: seed by checkpoint in epoch order (the lines' labels need not be methods: the
            family frontier passes families, with one row per method instead of per seed).
        attack: Attack name for the axis label.
        path: Output PNG file; its folder must exist.
        colours: Colour per line label; None (or a label not in it): matplotlib's cycle in order of
            first appearance.

    Returns:
        ``path``, or None when ``panels`` is empty.
    """
    if not panels:
        return None
    methods = list(dict.fromkeys(m for lines in panels.values() for m in lines))
    fig, axes = new_figure((3.4 * len(panels) + 1.0, 3.8), len(panels), sharey=True)
    for ax, (label, lines) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        for method, (clean, robust) in lines.items():
            xs, ys = 100 * clean.mean(axis=0), 100 * robust.mean(axis=0)
            band = (100 * robust.min(axis=0), 100 * robust.max(axis=0)) if len(robust) > 1 else None
            colour = (colours or {}).get(method, f"C{methods.index(method)}")
            _line_with_band(ax, xs, ys, band, marker=".", color=colour, label=method)
            ax.plot(xs[-1:], ys[-1:], marker="*", markersize=11, color=colour, linestyle="none")
        ax.set_title(label)
        ax.set_xlabel("clean accuracy (%, attacked images)")
        ax.grid(alpha=0.3)
    first = np.atleast_1d(axes)[0]
    first.set_ylabel(f"{attack.upper()} robust accuracy (%)")
    first.legend(fontsize=7, title="star: final epoch", title_fontsize=7)
    return save_png(fig, path)
