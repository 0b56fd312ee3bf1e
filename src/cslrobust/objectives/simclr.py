"""SimCLR: instance discrimination with the NT-Xent loss (Chen et al., 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives.contrastive import info_nce, normalize_views, pair_similarity_means
from cslrobust.objectives.masks import expand_to_views, instance_positive_mask, negative_mask
from cslrobust.objectives.objective import OBJECTIVES, HeadKind, LossOutput, check_batch

__all__ = ["SimCLRObjective"]


@OBJECTIVES.register("simclr")
@dataclass(frozen=True)
class SimCLRObjective:
    """NT-Xent: positives are the other views of the anchor's instance, all other rows negatives.

    Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations". With
    two views this is the paper's loss over ``2B`` rows; with ``V > 2`` views each anchor has
    ``V - 1`` positives (multi-positive InfoNCE, SupCon L_out form). Labels are not used.

    Args:
        temperature: Softmax temperature ``tau``. The default 0.5 is SimCLR's CIFAR-10 setting;
            it is also the default of ``supcon`` and ``simclr_fnr`` so that the compared
            objectives differ only in their masks.
        n_views: Views per sample (at least 2).

    Raises:
        ConfigError: If ``temperature <= 0`` or ``n_views < 2``.
    """

    temperature: float = 0.5
    n_views: int = 2
    head_kind: HeadKind = field(default="projector", init=False)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.n_views < 2:
            raise ConfigError(f"n_views must be >= 2 for simclr, got {self.n_views}")

    def __call__(
        self,
        outputs: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        epoch: int = 0,
    ) -> LossOutput:
        """NT-Xent of the batch (see :class:`~cslrobust.objectives.objective.Objective`).

        Returns:
            The loss and metrics ``loss``, ``pos_sim`` and ``neg_sim`` (mean cosine similarity of
            positive and negative pairs).

        Shape:
            - outputs: ``(V, B, D)`` projector outputs (normalised here)
            - index, labels: ``(B,)`` int64
        """
        check_batch(outputs, index, labels, self.n_views)
        index, labels = index.to(outputs.device), labels.to(outputs.device)
        z = normalize_views(outputs)  # (V*B, D)
        pos = instance_positive_mask(expand_to_views(index, self.n_views))  # (V*B, V*B)
        neg = negative_mask(pos)
        # Disjoint by construction: skip the check and its host sync.
        loss = info_nce(z, pos, neg, self.temperature, check_disjoint=False)
        metrics = {"loss": loss.detach(), **pair_similarity_means(z, pos, neg)}
        return LossOutput(loss=loss, metrics=metrics)
