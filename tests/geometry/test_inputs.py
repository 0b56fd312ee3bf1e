from __future__ import annotations

import pytest
import torch

from cslrobust.geometry.inputs import (
    check_chunk_size,
    check_features,
    check_labels,
    compute_dtype,
    normalize_rows,
    row_chunks,
)


def test_row_chunks_cover_range_in_order() -> None:
    assert list(row_chunks(7, 3)) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert list(row_chunks(3, 10)) == [slice(0, 3)]
    assert list(row_chunks(0, 4)) == []


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_chunk_size(bad: object) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        check_chunk_size(bad)  # type: ignore[arg-type]


def test_normalize_rows_unit_norm_and_zero_row_error() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    z = normalize_rows(x)
    torch.testing.assert_close(z, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="all-zero row"):
        normalize_rows(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_compute_dtype() -> None:
    assert compute_dtype(torch.zeros(1, dtype=torch.float16)) == torch.float32
    assert compute_dtype(torch.zeros(1, dtype=torch.float64)) == torch.float64


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (torch.zeros(3), "2-D"),
        (torch.zeros(3, 2, dtype=torch.int64), "floating"),
        (torch.zeros(0, 2), "at least"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
    ],
)
def test_check_features_errors(features: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_features(features)


def test_check_labels() -> None:
    assert check_labels(torch.tensor([0, 2, 1]), 3) == 3
    assert check_labels(torch.tensor([0, 2, 1]), 3, num_classes=5) == 5
    with pytest.raises(ValueError, match="length 2"):
        check_labels(torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ValueError, match="integer"):
        check_labels(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="non-negative"):
        check_labels(torch.tensor([0, -1]), 2)
    with pytest.raises(ValueError, match="out of range"):
        check_labels(torch.tensor([0, 3]), 2, num_classes=3)
