"""The accuracy frontier: robust against clean accuracy along training, and methods at matched clean accuracy.

Reads the trajectory stage's rows (``trajectory/...``, one per kept checkpoint). Clean and robust
accuracy are both measured on the attacked test subset, so every point of a trajectory is one
checkpoint's attack record. The section shows, per attack, one plot (a panel per eps > 0) and a table
comparing every method with the supervised reference at matched clean accuracy
(:func:`~cslrobust.statistics.matched_gaps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cslrobust.statistics import MATCHED_GRID, MatchedGap, matched_gaps
from cslrobust.study.report.plots import plot_frontier
from cslrobust.study.report.results import Note, StudyResults, Table, eps_label, interval_caption
from cslrobust.study.report.sections import ReportContext, SectionOutput, register_section
from cslrobust.study.trajectory import TRAJECTORY_PREFIX

ROBUST = f"{TRAJECTORY_PREFIX}robust_accuracy"
CLEAN = f"{TRAJECTORY_PREFIX}clean_accuracy"


@dataclass(frozen=True)
class Trajectory:
    """One method's kept checkpoints under one attack budget.

    Attributes:
        epochs: Checkpoint epochs, increasing (those every seed of the method has).
        clean: Clean accuracy on the attacked images, ``(S, E)``: seed (increasing) by checkpoint.
        robust: Robust accuracy, ``(S, E)``.
        correct: Bool ``(S, 2, E, N)``: clean (0) and robust (1) correctness per image; None when a
            row carries no per-image bits.
    """

    epochs: list[int]
    clean: np.ndarray
    robust: np.ndarray
    correct: np.ndarray | None


def method_trajectory(res: StudyResults, method: str, **cond: Any) -> Trajectory | None:
    """The trajectory of ``method`` under one budget (``attack``, ``norm``, ``eps`` in ``cond``).

    Returns:
        The trajectory over the epochs every seed reached, or None without trajectory rows.
    """
    found = res.matching(method, ROBUST, **cond)
    seeds = {int(r["seed"]) for r in found}
    points = {(int(r["seed"]), int(r["epoch"])) for r in found}
    epochs = sorted(e for e in {p[1] for p in points} if all((s, e) in points for s in seeds))
    if not epochs:
        return None

    def values(metric: str) -> np.ndarray:
        by_epoch = [res.by_seed(method, metric, epoch=e, **cond) for e in epochs]
        return np.array([[column[s] for column in by_epoch] for s in sorted(seeds)])

    def bits(kind: str) -> np.ndarray | None:
        """``(S, E, N)`` correctness of one kind; None when a row carries no bits."""
        per_epoch = []
        for epoch in epochs:
            matrix = res.correct_matrix(method, metric=ROBUST, bits=kind, epoch=epoch, **cond)
            if matrix is None:
                return None
            per_epoch.append(matrix)
        return np.stack(per_epoch, axis=1)

    clean, robust = bits("clean_bits"), bits("correct_bits")
    correct = None if clean is None or robust is None else np.stack([clean, robust], axis=1)
    return Trajectory(epochs, values(CLEAN), values(ROBUST), correct)


def _percent_range(span: tuple[float, float] | None) -> str:
    return "none" if span is None else f"{100 * span[0]:.1f}-{100 * span[1]:.1f}"


def _gap_text(found: MatchedGap, method: str, supervised: str) -> str:
    """The gap cell; without a shared range, why (both clean-accuracy ranges)."""
    if found.shared is None:
        return (
            f"n/a (no shared clean accuracy: {method} {_percent_range(found.method_range)} %, "
            f"{supervised} {_percent_range(found.reference_range)} %)"
        )
    return found.gap.format()


def frontier_table(
    trajectories: dict[tuple[str, float], dict[str, Trajectory]], attack: str, supervised: str
) -> Table | None:
    """RA(SL) - RA(M) at matched clean accuracy per method and budget (see the module docstring).

    Args:
        trajectories: Per budget ``(norm, eps)``, per method, its trajectory.
        attack: The attack.
        supervised: The reference method.

    Returns:
        The table, or None when no budget has trajectories of the reference and another method.
    """
    rows, methods = [], []
    for (norm, eps), found in trajectories.items():
        if supervised not in found or len(found) < 2:
            continue
        with_bits = {m: t.correct for m, t in found.items() if t.correct is not None}
        gaps = matched_gaps(with_bits, reference=supervised) if supervised in with_bits else {}
        for method in found:
            if method == supervised:
                continue
            gap = gaps.get(method)
            if gap is None:
                rows.append(
                    [method, eps_label(norm, eps), "-", "-", "n/a (no per-image results)", "-"]
                )
                continue
            methods.append(gap.gap.method)
            rows.append(
                [
                    method,
                    eps_label(norm, eps),
                    f"{_percent_range(gap.method_range)} / {_percent_range(gap.reference_range)}",
                    _percent_range(gap.shared),
                    _gap_text(gap, method, supervised),
                    f"{100 * gap.no_overlap_fraction:.1f}",
                ]
            )
    if not rows:
        return None
    return Table(
        f"Robustness at matched clean accuracy ({attack.upper()}): RA({supervised}) - RA(method)",
        [
            "method",
            "eps",
            f"clean accuracy range: method / {supervised} (%)",
            "shared range (%)",
            f"RA({supervised}) - RA(method) (pts) [95% CI]",
            "resamples without overlap (%)",
        ],
        rows,
        "Mean over the shared clean-accuracy range (both on the attacked images; the means over seeds "
        f"of each checkpoint) of RA({supervised})(c) - RA(method)(c), each read at {MATCHED_GRID} evenly "
        "spaced clean accuracies c by linear interpolation between checkpoints sorted by clean accuracy "
        "(equal clean accuracies averaged; never extrapolated). Positive: the supervised model is more "
        "robust at equal clean accuracy. "
        + interval_caption(methods)
        + " One image draw shared by every method, seed and checkpoint; each seed's trajectory is "
        "resampled whole; resamples whose trajectories share no clean accuracy are left out.",
    )


FRONTIER_NOTE = (
    "Robust accuracy depends on clean accuracy, so methods trained to different clean accuracies are "
    "not comparable by their final numbers alone. Each line follows one method along training: its "
    "kept checkpoints (every k epochs and the final one, starred), x = clean and "
    "y = robust accuracy on the attacked test images, means over seeds, band = range over seeds. A "
    "line above another at the same x is more robust at equal clean accuracy; the table below "
    "quantifies this against the supervised reference where their clean accuracies overlap."
)


@register_section("frontier", order=25)
def frontier_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """Per attack with trajectory rows: the frontier plot (a panel per eps > 0) and the matched table."""
    out = SectionOutput()
    for attack in res.attacks(metric=ROBUST):
        budgets = [b for b in res.budgets(attack, metric=ROBUST) if b[1] > 0]
        trajectories = {
            (norm, eps): {
                m: t
                for m in res.methods
                if (t := method_trajectory(res, m, attack=attack, norm=norm, eps=eps)) is not None
            }
            for norm, eps in budgets
        }
        panels = {
            eps_label(norm, eps): {m: (t.clean, t.robust) for m, t in found.items()}
            for (norm, eps), found in trajectories.items()
            if found
        }
        path = plot_frontier(panels, attack, ctx.folder / f"frontier_{attack}.png")
        if path is not None:
            out.plots.append((f"Accuracy frontier along training ({attack.upper()})", path))
        table = frontier_table(trajectories, attack, ctx.supervised)
        if table is not None:
            out.blocks.append(table)
    if out.plots:
        out.blocks.insert(0, Note([FRONTIER_NOTE], title="Accuracy frontier along training"))
    return out
