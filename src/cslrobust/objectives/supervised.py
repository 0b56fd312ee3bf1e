"""Supervised cross-entropy as an objective plug-in (the SL baseline of the study)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives.masks import expand_to_views
from cslrobust.objectives.objective import OBJECTIVES, HeadKind, LossOutput, check_batch
from cslrobust.sections import ObjectiveSection

__all__ = ["SupervisedObjective", "SupervisedSection", "build_supervised"]


@dataclass(frozen=True)
class SupervisedObjective:
    """Cross-entropy on class logits, averaged over samples and views.

    With ``V > 1`` views the loss is the mean of the per-view cross-entropies, i.e. cross-entropy
    over all ``V * B`` rows (every view has ``B`` rows).

    Args:
        label_smoothing: Label smoothing of :func:`torch.nn.functional.cross_entropy`, in
            ``[0, 1)``.
        n_views: Views per sample (1 is standard supervised training).

    Raises:
        ConfigError: If ``label_smoothing`` is outside ``[0, 1)`` or ``n_views < 1``.
    """

    label_smoothing: float = 0.0
    n_views: int = 1
    head_kind: HeadKind = field(default="classifier", init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.n_views < 1:
            raise ConfigError(f"n_views must be >= 1 for supervised, got {self.n_views}")

    def __call__(
        self,
        outputs: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        epoch: int = 0,
    ) -> LossOutput:
        """Cross-entropy of the logits (see :class:`~cslrobust.objectives.objective.Objective`).

        Returns:
            The loss and metrics ``loss`` and ``accuracy`` (top-1 over all views).

        Shape:
            - outputs: ``(V, B, C)`` logits
            - index, labels: ``(B,)`` int64
        """
        check_batch(outputs, index, labels, self.n_views)
        index, labels = index.to(outputs.device), labels.to(outputs.device)
        logits = outputs.flatten(0, 1)  # (V*B, C), row v*B + b
        targets = expand_to_views(labels, self.n_views)  # (V*B,)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == targets).float().mean()
        return LossOutput(loss=loss, metrics={"loss": loss.detach(), "accuracy": accuracy})


class SupervisedSection(ObjectiveSection):
    """Config section of ``supervised``: cross-entropy with optional label smoothing."""

    name: Literal["supervised"] = "supervised"
    family: ClassVar[str] = "supervised"
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    views: int = Field(
        default=1,
        ge=1,
        le=8,
        description="augmented views per image per step (2 matches SimCLR's views per image)",
    )
    head_kind: ClassVar[HeadKind] = "classifier"
    later_defaults: ClassVar[dict[str, object]] = {"views": 1}


@OBJECTIVES.register("supervised", SupervisedSection)
def build_supervised(section: SupervisedSection) -> SupervisedObjective:
    """The ``supervised`` objective of a config section."""
    return SupervisedObjective(label_smoothing=section.label_smoothing, n_views=section.views)
