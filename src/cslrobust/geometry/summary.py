"""Summary statistics of per-sample values (margins, sensitivities) as plain floats."""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["QUANTILES", "summarize_values"]

QUANTILES: tuple[float, ...] = (0.10, 0.25, 0.75, 0.90)
"""Quantiles reported besides the median, as keys ``q10``, ``q25``, ``q75``, ``q90``."""


def summarize_values(values: Tensor) -> dict[str, float]:
    """Mean, median and the :data:`QUANTILES` of a 1-D tensor; NaN entries are left out.

    Quantiles (and the median) interpolate linearly between order statistics, as ``numpy.quantile``
    does by default.

    Returns:
        ``{"mean", "median", "q10", "q25", "q75", "q90"}`` as Python floats.

    Raises:
        ValueError: If ``values`` is not 1-D or has no non-NaN entry.
    """
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(values.shape)}")
    array = values.detach().cpu().double().numpy()
    kept = array[~np.isnan(array)]
    if kept.size == 0:
        raise ValueError("cannot summarise: no (non-NaN) values")
    quantiles = np.quantile(kept, (0.5, *QUANTILES))
    summary = {"mean": float(kept.mean()), "median": float(quantiles[0])}
    for q, value in zip(QUANTILES, quantiles[1:], strict=True):
        summary[f"q{round(100 * q)}"] = float(value)
    return summary
