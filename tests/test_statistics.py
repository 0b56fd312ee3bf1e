"""Intervals, gap closure and the verdict rule on constructed correctness matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cslrobust.statistics import (
    INTERVAL_METHODS,
    Estimate,
    Verdict,
    gap_analysis,
    hierarchical_bootstrap,
    interpolate_trajectory,
    matched_gap,
    matched_gaps,
    paired_bootstrap,
    t_interval,
    verdict,
)


def _correct(n: int, k: int, seeds: int = 1, shift: int = 0) -> np.ndarray:
    """(seeds, n) bool: exactly k correct images per seed, seed s rolled by s * shift."""
    row = np.arange(n) < k
    return np.stack([np.roll(row, s * shift) for s in range(seeds)])


def test_t_interval_matches_closed_form() -> None:
    est = t_interval(np.array([0.4, 0.5, 0.6]))
    sem = 0.1 / math.sqrt(3)  # sample std 0.1; t_{0.975, 2} = 4.3027
    assert est.value == pytest.approx(0.5)
    assert est.high - est.value == pytest.approx(4.302652729911275 * sem)
    assert est.method == "t" and est.method in INTERVAL_METHODS


def test_negative_gap_gives_no_closure_but_a_difference() -> None:
    n = 500
    correct = {
        "sl": _correct(n, 150),  # 30 %
        "csl": _correct(n, 300),  # 60 %: the contrastive model is the more robust one
        "supcon": _correct(n, 225),  # 45 %
    }
    result = gap_analysis(correct, supervised="sl", contrastive="csl", n_resamples=400)
    assert result.gap.value == pytest.approx(-0.3) and result.gap.high < 0
    assert not result.positive
    assert result.nonpositive_gap_fraction == 1.0  # reported, not dropped
    supcon = result.methods["supcon"]
    assert supcon.closure is None and supcon.format_closure() == "n/a (no positive gap)"
    # The difference RA(M) - RA(CSL) is still given, with its paired interval.
    assert supcon.difference.value == pytest.approx(-0.15)
    assert supcon.difference.low < -0.15 < supcon.difference.high < 0


def test_gap_straddling_zero_gives_no_closure_and_reports_the_fraction() -> None:
    n = 100
    # Different images right (not nested), so the paired gap varies in sign across resamples.
    sl = np.roll(_correct(n, 52), 37, axis=1)
    correct = {"sl": sl, "csl": _correct(n, 50), "m": _correct(n, 51)}
    result = gap_analysis(correct, supervised="sl", contrastive="csl", n_resamples=400)
    assert result.gap.value == pytest.approx(0.02) and result.gap.low < 0 < result.gap.high
    assert not result.positive and result.methods["m"].closure is None
    assert 0.05 < result.nonpositive_gap_fraction < 0.95


def test_positive_gap_gives_closure_with_interval() -> None:
    n = 1000
    correct = {
        "sl": _correct(n, 800, seeds=2, shift=3),
        "csl": _correct(n, 400, seeds=3, shift=5),
        "fnr": _correct(n, 600),
    }
    result = gap_analysis(correct, supervised="sl", contrastive="csl", n_resamples=400)
    assert result.positive and result.gap.low > 0.3
    assert result.nonpositive_gap_fraction == 0.0
    fnr = result.methods["fnr"]
    assert fnr.closure is not None
    assert fnr.closure.value == pytest.approx(0.5)  # (0.6 - 0.4) / (0.8 - 0.4)
    assert fnr.closure.low < 0.5 < fnr.closure.high
    assert fnr.format_closure() == fnr.closure.format(digits=0)
    assert fnr.difference.value == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no entry"):
        gap_analysis({"sl": correct["sl"]}, supervised="sl", contrastive="csl")


def test_hierarchical_interval_is_wider_than_seed_only_with_few_images() -> None:
    """Three seeds that agree (seed-to-seed spread of one image) on only 20 images."""
    correct = _correct(20, 10, seeds=3)
    correct[1, 0] = False  # seeds 50 %, 45 %, 50 %
    seed_only = t_interval(correct.mean(axis=1))
    hier = hierarchical_bootstrap(correct, n_resamples=2000)
    assert hier.method == "hierarchical" and hier.value == pytest.approx(seed_only.value)
    assert hier.high - hier.low > 2 * (seed_only.high - seed_only.low)
    # The image part dominates: about the binomial interval of 20 images, +-1.96 * 0.11.
    assert 0.3 < hier.high - hier.low < 0.55


def test_hierarchical_with_one_seed_is_the_image_bootstrap() -> None:
    correct = _correct(50, 30)
    single = hierarchical_bootstrap(correct, n_resamples=300, seed=4)
    reference = paired_bootstrap({"x": correct}, lambda a: a["x"], n_resamples=300, seed=4)
    assert single == reference and single.method == "bootstrap"
    with pytest.raises(ValueError, match="no image"):
        hierarchical_bootstrap(np.zeros((2, 0), dtype=bool))


@pytest.mark.parametrize(
    ("estimate", "kwargs", "expected"),
    [
        (Estimate(0.1, 0.05, 0.15, "t"), {}, Verdict.HOLDS),
        (Estimate(-0.1, -0.15, -0.05, "t"), {}, Verdict.DOES_NOT_HOLD),
        (Estimate(0.1, -0.01, 0.2, "t"), {}, Verdict.INCONCLUSIVE),
        (Estimate(0.1, 0.0, 0.2, "t"), {}, Verdict.INCONCLUSIVE),  # touches the threshold
        (Estimate(0.1, float("nan"), float("nan"), "none"), {}, Verdict.INCONCLUSIVE),
        (Estimate(float("nan"), float("nan"), float("nan"), "none"), {}, Verdict.INCONCLUSIVE),
        (None, {}, Verdict.INCONCLUSIVE),  # e.g. closure n/a
        (Estimate(-0.1, -0.15, -0.05, "t"), {"direction": "less"}, Verdict.HOLDS),
        (Estimate(0.1, 0.05, 0.15, "t"), {"direction": "less"}, Verdict.DOES_NOT_HOLD),
        (Estimate(0.5, 0.3, 0.7, "bootstrap"), {"threshold": 0.2}, Verdict.HOLDS),
        (Estimate(0.5, 0.1, 0.7, "bootstrap"), {"threshold": 0.2}, Verdict.INCONCLUSIVE),
    ],
)
def test_verdict_rule(estimate: Estimate | None, kwargs: dict, expected: Verdict) -> None:
    assert verdict(estimate, **kwargs) is expected


def test_verdict_on_gap_analysis_results() -> None:
    n = 400
    holds = gap_analysis(
        {"sl": _correct(n, 300), "csl": _correct(n, 200)}, supervised="sl", contrastive="csl"
    )
    reversed_ = gap_analysis(
        {"sl": _correct(n, 200), "csl": _correct(n, 300)}, supervised="sl", contrastive="csl"
    )
    assert verdict(holds.gap) is Verdict.HOLDS
    assert verdict(reversed_.gap) is Verdict.DOES_NOT_HOLD
    assert str(Verdict.DOES_NOT_HOLD) == "does not hold"
    with pytest.raises(ValueError, match="direction"):
        verdict(holds.gap, direction="up")  # type: ignore[arg-type]


def test_interpolation_sorts_by_clean_accuracy_merges_ties_and_never_extrapolates() -> None:
    # Epoch order is not clean-accuracy order (the clean accuracy dips at the third checkpoint).
    clean = np.array([0.2, 0.6, 0.4, 0.6])
    robust = np.array([0.1, 0.3, 0.2, 0.5])  # two checkpoints at clean 0.6: merged to 0.4
    values = interpolate_trajectory(clean, robust, np.array([0.2, 0.3, 0.5, 0.6, 0.1, 0.7]))
    assert values[:4] == pytest.approx([0.1, 0.15, 0.3, 0.4])
    assert np.isnan(values[4]) and np.isnan(values[5])


def test_matched_gap_of_parallel_lines_is_their_offset() -> None:
    sl = np.array([[0.3, 0.5, 0.7], [0.2, 0.3, 0.4]])  # RA = 0.5 c + 0.05
    method = np.array([[0.2, 0.4, 0.6], [0.05, 0.15, 0.25]])  # RA = 0.5 c - 0.05: 10 points below
    assert matched_gap(sl, method) == pytest.approx(0.1)
    assert matched_gap(method, sl) == pytest.approx(-0.1)
    # Non-monotone along epochs (the method's last checkpoint falls back): the same points, same gap.
    shuffled = method[:, [0, 2, 1]]
    assert matched_gap(sl, shuffled) == pytest.approx(0.1)


def test_matched_gap_without_shared_clean_accuracy_is_nan() -> None:
    sl = np.array([[0.6, 0.8], [0.3, 0.4]])
    method = np.array([[0.2, 0.5], [0.1, 0.2]])
    assert math.isnan(matched_gap(sl, method))


def _trajectory_bits(n: int, clean: list[int], robust: list[int], seeds: int = 1) -> np.ndarray:
    """(seeds, 2, E, n) bool: at checkpoint e, the first clean[e] / robust[e] images correct."""
    rows = [[np.arange(n) < k for k in counts] for counts in (clean, robust)]
    return np.broadcast_to(np.array(rows), (seeds, 2, len(clean), n)).copy()


def test_matched_gaps_interval_covers_the_offset_and_reports_no_overlap() -> None:
    n = 400
    correct = {
        "sl": _trajectory_bits(n, [120, 200, 280], [80, 120, 160], seeds=2),
        "m": _trajectory_bits(n, [80, 160, 240], [20, 60, 100], seeds=2),  # 10 points below
        "far": _trajectory_bits(n, [20, 60], [10, 20], seeds=2),  # clean 5-15 %: no overlap
    }
    gaps = matched_gaps(correct, reference="sl", n_resamples=300)
    found = gaps["m"]
    assert found.gap.value == pytest.approx(0.1)
    assert found.gap.method == "hierarchical" and found.gap.low < 0.1 < found.gap.high
    assert found.shared == pytest.approx((0.3, 0.6))
    assert found.method_range == pytest.approx((0.2, 0.6))
    assert found.no_overlap_fraction == 0.0
    far = gaps["far"]
    assert far.shared is None and math.isnan(far.gap.value) and not far.gap.has_interval
    assert far.method_range == pytest.approx((0.05, 0.15)) and far.no_overlap_fraction == 1.0
    assert far.gap.method == "none"
