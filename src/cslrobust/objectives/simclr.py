"""SimCLR: instance discrimination with the NT-Xent loss (Chen et al., 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from torch import Tensor

from cslrobust.objectives.contrastive_objective import ContrastiveObjective, ContrastiveSection
from cslrobust.objectives.masks import expand_to_views, instance_positive_mask
from cslrobust.objectives.objective import OBJECTIVES, HeadKind

__all__ = ["SimCLRObjective", "SimCLRSection", "build_simclr"]


@dataclass(frozen=True)
class SimCLRObjective(ContrastiveObjective):
    """NT-Xent: positives are the other views of the anchor's instance, all other rows negatives.

    Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations". With
    two views this is the paper's loss over ``2B`` rows; with ``V > 2`` views each anchor has
    ``V - 1`` positives (multi-positive InfoNCE, SupCon L_out form). Labels are not used. Calling
    it returns the loss and metrics ``loss``, ``pos_sim`` and ``neg_sim``
    (:meth:`ContrastiveObjective.__call__`).

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

    name: ClassVar[str] = "simclr"

    def positive_mask(self, index: Tensor, labels: Tensor) -> Tensor:
        """The other views of the anchor's instance; ``(V*B, V*B)``."""
        return instance_positive_mask(expand_to_views(index, self.n_views))


class SimCLRSection(ContrastiveSection):
    """Config section of ``simclr`` (``objective: {name: simclr, temperature: ...}``)."""

    name: Literal["simclr"] = "simclr"


@OBJECTIVES.register("simclr", SimCLRSection)
def build_simclr(section: SimCLRSection) -> SimCLRObjective:
    """The ``simclr`` objective of a config section."""
    return SimCLRObjective(temperature=section.temperature)
