import pytest
import torch

from cslrobust.objectives.masks import (
    expand_to_views,
    instance_positive_mask,
    label_positive_mask,
    negative_mask,
)


def test_expand_to_views_is_view_major() -> None:
    index = torch.tensor([7, 3, 5])
    assert expand_to_views(index, 2).tolist() == [7, 3, 5, 7, 3, 5]
    with pytest.raises(ValueError):
        expand_to_views(index, 0)
    with pytest.raises(ValueError):
        expand_to_views(index[None], 2)


def test_instance_positive_mask_pairs_views_of_the_same_sample() -> None:
    n_views, batch = 3, 4
    mask = instance_positive_mask(expand_to_views(torch.arange(10, 14), n_views))
    assert mask.dtype == torch.bool and mask.shape == (12, 12)
    for i in range(12):
        for j in range(12):
            assert bool(mask[i, j]) == (i != j and i % batch == j % batch)
    assert mask.sum() == 12 * (n_views - 1)


def test_label_positive_mask_and_negative_mask() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1])
    pos = label_positive_mask(labels)
    expected = [[i != j and labels[i] == labels[j] for j in range(5)] for i in range(5)]
    assert pos.tolist() == expected
    neg = negative_mask(pos)
    assert neg.tolist() == [[i != j and labels[i] != labels[j] for j in range(5)] for i in range(5)]
    assert not (pos & neg).any()
    assert not neg.diagonal().any()


def test_negative_mask_rejects_non_bool_or_non_square() -> None:
    with pytest.raises(ValueError):
        negative_mask(torch.zeros(3, 3))
    with pytest.raises(ValueError):
        negative_mask(torch.zeros(3, 2, dtype=torch.bool))
