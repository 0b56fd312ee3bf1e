"""Robustness tables: clean, robust, success, gap closure, matched, corruptions, evaluation suite, gates.

Also the failed sanity gates, and the report sections that show these tables (``clean``, ``attacks``,
``evaluation``, ``corruptions``, ``gates``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cslrobust.statistics import Estimate, GapAnalysis, MethodGap, gap_analysis, t_interval
from cslrobust.study.report.plots import plot_gap_closure, plot_robust
from cslrobust.study.report.results import (
    Note,
    StudyResults,
    Table,
    accuracy_estimate,
    eps_label,
    format_percent,
    interval_caption,
)
from cslrobust.study.report.sections import ReportContext, SectionOutput, register_section
from cslrobust.study.trajectory import TRAJECTORY_PREFIX


def clean_table(res: StudyResults) -> Table:
    """Clean accuracy per method (linear probe, full test set)."""
    rows, methods = [], []
    for method in res.methods:
        test = res.values(method, "probe/test_accuracy")
        est = t_interval(np.array(test))
        methods.append(est.method)
        own = res.values(method, "probe/own_head_test_accuracy")
        dead = res.by_seed(method, "probe/dead_features")
        views = sorted({int(v) for v in res.values(method, "train/views_per_image")})
        rows.append(
            [
                method,
                " / ".join(map(str, views)) if views else "-",
                str(len(test)),
                est.format(),
                format_percent(res.values(method, "probe/val_accuracy")),
                format_percent(own) if own else "-",
                " / ".join(f"{dead[s]:.0f}" for s in sorted(dead)) if dead else "-",
            ]
        )
    return Table(
        "Clean accuracy (%)",
        [
            "method",
            "views / image / step",
            "seeds",
            "probe test [95% CI]",
            "probe val",
            "own head test",
            "dead features (per seed)",
        ],
        rows,
        "Linear probe on frozen backbone features, full test set. Views / image / step: augmented "
        "views of each training image in one step (supervised 1 unless objective.views is set, "
        "contrastive 2, top-k with support views 2 + support_views). Dead features: backbone features "
        "whose training std is <= 1e-3 x the largest, given weight 0 by the probe (count per seed, "
        "in seed order). " + interval_caption(methods),
    )


def robust_table(res: StudyResults, attack: str) -> Table:
    """Robust accuracy per method and budget with 95% intervals."""
    budgets = res.budgets(attack)
    header = ["method", "clean (attacked set)"] + [eps_label(n, e) for n, e in budgets]
    rows, methods = [], []
    for method in res.methods:
        clean = res.values(method, "clean_accuracy", attack=attack)
        line = [method, format_percent(clean)]
        for norm, eps in budgets:
            est = accuracy_estimate(res, method, attack=attack, norm=norm, eps=eps)
            methods.append(est.method)
            line.append(est.format())
        rows.append(line)
    return Table(
        f"{attack.upper()} robust accuracy (%) [95% CI]",
        header,
        rows,
        "Whole model (normalise -> backbone -> probe) in eval mode on a fixed test subset; clean column: "
        "mean over seeds. " + interval_caption(methods),
    )


def success_table(res: StudyResults, attack: str) -> Table:
    """Clean-accuracy-free measures: attack success rate on initially correct images, robust/clean."""
    budgets = res.budgets(attack)
    header = (
        ["method"]
        + [f"ASR {eps_label(n, e)}" for n, e in budgets]
        + [f"RA/clean {eps_label(n, e)}" for n, e in budgets]
    )
    rows = []
    for method in res.methods:
        line = [method]
        line += [
            format_percent(res.values(method, "attack_success_rate", attack=attack, norm=n, eps=e))
            for n, e in budgets
        ]
        for norm, eps in budgets:
            ra = res.values(method, "robust_accuracy", attack=attack, norm=norm, eps=eps)
            clean = res.values(method, "clean_accuracy", attack=attack, norm=norm, eps=eps)
            ratio = [r / c for r, c in zip(ra, clean, strict=False) if c > 0]
            line.append(format_percent(ratio))
        rows.append(line)
    return Table(
        f"{attack.upper()} attack success rate and robust/clean ratio (%)",
        header,
        rows,
        "ASR: fraction of initially correct test images the attack flips (independent of clean accuracy). "
        + interval_caption([]),
    )


@dataclass(frozen=True)
class BudgetGap:
    """The robustness gap analysis of one budget of one attack.

    Attributes:
        norm: Threat model norm.
        eps: Radius (fraction of 1).
        analysis: Gap SL - CSL, every other method's difference and closure. Without per-image bits
            for SL or CSL: means only (no interval, no closure).
        interval: Key of ``INTERVAL_METHODS`` describing the resampling (``"none"`` without bits).
    """

    norm: str
    eps: float
    analysis: GapAnalysis
    interval: str

    @property
    def label(self) -> str:
        """Human label of the budget."""
        return eps_label(self.norm, self.eps)

    def closure_text(self, method: str) -> str:
        """Closure cell of ``method``: the estimate, ``n/a (no positive gap)`` or why it is missing."""
        found = self.analysis.methods.get(method)
        if found is None:
            return "n/a (no per-image results)"
        if not self.analysis.gap.has_interval:
            return "n/a (no interval)"
        return found.format_closure()


def _mean_gap(
    res: StudyResults, cond: dict[str, Any], supervised: str, contrastive: str, others: list[str]
) -> GapAnalysis:
    """Point estimates only (no per-image bits): means over seeds, no interval, no closure."""
    nan = float("nan")

    def mean(method: str) -> float:
        values = res.values(method, "robust_accuracy", **cond)
        return float(np.mean(values)) if values else nan

    def point(value: float) -> Estimate:
        return Estimate(value, nan, nan, "none")

    base = mean(contrastive)
    return GapAnalysis(
        gap=point(mean(supervised) - base),
        positive=False,
        nonpositive_gap_fraction=nan,
        methods={m: MethodGap(point(mean(m) - base), None) for m in others},
    )


def budget_gaps(
    res: StudyResults, attack: str, supervised: str, contrastive: str
) -> list[BudgetGap]:
    """One :func:`~cslrobust.statistics.gap_analysis` per budget of ``attack`` (paired resamples).

    Methods without per-image bits are left out of the resampling; without bits for the supervised
    or contrastive reference the budget has means only.

    Returns:
        Budgets in report order; empty when either reference is not in the study.
    """
    if supervised not in res.methods or contrastive not in res.methods:
        return []
    return res.memo(
        ("budget_gaps", attack, supervised, contrastive),
        lambda: [_budget_gap(res, attack, b, supervised, contrastive) for b in res.budgets(attack)],
    )


def _budget_gap(
    res: StudyResults, attack: str, budget: tuple[str, float], supervised: str, contrastive: str
) -> BudgetGap:
    """The gap analysis of one budget (see :func:`budget_gaps`)."""
    norm, eps = budget
    others = [m for m in res.methods if m not in (supervised, contrastive)]
    cond: dict[str, Any] = {"attack": attack, "norm": norm, "eps": eps}
    matrices = {m: res.correct_matrix(m, **cond) for m in [supervised, contrastive, *others]}
    found = {m: v for m, v in matrices.items() if v is not None}
    if supervised in found and contrastive in found:
        analysis = gap_analysis(found, supervised=supervised, contrastive=contrastive)
        seeds = max(v.shape[0] for v in found.values())
        return BudgetGap(norm, eps, analysis, "hierarchical" if seeds >= 2 else "bootstrap")
    return BudgetGap(norm, eps, _mean_gap(res, cond, supervised, contrastive, others), "none")


def gap_table(
    res: StudyResults, attack: str, supervised: str, contrastive: str
) -> tuple[Table | None, dict[str, list[tuple[str, Estimate]]]]:
    """Gap SL - CSL, every method's RA(M) - RA(CSL) and its gap closure (only where the gap is positive).

    Returns:
        The table (None without both references) and the closure plot's data: per method,
        ``(eps label, closure)`` for the budgets whose gap interval lies above 0 only.
    """
    gaps = budget_gaps(res, attack, supervised, contrastive)
    if not gaps:
        return None, {}
    others = [m for m in res.methods if m not in (supervised, contrastive)]
    header = ["eps", f"gap {supervised} - {contrastive} (pts)", "resamples with gap <= 0 (%)"]
    for m in others:
        header += [f"{m} - {contrastive} (pts)", f"closed by {m} (%)"]
    rows: list[list[str]] = []
    plot_data: dict[str, list[tuple[str, Estimate]]] = {}
    for budget in gaps:
        analysis = budget.analysis
        share = analysis.nonpositive_gap_fraction
        line = [
            budget.label,
            analysis.gap.format(),
            "n/a" if np.isnan(share) else f"{100 * share:.1f}",
        ]
        for m in others:
            found = analysis.methods.get(m)
            line += [found.difference.format() if found else "n/a", budget.closure_text(m)]
            if found is not None and found.closure is not None:
                plot_data.setdefault(m, []).append((budget.label, found.closure))
        rows.append(line)
    table = Table(
        f"Robustness gap and gap closed ({attack.upper()})",
        header,
        rows,
        "Gap = RA(SL) - RA(CSL); 'M - CSL' = RA(M) - RA(CSL), meaningful whatever the sign of the gap; "
        "closed by M = (RA(M) - RA(CSL)) / (RA(SL) - RA(CSL)), shown only where the gap's 95% interval "
        "lies above 0 ('n/a (no positive gap)' elsewhere), its interval over the resamples with a "
        "positive gap; 'resamples with gap <= 0' is the share of resamples left out of it. "
        + interval_caption(b.interval for b in gaps)
        + " Resamples are paired: one image draw shared by all models.",
    )
    return table, plot_data


def matched_table(res: StudyResults, attack: str, supervised: str) -> Table | None:
    """Each method against the supervised checkpoint of the closest validation clean accuracy (same seed)."""
    sl_val = [
        r
        for r in res.rows
        if r["method"] == supervised and r["metric"] == f"{TRAJECTORY_PREFIX}probe/val_accuracy"
    ]
    if not sl_val:
        return None
    budgets = [b for b in res.budgets(attack) if b[1] > 0]
    header = ["method", "seed", "val acc", "matched SL epoch", "SL val acc"]
    header += [f"RA {eps_label(n, e)}: method / SL@epoch" for n, e in budgets]
    header += [f"ASR {eps_label(n, e)}: method / SL@epoch" for n, e in budgets]
    rows = []
    for method in res.methods:
        if method == supervised:
            continue
        for r in [
            r for r in res.rows if r["method"] == method and r["metric"] == "probe/val_accuracy"
        ]:
            seed, val = r["seed"], float(r["value"])
            candidates = [c for c in sl_val if c["seed"] == seed] or sl_val
            best = min(candidates, key=lambda c: (abs(float(c["value"]) - val), c["epoch"]))
            epoch, sl_seed = int(best["epoch"]), best["seed"]

            def pick(
                m: str, metric: str, seed_: int, norm: str, eps: float, ep: int | None = None
            ) -> str:
                vals = [
                    float(x["value"])
                    for x in res.rows
                    if x["method"] == m
                    and x["metric"] == metric
                    and x["seed"] == seed_
                    and x["attack"] == attack
                    and (x["norm"], x["eps"]) == (norm, eps)
                    and (ep is None or int(x["epoch"]) == ep)
                ]
                return f"{100 * vals[0]:.1f}" if vals else "n/a"

            line = [
                method,
                str(seed),
                f"{100 * val:.1f}",
                str(epoch),
                f"{100 * float(best['value']):.1f}",
            ]
            for metric in ("robust_accuracy", "attack_success_rate"):
                for norm, eps in budgets:
                    mine = pick(method, metric, seed, norm, eps)
                    theirs = pick(
                        supervised, f"{TRAJECTORY_PREFIX}{metric}", sl_seed, norm, eps, epoch
                    )
                    line.append(f"{mine} / {theirs}")
            rows.append(line)
    return Table(
        f"Matched clean accuracy ({attack.upper()}): each method vs the supervised checkpoint closest in val accuracy",
        header,
        rows,
        "Robust accuracy depends on clean accuracy; here the supervised reference is the epoch checkpoint whose "
        "linear-probe validation accuracy is closest to the method's (same seed), probed and attacked identically. "
        "One value per seed; no interval.",
    )


def gate_failures(res: StudyResults) -> list[str]:
    """One line per failed sanity gate: method, seed, gate and its message."""
    return [
        f"{r['method']} (seed {r['seed']}): {r['metric'].removeprefix('gate/')}: {r.get('message', '')}"
        for r in res.rows
        if (r["metric"].startswith("gate/") or "/gate/" in r["metric"])  # protocol/<p>/gate/...
        and r["value"] is not None
        and r["value"] < 1
    ]


def corruption_table(res: StudyResults, supervised: str) -> Table | None:
    """Mean accuracy over the corruptions x severities, per family, and CE relative to the supervised model."""
    rows_c = [r for r in res.rows if r["metric"] == "corruption_accuracy"]
    if not rows_c:
        return None
    families = sorted({r.get("family", "") for r in rows_c})

    def errors(method: str) -> dict[str, float]:
        by_corr: dict[str, list[float]] = {}
        for r in rows_c:
            if r["method"] == method:
                by_corr.setdefault(r["corruption"], []).append(1 - float(r["value"]))
        return {c: float(np.sum(v)) for c, v in by_corr.items()}

    ref = errors(supervised) if supervised in res.methods else {}
    table = []
    for method in res.methods:
        mine = [r for r in rows_c if r["method"] == method]
        if not mine:
            continue
        line = [method, str(len(mine)), f"{100 * float(np.mean([r['value'] for r in mine])):.1f}"]
        for fam in families:
            line.append(
                format_percent([float(r["value"]) for r in mine if r.get("family", "") == fam])
            )
        err = errors(method)
        ces = [err[c] / ref[c] for c in err if c in ref and ref[c] > 0]
        line.append(f"{100 * float(np.mean(ces)):.0f}" if ces else "n/a")
        table.append(line)
    return Table(
        "Common corruptions (CIFAR-10-C parameterisation)",
        ["method", "conditions", "mean accuracy (%)"]
        + [f"{f} (%)" for f in families]
        + [f"mCE vs {supervised} (%)"],
        table,
        "Generated deterministically from the test subset (Hendrycks & Dietterich 2019 CIFAR constants); "
        "mCE = mean over corruptions of (summed error over severities / the supervised model's). "
        + interval_caption([]),
    )


def evaluation_table(res: StudyResults) -> Table | None:
    """The evaluate stage's clean-accuracy-free numbers: eps50 (sweep and FAB) and AutoAttack accuracy."""
    if not any(r["metric"].startswith("eval/") for r in res.rows):
        return None
    aa = sorted(
        {
            (r["norm"], r["eps"])
            for r in res.rows
            if r["attack"] == "autoattack" and r["metric"] == "eval/robust_accuracy"
        }
    )
    header = [
        "method",
        "eps50 PGD L-inf (x/255)",
        "eps50 FGSM L-inf (x/255)",
        "FAB median L-inf (x/255)",
    ]
    header += [f"AutoAttack {eps_label(n, e)} (%)" for n, e in aa]
    rows = []
    for method in res.methods:

        def med(metric: str, method: str = method, **cond: Any) -> str:
            vals = res.values(method, metric, **cond)
            return "n/a" if not vals else f"{255 * float(np.mean(vals)):.2f}"

        line = [
            method,
            med("eval/eps50", attack="pgd", norm="linf"),
            med("eval/eps50", attack="fgsm", norm="linf"),
            med("eval/min_norm_median", attack="fab", norm="linf"),
        ]
        line += [
            format_percent(
                res.values(method, "eval/robust_accuracy", attack="autoattack", norm=n, eps=e)
            )
            for n, e in aa
        ]
        rows.append(line)
    return Table(
        "Evaluation suite: eps50 and AutoAttack",
        header,
        rows,
        "eps50: perturbation at which half of the initially correct images are flipped (interpolated from "
        "the sweep; FAB: median minimal perturbation). Independent of clean accuracy. "
        + interval_caption([]),
    )


