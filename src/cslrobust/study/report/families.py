"""Methods grouped by family: supervised, contrastive, false-negative removal, negative-free.

A family's number is the mean over its methods of each method's mean over seeds (every method counts
once, whatever its number of seeds), shown with the range ``[min, max]`` of those method means: the
spread between the family's methods, not an interval. The section shows the main attack's clean and
robust accuracy per family (table and ``families.png``), the accuracy frontier by family when the
trajectory stage ran (``families_frontier.png``) and the geometry metrics by family when the analyze
stage ran. It is left out when the study's methods fall into fewer than two families.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cslrobust.objectives import FAMILIES
from cslrobust.study.report.frontier import ROBUST, method_trajectory
from cslrobust.study.report.mechanism import geometry_columns
from cslrobust.study.report.plots import new_figure, plot_frontier, save_png
from cslrobust.study.report.results import Note, StudyResults, Table, eps_label
from cslrobust.study.report.sections import ReportContext, SectionOutput, register_section

FAMILY_NOTE = (
    "Methods grouped by the family of their training objective. SupCon and debiased contrastive "
    "learning count as false-negative removal: they remove (SupCon: same-label pairs become "
    "positives) or down-weight (debiased) same-class negatives. Each family number is the mean over "
    "the family's methods of their means over seeds, with the range [min, max] of those method means "
    "(spread between methods, not an interval)."
)


def family_title(key: str) -> str:
    """The family's title (:data:`~cslrobust.objectives.FAMILIES`); an unknown key is its own title."""
    return FAMILIES.get(key, key)


def family_groups(
    methods: Sequence[str], families: Mapping[str, str]
) -> tuple[dict[str, list[str]], list[str]]:
    """The study's methods grouped by family.

    Args:
        methods: Method names in report order.
        families: Per method, its family key (see ``ReportContext.families``).

    Returns:
        Per family key (in :data:`~cslrobust.objectives.FAMILIES` order, then unknown keys in order of
        first appearance), its methods in report order; and the methods without a family.
    """
    found: dict[str, list[str]] = {}
    for method in methods:
        if method in families:
            found.setdefault(families[method], []).append(method)
    order = [*FAMILIES, *(k for k in found if k not in FAMILIES)]
    groups = {key: found[key] for key in order if key in found}
    return groups, [m for m in methods if m not in families]


def family_colours(keys: Sequence[str]) -> dict[str, str]:
    """A fixed colour per family: the families of ``FAMILIES`` always the same, unknown keys after."""
    extra = [k for k in keys if k not in FAMILIES]
    return {key: f"C{i}" for i, key in enumerate([*FAMILIES, *extra])}


@dataclass(frozen=True)
class FamilyValue:
    """One quantity of one family.

    Attributes:
        mean: Mean over the family's methods (those with a value) of their means over seeds.
        low: Smallest method mean.
        high: Largest method mean.
        methods: Number of the family's methods with a value.
        of: Number of methods in the family.
    """

    mean: float
    low: float
    high: float
    methods: int
    of: int

    def format(self, *, scale: float = 100.0, digits: int = 1) -> str:
        """``mean [low, high]`` (times ``scale``), with ``(k of n methods)`` when some lack a value."""
        mean, low, high = (f"{scale * v:.{digits}f}" for v in (self.mean, self.low, self.high))
        text = f"{mean} [{low}, {high}]"
        if self.methods < self.of:
            text += f" ({self.methods} of {self.of} methods)"
        return text


def method_mean(res: StudyResults, method: str, metric: str, **cond: Any) -> float | None:
    """Mean over seeds of ``method``'s per-seed mean of ``metric`` rows matching ``cond``; None without."""
    per_seed: dict[int, list[float]] = {}
    for row in res.matching(method, metric, **cond):
        if row["value"] is not None:
            per_seed.setdefault(int(row["seed"]), []).append(float(row["value"]))
    if not per_seed:
        return None
    return float(np.mean([np.mean(v) for v in per_seed.values()]))


