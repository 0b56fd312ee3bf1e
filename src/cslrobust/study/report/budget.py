"""The budget report: the gap SL - CSL at every training budget of a study, and where it turns.

A study with ``budgets`` runs one study per budget (:meth:`~cslrobust.study.spec.StudySpec.budget_studies`),
each with its own report. This report reads their databases and puts, per budget and eps of the main
attack, the supervised and contrastive references side by side: clean accuracy (linear probe, test
set), the gap RA(SL) - RA(CSL) of the final models (paired hierarchical bootstrap, as in each study's
gap table) and, where the budget keeps trajectories, the gap at matched clean accuracy (as in the
frontier section). The paper's ordering is SL more robust than CSL: a gap whose interval lies above 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cslrobust.statistics import Estimate, MatchedGap, matched_gaps
from cslrobust.study.report.frontier import method_trajectory
from cslrobust.study.report.plots import new_figure, save_png
from cslrobust.study.report.results import Note, StudyResults, Table, current_rows
from cslrobust.study.report.robustness import BudgetGap, budget_gaps
from cslrobust.study.report.sections import SectionOutput
from cslrobust.study.report.writer import render_report
from cslrobust.study.runner import open_store, study_cells

if TYPE_CHECKING:
    from cslrobust.study.spec import StudySpec


@dataclass(frozen=True)
class BudgetResult:
    """The references of one budget under the main attack.

    Attributes:
        budget: The budget's name.
        settings: Its overrides of the study's base, as ``key=value`` text.
        attack: The main attack (None without attack rows).
        sl_clean: Mean linear-probe test accuracy of the supervised reference over seeds (NaN without).
        csl_clean: The same for the contrastive reference.
        gaps: Per eps > 0, the gap analysis of the final models (eps 0 is the clean-accuracy gap,
            in the budget's own report).
        matched: Per ``(norm, eps)``, RA(SL) - RA(CSL) at matched clean accuracy (absent without
            trajectories with per-image results of both references).
    """

    budget: str
    settings: str
    attack: str | None
    sl_clean: float
    csl_clean: float
    gaps: list[BudgetGap]
    matched: dict[tuple[str, float], MatchedGap]


def _flat(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"train": {"epochs": 3}}`` -> ``["train.epochs=3"]``."""
    items = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            items += _flat(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={value}")
    return items


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _matched(
    res: StudyResults, attack: str, supervised: str, contrastive: str
) -> dict[tuple[str, float], MatchedGap]:
    """RA(SL) - RA(CSL) at matched clean accuracy per budget of ``attack`` (where both have bits)."""
    found = {}
    for norm, eps in res.budgets(attack):
        cond = {"attack": attack, "norm": norm, "eps": eps}
        sl = method_trajectory(res, supervised, **cond)
        csl = method_trajectory(res, contrastive, **cond)
        if sl is None or csl is None or sl.correct is None or csl.correct is None:
            continue
        gaps = matched_gaps(
            {supervised: sl.correct, contrastive: csl.correct}, reference=supervised
        )
        found[(norm, eps)] = gaps[contrastive]
    return found


def budget_results(spec: StudySpec) -> list[BudgetResult]:
    """One :class:`BudgetResult` per budget of ``spec``, read from each budget's database."""
    sl, csl = spec.supervised_method, spec.contrastive_method
    results = []
    for budget, study in spec.budget_studies():
        cells = study_cells(study)
        with open_store(study) as store:
            rows = current_rows(store, cells)
        res = StudyResults(rows, list(dict.fromkeys(c.method for c in cells)))
        attack = res.main_attack()
        results.append(
            BudgetResult(
                budget=budget,
                settings=", ".join(_flat(spec.budgets.get(budget, {}))),
                attack=attack,
                sl_clean=_mean(res.values(sl, "probe/test_accuracy")),
                csl_clean=_mean(res.values(csl, "probe/test_accuracy")),
                gaps=[g for g in budget_gaps(res, attack, sl, csl) if g.eps > 0] if attack else [],
                matched=_matched(res, attack, sl, csl) if attack else {},
            )
        )
    return results


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def ordering(gap: Estimate) -> str:
    """The paper's ordering in one word: SL > CSL, SL < CSL, or inconclusive (interval holds 0)."""
    if math.isnan(gap.value) or math.isnan(gap.low):
        return "no interval"
    if gap.low > 0:
        return "SL > CSL (paper)"
    if gap.high < 0:
        return "SL < CSL"
    return "inconclusive"


def budget_table(results: list[BudgetResult], supervised: str, contrastive: str) -> Table:
    """Per budget and eps: clean accuracies, the gap of the final models and at matched accuracy."""
    rows = []
    for r in results:
        for gap in r.gaps:
            matched = r.matched.get((gap.norm, gap.eps))
            rows.append(
                [
                    r.budget,
                    r.settings or "-",
                    _percent(r.sl_clean),
                    _percent(r.csl_clean),
                    gap.label,
                    gap.analysis.gap.format(),
                    ordering(gap.analysis.gap),
                    "n/a (no trajectories)" if matched is None else matched.gap.format(),
                    "-" if matched is None else ordering(matched.gap),
                ]
            )
    return Table(
        f"The gap RA({supervised}) - RA({contrastive}) across training budgets",
        [
            "budget",
            "settings",
            f"{supervised} clean (%)",
            f"{contrastive} clean (%)",
            "eps",
            "gap, final models (pts) [95% CI]",
            "ordering",
            "gap at matched clean accuracy (pts) [95% CI]",
            "ordering (matched)",
        ],
        rows,
        "Clean accuracy: linear probe on the test set, mean over seeds. Gaps in percentage points on the "
        "attacked test images: the final models (paired hierarchical bootstrap over seeds and images), "
        "and at matched clean accuracy along the trajectories (the frontier section's estimate). "
        "'SL > CSL (paper)': the interval lies above 0, the paper's ordering. Radii > 0 only (at eps 0 "
        "the gap is the clean-accuracy gap, in each budget's report).",
    )


def _matched_estimate(result: BudgetResult, gap: BudgetGap) -> Estimate | None:
    """The matched-accuracy gap of ``result`` at ``gap``'s radius, if measured."""
    found = result.matched.get((gap.norm, gap.eps))
    return None if found is None else found.gap


def plot_budget_gaps(results: list[BudgetResult], path: Path) -> Path | None:
    """Gap SL - CSL against budget and against the supervised clean accuracy, with 95% intervals.

    Final models: circles, solid lines; at matched clean accuracy: squares, dashed; one colour per eps.
    """
    points = [(i, r, g) for i, r in enumerate(results) for g in r.gaps]
    if not points:
        return None
    fig, (by_budget, by_clean) = new_figure((11, 4.2), ncols=2, sharey=True)
    labels = list(dict.fromkeys(g.label for _, _, g in points))
    for n, label in enumerate(labels):
        chosen = [(i, r, g) for i, r, g in points if g.label == label]
        for kind, estimates, marker, line in (
            ("final", [g.analysis.gap for _, _, g in chosen], "o", "-"),
            ("matched", [_matched_estimate(r, g) for _, r, g in chosen], "s", "--"),
        ):
            found = [
                (i, r, e) for (i, r, _), e in zip(chosen, estimates, strict=True) if e is not None
            ]
            if not found:
                continue
            values = np.array([100 * e.value for _, _, e in found])
            errors = np.array(
                [[100 * (e.value - e.low), 100 * (e.high - e.value)] for _, _, e in found]
            ).T
            errors = np.nan_to_num(errors)
            style = {"marker": marker, "capsize": 3, "color": f"C{n}", "label": f"{label} {kind}"}
            by_budget.errorbar(
                [i for i, _, _ in found], values, yerr=errors, linestyle=line, **style
            )
            by_clean.errorbar(
                [100 * r.sl_clean for _, r, _ in found],
                values,
                yerr=errors,
                linestyle="none",
                **style,
            )
    by_budget.set_xticks(range(len(results)), [r.budget for r in results])
    by_budget.set_xlabel("budget")
    by_clean.set_xlabel("supervised clean accuracy (%)")
    by_budget.set_ylabel("RA(SL) - RA(CSL) (pts)")
    for ax in (by_budget, by_clean):
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
    by_clean.legend(fontsize=7)
    return save_png(fig, path)


def write_budget_report(spec: StudySpec) -> tuple[str, Path]:
    """Write ``report.md`` / ``report.html`` and ``budget_gaps.png`` in the study's report folder.

    Returns:
        The terminal summary and the path of ``report.md``.
    """
    results = budget_results(spec)
    folder = spec.report_folder
    sl, csl = spec.supervised_method, spec.contrastive_method
    table = budget_table(results, sl, csl)
    paper = sorted(
        {r.budget for r in results for g in r.gaps if ordering(g.analysis.gap).endswith("(paper)")}
    )
    out = SectionOutput(
        blocks=[
            Note(
                [
                    f"{len(results)} budgets, each a study of its own (report in its folder: "
                    + ", ".join(f"`{r.budget}/report.md`" for r in results)
                    + f"); main attack: {', '.join(sorted({r.attack or 'none' for r in results}))}.",
                    "The paper's ordering (final models, interval above 0) appears at: "
                    + (", ".join(paper) if paper else "no budget")
                    + ".",
                ]
            ),
            table,
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    plot = plot_budget_gaps(results, folder / "budget_gaps.png")
    if plot is not None:
        out.plots.append(("Gap SL - CSL against budget and supervised clean accuracy", plot))
    out.summary.append(table.text())
    report = render_report(f"Study {spec.name}: budgets", [], out, folder)
    return "\n\n".join(out.summary), report
