"""Representation geometry: pure functions on ``(N, D)`` feature tensors (and labels).

Importing this package registers the scalar metrics in :data:`GEOMETRY_METRICS` (``alignment``,
``uniformity``, ``class_distance``, ``centroid_margin``, ``logit_margin``, ``effective_rank``);
:func:`compute_geometry` runs them all. Features are L2-normalised inside every metric except
:func:`feature_sensitivity`, and all pairwise quantities are computed in chunks (no ``N x N`` matrix).
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
    feature_sensitivity,
    perturbation_norms,
    random_like_norm,
    summarize_sensitivity,
)
from cslrobust.geometry.spectrum import covariance_spectrum, effective_rank
from cslrobust.geometry.summary import summarize_values

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "GEOMETRY_METRICS",
    "ClassDistances",
    "ClassSums",
    "Embedding2D",
    "GeometryInputs",
    "GeometryMetric",
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
    "perturbation_norms",
    "plot_distance_matrix",
    "plot_embedding",
    "plot_metric_vs_robustness",
    "random_like_norm",
    "register_metric",
    "spearman",
    "summarize_margins",
    "summarize_sensitivity",
    "summarize_values",
    "tsne_2d",
    "uniformity",
]