def family_value(
    res: StudyResults, methods: Sequence[str], metric: str, **cond: Any
) -> FamilyValue | None:
    """The family's :class:`FamilyValue` of ``metric`` (see the module docstring); None without values."""
    means = [v for m in methods if (v := method_mean(res, m, metric, **cond)) is not None]
    if not means:
        return None
    return FamilyValue(float(np.mean(means)), min(means), max(means), len(means), len(methods))


def _cell(value: FamilyValue | None, *, scale: float = 100.0, digits: int = 1) -> str:
    return "n/a" if value is None else value.format(scale=scale, digits=digits)


def family_table(res: StudyResults, groups: Mapping[str, Sequence[str]], attack: str) -> Table:
    """Clean and robust accuracy of ``attack`` per family and budget (see the module docstring)."""
    budgets = res.budgets(attack)
    rows = []
    for key, methods in groups.items():
        line = [family_title(key), ", ".join(methods)]
        line.append(_cell(family_value(res, methods, "clean_accuracy", attack=attack)))
        line += [
            _cell(family_value(res, methods, "robust_accuracy", attack=attack, norm=n, eps=e))
            for n, e in budgets
        ]
        rows.append(line)
    return Table(
        f"{attack.upper()} robust accuracy by method family (%)",
        ["family", "methods", "clean (attacked set)"] + [eps_label(n, e) for n, e in budgets],
        rows,
        "Mean over the family's methods of their means over seeds [min, max of the method means]; "
        "whole model on the attacked test subset, as in the robust-accuracy table. '(k of n methods)': "
        "only k of the family's methods have that number. No interval.",
    )