@register_section("clean", order=10)
def clean_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """Clean accuracy table (also the first table of the terminal summary)."""
    table = clean_table(res)
    return SectionOutput(blocks=[table], summary=[table.text()])


@register_section("attacks", order=20)
def attacks_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """Per attack: robust accuracy, success rate, matched clean accuracy, gap closure; their plots.

    The robust-accuracy plot shows the main (strongest) attack; the gap-closure plot shows PGD when
    present, else the first attack with a gap, and only its budgets with a positive gap (a note
    says so when there is none).
    """
    out = SectionOutput()
    gap_plot_data: dict[str, list[tuple[str, Estimate]]] = {}
    gap_plot_attack: str | None = None
    main_table: Table | None = None
    for attack in res.attacks():
        robust = robust_table(res, attack)
        if main_table is None:  # the first attack is the main one (strongest family first)
            main_table = robust
        out.blocks += [robust, success_table(res, attack)]
        matched = matched_table(res, attack, ctx.supervised)
        if matched is not None:
            out.blocks.append(matched)
        gap, data = gap_table(res, attack, ctx.supervised, ctx.contrastive)
        if gap is not None:
            out.blocks.append(gap)
            if attack == "pgd" or gap_plot_attack is None:
                gap_plot_data, gap_plot_attack = data, attack
    main_attack = res.main_attack()
    if main_attack:
        path = plot_robust(res, main_attack, ctx.folder / "robust_accuracy.png")
        if path:
            out.plots.append(("Robust accuracy vs eps", path))
    path = plot_gap_closure(gap_plot_data, ctx.folder / "gap_closure.png")
    if path:
        out.plots.append(("Gap closure (budgets with a positive gap only)", path))
    elif gap_plot_attack is not None and len(res.methods) > 2:
        out.blocks.append(
            Note(
                [
                    f"Gap-closure plot omitted: at no {gap_plot_attack.upper()} budget does the 95% "
                    f"interval of the gap RA({ctx.supervised}) - RA({ctx.contrastive}) lie above 0, "
                    "so there is no gap to close."
                ]
            )
        )
    if main_table is not None:
        out.summary.append(main_table.text())
    return out


