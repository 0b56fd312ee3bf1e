"""Findings first: one line per claim of the mission (C1-C5) that the study can test, with its verdict.

Each claim is a registered test ``(StudyResults, ReportContext) -> Finding | str`` (a string says why
the study cannot test it). A finding is one or more :class:`Series` of tested quantities, each with
its 95% interval and :func:`~cslrobust.statistics.verdict` ("quantity > 0" holds when the whole
interval lies above 0, does not hold when it lies below, inconclusive otherwise or without an
interval). The decision rule of every claim is written in ``docs/DESIGN.md`` ("Decisions for issue 12
(report)"); the ``findings`` section renders them first in the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cslrobust.registry import Registry
from cslrobust.statistics import Estimate, Verdict, t_interval, verdict
from cslrobust.study.report.protocols import method_pairs, pair_gains
from cslrobust.study.report.results import Note, StudyResults
from cslrobust.study.report.robustness import BudgetGap, budget_gaps
from cslrobust.study.report.sections import ReportContext, SectionOutput, register_section

MIXED = "mixed"
"""Overall verdict of a claim whose budgets (or methods) disagree; the line says where it changes."""

FN_OBJECTIVES = ("simclr_fnr",)
"""Objectives whose methods test C4 (false-negative removal)."""


@dataclass(frozen=True)
class Point:
    """One tested quantity at one budget (or of one kind).

    Attributes:
        where: Budget or quantity label (``2/255``, ``severity 3``, ``uniformity``).
        estimate: The quantity with its interval.
        verdict: The verdict on "quantity > 0".
        extra: Further numbers quoted beside it (e.g. the gap closure).
    """

    where: str
    estimate: Estimate
    verdict: Verdict
    extra: str = ""


def tested(where: str, estimate: Estimate, extra: str = "") -> Point:
    """A :class:`Point` whose verdict is :func:`~cslrobust.statistics.verdict` of "estimate > 0"."""
    return Point(where, estimate, verdict(estimate, threshold=0.0, direction="greater"), extra)


@dataclass(frozen=True)
class Series:
    """Points of one quantity across budgets (or of several quantities), formatted alike.

    Attributes:
        label: Prefix in the report line (e.g. a method name); empty for a single series.
        points: In budget order.
        scale: Factor applied when formatting (100: fractions shown in points).
        digits: Decimals shown.
    """

    label: str
    points: list[Point]
    scale: float = 100.0
    digits: int = 1

    def describe(self) -> str:
        """``where: value [low, high] verdict; ...`` and the budgets where the verdict changes."""
        parts = [
            f"{p.where}: {p.estimate.format(self.scale, self.digits)}"
            + (f", {p.extra}" if p.extra else "")
            + f" -> {p.verdict}"
            for p in self.points
        ]
        text = "; ".join(parts)
        changes = [
            b.where
            for a, b in zip(self.points, self.points[1:], strict=False)
            if a.verdict != b.verdict
        ]
        if changes:
            text += f" (verdict changes at {', '.join(changes)})"
        return f"{self.label}: {text}" if self.label else text


def every_budget(verdicts: Sequence[Verdict]) -> str:
    """Overall verdict when the claim should hold at every budget: the common verdict, else mixed."""
    distinct = set(verdicts)
    if len(distinct) == 1:
        return str(distinct.pop())
    return MIXED if distinct else str(Verdict.INCONCLUSIVE)


def all_of(verdicts: Sequence[Verdict]) -> str:
    """Overall verdict of a conjunction: holds if all hold, does not hold if any does not."""
    if verdicts and all(v is Verdict.HOLDS for v in verdicts):
        return str(Verdict.HOLDS)
    if any(v is Verdict.DOES_NOT_HOLD for v in verdicts):
        return str(Verdict.DOES_NOT_HOLD)
    return str(Verdict.INCONCLUSIVE)


@dataclass(frozen=True)
class Finding:
    """A claim's verdict with the numbers that decide it.

    Attributes:
        claim: Claim id (``C1`` ...).
        statement: The claim and the quantity tested, in words.
        series: The tested quantities.
        combine: Overall verdict from every point's verdict (:func:`every_budget` or :func:`all_of`).
    """

    claim: str
    statement: str
    series: list[Series]
    combine: Callable[[Sequence[Verdict]], str] = field(default=every_budget)

    @property
    def verdict(self) -> str:
        """The overall verdict: a :class:`~cslrobust.statistics.Verdict` value or ``mixed``."""
        return self.combine([p.verdict for s in self.series for p in s.points])

    def line(self) -> str:
        """One markdown line: claim, statement, overall verdict, the numbers."""
        numbers = " | ".join(s.describe() for s in self.series)
        return f"**{self.claim}** {self.statement}: **{self.verdict}**. {numbers}"


ClaimTest = Callable[[StudyResults, ReportContext], "Finding | str"]

CLAIMS: Registry[ClaimTest] = Registry("claim")


def register_claim(name: str) -> Callable[[ClaimTest], ClaimTest]:
    """Decorator registering a claim test under ``name`` (``c1`` ...; report order is by name)."""
    return CLAIMS.register(name)


def assess_claims(res: StudyResults, ctx: ReportContext) -> tuple[list[Finding], list[str]]:
    """Test every registered claim.

    Returns:
        The findings, and ``"C2 (reason)"`` for each claim the study cannot test.
    """
    found, untested = [], []
    for name in CLAIMS.names():
        result = CLAIMS.get(name)(res, ctx)
        if isinstance(result, Finding):
            found.append(result)
        else:
            untested.append(f"{name.upper()} ({result})")
    return found, untested


def seed_paired_difference(
    res: StudyResults, first: str, second: str, metric: str, **cond: object
) -> Estimate:
    """Mean over common seeds of ``metric(first) - metric(second)`` with a t-interval across seeds."""
    a, b = res.by_seed(first, metric, **cond), res.by_seed(second, metric, **cond)
    return t_interval(np.array([a[s] - b[s] for s in sorted(a.keys() & b.keys())]))


def _references(res: StudyResults, ctx: ReportContext) -> str | None:
    """Why the SL/CSL comparison is impossible, or None when both references are in the study."""
    missing = [m for m in (ctx.supervised, ctx.contrastive) if m not in res.methods]
    return f"needs {' and '.join(missing)} in the study" if missing else None


def _main_attack_gaps(res: StudyResults, ctx: ReportContext) -> tuple[str, list[BudgetGap]] | str:
    """The main attack and its gap analyses at every budget with eps > 0, or why there are none."""
    attack = res.main_attack()
    if attack is None:
        return "no attack results"
    if (reason := _references(res, ctx)) is not None:
        return reason
    gaps = [g for g in budget_gaps(res, attack, ctx.supervised, ctx.contrastive) if g.eps > 0]
    return (attack, gaps) if gaps else "no budget with eps > 0"


@register_claim("c1")
def claim_less_robust(res: StudyResults, ctx: ReportContext) -> Finding | str:
    """C1: the gap RA(SL) - RA(CSL) of the main attack is > 0, at every budget with eps > 0."""
    found = _main_attack_gaps(res, ctx)
    if isinstance(found, str):
        return found
    attack, gaps = found
    points = [tested(g.label, g.analysis.gap) for g in gaps]
    return Finding(
        "C1",
        f"CSL ({ctx.contrastive}) is less robust than SL ({ctx.supervised}) under {attack.upper()}: "
        f"gap RA({ctx.supervised}) - RA({ctx.contrastive}) > 0 (points [95% CI], bootstrap over "
        "images and seeds)",
        [Series("", points)],
    )


def _corruption_means(res: StudyResults, method: str) -> dict[int, dict[int, float]]:
    """Per severity, per seed: mean accuracy of ``method`` over the corruptions at that severity."""
    sums: dict[int, dict[int, list[float]]] = {}
    for r in res.rows:
        if (
            r["method"] == method
            and r["metric"] == "corruption_accuracy"
            and r["value"] is not None
        ):
            sums.setdefault(int(r["severity"]), {}).setdefault(int(r["seed"]), []).append(
                float(r["value"])
            )
    return {sev: {s: float(np.mean(v)) for s, v in seeds.items()} for sev, seeds in sums.items()}


@register_claim("c2")
def claim_corruptions(res: StudyResults, ctx: ReportContext) -> Finding | str:
    """C2: mean corruption accuracy SL - CSL > 0 at every severity (t across seeds, paired by seed)."""
    if not any(r["metric"] == "corruption_accuracy" for r in res.rows):
        return "not measured: no corruption results (evaluate stage with corruptions)"
    if (reason := _references(res, ctx)) is not None:
        return reason
    sl, csl = _corruption_means(res, ctx.supervised), _corruption_means(res, ctx.contrastive)
    points = []
    for severity in sorted(sl.keys() & csl.keys()):
        seeds = sorted(sl[severity].keys() & csl[severity].keys())
        diffs = np.array([sl[severity][s] - csl[severity][s] for s in seeds])
        points.append(tested(f"severity {severity}", t_interval(diffs)))
    if not points:
        return f"no severity measured for both {ctx.supervised} and {ctx.contrastive}"
    return Finding(
        "C2",
        "the same under common corruptions: mean accuracy over corruptions "
        f"{ctx.supervised} - {ctx.contrastive} > 0 per severity (points [95% CI], t across seeds "
        "paired by seed; one seed gives no interval)",
        [Series("", points)],
    )


@register_claim("c3")
def claim_geometry(res: StudyResults, ctx: ReportContext) -> Finding | str:
    """C3: uniformity(SL) - uniformity(CSL) > 0 and inter/intra(SL) - inter/intra(CSL) > 0, both."""
    metrics = {"geometry/uniformity", "geometry/class_distance_ratio"}
    if not any(r["metric"] in metrics for r in res.rows):
        return "not measured: no geometry results (analyze stage)"
    if (reason := _references(res, ctx)) is not None:
        return reason
    sl, csl = ctx.supervised, ctx.contrastive
    points = [
        tested("uniformity", seed_paired_difference(res, sl, csl, "geometry/uniformity")),
        tested(
            "inter/intra", seed_paired_difference(res, sl, csl, "geometry/class_distance_ratio")
        ),
    ]
    return Finding(
        "C3",
        f"CSL features are more uniform with smaller class separation: uniformity({sl}) - "
        f"uniformity({csl}) > 0 (lower = more uniform) and inter/intra({sl}) - inter/intra({csl}) "
        "> 0, both (backbone features; [95% CI] t across seeds paired by seed)",
        [Series("", points, scale=1.0, digits=3)],
        combine=all_of,
    )


@register_claim("c4")
def claim_false_negative_removal(res: StudyResults, ctx: ReportContext) -> Finding | str:
    """C4: RA(M) - RA(CSL) > 0 for every false-negative-removal method M, at every budget with eps > 0."""
    methods = [
        m
        for m in res.methods
        if ctx.objectives.get(m) in FN_OBJECTIVES and m not in (ctx.supervised, ctx.contrastive)
    ]
    if not methods:
        return f"no method with objective {' or '.join(FN_OBJECTIVES)} in the study"
    found = _main_attack_gaps(res, ctx)
    if isinstance(found, str):
        return found
    attack, gaps = found
    nan = float("nan")
    series = []
    for m in methods:
        points = []
        for g in gaps:
            found = g.analysis.methods.get(m)
            estimate = found.difference if found else Estimate(nan, nan, nan, "none")
            closure = g.closure_text(m)
            closes = found is not None and found.closure is not None
            points.append(
                tested(
                    g.label,
                    estimate,
                    f"closes {closure} % of the gap" if closes else f"closure {closure}",
                )
            )
        series.append(Series(m, points))
    return Finding(
        "C4",
        f"false-negative removal raises CSL robustness under {attack.upper()}: RA(M) - "
        f"RA({ctx.contrastive}) > 0 (points [95% CI]) for M with objective "
        f"{' or '.join(FN_OBJECTIVES)}; gap closure quoted where the gap is positive",
        series,
    )


@register_claim("c5")
def claim_adversarial_removal(res: StudyResults, ctx: ReportContext) -> Finding | str:
    """C5: RA(with removal) - RA(without) > 0 for adversarial CSL, per protocol and attack."""
    pairs = method_pairs(ctx.configs)
    if not pairs:
        return "no adversarial method paired with its false-negative-removal counterpart"
    by_pair: dict[str, list[Point]] = {}
    for with_fn, without_fn, _, protocol, attack, _, value in pair_gains(res, pairs):
        point = tested(f"{protocol.upper()} {attack}", value)
        by_pair.setdefault(f"{with_fn} - {without_fn}", []).append(point)
    series = [Series(label, points) for label, points in sorted(by_pair.items())]
    if not series:
        return "no evaluation-protocol rows (the protocols stage) for the paired methods"
    return Finding(
        "C5",
        "false-negative removal raises the robustness of adversarial CSL: RA(with removal) - "
        "RA(without) > 0 (points [95% CI], paired by seed and test image) per protocol and attack",
        series,
    )


def findings_note(res: StudyResults, ctx: ReportContext) -> Note:
    """The findings block: one line per testable claim, then the claims not tested and why."""
    found, untested = assess_claims(res, ctx)
    lines = [f.line() for f in found]
    if untested:
        lines.append("Not tested by this study: " + "; ".join(untested) + ".")
    if not found:
        lines.insert(0, "No claim can be tested with these results.")
    return Note(lines, title="Findings", bullets=True)


@register_section("findings", order=0)
def findings_section(res: StudyResults, ctx: ReportContext) -> SectionOutput:
    """Findings first: the verdict on every claim the study can test."""
    note = findings_note(res, ctx)
    return SectionOutput(blocks=[note], summary=[note.text()])