def plot_families(
    res: StudyResults, groups: Mapping[str, Sequence[str]], attack: str, path: Path
) -> Path | None:
    """Robust accuracy vs L-inf eps, one line per family (band = range over its methods).

    Args:
        res: The study's results.
        groups: Per family key, its methods.
        attack: Attack whose robust accuracy is drawn.
        path: Output PNG file; its folder must exist.

    Returns:
        ``path``, or None when ``attack`` has no L-inf budget.
    """
    budgets = [b for b in res.budgets(attack) if b[0] == "linf"]
    if not budgets:
        return None
    colours = family_colours(list(groups))
    fig, ax = new_figure((6.4, 4.2))
    for key, methods in groups.items():
        points = [
            (eps * 255, found)
            for norm, eps in budgets
            if (
                found := family_value(
                    res, methods, "robust_accuracy", attack=attack, norm=norm, eps=eps
                )
            )
            is not None
        ]
        if not points:
            continue
        xs = [x for x, _ in points]
        colour = colours[key]
        ax.plot(
            xs, [100 * v.mean for _, v in points], marker="o", color=colour, label=family_title(key)
        )
        ax.fill_between(
            xs,
            [100 * v.low for _, v in points],
            [100 * v.high for _, v in points],
            alpha=0.2,
            color=colour,
        )
    # symlog: eps 0 (clean) on the linear part, the usual doubling radii evenly spaced.
    ax.set_xscale("symlog", linthresh=1.0)
    ticks = [eps * 255 for _, eps in budgets]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("eps (L-inf, x/255)")
    ax.set_ylabel(f"{attack.upper()} robust accuracy (%)")
    ax.set_title("Robust accuracy by method family (band: range over methods)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


@dataclass(frozen=True)
class FamilyFrontier:
    """The frontier by family at one budget of the trajectory stage's main attack.

    Attributes:
        attack: The attack.
        norm: Threat model norm.
        eps: The budget's radius (the largest eps of that norm).
        lines: Per family key, ``(clean, robust)``, each ``(M, E)``: method (those with trajectories)
            by the checkpoints every one of them kept, each entry the mean over the method's seeds.
        methods: Per family key in ``lines``, the methods drawn.
    """

    attack: str
    norm: str
    eps: float
    lines: dict[str, tuple[np.ndarray, np.ndarray]]
    methods: dict[str, list[str]]


def family_frontier(
    res: StudyResults, groups: Mapping[str, Sequence[str]]
) -> FamilyFrontier | None:
    """Robust vs clean accuracy along training per family, at the largest eps (L-inf first).

    The attack is the strongest with trajectory rows. A family's methods without trajectories are left
    out; a family whose methods share no checkpoint epoch is left out.

    Returns:
        The frontier, or None without trajectory rows (or with no family left).
    """
    attacks = res.attacks(metric=ROBUST)
    if not attacks:
        return None
    attack = attacks[0]
    budgets = [b for b in res.budgets(attack, metric=ROBUST) if b[1] > 0]
    if not budgets:
        return None
    norm = budgets[0][0]  # L-inf first
    eps = max(e for n, e in budgets if n == norm)
    lines: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    drawn: dict[str, list[str]] = {}
    for key, methods in groups.items():
        found = {
            m: t
            for m in methods
            if (t := method_trajectory(res, m, attack=attack, norm=norm, eps=eps)) is not None
        }
        if not found:
            continue
        first, *rest = found.values()
        epochs = sorted(set(first.epochs).intersection(*(t.epochs for t in rest)))
        if not epochs:
            continue
        picks = {m: [t.epochs.index(e) for e in epochs] for m, t in found.items()}
        clean = np.stack([t.clean.mean(axis=0)[picks[m]] for m, t in found.items()])
        robust = np.stack([t.robust.mean(axis=0)[picks[m]] for m, t in found.items()])
        lines[key], drawn[key] = (clean, robust), list(found)
    if not lines:
        return None
    return FamilyFrontier(attack, norm, eps, lines, drawn)


def family_geometry_table(res: StudyResults, groups: Mapping[str, Sequence[str]]) -> Table | None:
    """The geometry table's metrics per family (see the module docstring); None without geometry rows."""
    if not any(r["metric"].startswith("geometry/") for r in res.rows):
        return None
    columns = geometry_columns(res)
    rows = [
        [family_title(key)]
        + [
            _cell(family_value(res, methods, f"geometry/{metric}"), scale=1.0, digits=3)
            for metric, _ in columns
        ]
        for key, methods in groups.items()
    ]
    return Table(
        "Representation geometry by method family (backbone features, test set)",
        ["family"] + [label for _, label in columns],
        rows,
        "Mean over the family's methods of their means over seeds [min, max of the method means]; "
        "metrics as in the geometry table (compare methods on the scale-free sensitivity columns). "
        "No interval.",
    )


@register_section("families", order=22)
def families_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """Clean/robust accuracy, frontier and geometry by method family; empty with fewer than 2 families."""
    groups, ungrouped = family_groups(res.methods, ctx.families)
    if len(groups) < 2:
        return SectionOutput()
    out = SectionOutput()
    attack = res.main_attack()
    if attack is not None:
        out.blocks.append(family_table(res, groups, attack))
        path = plot_families(res, groups, attack, ctx.folder / "families.png")
        if path is not None:
            out.plots.append((f"Robust accuracy by method family ({attack.upper()})", path))
    frontier = family_frontier(res, groups)
    if frontier is not None:
        label = eps_label(frontier.norm, frontier.eps)
        titles = {family_title(k): v for k, v in frontier.lines.items()}
        colours = family_colours(list(groups))
        path = plot_frontier(
            {label: titles},
            frontier.attack,
            ctx.folder / "families_frontier.png",
            colours={family_title(k): colours[k] for k in frontier.lines},
        )
        if path is not None:
            out.plots.append(
                (f"Accuracy frontier by method family ({frontier.attack.upper()} {label})", path)
            )
            drawn = "; ".join(
                f"{family_title(k)}: {', '.join(m)}" for k, m in frontier.methods.items()
            )
            out.blocks.append(
                Note(
                    [
                        f"Frontier by family ({frontier.attack.upper()} {label}, the largest eps): each "
                        "line is the mean over the family's methods (each the mean over its seeds) at "
                        "the checkpoints all of them kept; band = range of robust accuracy over those "
                        f"methods; star = the last of those checkpoints. Methods drawn: {drawn}."
                    ]
                )
            )
    geometry = family_geometry_table(res, groups)
    if geometry is not None:
        out.blocks.append(geometry)
    if not out.blocks and not out.plots:
        return SectionOutput()
    lines = [FAMILY_NOTE]
    if ungrouped:
        lines.append(f"Not grouped (family unknown): {', '.join(ungrouped)}.")
    out.blocks.insert(0, Note(lines, title="Method families"))
    return out