@register_section("evaluation", order=30)
def evaluation_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """The evaluation suite's eps50 and AutoAttack table, when the evaluate stage ran."""
    table = evaluation_table(res)
    return SectionOutput(blocks=[table] if table is not None else [])


@register_section("corruptions", order=40)
def corruption_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """The common-corruptions table, when corruption rows exist."""
    table = corruption_table(res, ctx.supervised)
    return SectionOutput(blocks=[table] if table is not None else [])


def gates_table(res: StudyResults) -> Table | None:
    """Every sanity gate of every cell: one row per (cell, stage), pass or FAIL with its message.

    Returns:
        The table, or None when no cell has gate rows.
    """
    found = [r for r in res.rows if r["metric"].startswith("gate/")]
    if not found:
        return None
    names = sorted({r["metric"].removeprefix("gate/") for r in found})
    by_cell: dict[tuple[str, int, str], dict[str, dict[str, Any]]] = {}
    for r in found:
        key = (r["method"], int(r["seed"]), str(r.get("stage", "")).split(":")[0])
        by_cell.setdefault(key, {})[r["metric"].removeprefix("gate/")] = r
    order = {m: i for i, m in enumerate(res.methods)}

    def result(row: dict[str, Any] | None) -> str:
        if row is None:
            return "-"
        if row["value"] is not None and row["value"] >= 1:
            return "pass"
        return f"FAIL: {row.get('message', '')}"

    rows = []
    for (method, seed, stage), gates in sorted(
        by_cell.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1], kv[0][2])
    ):
        passed = sum(1 for g in gates.values() if g["value"] is not None and g["value"] >= 1)
        line = [method, str(seed), stage, f"{passed}/{len(gates)}"]
        rows.append(line + [result(gates.get(name)) for name in names])
    return Table(
        "Sanity gates per cell",
        ["method", "seed", "stage", "passed"] + names,
        rows,
        "Each gate checks the reported robust accuracies of its cell (see attacks/gates.py for what each "
        "tests and how it can fail); '-' = not run for that cell. Pass/fail per cell; no interval.",
    )


@register_section("gates", order=70)
def gates_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """The gates table (failures are also listed at the top of the report by the writer)."""
    table = gates_table(res)
    return SectionOutput(blocks=[table] if table is not None else [])
