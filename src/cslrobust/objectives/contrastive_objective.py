"""The shared plumbing of the contrastive objectives that contrast every view of a batch.

``simclr``, ``supcon`` and ``debiased`` differ only in which rows are positives and, for
``debiased``, in the loss on the masks. :class:`ContrastiveObjective` holds everything else: the
validation of ``temperature`` and ``n_views``, and the step from head outputs to
:class:`~cslrobust.objectives.objective.LossOutput` (check the batch, normalise the views, build the
masks, compute the loss, collect the metrics). Each objective states only its
:meth:`~ContrastiveObjective.positive_mask` and, where it is not InfoNCE, its
:meth:`~ContrastiveObjective.contrastive_loss`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives.contrastive import info_nce, normalize_views, pair_similarity_means
from cslrobust.objectives.masks import negative_mask
from cslrobust.objectives.objective import LossOutput, check_batch
from cslrobust.sections import HeadKind, ObjectiveSection

__all__ = ["ContrastiveObjective", "ContrastiveSection"]


class ContrastiveSection(ObjectiveSection):
    """Base of the sections of the contrastive objectives (projector head, a temperature).

    Attributes:
        temperature: Softmax temperature ``tau > 0``. The default 0.5 is SimCLR's CIFAR-10 setting,
            shared by every contrastive objective so that they differ only in their masks.
    """

    temperature: float = Field(default=0.5, gt=0.0)
    head_kind: ClassVar[HeadKind] = "projector"


class ContrastiveObjective(ABC):
    """Base of the contrastive objectives over all ``V`` views: validation and ``__call__``.

    Subclasses are frozen dataclasses with (at least) the fields ``temperature`` and ``n_views``
    and a ``name`` class attribute (their registry key, used in error messages). The negatives are
    every row that is neither a positive nor the anchor itself.

    Raises:
        ConfigError: From ``__post_init__``, if ``temperature <= 0`` or ``n_views < 2``.
    """

    name: ClassVar[str]
    temperature: float
    n_views: int

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.n_views < 2:
            raise ConfigError(f"n_views must be >= 2 for {self.name}, got {self.n_views}")

    @abstractmethod
    def positive_mask(self, index: Tensor, labels: Tensor) -> Tensor:
        """The positive pairs over the ``V * B`` view-major rows.

        Args:
            index: Dataset instance id of every sample (on the device of the outputs).
            labels: Class label of every sample (on the device of the outputs).

        Returns:
            ``mask[i, j]`` True iff row ``j`` is a positive of anchor row ``i``.

        Shape:
            - index, labels: ``(B,)`` int64
            - output: ``(V * B, V * B)`` bool, False on the diagonal
        """

    def contrastive_loss(
        self, z: Tensor, pos_mask: Tensor, neg_mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss on the masks (InfoNCE by default) and the objective's extra metrics.

        Args:
            z: Normalised embeddings of every row.
            pos_mask: Positive pairs.
            neg_mask: Negative pairs, disjoint from ``pos_mask``.

        Returns:
            The scalar loss and detached 0-dim metrics beyond ``loss``, ``pos_sim``, ``neg_sim``.

        Shape:
            - z: ``(V * B, D)``
            - pos_mask, neg_mask: ``(V * B, V * B)`` bool
        """
        # Disjoint by construction: skip the check and its host sync.
        return info_nce(z, pos_mask, neg_mask, self.temperature, check_disjoint=False), {}

    def __call__(
        self,
        outputs: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        epoch: int = 0,
    ) -> LossOutput:
        """Loss of the batch (see :class:`~cslrobust.objectives.objective.Objective`).

        Returns:
            The loss and metrics ``loss``, ``pos_sim`` and ``neg_sim`` (mean cosine similarity of
            positive and negative pairs), followed by those of :meth:`contrastive_loss`.

        Shape:
            - outputs: ``(V, B, D)`` projector outputs (normalised here)
            - index, labels: ``(B,)`` int64
        """
        check_batch(outputs, index, labels, self.n_views)
        index, labels = index.to(outputs.device), labels.to(outputs.device)
        z = normalize_views(outputs)  # (V*B, D)
        pos = self.positive_mask(index, labels)  # (V*B, V*B)
        neg = negative_mask(pos)
        loss, extra = self.contrastive_loss(z, pos, neg)
        metrics = {"loss": loss.detach(), **pair_similarity_means(z, pos, neg), **extra}
        return LossOutput(loss=loss, metrics=metrics)
