"""Uncertainty for reported numbers: t-intervals across seeds, paired bootstrap across test images.

Pure functions on numpy arrays; no model, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval (NaN bounds when it cannot be computed)."""

    value: float
    low: float
    high: float
    method: str  # "t" (across seeds), "bootstrap" (across images/seeds) or "none"

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
    arrays = {k: np.atleast_2d(np.asarray(v, dtype=bool)) for k, v in correct.items()}
    n = {a.shape[1] for a in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"models were evaluated on different numbers of images: {sorted(n)}")
    n_images = n.pop()
    point = statistic({k: float(a.mean()) for k, a in arrays.items()})
    rng = np.random.default_rng(seed)
    samples = []
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
        value = statistic(accs)
        if not math.isnan(value):
            samples.append(value)
    if not samples:
        return Estimate(point, float("nan"), float("nan"), "none")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Estimate(point, float(low), float(high), "bootstrap")


def gap_closed(ra_method: float, ra_csl: float, ra_sl: float) -> float:
    """Fraction of the robustness gap closed: (RA(M) - RA(CSL)) / (RA(SL) - RA(CSL)); NaN if no gap."""
    gap = ra_sl - ra_csl
    if abs(gap) < 1e-12:
        return float("nan")
    return (ra_method - ra_csl) / gap
