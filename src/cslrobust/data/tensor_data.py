"""A labelled image set held as one uint8 tensor on the compute device, batched by index slicing.

CIFAR-sized sets fit in device memory as uint8 (50,000 images are 150 MiB), so batching is a gather
on the device instead of per-image Python work in DataLoader workers. Each batch carries the
dataset-level ``index`` of its images, the instance id that contrastive objectives pair views by.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, NamedTuple

import torch

from cslrobust.layouts import Layout, batch_ndim


class Batch(NamedTuple):
    """One batch of a :class:`TensorImageDataset`.

    Attributes:
        index: Position of each image in the dataset (its instance id), in ``[0, len(dataset))``.
        images: Images as float32 in ``[0, 1]`` (not normalised).
        labels: Class labels.

    Shape:
        - index: ``(B,)`` int64.
        - images: ``(B, 3, H, W)`` float32 in ``[0, 1]`` (clips: ``(B, 3, T, H, W)``).
        - labels: ``(B,)`` int64.
    """

    index: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor


class TensorImageDataset:
    """Images and labels kept on ``device``; :meth:`batches` yields shuffled or ordered batches.

    Args:
        images: uint8 images, channels first.
        labels: Class labels.
        device: Where the data lives and batches are produced.

    Shape:
        - images: ``(N, 3, H, W)`` uint8 in ``[0, 255]``.
        - labels: ``(N,)`` int64.

    Attributes:
        layout: The sample layout, ``"image"`` (:class:`TensorClipDataset`: ``"clip"``).

    Raises:
        ValueError: If dtypes or shapes do not match the above (a programming error).
    """

    layout: ClassVar[Layout] = "image"
    _shape: ClassVar[str] = "(N, 3, H, W)"

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, device: str | torch.device = "cpu"
    ) -> None:
        ndim = batch_ndim(self.layout)
        if images.dtype != torch.uint8 or images.ndim != ndim or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 of shape {self._shape}, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must be int64 of shape ({images.shape[0]},), got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def num_batches(self, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
        """Number of batches :meth:`batches` yields on every rank.

        Args:
            batch_size: Images per batch on one rank.
            drop_last: Drop the final incomplete batch (and the remainder of ``N / world_size``).
            world_size: Number of ranks sharing the data.
        """
        return count_batches(len(self), batch_size, drop_last, world_size)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Yield one epoch of batches for ``rank`` out of ``world_size`` ranks.

        The order is one permutation of ``range(N)`` drawn from ``generator`` (identical on every
        rank that uses the same generator state), and rank ``r`` takes positions
        ``r, r + world_size, ...`` of it, so the ranks are disjoint and all yield
        :meth:`num_batches` batches. Without ``drop_last``, when ``world_size`` does not divide
        ``N``, the first few positions of the order are repeated to even out the ranks (as
        ``DistributedSampler`` does); with one rank every index appears exactly once.

        Args:
            batch_size: Images per batch on this rank.
            shuffle: Draw a fresh permutation from ``generator``; otherwise use ``0..N-1``.
            generator: Source of the permutation; required when ``shuffle`` is true.
            drop_last: Drop the final incomplete batch and the remainder of ``N / world_size``.
            rank: This rank, in ``[0, world_size)``.
            world_size: Number of ranks.

        Yields:
            :class:`Batch` tuples on this dataset's device.

        Raises:
            ValueError: On invalid sizes or ranks, or ``shuffle`` without a generator.
        """
        order = rank_batches(
            len(self),
            batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        for index in order:
            index = index.to(self.device)  # (B,)
            images = self.images[index].to(torch.float32).div_(255.0)  # (B, 3, [T,] H, W) in [0, 1]
            yield Batch(index=index, images=images, labels=self.labels[index])


class TensorClipDataset(TensorImageDataset):
    """Clips and labels kept on ``device``, batched exactly as :class:`TensorImageDataset`.

    Every clip has the same number of frames (e.g. the synthetic clip sets); batches hold
    ``(B, 3, T, H, W)`` float32 clips in ``[0, 1]``.

    Shape:
        - images: ``(N, 3, T, H, W)`` uint8 in ``[0, 255]``.
        - labels: ``(N,)`` int64.
    """

    layout: ClassVar[Layout] = "clip"
    _shape: ClassVar[str] = "(N, 3, T, H, W)"


def count_batches(n: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """Batches per rank of :func:`rank_batches` over ``n`` samples."""
    _check_batching(batch_size, 0, world_size)
    per_rank = _per_rank(n, drop_last, world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


def rank_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool,
    rank: int,
    world_size: int,
) -> list[torch.Tensor]:
    """The sample indices of every batch of one epoch on ``rank`` (the loop's batching protocol).

    One permutation of ``range(n)`` from ``generator`` (``arange`` without ``shuffle``), on the
    generator's device; rank ``r`` takes positions ``r, r + world_size, ...``, padded by wrapping
    around without ``drop_last``. Drawn at once (not lazily), so a caller can draw more from the
    same generator afterwards in a fixed order.

    Raises:
        ValueError: On invalid sizes or ranks, or ``shuffle`` without a generator.
    """
    _check_batching(batch_size, rank, world_size)
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs a generator, so that the order is reproducible")
        order = torch.randperm(n, generator=generator, device=generator.device)
    else:
        order = torch.arange(n)
    per_rank = _per_rank(n, drop_last, world_size)
    if per_rank * world_size > n:  # pad by wrapping around (n > 0 here)
        order = order.repeat(-(-per_rank * world_size // n))
    order = order[rank : per_rank * world_size : world_size]  # (per_rank,)
    stop = per_rank - per_rank % batch_size if drop_last else per_rank
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


def _check_batching(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _per_rank(n: int, drop_last: bool, world_size: int) -> int:
    """Images per rank: ``N // world_size`` when dropping the remainder, else rounded up."""
    return n // world_size if drop_last else -(-n // world_size)
