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

Matched clean accuracy (:func:`matched_gaps`): a training trajectory (clean and robust accuracy at each
kept checkpoint) is read as robust accuracy as a function of clean accuracy, linear between checkpoints
sorted by clean accuracy (:func:`interpolate_trajectory`); two methods are compared by the mean of
RA(reference) - RA(method) over the clean-accuracy range both trajectories cover (:func:`matched_gap`),
never extrapolated; without a shared range the gap is NaN (reported "n/a").

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
    """Bool ``(S, ..., N)`` arrays (at least ``(S, N)``) with one N for all models."""
    arrays = {k: np.atleast_2d(np.asarray(v, dtype=bool)) for k, v in correct.items()}
    n = {a.shape[-1] for a in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"models were evaluated on different numbers of images: {sorted(n)}")
    return arrays


def _resampled_means(
    arrays: Mapping[str, np.ndarray], n_resamples: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """Per resample, every model's mean over seeds and images (image draw shared, seeds per model).

    Each array is ``(S, ..., N)``; the mean keeps the middle axes (a 0-d array for ``(S, N)``), so a
    seed's whole row (e.g. its trajectory over checkpoints) is resampled as one unit.
    """
    n_images = next(iter(arrays.values())).shape[-1]
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        idx = rng.integers(0, n_images, n_images)
        means = {}
        for key, a in arrays.items():
            seeds = (
                rng.integers(0, a.shape[0], a.shape[0])
                if a.shape[0] > 1
                else np.zeros(1, dtype=int)
            )
            means[key] = a[seeds][..., idx].mean(axis=(0, -1))
        yield means


def _resampled_accuracies(
    arrays: Mapping[str, np.ndarray], n_resamples: int, seed: int
) -> Iterator[dict[str, float]]:
    """Per resample, every model's accuracy: one image draw shared by all, seeds drawn per model."""
    for means in _resampled_means(arrays, n_resamples, seed):
        yield {key: float(value) for key, value in means.items()}


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


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Accuracy of ``a`` minus accuracy of ``b``, paired by seed and image, with a bootstrap interval.

    ``a[s]`` and ``b[s]`` are two models trained with the same seed ``s`` and evaluated on the same
    N images (e.g. a method with and without false-negative removal). Each resample draws S seed
    indices (one draw shared by both models: the pair stays together) and N images (shared by
    every seed and both models), the hierarchical bootstrap of :func:`hierarchical_bootstrap` on
    the pair.

    Args:
        a: Bool ``(S, N)`` correctness (``(N,)`` for one seed).
        b: Bool ``(S, N)``, the same seeds in the same order.
        n_resamples: Bootstrap resamples.
        confidence: Two-sided coverage.
        seed: Seed of the resampling.

    Returns:
        The mean difference with its percentile interval, method ``"hierarchical"`` (S >= 2) or
        ``"bootstrap"`` (one seed).

    Raises:
        ValueError: If the shapes differ or there is no image.
    """
    a2 = np.atleast_2d(np.asarray(a, dtype=bool))
    b2 = np.atleast_2d(np.asarray(b, dtype=bool))
    if a2.shape != b2.shape or a2.shape[1] == 0:
        raise ValueError(
            f"expected two (S, N) arrays of one shape with N > 0, got {a2.shape}, {b2.shape}"
        )
    pair = np.stack([a2, b2], axis=1)  # (S, 2, N): a seed's two rows are resampled together
    samples = [
        float(m[0] - m[1])
        for m in (d["pair"] for d in _resampled_means({"pair": pair}, n_resamples, seed))
    ]
    low, high = _percentiles(samples, confidence)
    method = "hierarchical" if a2.shape[0] >= 2 else "bootstrap"
    return Estimate(float(a2.mean() - b2.mean()), low, high, method)


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


MATCHED_GRID = 101
"""Evenly spaced clean accuracies over the shared range at which :func:`matched_gap` averages."""


def interpolate_trajectory(clean: np.ndarray, robust: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Robust accuracy at clean accuracies ``at``, linear along a trajectory sorted by clean accuracy.

    The checkpoints are ordered by clean accuracy, not by epoch, so a trajectory whose clean accuracy
    falls and rises again is read as the set of its points; checkpoints with equal clean accuracy are
    merged into one point with their mean robust accuracy. Nothing is extrapolated.

    Args:
        clean: Clean accuracy per checkpoint, shape ``(E,)``, E >= 1.
        robust: Robust accuracy per checkpoint, shape ``(E,)``.
        at: Clean accuracies to read the trajectory at, any shape.

    Returns:
        Robust accuracy at each of ``at`` (same shape); NaN outside [min, max] of ``clean``.
    """
    xs, position = np.unique(np.asarray(clean, dtype=float), return_inverse=True)
    ys = np.bincount(position, weights=np.asarray(robust, dtype=float)) / np.bincount(position)
    at = np.asarray(at, dtype=float)
    values = np.interp(at, xs, ys)
    return np.where((at < xs[0]) | (at > xs[-1]), np.nan, values)


def shared_range(clean_a: np.ndarray, clean_b: np.ndarray) -> tuple[float, float] | None:
    """The clean-accuracy interval both trajectories cover, or None when they do not overlap.

    Args:
        clean_a: Clean accuracy per checkpoint of one trajectory.
        clean_b: The same for the other.

    Returns:
        ``(low, high)`` with ``low <= high`` (a single shared point gives ``low == high``), or None.
    """
    low = max(float(np.min(clean_a)), float(np.min(clean_b)))
    high = min(float(np.max(clean_a)), float(np.max(clean_b)))
    return (low, high) if low <= high else None


def matched_gap(reference: np.ndarray, method: np.ndarray, n_grid: int = MATCHED_GRID) -> float:
    """Mean of RA(reference) - RA(method) at matched clean accuracy over their shared range.

    Both trajectories are read with :func:`interpolate_trajectory` at ``n_grid`` evenly spaced clean
    accuracies spanning :func:`shared_range`; the result is the mean difference. Two straight lines
    with a constant vertical offset give exactly that offset.

    Args:
        reference: ``(2, E)``: clean accuracy (row 0) and robust accuracy (row 1) per checkpoint.
        method: ``(2, E')``, the same for the method compared with the reference.
        n_grid: Points of the grid.

    Returns:
        The mean gap (fraction of 1), NaN when the clean-accuracy ranges do not overlap.
    """
    span = shared_range(reference[0], method[0])
    if span is None:
        return float("nan")
    grid = np.linspace(span[0], span[1], n_grid)
    ra_reference, ra_method = (
        interpolate_trajectory(t[0], t[1], grid) for t in (reference, method)
    )
    return float(np.mean(ra_reference - ra_method))


@dataclass(frozen=True)
class MatchedGap:
    """RA(reference) - RA(method) at matched clean accuracy, from :func:`matched_gaps`.

    Attributes:
        gap: Mean gap over the shared range of the mean trajectories, with its percentile interval over
            the resamples that overlap; NaN value without a shared range.
        shared: The shared clean-accuracy range of the mean trajectories, None without overlap.
        method_range: ``(min, max)`` clean accuracy of the method's mean trajectory.
        reference_range: The same for the reference.
        no_overlap_fraction: Share of resamples whose trajectories share no clean accuracy (left out of
            the interval).
    """

    gap: Estimate
    shared: tuple[float, float] | None
    method_range: tuple[float, float]
    reference_range: tuple[float, float]
    no_overlap_fraction: float


def _clean_range(trajectory: np.ndarray) -> tuple[float, float]:
    return float(trajectory[0].min()), float(trajectory[0].max())


def matched_gaps(
    correct: Mapping[str, np.ndarray],
    *,
    reference: str,
    n_grid: int = MATCHED_GRID,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, MatchedGap]:
    """Every method against ``reference`` at matched clean accuracy, with hierarchical intervals.

    A method's trajectory is the mean over its seeds of clean and robust accuracy at each checkpoint
    (:func:`matched_gap` on these means gives the point estimate). Each resample draws the images once
    for every method, seed and checkpoint, and per method its seeds with replacement, each seed's
    whole trajectory as one unit (the hierarchical bootstrap of :func:`hierarchical_bootstrap`);
    clean and robust accuracies are recomputed from the drawn images before interpolating.

    Args:
        correct: Per method, bool ``(S, 2, E, N)``: per seed, clean (0) and robust (1) correctness of
            each of the N attacked images (the same images for every method) at each of E checkpoints;
            must contain ``reference``.
        reference: Key of the reference (the supervised model).
        n_grid: Grid points of :func:`matched_gap`.
        n_resamples: Bootstrap resamples.
        confidence: Two-sided coverage.
        seed: Seed of the resampling.

    Returns:
        Per method other than ``reference``, its :class:`MatchedGap`. The interval method is
        ``"hierarchical"`` when some method has >= 2 seeds, else ``"bootstrap"`` (images only).

    Raises:
        ValueError: If ``reference`` is missing or N differs between methods.
    """
    if reference not in correct:
        raise ValueError(f"correct has no entry for {reference!r}; got {sorted(correct)}")
    arrays = _matrices(correct)
    means = {k: a.mean(axis=(0, -1)) for k, a in arrays.items()}
    resamples = list(_resampled_means(arrays, n_resamples, seed))
    method = "hierarchical" if max(a.shape[0] for a in arrays.values()) >= 2 else "bootstrap"
    out = {}
    for key in (k for k in arrays if k != reference):
        point = matched_gap(means[reference], means[key], n_grid)
        samples = np.array([matched_gap(r[reference], r[key], n_grid) for r in resamples])
        overlapping = samples[~np.isnan(samples)]
        if overlapping.size and not math.isnan(point):
            gap = Estimate(point, *_percentiles(overlapping, confidence), method)
        else:
            gap = Estimate(point, float("nan"), float("nan"), "none")
        out[key] = MatchedGap(
            gap=gap,
            shared=shared_range(means[reference][0], means[key][0]),
            method_range=_clean_range(means[key]),
            reference_range=_clean_range(means[reference]),
            no_overlap_fraction=float(np.isnan(samples).mean()),
        )
    return out


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
