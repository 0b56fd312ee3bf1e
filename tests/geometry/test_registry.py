"""Contract tests every registered geometry metric gets for free, and compute_geometry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.geometry import GEOMETRY_METRICS, GeometryInputs, compute_geometry, register_metric

BUILTIN = {
    "alignment",
    "uniformity",
    "class_distance",
    "centroid_margin",
    "logit_margin",
    "effective_rank",
}


@pytest.fixture
def inputs(gen: torch.Generator) -> GeometryInputs:
    features = torch.randn(64, 16, generator=gen)
    return GeometryInputs(
        features=features,
        labels=torch.randint(0, 5, (64,), generator=gen),
        logits=torch.randn(64, 5, generator=gen),
        paired=features + 0.3 * torch.randn(64, 16, generator=gen),
        chunk_size=16,
    )


def test_builtin_metrics_registered() -> None:
    assert BUILTIN <= set(GEOMETRY_METRICS.names())


@pytest.mark.parametrize("name", GEOMETRY_METRICS.names())
def test_metric_contract(name: str, inputs: GeometryInputs) -> None:
    result = GEOMETRY_METRICS.get(name).fn(inputs)
    assert result, f"{name} returned nothing"
    for key, value in result.items():
        assert key.startswith(name), f"{name} returned key {key!r} without its name as prefix"
        assert type(value) is float and math.isfinite(value), f"{key} = {value!r}"


def test_compute_geometry_runs_everything(inputs: GeometryInputs) -> None:
    results = compute_geometry(
        inputs.features, inputs.labels, logits=inputs.logits, paired=inputs.paired, chunk_size=16
    )
    expected_keys = set()
    for name in GEOMETRY_METRICS.names():
        expected_keys |= set(GEOMETRY_METRICS.get(name).fn(inputs))
    assert set(results) == expected_keys
    assert {"alignment", "uniformity", "class_distance_ratio", "logit_margin_frac_negative"} <= set(
        results
    )
    chunked = compute_geometry(
        inputs.features, inputs.labels, logits=inputs.logits, paired=inputs.paired, chunk_size=5
    )
    assert chunked == pytest.approx(results, rel=1e-5, abs=1e-6)


def test_compute_geometry_skips_metrics_without_their_inputs(inputs: GeometryInputs) -> None:
    results = compute_geometry(inputs.features, inputs.labels)
    assert "alignment" not in results and not any(k.startswith("logit_margin") for k in results)
    assert "uniformity" in results and "centroid_margin_mean" in results


def test_compute_geometry_selected_metrics(inputs: GeometryInputs) -> None:
    results = compute_geometry(inputs.features, inputs.labels, metrics=["uniformity", "uniformity"])
    assert list(results) == ["uniformity"]
    with pytest.raises(ConfigError, match="unknown geometry metric"):
        compute_geometry(inputs.features, inputs.labels, metrics=["unifromity"])
    with pytest.raises(ValueError, match="needs logits"):
        compute_geometry(inputs.features, inputs.labels, metrics=["logit_margin"])


def test_input_validation(inputs: GeometryInputs) -> None:
    f, y = inputs.features, inputs.labels
    with pytest.raises(ValueError, match="labels"):
        GeometryInputs(f, y[:-1])
    with pytest.raises(ValueError, match="paired"):
        GeometryInputs(f, y, paired=f[:, :3])
    with pytest.raises(ValueError, match="logits must have"):
        GeometryInputs(f, y, logits=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="out of range"):
        GeometryInputs(f, y, logits=torch.zeros(64, 2))
    with pytest.raises(ValueError, match="chunk_size"):
        GeometryInputs(f, y, chunk_size=0)


def test_duplicate_registration_is_an_error() -> None:
    def fake(inputs: GeometryInputs) -> dict[str, float]:
        return {}

    with pytest.raises(ValueError, match="already registered"):
        register_metric("uniformity")(fake)


def test_large_n_runs_chunked() -> None:
    gen = torch.Generator().manual_seed(0)
    features: Tensor = torch.randn(10_000, 16, generator=gen)
    labels = torch.randint(0, 10, (10_000,), generator=gen)
    results = compute_geometry(features, labels, chunk_size=2048)
    assert all(math.isfinite(v) for v in results.values())
    assert -4.2 < results["uniformity"] < -3.0  # random directions in 16 dims: about -4


@pytest.mark.gpu
def test_cuda_matches_cpu(inputs: GeometryInputs) -> None:
    def on(device: str) -> dict[str, float]:
        return compute_geometry(
            inputs.features.to(device),
            inputs.labels.to(device),
            logits=None if inputs.logits is None else inputs.logits.to(device),
            paired=None if inputs.paired is None else inputs.paired.to(device),
            chunk_size=16,
        )

    assert on("cuda") == pytest.approx(on("cpu"), rel=1e-4, abs=1e-5)
