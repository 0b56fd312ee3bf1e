"""Findings first: each claim's decision rule on constructed results (holds, does not hold,
inconclusive, mixed across budgets), and claims the study cannot test."""

from pathlib import Path

import pytest

from cslrobust.study.report import CLAIMS, Finding, ReportContext, StudyResults
from cslrobust.study.report.findings import MIXED, findings_note

N = 200
CTX = ReportContext(
    Path("."), "supervised", "simclr", objectives={"fnr": "simclr_fnr", "supcon": "supcon"}
)


def _attack_results(make_robust_row, per_eps: dict[float, dict[str, int]]) -> StudyResults:
    rows = [
        make_robust_row(m, 0, n, N, eps=eps)
        for eps, counts in per_eps.items()
        for m, n in counts.items()
    ]
    methods = list(dict.fromkeys(m for counts in per_eps.values() for m in counts))
    return StudyResults(rows, methods)


def _claim(name: str, res: StudyResults) -> Finding:
    finding = CLAIMS.get(name)(res, CTX)
    assert isinstance(finding, Finding), finding
    return finding


@pytest.mark.parametrize(
    ("sl", "csl", "expected"),
    [
        (140, 60, "holds"),  # gap +40 pts, interval far above 0
        (60, 140, "does not hold"),  # gap -40 pts, interval far below 0
        (101, 100, "inconclusive"),  # gap +0.5 pts, interval contains 0
    ],
)
def test_c1_verdict_follows_the_gap_interval(make_robust_row, sl, csl, expected):
    res = _attack_results(
        make_robust_row,
        {0.0: {"supervised": 150, "simclr": 150}, 2 / 255: {"supervised": sl, "simclr": csl}},
    )
    finding = _claim("c1", res)
    assert finding.verdict == expected
    (point,) = finding.series[0].points  # eps = 0 is not a robustness budget
    assert point.where == "2/255" and point.verdict == expected
    assert f"2/255: {point.estimate.format()} -> {expected}" in finding.line()
    assert point.estimate.value == pytest.approx((sl - csl) / N)


def test_c1_mixed_names_the_budget_where_the_verdict_changes(make_robust_row):
    res = _attack_results(
        make_robust_row,
        {
            1 / 255: {"supervised": 140, "simclr": 60},
            2 / 255: {"supervised": 120, "simclr": 60},
            4 / 255: {"supervised": 60, "simclr": 140},
        },
    )
    finding = _claim("c1", res)
    assert [p.verdict for p in finding.series[0].points] == ["holds", "holds", "does not hold"]
    assert finding.verdict == MIXED
    assert finding.line().endswith("(verdict changes at 4/255)")


def test_c4_tests_false_negative_methods_and_quotes_closure_where_defined(make_robust_row):
    res = _attack_results(
        make_robust_row,
        {
            1 / 255: {"supervised": 140, "simclr": 60, "fnr": 100, "supcon": 10},
            2 / 255: {"supervised": 60, "simclr": 140, "fnr": 180, "supcon": 10},
        },
    )
    finding = _claim("c4", res)
    assert [s.label for s in finding.series] == ["fnr"]  # supcon is not a false-negative method
    first, second = finding.series[0].points
    assert first.verdict == second.verdict == "holds" and finding.verdict == "holds"
    assert first.estimate.value == pytest.approx(0.2) and second.estimate.value == pytest.approx(
        0.2
    )
    assert first.extra.startswith("closes 50 [") and first.extra.endswith("% of the gap")
    assert second.extra == "closure n/a (no positive gap)"


def test_c4_does_not_hold_when_removal_lowers_robustness(make_robust_row):
    res = _attack_results(make_robust_row, {2 / 255: {"supervised": 140, "simclr": 100, "fnr": 40}})
    assert _claim("c4", res).verdict == "does not hold"


def _geometry(per_method: dict[str, tuple[list[float], list[float]]]) -> StudyResults:
    rows = [
        {"method": m, "seed": seed, "metric": f"geometry/{key}", "value": value}
        for m, (uniformity, ratio) in per_method.items()
        for key, values in (("uniformity", uniformity), ("class_distance_ratio", ratio))
        for seed, value in enumerate(values)
    ]
    return StudyResults(rows, list(per_method))


@pytest.mark.parametrize(
    ("csl", "expected"),
    [
        (([-3.0, -3.2, -3.1], [1.1, 1.2, 1.1]), "holds"),  # more uniform, smaller separation
        (([-3.0, -3.2, -3.1], [2.5, 2.6, 2.7]), "does not hold"),  # larger separation
        (([-3.0], [1.1]), "inconclusive"),  # one seed: no interval
    ],
)
def test_c3_needs_both_uniformity_and_smaller_separation(csl, expected):
    res = _geometry({"supervised": ([-1.0, -1.1, -1.2], [2.0, 2.1, 2.0]), "simclr": csl})
    finding = _claim("c3", res)
    assert finding.verdict == expected
    uniformity = finding.series[0].points[0]
    assert uniformity.where == "uniformity"
    # Paired by seed: differences over the seeds both methods have.
    n = len(csl[0])
    expected_diff = sum(s - c for s, c in zip([-1.0, -1.1, -1.2][:n], csl[0], strict=True)) / n
    assert uniformity.estimate.value == pytest.approx(expected_diff)


def test_c2_per_severity_from_corruption_rows():
    rows = [
        {
            "method": m,
            "seed": seed,
            "metric": "corruption_accuracy",
            "corruption": corruption,
            "severity": severity,
            "value": base - 0.1 * severity + 0.01 * seed,
        }
        for m, base in (("supervised", 0.8), ("simclr", 0.6))
        for seed in (0, 1, 2)
        for corruption in ("fog", "snow")
        for severity in (1, 2)
    ]
    finding = _claim("c2", StudyResults(rows, ["supervised", "simclr"]))
    assert [p.where for p in finding.series[0].points] == ["severity 1", "severity 2"]
    assert all(p.estimate.value == pytest.approx(0.2) for p in finding.series[0].points)
    assert finding.verdict == "holds"


def test_untestable_claims_are_named_with_the_reason(make_robust_row):
    res = _attack_results(make_robust_row, {2 / 255: {"supervised": 140, "simclr": 60}})
    for name in ("c2", "c3", "c4"):
        assert isinstance(CLAIMS.get(name)(res, CTX), str)
    note = findings_note(res, CTX)
    assert note.title == "Findings" and len(note.lines) == 2
    assert note.lines[0].startswith("**C1** ") and "**holds**" in note.lines[0]
    assert note.lines[1].startswith("Not tested by this study: C2 (not measured")
    assert "C4 (no method with objective simclr_fnr in the study)" in note.lines[1]
