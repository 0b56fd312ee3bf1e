"""The study report, built from the results database only (never runs a model).

Writes into the study's output folder: ``report.md``, a self-contained ``report.html`` (plots embedded),
``results.csv`` and ``results.json`` (every row), and PNG plots (robust accuracy vs eps with 95% bands,
gap-closure bars).
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cslrobust.statistics import Estimate, gap_closed, paired_bootstrap, t_interval
from cslrobust.study.runner import Cell
from cslrobust.study.store import ResultsStore, unpack_bits
from cslrobust.training.checkpoint import write_json_atomic


def current_rows(store: ResultsStore, cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Rows of the study's cells whose stage keys match the current study settings."""
    wanted = {(c.cell_id, key) for c in cells for key in c.stages.values()}
    return [
        r for r in store.rows([c.cell_id for c in cells]) if (r["cell_id"], r["stage"]) in wanted
    ]


def eps_label(norm: str, eps: float) -> str:
    """Human label of a budget: ``1/255`` for L-inf, ``L2 0.25`` for L2."""
    return f"{eps * 255:g}/255" if norm == "linf" else f"L2 {eps:g}"


@dataclass
class Table:
    """A titled table with an optional note."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        """GitHub markdown."""
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        """An HTML table."""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows
        )
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return f"<h3>{html.escape(self.title)}</h3>{note}<table><tr>{head}</tr>{body}</table>"

    def text(self) -> str:
        """Fixed-width text for the terminal."""
        widths = [max(len(x) for x in col) for col in zip(self.header, *self.rows, strict=True)]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        lines = [self.title, fmt.format(*self.header), fmt.format(*("-" * w for w in widths))]
        return "\n".join(lines + [fmt.format(*r) for r in self.rows])


@dataclass
class StudyResults:
    """Rows of a study indexed for reporting."""

    rows: list[dict[str, Any]]
    methods: list[str]
    seeds: dict[str, list[int]] = field(default_factory=dict)

    def values(self, method: str, metric: str, **cond: Any) -> list[float]:
        """Values of ``metric`` for ``method`` (one per seed) matching the conditions."""
        out = []
        for r in self.rows:
            if (
                r["method"] == method
                and r["metric"] == metric
                and all(r.get(k) == v for k, v in cond.items())
            ):
                if r["value"] is not None:
                    out.append(float(r["value"]))
        return out

    def correct_matrix(self, method: str, **cond: Any) -> np.ndarray | None:
        """Per-seed per-image robust correctness (S, N) for bootstrap, or None if not stored."""
        found = []
        for r in sorted(self.rows, key=lambda r: r["seed"]):
            if (
                r["method"] == method
                and r["metric"] == "robust_accuracy"
                and all(r.get(k) == v for k, v in cond.items())
            ):
                if not r.get("correct_bits"):
                    return None
                found.append(unpack_bits(r["correct_bits"], int(r["n"])))
        return np.stack(found) if found else None

    def budgets(self, attack: str) -> list[tuple[str, float]]:
        """(norm, eps) pairs evaluated with ``attack``, L-inf first, increasing eps."""
        pairs = {
            (r["norm"], r["eps"])
            for r in self.rows
            if r["attack"] == attack and r["metric"] == "robust_accuracy"
        }
        return sorted(pairs, key=lambda b: (b[0] != "linf", b[1]))

    def attacks(self) -> list[str]:
        """Attacks present, strongest family first."""
        names = {r["attack"] for r in self.rows if r["metric"] == "robust_accuracy"}
        order = ["autoattack", "pgd", "fgsm"]
        return sorted(names, key=lambda a: order.index(a) if a in order else len(order))


def accuracy_estimate(res: StudyResults, method: str, **cond: Any) -> Estimate:
    """Mean over seeds with a t-interval (>= 2 seeds) or an image bootstrap (1 seed)."""
    values = res.values(method, "robust_accuracy", **cond)
    if len(values) >= 2:
        return t_interval(np.array(values))
    matrix = res.correct_matrix(method, **cond)
    if matrix is None:
        return t_interval(np.array(values))
    return paired_bootstrap({method: matrix}, lambda accs: accs[method])


def _fmt(values: list[float]) -> str:
    return "n/a" if not values else f"{100 * float(np.mean(values)):.1f}"


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
                _fmt(res.values(method, "probe/val_accuracy")),
                _fmt(own) if own else "-",
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
        line = [method, _fmt(clean)]
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
            _fmt(res.values(method, "attack_success_rate", attack=attack, norm=n, eps=e))
            for n, e in budgets
        ]
        for norm, eps in budgets:
            ra = res.values(method, "robust_accuracy", attack=attack, norm=norm, eps=eps)
            clean = res.values(method, "clean_accuracy", attack=attack, norm=norm, eps=eps)
            ratio = [r / c for r, c in zip(ra, clean, strict=False) if c > 0]
            line.append(_fmt(ratio))
        rows.append(line)
    return Table(
        f"{attack.upper()} attack success rate and robust/clean ratio (%)",
        header,
        rows,
        "ASR: fraction of initially correct test images the attack flips (independent of clean accuracy).",
    )


def gap_table(
    res: StudyResults, attack: str, supervised: str, contrastive: str
) -> tuple[Table | None, dict[str, Any]]:
    """Robustness gap SL - CSL and the fraction of it closed by every other method, with intervals."""
    if supervised not in res.methods or contrastive not in res.methods:
        return None, {}
    others = [m for m in res.methods if m not in (supervised, contrastive)]
    budgets = res.budgets(attack)
    header = ["eps", f"gap {supervised} - {contrastive} (pts)"] + [
        f"closed by {m} (%)" for m in others
    ]
    rows, plot_data = [], {}
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
                est = paired_bootstrap(
                    mats, lambda a, m=m: gap_closed(a[m], a[contrastive], a[supervised])
                )
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


GEOMETRY_COLUMNS = (
    ("uniformity", "uniformity"),
    ("alignment", "alignment"),
    ("class_distance_intra", "intra"),
    ("class_distance_inter", "inter"),
    ("class_distance_ratio", "inter/intra"),
    ("centroid_margin_median", "centroid margin (median)"),
    ("logit_margin_median", "logit margin (median)"),
)


def geometry_table(res: StudyResults) -> Table | None:
    """Geometry metrics of backbone features per method (means over seeds), plus sensitivities."""
    if not any(r["metric"].startswith("geometry/") for r in res.rows):
        return None
    sens = sorted(
        {
            r["metric"]
            for r in res.rows
            if r["metric"].startswith("geometry/sensitivity_") and r["metric"].endswith("/median")
        }
    )
    header = (
        ["method"]
        + [label for _, label in GEOMETRY_COLUMNS]
        + [m.removeprefix("geometry/sensitivity_").removesuffix("/median") + " sens." for m in sens]
    )
    rows = []
    for method in res.methods:
        line = [method]
        for key, _ in GEOMETRY_COLUMNS:
            values = res.values(method, f"geometry/{key}")
            line.append("n/a" if not values else f"{float(np.mean(values)):.3f}")
        for metric in sens:
            values = res.values(method, metric)
            line.append("n/a" if not values else f"{float(np.mean(values)):.3f}")
        rows.append(line)
    return Table(
        "Representation geometry (backbone features, test set)",
        header,
        rows,
        "Uniformity and alignment: Wang & Isola 2020 (lower uniformity = more uniform). Distances are cosine "
        "distances; inter/intra > 1 means separated classes. Sensitivity: median ||f(x+d)-f(x)|| / ||d||_2 "
        "for PGD (pgd_E) and random (random_E) L-inf perturbations of E/255.",
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
    for key, label in GEOMETRY_COLUMNS:
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
            line.append(_fmt(last))
        active = _active_epochs(res, method)
        for key in ("fn_precision", "fn_recall"):
            line.append(
                _fmt(
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


def plot_detector_quality(res: StudyResults, path: Path) -> Path | None:
    """Precision and recall of each detector over training epochs."""
    methods = [m for m in res.methods if res.values(m, "train/fn_precision")]
    if not methods:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
            line.append(_fmt([float(r["value"]) for r in mine if r.get("family", "") == fam]))
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
            _fmt(res.values(method, "eval/robust_accuracy", attack="autoattack", norm=n, eps=e))
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


def plot_robust(res: StudyResults, attack: str, path: Path) -> Path | None:
    """Robust accuracy vs L-inf eps with 95% bands, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [b for b in res.budgets(attack) if b[0] == "linf"]
    if not budgets:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in res.methods:
        xs, ys, lo, hi = [], [], [], []
        for norm, eps in budgets:
            est = accuracy_estimate(res, method, attack=attack, norm=norm, eps=eps)
            xs.append(eps * 255)
            ys.append(100 * est.value)
            lo.append(100 * (est.low if not math.isnan(est.low) else est.value))
            hi.append(100 * (est.high if not math.isnan(est.high) else est.value))
        ax.plot(xs, ys, marker="o", label=method)
        ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set_xscale("log")
    ticks = [eps * 255 for _, eps in budgets]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("eps (L-inf, x/255)")
    ax.set_ylabel(f"{attack.upper()} robust accuracy (%)")
    ax.set_title("Robust accuracy vs perturbation size (95% bands)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_gap_closure(plot_data: dict[str, list[tuple[str, Estimate]]], path: Path) -> Path | None:
    """Bars of the gap fraction closed per method and eps, with bootstrap error bars."""
    if not plot_data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in next(iter(plot_data.values()))]
    width = 0.8 / len(plot_data)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _export(rows: list[dict[str, Any]], folder: Path) -> None:
    keys = [
        "method",
        "seed",
        "cell_id",
        "stage",
        "metric",
        "attack",
        "norm",
        "eps",
        "corruption",
        "severity",
        "epoch",
        "value",
        "git_sha",
        "created_at",
    ]
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    slim = [{k: v for k, v in r.items() if not k.endswith("_bits")} for r in rows]
    write_json_atomic(folder / "results.json", slim)


