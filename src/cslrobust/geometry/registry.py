"""The geometry metric registry and :func:`compute_geometry`, which runs every scalar metric by name.

A registered metric is a function of :class:`GeometryInputs` returning named Python floats; every key
it returns starts with its registry name (``"class_distance"`` -> ``"class_distance_intra"``, ...), so
the results of all metrics merge into one flat ``dict`` without collisions. A metric declares which
optional inputs it needs (``logits`` for the probe's logit margin, ``paired`` for alignment); when
:func:`compute_geometry` runs "all" metrics, those whose inputs are missing are skipped.

Adding a metric: a function in ``geometry/<file>.py`` decorated with ``@register_metric("<name>")``,
and the module imported in ``geometry/__init__.py``. Non-scalar outputs (the class distance matrix,
per-sample margins, the t-SNE embedding) are plain functions the caller uses directly; feature
sensitivities, which need features of perturbed inputs, have their own registry
(:data:`~cslrobust.geometry.sensitivity.SENSITIVITY_MEASURES`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from cslrobust.geometry.inputs import (
    DEFAULT_CHUNK_SIZE,
    check_chunk_size,
    check_features,
    check_labels,
)
from cslrobust.registry import Registry

__all__ = [
    "GEOMETRY_METRICS",
    "GeometryInputs",
    "GeometryMetric",
    "OptionalInput",
    "compute_geometry",
    "register_metric",
]

OptionalInput = Literal["logits", "paired"]


@dataclass(frozen=True)
class GeometryInputs:
    """Everything a registered metric may use; checked once on construction.

    Attributes:
        features: ``(N, D)`` features of the evaluation samples (any scale; metrics normalise).
        labels: ``(N,)`` integer class labels.
        logits: ``(N, C)`` linear-probe logits of the same samples, or None.
        paired: ``(N, D)`` features of a positive view of each sample (row ``i`` pairs with
            ``features[i]``), or None.
        chunk_size: Rows per block in chunked computations.

    Raises:
        ValueError: On inconsistent shapes, bad dtypes, non-finite values or a bad chunk size.
    """

    features: Tensor
    labels: Tensor
    logits: Tensor | None = None
    paired: Tensor | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        check_chunk_size(self.chunk_size)
        check_features(self.features, min_rows=2)
        n = self.features.shape[0]
        check_labels(self.labels, n)
        if self.paired is not None:
            check_features(self.paired, "paired")
            if self.paired.shape != self.features.shape:
                raise ValueError(
                    f"paired must have the shape of features {tuple(self.features.shape)}, "
                    f"got {tuple(self.paired.shape)}"
                )
        if self.logits is not None:
            check_features(self.logits, "logits")
            if self.logits.shape[0] != n:
                raise ValueError(f"logits must have {n} rows, got {self.logits.shape[0]}")
            check_labels(self.labels, n, self.logits.shape[1])

    def has(self, name: OptionalInput) -> bool:
        """Whether the optional input ``name`` was given."""
        return getattr(self, name) is not None


MetricFn = Callable[[GeometryInputs], dict[str, float]]


@dataclass(frozen=True)
class GeometryMetric:
    """A registered scalar metric: the function and the optional inputs it needs."""

    fn: MetricFn
    needs: frozenset[OptionalInput] = frozenset()


GEOMETRY_METRICS: Registry[GeometryMetric] = Registry("geometry metric")


def register_metric(
    name: str, *, needs: Sequence[OptionalInput] = ()
) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering ``fn`` in :data:`GEOMETRY_METRICS`; returns ``fn`` unchanged."""

    def decorator(fn: MetricFn) -> MetricFn:
        GEOMETRY_METRICS.register(name)(GeometryMetric(fn, frozenset(needs)))
        return fn

    return decorator


def compute_geometry(
    features: Tensor,
    labels: Tensor,
    *,
    logits: Tensor | None = None,
    paired: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Run registered scalar metrics and merge their results.

    Args:
        features: ``(N, D)`` features, ``N >= 2``.
        labels: ``(N,)`` integer class labels.
        logits: ``(N, C)`` probe logits; enables ``logit_margin``.
        paired: ``(N, D)`` positive-view features; enables ``alignment``.
        chunk_size: Rows per block.
        metrics: Registry names to run; None runs every metric whose inputs are available.

    Returns:
        Flat ``{key: value}`` of Python floats, keys prefixed by their metric's name.

    Raises:
        ConfigError: If a name in ``metrics`` is not registered.
        ValueError: On bad inputs, or a requested metric whose optional input is missing.
    """
    inputs = GeometryInputs(features, labels, logits, paired, chunk_size)
    if metrics is None:
        names = [
            name
            for name in GEOMETRY_METRICS.names()
            if all(inputs.has(need) for need in GEOMETRY_METRICS.get(name).needs)
        ]
    else:
        names = list(dict.fromkeys(metrics))
    results: dict[str, float] = {}
    for name in names:
        metric = GEOMETRY_METRICS.get(name)
        missing = sorted(need for need in metric.needs if not inputs.has(need))
        if missing:
            raise ValueError(f"geometry metric {name!r} needs {' and '.join(missing)}")
        results.update(metric.fn(inputs))
    return results
