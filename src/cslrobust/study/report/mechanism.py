"""Mechanism tables: geometry, geometry vs robust accuracy, false-negative detector quality.

Also the report sections that show them (``detector``, ``geometry``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cslrobust.study.report.plots import plot_detector_quality
from cslrobust.study.report.results import StudyResults, Table, eps_label, format_percent
from cslrobust.study.report.sections import ReportContext, SectionOutput, register_section

GEOMETRY_COLUMNS = (
    ("uniformity", "uniformity"),
    ("alignment", "alignment"),
    ("class_distance_intra", "intra"),
    ("class_distance_inter", "inter"),
    ("class_distance_ratio", "inter/intra"),
    ("centroid_margin_median", "centroid margin (median)"),
    ("logit_margin_median", "logit margin (median)"),
)
"""``(metric key under geometry/, column label)`` of the fixed geometry columns."""

SENSITIVITY_PREFIX = "sensitivity_"
SENSITIVITY_SUMMARY = "median"


def sensitivity_columns(res: StudyResults) -> list[tuple[str, str]]:
    """``(metric key, label)`` of every stored sensitivity measure, scale-free measures first.

    Keys are ``sensitivity_<measure>_<eps255>/median``; measures come from
    :data:`~cslrobust.geometry.SENSITIVITY_MEASURES`, and those that are not scale-free are labelled
    ``(raw, scale-dependent)``. Within each group, measures in registry order, then increasing eps.
    """
    from cslrobust.geometry import SENSITIVITY_MEASURES

    found: list[tuple[bool, str, float, str, str]] = []
    suffix = f"/{SENSITIVITY_SUMMARY}"
    for metric in {r["metric"] for r in res.rows}:
        key = metric.removeprefix("geometry/")
        if not (metric.startswith(f"geometry/{SENSITIVITY_PREFIX}") and key.endswith(suffix)):
            continue
        measure, _, eps = key.removeprefix(SENSITIVITY_PREFIX).removesuffix(suffix).rpartition("_")
        if measure not in SENSITIVITY_MEASURES:
            continue
        scale_free = SENSITIVITY_MEASURES.get(measure).scale_free
        label = f"{measure} sens. {eps}/255" + ("" if scale_free else " (raw, scale-dependent)")
        found.append((not scale_free, measure, float(eps), key, label))
    return [(key, label) for *_, key, label in sorted(found)]


def geometry_columns(res: StudyResults) -> list[tuple[str, str]]:
    """The geometry table's columns: :data:`GEOMETRY_COLUMNS` then :func:`sensitivity_columns`."""
    return [*GEOMETRY_COLUMNS, *sensitivity_columns(res)]


def geometry_table(res: StudyResults) -> Table | None:
    """Geometry metrics of backbone features per method (means over seeds), plus sensitivities."""
    from cslrobust.geometry import SENSITIVITY_MEASURES

    if not any(r["metric"].startswith("geometry/") for r in res.rows):
        return None
    columns = geometry_columns(res)
    rows = []
    for method in res.methods:
        line = [method]
        for key, _ in columns:
            values = res.values(method, f"geometry/{key}")
            line.append("n/a" if not values else f"{float(np.mean(values)):.3f}")
        rows.append(line)
    measures = "; ".join(
        f"{name}: {SENSITIVITY_MEASURES.get(name).description}"
        for name in SENSITIVITY_MEASURES.names()
    )
    return Table(
        "Representation geometry (backbone features, test set)",
        ["method"] + [label for _, label in columns],
        rows,
        "Uniformity and alignment: Wang & Isola 2020 (lower uniformity = more uniform). Distances are cosine "
        "distances; inter/intra > 1 means separated classes. Sensitivity (median over images, L-inf "
        f"perturbations of E/255): {measures}. Raw-feature sensitivity depends on each method's feature "
        "scale; compare methods on the scale-free columns. Means over seeds; no interval.",
    )


