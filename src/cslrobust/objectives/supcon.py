"""SupCon: supervised contrastive learning (Khosla et al., 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives.contrastive import info_nce, normalize_views, pair_similarity_means
from cslrobust.objectives.masks import expand_to_views, label_positive_mask, negative_mask
from cslrobust.objectives.objective import OBJECTIVES, HeadKind, LossOutput, check_batch

__all__ = ["SupConObjective"]


@OBJECTIVES.register("supcon")
@dataclass(frozen=True)
class SupConObjective:
    """SupCon L_out: other rows with the anchor's label are positives, all others negatives.

    Khosla et al., 2020, "Supervised Contrastive Learning", eq. 2 (the ``L_out`` form, averaging the
    log-probabilities over positives outside the log). With one sample per class in the batch it
    reduces to SimCLR.

    Args:
        temperature: Softmax temperature ``tau``. The default 0.5 matches ``simclr`` so that the
            compared objectives differ only in their masks (Khosla et al. used 0.1).
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
            raise ConfigError(f"n_views must be >= 2 for supcon, got {self.n_views}")

    def __call__(
        self,
        outputs: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        epoch: int = 0,
    ) -> LossOutput:
        """SupCon loss of the batch (see :class:`~cslrobust.objectives.objective.Objective`).

        Returns:
            The loss and metrics ``loss``, ``pos_sim`` and ``neg_sim``.

        Shape:
            - outputs: ``(V, B, D)`` projector outputs (normalised here)
            - index, labels: ``(B,)`` int64
        """
        check_batch(outputs, index, labels, self.n_views)
        index, labels = index.to(outputs.device), labels.to(outputs.device)
        z = normalize_views(outputs)  # (V*B, D)
        pos = label_positive_mask(expand_to_views(labels, self.n_views))  # (V*B, V*B)
        neg = negative_mask(pos)
        # Disjoint by construction: skip the check and its host sync.
        loss = info_nce(z, pos, neg, self.temperature, check_disjoint=False)
        metrics = {"loss": loss.detach(), **pair_similarity_means(z, pos, neg)}
        return LossOutput(loss=loss, metrics=metrics)
