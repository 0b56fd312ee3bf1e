"""The report's view of the results database: current rows, indexed results, estimates and tables.

Everything here is pure: it reads rows (dicts from :class:`~cslrobust.study.store.ResultsStore`) and
returns numbers or formatted text; nothing is written.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cslrobust.statistics import Estimate, paired_bootstrap, t_interval
from cslrobust.study.runner import Cell
from cslrobust.study.store import ResultsStore, unpack_bits

# Strongest attack family first: the first attack present is the report's main attack.
ATTACK_ORDER = ("autoattack", "pgd", "fgsm")


def current_rows(store: ResultsStore, cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Rows of the study's cells whose stage keys match the current study settings.

    Args:
        store: The study's results database.
        cells: The study's cells; rows of other cells or of stale stage keys are left out.

    Returns:
        Long-format rows (one dict per stored result).
    """
    wanted = {(c.cell_id, key) for c in cells for key in c.stages.values()}
    return [
        r for r in store.rows([c.cell_id for c in cells]) if (r["cell_id"], r["stage"]) in wanted
    ]


def eps_label(norm: str, eps: float) -> str:
    """Human label of a budget: ``1/255`` for L-inf, ``L2 0.25`` for L2 (``eps`` is a fraction of 1)."""
    return f"{eps * 255:g}/255" if norm == "linf" else f"L2 {eps:g}"


def format_percent(values: Sequence[float]) -> str:
    """Mean of fractions as a percentage with one decimal, ``n/a`` when there are none."""
    return "n/a" if not values else f"{100 * float(np.mean(values)):.1f}"


@dataclass
class Table:
    """A titled table with an optional note; a report block (markdown and HTML)."""

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
    """Rows of a study indexed for reporting.

    Args:
        rows: Long-format rows (see :func:`current_rows`).
        methods: Method names in report order.
        seeds: Optional seeds per method.
    """

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
        return sorted(
            names, key=lambda a: ATTACK_ORDER.index(a) if a in ATTACK_ORDER else len(ATTACK_ORDER)
        )

    def main_attack(self) -> str | None:
        """The strongest attack present (the report's headline), or None without attack rows."""
        attacks = self.attacks()
        return attacks[0] if attacks else None


def accuracy_estimate(res: StudyResults, method: str, **cond: Any) -> Estimate:
    """Mean over seeds with a t-interval (>= 2 seeds) or an image bootstrap (1 seed)."""
    values = res.values(method, "robust_accuracy", **cond)
    if len(values) >= 2:
        return t_interval(np.array(values))
    matrix = res.correct_matrix(method, **cond)
    if matrix is None:
        return t_interval(np.array(values))
    return paired_bootstrap({method: matrix}, lambda accs: accs[method])