def write_report(
    title: str,
    cells: Sequence[Cell],
    store: ResultsStore,
    folder: Path,
    *,
    supervised: str = "supervised",
    contrastive: str = "simclr",
    wall_seconds: float | None = None,
) -> tuple[str, Path]:
    """Write the report files; return the terminal summary and the path of ``report.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = current_rows(store, cells)
    methods = list(dict.fromkeys(c.method for c in cells))
    res = StudyResults(rows, methods)
    _export(rows, folder)

    tables = [clean_table(res)]
    plots: list[tuple[str, Path]] = []
    gap_plot_data: dict[str, Any] = {}
    for attack in res.attacks():
        tables.append(robust_table(res, attack))
        tables.append(success_table(res, attack))
        matched = matched_table(res, attack, supervised)
        if matched is not None:
            tables.append(matched)
        gap, data = gap_table(res, attack, supervised, contrastive)
        if gap is not None:
            tables.append(gap)
            if attack == "pgd" or not gap_plot_data:
                gap_plot_data = data
    main_attack = res.attacks()[0] if res.attacks() else None
    if main_attack:
        p = plot_robust(res, main_attack, folder / "robust_accuracy.png")
        if p:
            plots.append(("Robust accuracy vs eps", p))
    p = plot_gap_closure(gap_plot_data, folder / "gap_closure.png")
    if p:
        plots.append(("Gap closure", p))
    for extra in (
        evaluation_table(res),
        corruption_table(res, supervised),
        detector_table(res),
        geometry_table(res),
    ):
        if extra is not None:
            tables.append(extra)
    p = plot_detector_quality(res, folder / "detector_quality.png")
    if p:
        plots.append(("False-negative detection quality over epochs", p))
    if main_attack:
        corr, geo_plots = geometry_vs_robustness(res, main_attack, folder)
        if corr is not None:
            tables.append(corr)
        plots += geo_plots

    missing = [c.config.name for c in cells if not any(r["cell_id"] == c.cell_id for r in rows)]
    intro = [
        f"# {title}",
        "",
        f"{len(cells)} cells ({len(methods)} methods); references: supervised = `{supervised}`, "
        f"contrastive = `{contrastive}`. All numbers come from the results database; every row is in "
        "`results.csv` / `results.json`.",
    ]
    if wall_seconds is not None:
        intro += ["", f"Wall time of the last `study run`: {wall_seconds / 60:.1f} min."]
    if missing:
        intro += ["", f"**Incomplete: no results yet for {', '.join(missing)}.**"]
    failures = gate_failures(res)
    if failures:
        intro += [
            "",
            f"**WARNING: {len(failures)} sanity gate(s) failed; numbers of these cells are suspect:**",
        ]
        intro += [f"- GATE FAILED: {line}" for line in failures]
    elif any(r["metric"].startswith("gate/") for r in rows):
        intro += ["", "All sanity gates passed."]
    md = "\n".join(intro) + "\n\n" + "\n\n".join(t.markdown() for t in tables)
    md += "\n\n" + "\n\n".join(f"![{name}]({p.name})" for name, p in plots) + "\n"
    report = folder / "report.md"
    report.write_text(md)

    figures = "".join(
        f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'/>"
        for name, p in plots
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + "</title><style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#eee}.warn{color:#b00;font-weight:bold}</style></head><body>"
        + "".join(
            f"<p class='warn'>{html.escape(line)}</p>"
            if ("GATE" in line or "WARNING" in line)
            else f"<p>{html.escape(line)}</p>"
            for line in intro[2:]
            if line
        )
        + "".join(t.html() for t in tables)
        + figures
        + "</body></html>"
    )
    (folder / "report.html").write_text(page)

    summary = [clean_table(res).text()]
    if failures:
        summary.insert(0, "\n".join(["!!! SANITY GATES FAILED:"] + failures))
    if main_attack:
        summary.append(robust_table(res, main_attack).text())
    return "\n\n".join(summary), report
