"""The report's view of the results database: current rows, indexed results, estimates and tables.

Everything here is pure: it reads rows (dicts from :class:`~cslrobust.study.store.ResultsStore`) and
returns numbers or formatted text; nothing is written.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from cslrobust.statistics import INTERVAL_METHODS, Estimate, hierarchical_bootstrap, t_interval
from cslrobust.study.runner import Cell
from cslrobust.study.store import ResultsStore, unpack_bits

T = TypeVar("T")

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


def interval_caption(methods: Iterable[str]) -> str:
    """Caption sentence naming the interval methods used in a table (keys of ``INTERVAL_METHODS``).

    Args:
        methods: ``Estimate.method`` of every interval shown (repeats are fine).

    Returns:
        ``"Intervals (95%): <method>; <method>."``, or a sentence saying none is shown.
    """
    used = [m for m in dict.fromkeys(methods) if m != "none"]
    if not used:
        return "Intervals: none shown (means over seeds)."
    return "Intervals (95%): " + "; ".join(INTERVAL_METHODS[m] for m in used) + "."


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
class Note:
    """An optionally titled list of lines: paragraphs, or a bulleted list; a report block.

    Args:
        lines: The lines (markdown inline syntax is kept as is in markdown, escaped in HTML).
        title: Heading (level 3); none when empty.
        bullets: Render the lines as a list instead of paragraphs.
    """

    lines: list[str]
    title: str = ""
    bullets: bool = False

    def markdown(self) -> str:
        """GitHub markdown."""
        head = [f"### {self.title}", ""] if self.title else []
        if self.bullets:
            return "\n".join(head + [f"- {line}" for line in self.lines])
        return "\n".join(head) + ("\n" if head else "") + "\n\n".join(self.lines)

    def html(self) -> str:
        """HTML (``**bold**`` markers dropped, text escaped)."""
        head = f"<h3>{html.escape(self.title)}</h3>" if self.title else ""
        items = [html.escape(line.replace("**", "")) for line in self.lines]
        if self.bullets:
            return head + "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
        return head + "".join(f"<p>{i}</p>" for i in items)

    def text(self) -> str:
        """Plain text for the terminal."""
        head = [self.title] if self.title else []
        prefix = "- " if self.bullets else ""
        return "\n".join(head + [prefix + line.replace("**", "") for line in self.lines])


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
    _memo: dict[tuple[Any, ...], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def memo(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """``compute()`` once per ``key`` (rows are not changed after construction).

        Sections that need the same bootstrap (the gap table and the findings) share one result.
        """
        if key not in self._memo:
            self._memo[key] = compute()
        value: T = self._memo[key]
        return value

    def matching(self, method: str, metric: str, **cond: Any) -> list[dict[str, Any]]:
        """Rows of ``metric`` for ``method`` whose columns equal the conditions, in stored order."""
        return [
            r
            for r in self.rows
            if r["method"] == method
            and r["metric"] == metric
            and all(r.get(k) == v for k, v in cond.items())
        ]

    def values(self, method: str, metric: str, **cond: Any) -> list[float]:
        """Values of ``metric`` for ``method`` (one per seed) matching the conditions."""
        return [
            float(r["value"])
            for r in self.matching(method, metric, **cond)
            if r["value"] is not None
        ]

    def by_seed(self, method: str, metric: str, **cond: Any) -> dict[int, float]:
        """Values of ``metric`` for ``method`` keyed by seed (the last row wins on repeats)."""
        return {
            int(r["seed"]): float(r["value"])
            for r in self.matching(method, metric, **cond)
            if r["value"] is not None
        }

    def correct_matrix(
        self,
        method: str,
        *,
        metric: str = "robust_accuracy",
        bits: str = "correct_bits",
        **cond: Any,
    ) -> np.ndarray | None:
        """Per-seed per-image correctness (S, N) for bootstrap, or None if not stored.

        Args:
            method: Method name.
            metric: Robust-accuracy metric whose rows carry the bits (``trajectory/robust_accuracy``
                for the trajectory stage's).
            bits: ``correct_bits`` (robust correctness) or ``clean_bits`` (clean correctness).
            **cond: Conditions of the rows (attack, norm, eps, epoch).
        """
        found = []
        for r in sorted(self.matching(method, metric, **cond), key=lambda r: r["seed"]):
            if not r.get(bits):
                return None
            found.append(unpack_bits(r[bits], int(r["n"])))
        return np.stack(found) if found else None

    def budgets(self, attack: str, metric: str = "robust_accuracy") -> list[tuple[str, float]]:
        """(norm, eps) pairs of ``metric`` rows of ``attack``, L-inf first, increasing eps."""
        pairs = {
            (r["norm"], r["eps"])
            for r in self.rows
            if r["attack"] == attack and r["metric"] == metric
        }
        return sorted(pairs, key=lambda b: (b[0] != "linf", b[1]))

    def attacks(self, metric: str = "robust_accuracy") -> list[str]:
        """Attacks with ``metric`` rows, strongest family first."""
        names = {r["attack"] for r in self.rows if r["metric"] == metric}
        return sorted(
            names, key=lambda a: ATTACK_ORDER.index(a) if a in ATTACK_ORDER else len(ATTACK_ORDER)
        )

    def main_attack(self) -> str | None:
        """The strongest attack present (the report's headline), or None without attack rows."""
        attacks = self.attacks()
        return attacks[0] if attacks else None


def accuracy_estimate(res: StudyResults, method: str, **cond: Any) -> Estimate:
    """Robust accuracy of ``method`` over seeds and test images, with a 95% interval.

    With per-image correctness stored: :func:`~cslrobust.statistics.hierarchical_bootstrap` over
    seeds and images (method ``"hierarchical"`` with >= 2 seeds, ``"bootstrap"`` over images with
    one). Without it: a t-interval across seeds (none with one seed).
    """

    def compute() -> Estimate:
        matrix = res.correct_matrix(method, **cond)
        if matrix is not None:
            return hierarchical_bootstrap(matrix)
        return t_interval(np.array(res.values(method, "robust_accuracy", **cond)))

    return res.memo(("accuracy", method, *sorted(cond.items())), compute)
