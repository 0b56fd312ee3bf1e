from __future__ import annotations

import pytest
import torch

from cslrobust.data.tensor_data import Batch, TensorImageDataset


def _dataset(n: int = 10) -> TensorImageDataset:
    images = torch.arange(n * 3 * 2 * 2).reshape(n, 3, 2, 2).remainder(256).to(torch.uint8)
    images[0] = 255  # the top of the range must map to exactly 1.0
    return TensorImageDataset(images, torch.arange(n) % 3, "cpu")


def _indices(batches: list[Batch]) -> list[int]:
    return [i for batch in batches for i in batch.index.tolist()]


def test_batches_cover_every_index_once() -> None:
    data = _dataset(10)
    generator = torch.Generator().manual_seed(0)
    batches = list(data.batches(3, shuffle=True, generator=generator, drop_last=False))
    assert [len(b.index) for b in batches] == [3, 3, 3, 1]
    assert sorted(_indices(batches)) == list(range(10))
    assert _indices(batches) != list(range(10))  # actually shuffled
    assert len(batches) == data.num_batches(3, drop_last=False)


def test_batch_contents_match_index() -> None:
    data = _dataset(10)
    for batch in data.batches(
        4, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=False
    ):
        assert batch.images.dtype == torch.float32
        assert batch.images.shape == (len(batch.index), 3, 2, 2)
        assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
        torch.testing.assert_close(batch.images, data.images[batch.index].float() / 255)
        assert torch.equal(batch.labels, data.labels[batch.index])
    first = next(data.batches(10, shuffle=False, drop_last=False))
    assert first.images[0].max() == 1.0


def test_unshuffled_order_and_drop_last() -> None:
    data = _dataset(10)
    batches = list(data.batches(4, shuffle=False, drop_last=True))
    assert _indices(batches) == list(range(8))
    assert data.num_batches(4, drop_last=True) == 2


def test_same_seed_same_order() -> None:
    data = _dataset(10)

    def order(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return _indices(list(data.batches(4, shuffle=True, generator=generator, drop_last=False)))

    assert order(5) == order(5)
    assert order(5) != order(6)


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_are_disjoint_and_cover(drop_last: bool) -> None:
    data = _dataset(10)
    per_rank = []
    for rank in range(2):
        generator = torch.Generator().manual_seed(7)  # same seed on every rank
        batches = list(
            data.batches(
                2, shuffle=True, generator=generator, drop_last=drop_last, rank=rank, world_size=2
            )
        )
        assert len(batches) == data.num_batches(2, drop_last=drop_last, world_size=2)
        per_rank.append(_indices(batches))
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    covered = sorted(per_rank[0] + per_rank[1])
    if drop_last:  # 10 images, batch 2 per rank: 2 batches per rank, 2 images dropped
        assert len(covered) == 8 and len(set(covered)) == 8
    else:
        assert covered == list(range(10))


def test_uneven_ranks_get_equal_batch_counts() -> None:
    data = _dataset(7)
    counts = []
    seen: set[int] = set()
    for rank in range(3):
        batches = list(data.batches(2, shuffle=False, drop_last=False, rank=rank, world_size=3))
        counts.append(len(batches))
        seen.update(_indices(batches))
    assert counts == [2, 2, 2] == [data.num_batches(2, False, 3)] * 3
    assert seen == set(range(7))


def test_invalid_arguments() -> None:
    data = _dataset(4)
    with pytest.raises(ValueError, match="generator"):
        next(data.batches(2, shuffle=True, drop_last=False))
    with pytest.raises(ValueError, match="rank"):
        next(data.batches(2, shuffle=False, drop_last=False, rank=2, world_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        data.num_batches(0, drop_last=False)
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(torch.zeros(2, 3, 2, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        TensorImageDataset(
            torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)
        )


def test_empty_dataset_yields_nothing() -> None:
    data = TensorImageDataset(
        torch.zeros(0, 3, 2, 2, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    )
    assert len(data) == 0
    assert list(data.batches(4, shuffle=False, drop_last=False)) == []
    assert data.num_batches(4, drop_last=False) == 0


def test_layouts_of_the_tensor_data_sets() -> None:
    from cslrobust.data import TensorClipDataset

    labels = torch.arange(4)
    images = TensorImageDataset(torch.zeros(4, 3, 5, 5, dtype=torch.uint8), labels)
    assert images.layout == "image"
    clips = TensorClipDataset(torch.full((4, 3, 2, 5, 5), 255, dtype=torch.uint8), labels)
    assert clips.layout == "clip"
    batch = next(clips.batches(3, shuffle=False, drop_last=False))
    assert batch.images.shape == (3, 3, 2, 5, 5) and batch.images.dtype == torch.float32
    assert torch.equal(batch.images, torch.ones(3, 3, 2, 5, 5))
    with pytest.raises(ValueError, match=r"\(N, 3, T, H, W\)"):
        TensorClipDataset(torch.zeros(4, 3, 5, 5, dtype=torch.uint8), labels)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        TensorImageDataset(torch.zeros(4, 3, 2, 5, 5, dtype=torch.uint8), labels)