def geometry_vs_robustness(
    res: StudyResults, attack: str, folder: Path
) -> tuple[Table | None, list[tuple[str, Path]]]:
    """Rank correlation of each geometry metric with robust accuracy across cells, and scatter plots."""
    from cslrobust.geometry import plot_metric_vs_robustness, spearman

    budgets = [b for b in res.budgets(attack) if b[0] == "linf" and b[1] > 0]
    if not budgets or not any(r["metric"].startswith("geometry/") for r in res.rows):
        return None, []
    norm, eps = budgets[min(1, len(budgets) - 1)]
    cells = sorted({(r["method"], r["seed"]) for r in res.rows})
    rows, plots = [], []
    for key, label in geometry_columns(res):
        xs, ys, names = [], [], []
        for method, seed in cells:
            geo = [
                r["value"]
                for r in res.rows
                if (r["method"], r["seed"]) == (method, seed) and r["metric"] == f"geometry/{key}"
            ]
            ra = [
                r["value"]
                for r in res.rows
                if (r["method"], r["seed"]) == (method, seed)
                and r["metric"] == "robust_accuracy"
                and (r["attack"], r["norm"], r["eps"]) == (attack, norm, eps)
            ]
            if geo and ra and geo[0] is not None:
                xs.append(float(geo[0]))
                ys.append(100 * float(ra[0]))
                names.append(f"{method}-s{seed}")
        if len(xs) < 3:
            continue
        rho, p_value = spearman(np.array(xs), np.array(ys))
        rows.append([label, str(len(xs)), f"{rho:.2f}", f"{p_value:.2g}"])
        if key in ("uniformity", "class_distance_ratio", "centroid_margin_median"):
            path = folder / f"geometry_vs_robustness_{key}.png"
            plot_metric_vs_robustness(
                np.array(xs),
                np.array(ys),
                names,
                path,
                label,
                f"{attack.upper()} RA at {eps_label(norm, eps)} (%)",
            )
            plots.append((f"{label} vs robust accuracy", path))
    if not rows:
        return None, plots
    return Table(
        f"Geometry vs robust accuracy ({attack.upper()} {eps_label(norm, eps)}): Spearman rank correlation",
        ["metric", "cells", "rho", "p"],
        rows,
        "One point per (method, seed) cell.",
    ), plots


FN_KEYS = ("fn_precision", "fn_recall", "fn_f1", "fn_removed_fraction", "fn_true_fraction")


def detector_table(res: StudyResults) -> Table | None:
    """False-negative detector quality per method: last-epoch and all-epoch means over seeds."""
    methods = [m for m in res.methods if res.values(m, "train/fn_precision")]
    if not methods:
        return None
    rows = []
    for method in methods:
        last_epoch = max(
            int(r["epoch"])
            for r in res.rows
            if r["method"] == method and r["metric"] == "train/fn_precision"
        )
        line = [method]
        for key in FN_KEYS:
            last = res.values(method, f"train/{key}", epoch=last_epoch)
            line.append(format_percent(last))
        active = _active_epochs(res, method)
        for key in ("fn_precision", "fn_recall"):
            line.append(
                format_percent(
                    [
                        float(r["value"])
                        for r in res.rows
                        if r["method"] == method
                        and r["metric"] == f"train/{key}"
                        and r["value"] is not None
                        and (r["seed"], int(r["epoch"])) in active
                    ]
                )
            )
        rows.append(line)
    return Table(
        "False-negative detection quality (%)",
        [
            "method",
            "precision",
            "recall",
            "F1",
            "removed",
            "true FN share",
            "precision (active epochs)",
            "recall (active epochs)",
        ],
        rows,
        "Against true labels, per training step, averaged per epoch; first five columns: last epoch; "
        "'active epochs': the epochs in which the detector removed something (warm-up epochs, where "
        "nothing is removed and precision is 1 by convention, are left out). "
        "'removed': fraction of negatives removed; 'true FN share': fraction of negatives that share the "
        "anchor's class.",
    )


def _active_epochs(res: StudyResults, method: str) -> set[tuple[Any, int]]:
    """(seed, epoch) pairs in which ``method``'s detector removed a non-zero fraction of negatives."""
    return {
        (r["seed"], int(r["epoch"]))
        for r in res.rows
        if r["method"] == method
        and r["metric"] == "train/fn_removed_fraction"
        and r["value"] is not None
        and float(r["value"]) > 0
    }


@register_section("detector", order=50)
def detector_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """False-negative detector table and its precision/recall-over-epochs plot."""
    out = SectionOutput()
    table = detector_table(res)
    if table is not None:
        out.blocks.append(table)
    path = plot_detector_quality(res, ctx.folder / "detector_quality.png")
    if path:
        out.plots.append(("False-negative detection quality over epochs", path))
    return out


@register_section("geometry", order=60)
def geometry_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """Geometry table, then its rank correlation with the main attack's robust accuracy (and scatters)."""
    out = SectionOutput()
    table = geometry_table(res)
    if table is not None:
        out.blocks.append(table)
    main_attack = res.main_attack()
    if main_attack:
        corr, plots = geometry_vs_robustness(res, main_attack, ctx.folder)
        if corr is not None:
            out.blocks.append(corr)
        out.plots += plots
    return out
