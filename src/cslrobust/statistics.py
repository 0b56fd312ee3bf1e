"""Uncertainty for reported numbers, and the rule that turns an interval into a verdict.

Pure functions on numpy arrays; no model, no I/O. Correctness matrices are bool ``(S, N)``: seed by
test image, every seed of every model evaluated on the same N images.

Intervals (:data:`INTERVAL_METHODS` names each ``Estimate.method`` for table captions):

- ``t``: Student t across seeds (independent values, e.g. one clean accuracy per seed).
- ``bootstrap``: percentile bootstrap over test images (one seed), paired across models.
- ``hierarchical``: percentile bootstrap over seeds *and* images (:func:`hierarchical_bootstrap`),
  for robust accuracy with >= 2 seeds. Each resample draws S seeds with replacement and N images with
  replacement; the image draw is shared by all seeds (and models), because every seed was evaluated on
  the same images, so the difficulty of the drawn images moves every seed together. A t-interval across
  seeds holds the image subset fixed and leaves that variation out.

Gap closure (:func:`gap_analysis`): closure (RA(M) - RA(CSL)) / (RA(SL) - RA(CSL)) is reported only
where the interval of the gap RA(SL) - RA(CSL) lies above zero; elsewhere it is None ("n/a (no positive
gap)"). RA(M) - RA(CSL) is always reported with its paired interval, and so is the fraction of
resamples with a non-positive gap (those resamples are left out of the closure interval).

Verdicts (:func:`verdict`): a claim "quantity > threshold" (or "<") holds when the whole interval lies
strictly on the claimed side of the threshold, does not hold when the whole interval lies strictly on
the other side, and is inconclusive otherwise (the interval contains the threshold, or there is no
interval).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import numpy as np
from scipy import stats

INTERVAL_METHODS: dict[str, str] = {
    "t": "Student t across seeds",
    "bootstrap": "percentile bootstrap over test images",
    "hierarchical": "percentile bootstrap over seeds and test images (images shared by seeds)",
    "none": "no interval",
}
"""Caption text for each ``Estimate.method``."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval (NaN bounds when it cannot be computed)."""

    value: float
    low: float
    high: float
    method: str  # a key of INTERVAL_METHODS

    @property
    def has_interval(self) -> bool:
        """Whether both bounds are defined."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``value [low, high]`` scaled (percent by default)."""
        if math.isnan(self.value):
            return "n/a"
        if math.isnan(self.low):
            return f"{self.value * scale:.{digits}f}"
        return f"{self.value * scale:.{digits}f} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


def t_interval(values: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Mean and Student-t interval of independent values (e.g. one per seed).

    With fewer than two values the interval is undefined (NaN bounds).
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), "none")
    mean = float(values.mean())
    if values.size < 2:
        return Estimate(mean, float("nan"), float("nan"), "none")
    sem = float(values.std(ddof=1) / math.sqrt(values.size))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=values.size - 1)) * sem
    return Estimate(mean, mean - half, mean + half, "t")


