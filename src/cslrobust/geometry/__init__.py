"""Representation geometry: pure functions on ``(N, D)`` feature tensors (and labels).

Importing this package registers the scalar metrics in :data:`GEOMETRY_METRICS` (``alignment``,
``uniformity``, ``class_distance``, ``centroid_margin``, ``logit_margin``, ``effective_rank``);
:func:`compute_geometry` runs them all. Features are L2-normalised inside every metric except
the raw (scale-dependent) sensitivities, and all pairwise quantities are computed in chunks (no ``N x N``
matrix). Sensitivity measures, which need features of perturbed inputs, have their own registry
(:data:`SENSITIVITY_MEASURES`, run by :func:`sensitivity_summaries`).
Plots (:mod:`cslrobust.geometry.plots`) and t-SNE import matplotlib, scipy and scikit-learn lazily.
"""

from cslrobust.geometry.alignment_uniformity import alignment, uniformity
from cslrobust.geometry.class_distances import (
    ClassDistances,
    ClassSums,
    class_distance_matrix,
    class_distances,
    class_sums,
)
from cslrobust.geometry.class_margins import centroid_margins, logit_margins, summarize_margins
from cslrobust.geometry.embedding import Embedding2D, tsne_2d
from cslrobust.geometry.inputs import DEFAULT_CHUNK_SIZE
from cslrobust.geometry.plots import (
    plot_distance_matrix,
    plot_embedding,
    plot_metric_vs_robustness,
    spearman,
)
from cslrobust.geometry.registry import (
    GEOMETRY_METRICS,
    GeometryInputs,
    GeometryMetric,
    compute_geometry,
    register_metric,
)
from cslrobust.geometry.sensitivity import (
    SENSITIVITY_MEASURES,
    SensitivityInputs,
    SensitivityMeasure,
    feature_sensitivity,
    normalized_feature_sensitivity,
    perturbation_norms,
    random_like_norm,
    register_sensitivity,
    sensitivity_ratio,
    sensitivity_summaries,
    summarize_sensitivity,
)
from cslrobust.geometry.spectrum import covariance_spectrum, effective_rank
from cslrobust.geometry.summary import summarize_values

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "GEOMETRY_METRICS",
    "SENSITIVITY_MEASURES",
    "ClassDistances",
    "ClassSums",
    "Embedding2D",
    "GeometryInputs",
    "GeometryMetric",
    "SensitivityInputs",
    "SensitivityMeasure",
    "alignment",
    "centroid_margins",
    "class_distance_matrix",
    "class_distances",
    "class_sums",
    "compute_geometry",
    "covariance_spectrum",
    "effective_rank",
    "feature_sensitivity",
    "logit_margins",
    "normalized_feature_sensitivity",
    "perturbation_norms",
    "plot_distance_matrix",
    "plot_embedding",
    "plot_metric_vs_robustness",
    "random_like_norm",
    "register_metric",
    "register_sensitivity",
    "sensitivity_ratio",
    "sensitivity_summaries",
    "spearman",
    "summarize_margins",
    "summarize_sensitivity",
    "summarize_values",
    "tsne_2d",
    "uniformity",
]
