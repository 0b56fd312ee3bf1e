"""SimCLR with false-negative removal (elimination or attraction; Huynh et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives.contrastive import info_nce, normalize_views, pair_similarity_means
from cslrobust.objectives.fn_detectors import (
    FalseNegativeDetector,
    OracleDetector,
    detection_quality,
)
from cslrobust.objectives.masks import expand_to_views, instance_positive_mask, negative_mask
from cslrobust.objectives.objective import OBJECTIVES, HeadKind, LossOutput, check_batch

__all__ = ["FNRMode", "SimCLRFNRObjective"]

FNRMode = Literal["eliminate", "attract"]
_MODES: frozenset[str] = frozenset(("eliminate", "attract"))


@OBJECTIVES.register("simclr_fnr")
@dataclass(frozen=True)
class SimCLRFNRObjective:
    r"""NT-Xent where detected false negatives ``F(i)`` are eliminated or attracted.

    Huynh et al., 2022, "Boosting Contrastive Self-Supervised Learning with False Negative
    Cancellation". Starting from SimCLR's masks (``P(i)`` = other views of ``i``'s instance,
    ``N(i)`` = all other rows), the detector flags ``F(i) ⊆ N(i)`` and

    - ``"eliminate"``: ``N(i) <- N(i) \ F(i)`` (false negatives leave the denominator);
    - ``"attract"``: ``P(i) <- P(i) ∪ F(i)``, ``N(i) <- N(i) \ F(i)`` (they become positives).

    With the oracle detector at removal rate 1, ``"attract"`` is exactly SupCon. Before
    ``warmup_epochs`` nothing is removed and the loss is SimCLR's. The detector sees detached
    embeddings: detection is not differentiated through.

    Args:
        detector: False-negative detector (default: the label oracle, the upper bound).
        mode: ``"eliminate"`` or ``"attract"``.
        temperature: Softmax temperature ``tau`` (default 0.5, as ``simclr``).
        warmup_epochs: Epochs of plain SimCLR before removal starts (detectors that rely on the
            embeddings need a partly trained encoder).
        n_views: Views per sample (at least 2).

    Raises:
        ConfigError: On an unknown mode, ``temperature <= 0``, ``warmup_epochs < 0`` or
            ``n_views < 2``.
    """

    detector: FalseNegativeDetector = field(default_factory=OracleDetector)
    mode: FNRMode = "eliminate"
    temperature: float = 0.5
    warmup_epochs: int = 0
    n_views: int = 2
    head_kind: HeadKind = field(default="projector", init=False)

    def __post_init__(self) -> None:
        # Values may arrive untyped from a config file: check them at run time.
        detector: object = self.detector
        if not isinstance(detector, FalseNegativeDetector):
            raise ConfigError(
                f"detector must be a FalseNegativeDetector, got {type(detector).__name__}"
            )
        if self.mode not in _MODES:
            raise ConfigError(f"mode must be 'eliminate' or 'attract', got {self.mode!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.n_views < 2:
            raise ConfigError(f"n_views must be >= 2 for simclr_fnr, got {self.n_views}")

    def __call__(
        self,
        outputs: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        epoch: int = 0,
    ) -> LossOutput:
        """Loss of the batch after false-negative removal (see ``Objective``).

        Labels reach the detector (only the oracle reads them) and :func:`detection_quality`.

        Returns:
            The loss and metrics ``loss``, ``pos_sim``, ``neg_sim`` (over the final masks) and
            ``fn_precision``, ``fn_recall``, ``fn_f1``, ``fn_removed_fraction``,
            ``fn_true_fraction`` (detection quality against labels; nothing is detected during
            warm-up).

        Shape:
            - outputs: ``(V, B, D)`` projector outputs (normalised here)
            - index, labels: ``(B,)`` int64
        """
        check_batch(outputs, index, labels, self.n_views)
        index, labels = index.to(outputs.device), labels.to(outputs.device)
        z = normalize_views(outputs)  # (V*B, D)
        sample_ids = expand_to_views(index, self.n_views)  # (V*B,)
        row_labels = expand_to_views(labels, self.n_views)  # (V*B,)
        pos = instance_positive_mask(sample_ids)  # (V*B, V*B)
        neg = negative_mask(pos)

        if epoch < self.warmup_epochs:
            detected = torch.zeros_like(neg)
        else:
            detected = self.detector(
                z.detach(),
                sample_ids=sample_ids,
                labels=row_labels,
                candidate_mask=neg,
                generator=generator,
            )
            detected = detected & neg  # enforce the subset contract without a host sync

        quality = detection_quality(detected, neg, row_labels)
        neg = neg & ~detected
        if self.mode == "attract":
            pos = pos | detected
        # Disjoint by construction: skip the check and its host sync.
        loss = info_nce(z, pos, neg, self.temperature, check_disjoint=False)
        metrics = {
            "loss": loss.detach(),
            **pair_similarity_means(z, pos, neg),
            **{f"fn_{name}": value for name, value in quality.items()},
        }
        return LossOutput(loss=loss, metrics=metrics)
