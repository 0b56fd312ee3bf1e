from __future__ import annotations

import pytest
import torch

from cslrobust.data.splits import stratified_subset, train_val_split
from cslrobust.errors import DataError


def _labels() -> torch.Tensor:
    # 3 classes with 10, 7 and 5 examples, interleaved.
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def test_stratified_subset_counts_sorted_deterministic() -> None:
    labels = _labels()
    idx = stratified_subset(labels, per_class=4, seed=1)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, idx.sort().values)
    assert idx.unique().numel() == 12
    assert torch.bincount(labels[idx]).tolist() == [4, 4, 4]
    assert torch.equal(idx, stratified_subset(labels, per_class=4, seed=1))


def test_stratified_subset_seeds_differ() -> None:
    labels = _labels()
    subsets = {tuple(stratified_subset(labels, 3, seed).tolist()) for seed in range(5)}
    assert len(subsets) > 1


def test_stratified_subset_too_few_examples() -> None:
    with pytest.raises(DataError, match="class 2 has 5 examples; expected 6"):
        stratified_subset(_labels(), per_class=6, seed=0)


def test_stratified_subset_negative_count() -> None:
    with pytest.raises(DataError, match="-1"):
        stratified_subset(_labels(), per_class=-1, seed=0)


def test_train_val_split_disjoint_stratified_covering() -> None:
    labels = _labels()
    train, val = train_val_split(labels, val_per_class=2, seed=3)
    assert torch.bincount(labels[val]).tolist() == [2, 2, 2]
    assert torch.bincount(labels[train]).tolist() == [8, 5, 3]
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    again = train_val_split(labels, val_per_class=2, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    others = {tuple(train_val_split(labels, 2, seed)[1].tolist()) for seed in range(5)}
    assert len(others) > 1


def test_train_val_split_zero_val() -> None:
    labels = _labels()
    train, val = train_val_split(labels, val_per_class=0, seed=0)
    assert val.numel() == 0 and torch.equal(train, torch.arange(len(labels)))


def test_train_val_split_must_leave_training_examples() -> None:
    with pytest.raises(DataError, match="class 2 has 5 examples; expected at least 6"):
        train_val_split(_labels(), val_per_class=5, seed=0)
