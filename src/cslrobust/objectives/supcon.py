"""SupCon: supervised contrastive learning (Khosla et al., 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from torch import Tensor

from cslrobust.objectives.contrastive_objective import ContrastiveObjective, ContrastiveSection
from cslrobust.objectives.masks import expand_to_views, label_positive_mask
from cslrobust.objectives.objective import OBJECTIVES, HeadKind

__all__ = ["SupConObjective", "SupConSection", "build_supcon"]


@dataclass(frozen=True)
class SupConObjective(ContrastiveObjective):
    """SupCon L_out: other rows with the anchor's label are positives, all others negatives.

    Khosla et al., 2020, "Supervised Contrastive Learning", eq. 2 (the ``L_out`` form, averaging the
    log-probabilities over positives outside the log). With one sample per class in the batch it
    reduces to SimCLR. Calling it returns the loss and metrics ``loss``, ``pos_sim`` and
    ``neg_sim`` (:meth:`ContrastiveObjective.__call__`).

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

    name: ClassVar[str] = "supcon"

    def positive_mask(self, index: Tensor, labels: Tensor) -> Tensor:
        """Every other row with the anchor's label; ``(V*B, V*B)``."""
        return label_positive_mask(expand_to_views(labels, self.n_views))


class SupConSection(ContrastiveSection):
    """Config section of ``supcon`` (``objective: {name: supcon, temperature: ...}``)."""

    name: Literal["supcon"] = "supcon"
    family: ClassVar[str] = "fn_removal"


@OBJECTIVES.register("supcon", SupConSection)
def build_supcon(section: SupConSection) -> SupConObjective:
    """The ``supcon`` objective of a config section."""
    return SupConObjective(temperature=section.temperature)
