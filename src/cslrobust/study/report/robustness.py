"""Robustness tables: clean, robust, success, gap closure, matched, corruptions, evaluation suite.

Also the failed sanity gates, and the report sections that show these tables (``clean``, ``attacks``,
``evaluation``, ``corruptions``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cslrobust.statistics import Estimate, gap_closed, paired_bootstrap, t_interval
from cslrobust.study.report.plots import plot_gap_closure, plot_robust
from cslrobust.study.report.results import (
    StudyResults,
    Table,
    accuracy_estimate,
    eps_label,
    format_percent,
)
from cslrobust.study.report.sections import ReportContext, SectionOutput, register_section


def clean_table(res: StudyResults) -> Table:
    """Clean accuracy per method (linear probe, full test set)."""
    rows = []
    for method in res.methods:
        test = res.values(method, "probe/test_accuracy")
        est = t_interval(np.array(test))
        own = res.values(method, "probe/own_head_test_accuracy")
        rows.append(
            [
                method,
                str(len(test)),
                est.format(),
                format_percent(res.values(method, "probe/val_accuracy")),
                format_percent(own) if own else "-",
            ]
        )
    return Table(
        "Clean accuracy (%)",
        ["method", "seeds", "probe test [95% CI]", "probe val", "own head test"],
        rows,
        "Linear probe on frozen backbone features, full test set; CI across seeds (t) when >= 2 seeds.",
    )


def robust_table(res: StudyResults, attack: str) -> Table:
    """Robust accuracy per method and budget with 95% intervals."""
    budgets = res.budgets(attack)
    header = ["method", "clean (attacked set)"] + [eps_label(n, e) for n, e in budgets]
    rows = []
    for method in res.methods:
        clean = res.values(method, "clean_accuracy", attack=attack)
        line = [method, format_percent(clean)]
        for norm, eps in budgets:
            line.append(accuracy_estimate(res, method, attack=attack, norm=norm, eps=eps).format())
        rows.append(line)
    return Table(
        f"{attack.upper()} robust accuracy (%) [95% CI]",
        header,
        rows,
        "Whole model (normalise -> backbone -> probe) in eval mode on a fixed test subset; interval across "
        "seeds (t) with >= 2 seeds, else a bootstrap over test images.",
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
        "ASR: fraction of initially correct test images the attack flips (independent of clean accuracy).",
    )


def _closed_by(
    method: str, contrastive: str, supervised: str
) -> Callable[[Mapping[str, float]], float]:
    """The bootstrap statistic: fraction of the SL - CSL gap that ``method`` closes."""
    return lambda a: gap_closed(a[method], a[contrastive], a[supervised])


def gap_table(
    res: StudyResults, attack: str, supervised: str, contrastive: str
) -> tuple[Table | None, dict[str, list[tuple[str, Estimate]]]]:
    """Robustness gap SL - CSL and the fraction of it closed by every other method, with intervals."""
    if supervised not in res.methods or contrastive not in res.methods:
        return None, {}
    others = [m for m in res.methods if m not in (supervised, contrastive)]
    budgets = res.budgets(attack)
    header = ["eps", f"gap {supervised} - {contrastive} (pts)"] + [
        f"closed by {m} (%)" for m in others
    ]
    rows: list[list[str]] = []
    plot_data: dict[str, list[tuple[str, Estimate]]] = {}
    for norm, eps in budgets:
        cond = {"attack": attack, "norm": norm, "eps": eps}
        matrices = {m: res.correct_matrix(m, **cond) for m in [supervised, contrastive, *others]}
        line = [eps_label(norm, eps)]
        if any(v is None for v in matrices.values()):
            mean = {
                m: float(np.mean(res.values(m, "robust_accuracy", **cond) or [float("nan")]))
                for m in matrices
            }
            line.append(f"{100 * (mean[supervised] - mean[contrastive]):.1f}")
            line += [
                f"{100 * gap_closed(mean[m], mean[contrastive], mean[supervised]):.0f}"
                for m in others
            ]
        else:
            mats = {m: v for m, v in matrices.items() if v is not None}
            gap = paired_bootstrap(mats, lambda a: a[supervised] - a[contrastive])
            line.append(gap.format(scale=100.0))
            for m in others:
                est = paired_bootstrap(mats, _closed_by(m, contrastive, supervised))
                line.append(est.format(scale=100.0, digits=0))
                plot_data.setdefault(m, []).append((eps_label(norm, eps), est))
        rows.append(line)
    table = Table(
        f"Robustness gap and gap closed ({attack.upper()})",
        header,
        rows,
        "Gap = RA(SL) - RA(CSL); gap closed by M = (RA(M) - RA(CSL)) / (RA(SL) - RA(CSL)). Intervals: "
        "paired bootstrap over test images (and seeds). A negative gap means the contrastive model was "
        "more robust; closure is then not meaningful.",
    )
    return table, plot_data


def matched_table(res: StudyResults, attack: str, supervised: str) -> Table | None:
    """Each method against the supervised checkpoint of the closest validation clean accuracy (same seed)."""
    sl_val = [
        r for r in res.rows if r["method"] == supervised and r["metric"] == "sl_epoch/val_accuracy"
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
                    theirs = pick(supervised, f"sl_epoch/{metric}", sl_seed, norm, eps, epoch)
                    line.append(f"{mine} / {theirs}")
            rows.append(line)
    return Table(
        f"Matched clean accuracy ({attack.upper()}): each method vs the supervised checkpoint closest in val accuracy",
        header,
        rows,
        "Robust accuracy depends on clean accuracy; here the supervised reference is the epoch checkpoint whose "
        "linear-probe validation accuracy is closest to the method's (same seed), probed and attacked identically.",
    )


def gate_failures(res: StudyResults) -> list[str]:
    """One line per failed sanity gate: method, seed, gate and its message."""
    return [
        f"{r['method']} (seed {r['seed']}): {r['metric'].removeprefix('gate/')}: {r.get('message', '')}"
        for r in res.rows
        if r["metric"].startswith("gate/") and r["value"] is not None and r["value"] < 1
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
        "mCE = mean over corruptions of (summed error over severities / the supervised model's).",
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
        "the sweep; FAB: median minimal perturbation). Independent of clean accuracy.",
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
    present, else the first attack with a gap.
    """
    out = SectionOutput()
    gap_plot_data: dict[str, list[tuple[str, Estimate]]] = {}
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
            if attack == "pgd" or not gap_plot_data:
                gap_plot_data = data
    main_attack = res.main_attack()
    if main_attack:
        path = plot_robust(res, main_attack, ctx.folder / "robust_accuracy.png")
        if path:
            out.plots.append(("Robust accuracy vs eps", path))
    path = plot_gap_closure(gap_plot_data, ctx.folder / "gap_closure.png")
    if path:
        out.plots.append(("Gap closure", path))
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