def paired_bootstrap(
    correct: Mapping[str, np.ndarray],
    statistic: Callable[[Mapping[str, float]], float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap of a statistic of several models' accuracies on the same test images.

    Args:
        correct: Per model, a bool array (S, N): correctness of each of N images (the same images for
            every model) for each of S seeds. Each resample draws N images with replacement (the same
            draw for every model: the comparison is paired) and, per model, S seeds with replacement.
        statistic: Maps ``{model: accuracy}`` to the reported number (e.g. a gap or a gap closure).
        n_resamples: Bootstrap resamples.
        confidence: Two-sided coverage.
        seed: Seed of the resampling.

    Returns:
        The statistic on the full data with its percentile interval (NaN resamples are dropped).
    """
    arrays = _matrices(correct)
    point = statistic({k: float(a.mean()) for k, a in arrays.items()})
    samples = []
    for accs in _resampled_accuracies(arrays, n_resamples, seed):
        value = statistic(accs)
        if not math.isnan(value):
            samples.append(value)
    if not samples:
        return Estimate(point, float("nan"), float("nan"), "none")
    low, high = _percentiles(samples, confidence)
    return Estimate(point, low, high, "bootstrap")


def _matrices(correct: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Bool ``(S, N)`` matrices with one N for all models."""
    arrays = {k: np.atleast_2d(np.asarray(v, dtype=bool)) for k, v in correct.items()}
    n = {a.shape[1] for a in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"models were evaluated on different numbers of images: {sorted(n)}")
    return arrays


def _resampled_accuracies(
    arrays: Mapping[str, np.ndarray], n_resamples: int, seed: int
) -> Iterator[dict[str, float]]:
    """Per resample, every model's accuracy: one image draw shared by all, seeds drawn per model."""
    n_images = next(iter(arrays.values())).shape[1]
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        idx = rng.integers(0, n_images, n_images)
        accs = {}
        for key, a in arrays.items():
            seeds = (
                rng.integers(0, a.shape[0], a.shape[0])
                if a.shape[0] > 1
                else np.zeros(1, dtype=int)
            )
            accs[key] = float(a[np.ix_(seeds, idx)].mean())
        yield accs


def _percentiles(samples: list[float] | np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def hierarchical_bootstrap(
    correct: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Accuracy over seeds and test images with a bootstrap interval that includes both.

    Each resample draws S seeds and N images with replacement (the image draw shared by the seeds,
    which were all evaluated on the same images) and takes the mean correctness; see the module
    docstring. With one seed this is the image bootstrap (method ``"bootstrap"``).

    Args:
        correct: Bool ``(S, N)`` correctness, seed by image (``(N,)`` for one seed).
        n_resamples: Bootstrap resamples.
        confidence: Two-sided coverage.
        seed: Seed of the resampling.

    Returns:
        Mean accuracy with its percentile interval, method ``"hierarchical"`` (S >= 2).

    Raises:
        ValueError: If there is no image.
    """
    matrix = np.atleast_2d(np.asarray(correct, dtype=bool))
    if matrix.shape[1] == 0:
        raise ValueError("correct has no image (N = 0)")
    samples = [accs["m"] for accs in _resampled_accuracies({"m": matrix}, n_resamples, seed)]
    low, high = _percentiles(samples, confidence)
    method = "hierarchical" if matrix.shape[0] >= 2 else "bootstrap"
    return Estimate(float(matrix.mean()), low, high, method)


def gap_closed(ra_method: float, ra_csl: float, ra_sl: float) -> float:
    """Fraction of the robustness gap closed: (RA(M) - RA(CSL)) / (RA(SL) - RA(CSL)); NaN if no gap."""
    gap = ra_sl - ra_csl
    if abs(gap) < 1e-12:
        return float("nan")
    return (ra_method - ra_csl) / gap


@dataclass(frozen=True)
class MethodGap:
    """How a method M compares with the contrastive baseline, from one set of paired resamples.

    Attributes:
        difference: RA(M) - RA(CSL), meaningful whatever the sign of the gap.
        closure: (RA(M) - RA(CSL)) / (RA(SL) - RA(CSL)) with its interval over the resamples with a
            positive gap; None when the gap's interval does not lie above zero.
    """

    difference: Estimate
    closure: Estimate | None

    def format_closure(self, scale: float = 100.0, digits: int = 0) -> str:
        """The closure as ``value [low, high]``, or ``"n/a (no positive gap)"``."""
        if self.closure is None:
            return "n/a (no positive gap)"
        return self.closure.format(scale=scale, digits=digits)


@dataclass(frozen=True)
class GapAnalysis:
    """The robustness gap SL - CSL and every other method's difference and gap closure.

    Attributes:
        gap: RA(SL) - RA(CSL) with its paired interval.
        positive: Whether the gap's interval lies above zero (closure is defined only then).
        nonpositive_gap_fraction: Fraction of resamples in which the gap is <= 0; those resamples
            are left out of the closure intervals, so report it beside them.
        methods: Per other method, its :class:`MethodGap`.
    """

    gap: Estimate
    positive: bool
    nonpositive_gap_fraction: float
    methods: dict[str, MethodGap]


def gap_analysis(
    correct: Mapping[str, np.ndarray],
    *,
    supervised: str,
    contrastive: str,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> GapAnalysis:
    """Gap, per-method differences and gap closure from one paired bootstrap.

    One set of resamples serves every number (images shared by all models, seeds drawn per model),
    so the gap interval and the closures of all methods are consistent with each other.

    Args:
        correct: Per model, bool ``(S, N)`` correctness on the same N images; must contain
            ``supervised`` and ``contrastive``; every other key is a method M.
        supervised: Key of the supervised model (SL).
        contrastive: Key of the contrastive baseline (CSL).
        n_resamples: Bootstrap resamples.
        confidence: Two-sided coverage of every interval.
        seed: Seed of the resampling.

    Raises:
        ValueError: If ``supervised`` or ``contrastive`` is missing, or N differs between models.
    """
    missing = [k for k in (supervised, contrastive) if k not in correct]
    if missing:
        raise ValueError(f"correct has no entry for {missing}; got {sorted(correct)}")
    arrays = _matrices(correct)
    others = [k for k in arrays if k not in (supervised, contrastive)]
    point = {k: float(a.mean()) for k, a in arrays.items()}
    resamples = list(_resampled_accuracies(arrays, n_resamples, seed))
    gaps = np.array([r[supervised] - r[contrastive] for r in resamples])
    low, high = _percentiles(gaps, confidence)
    point_gap = point[supervised] - point[contrastive]
    gap = Estimate(point_gap, low, high, "bootstrap")
    positive = low > 0 and point_gap > 0
    kept = gaps > 0
    methods = {}
    for m in others:
        diffs = np.array([r[m] - r[contrastive] for r in resamples])
        point_diff = point[m] - point[contrastive]
        difference = Estimate(point_diff, *_percentiles(diffs, confidence), "bootstrap")
        closure = None
        if positive:
            closure = Estimate(
                point_diff / point_gap,
                *_percentiles(diffs[kept] / gaps[kept], confidence),
                "bootstrap",
            )
        methods[m] = MethodGap(difference, closure)
    return GapAnalysis(gap, positive, float(1.0 - kept.mean()), methods)


class Verdict(StrEnum):
    """Outcome of testing a claim against an estimate with its interval."""

    HOLDS = "holds"
    DOES_NOT_HOLD = "does not hold"
    INCONCLUSIVE = "inconclusive"


def verdict(
    estimate: Estimate | None,
    *,
    threshold: float = 0.0,
    direction: Literal["greater", "less"] = "greater",
) -> Verdict:
    """Decide a claim "quantity > threshold" (``direction="greater"``) or "< threshold".

    Rule: HOLDS when the whole interval lies strictly on the claimed side of ``threshold``;
    DOES_NOT_HOLD when it lies strictly on the other side; INCONCLUSIVE when it contains the
    threshold, or when there is no estimate or no interval (a point estimate alone decides nothing).
    Express a claim so that its quantity has an interval, e.g. C1 "CSL less robust than SL" as the
    gap RA(SL) - RA(CSL) > 0.

    Raises:
        ValueError: On an unknown ``direction``.
    """
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    if estimate is None or math.isnan(estimate.value) or not estimate.has_interval:
        return Verdict.INCONCLUSIVE
    above, below = estimate.low > threshold, estimate.high < threshold
    if direction == "less":
        above, below = below, above
    if above:
        return Verdict.HOLDS
    if below:
        return Verdict.DOES_NOT_HOLD
    return Verdict.INCONCLUSIVE
