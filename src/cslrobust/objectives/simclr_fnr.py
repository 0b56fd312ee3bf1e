"""SimCLR with false-negative removal (elimination or attraction; Huynh et al., 2022)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, SerializeAsAny, field_validator
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives.contrastive import info_nce, normalize_views, pair_similarity_means
from cslrobust.objectives.contrastive_objective import ContrastiveSection
from cslrobust.objectives.fn_detectors import (
    FN_DETECTORS,
    BankFalseNegativeDetector,
    FalseNegativeDetector,
    FalseNegativeSection,
    FNRMode,
    OracleDetector,
    build_fn_detector,
    detection_quality,
)
from cslrobust.objectives.masks import expand_to_views, instance_positive_mask, negative_mask
from cslrobust.objectives.objective import OBJECTIVES, HeadKind, LossOutput, check_batch

__all__ = ["FNRMode", "SimCLRFNRObjective", "SimCLRFNRSection", "build_simclr_fnr"]

_MODES: frozenset[str] = frozenset(("eliminate", "attract"))


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

    **Support views** (FNC): with ``support_views = S > 0`` the loop generates ``2 + S`` views.
    Views 0 and 1 form the SimCLR loss exactly as with ``S = 0``; views ``2 .. 1+S`` are passed,
    normalised and detached, to the detector as ``support`` (shape ``(S, B, D)``) and never enter
    the loss. ``S`` must equal the detector's ``support_views``; the config builder
    (:func:`build_simclr_fnr`) takes it from the detector.

    **Bank detectors** (``cluster``): the objective implements the loop protocols of
    :mod:`~cslrobust.objectives.objective` (``needs_bank``, ``refresh``, ``state_dict``,
    ``load_state_dict``), delegating to the detector; for any other detector they report no bank
    and an empty state.

    Args:
        detector: False-negative detector (default: the label oracle, the upper bound).
        mode: ``"eliminate"`` or ``"attract"``.
        temperature: Softmax temperature ``tau`` (default 0.5, as ``simclr``).
        warmup_epochs: Epochs of plain SimCLR before removal starts (detectors that rely on the
            embeddings need a partly trained encoder). Bank detectors are first fitted at the
            start of epoch ``warmup_epochs``.
        support_views: Extra views per sample for the detector only (``n_views = loss_views +
            support_views``).
        loss_views: Views per sample in the loss (2; RoCL's loss has 3: two views and the
            adversarial one). Each view of an instance is a positive of the others.

    Raises:
        ConfigError: On an unknown mode, ``temperature <= 0``, ``warmup_epochs < 0``,
            ``support_views < 0`` or ``support_views`` different from the detector's.
    """

    detector: FalseNegativeDetector = field(default_factory=OracleDetector)
    mode: FNRMode = "eliminate"
    temperature: float = 0.5
    warmup_epochs: int = 0
    support_views: int = 0
    loss_views: int = 2
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
        if self.support_views < 0:
            raise ConfigError(f"support_views must be >= 0, got {self.support_views}")
        if self.loss_views < 2:
            raise ConfigError(f"loss_views must be >= 2, got {self.loss_views}")
        if self.support_views != detector.support_views:
            raise ConfigError(
                f"support_views={self.support_views} of simclr_fnr differs from the detector's "
                f"support_views={detector.support_views}; set them equal"
            )

    @property
    def n_views(self) -> int:
        """Views per sample: the loss views plus the support views."""
        return self.loss_views + self.support_views

    def needs_bank(self, epoch: int) -> bool:
        """Whether to refresh a bank detector at the start of ``epoch``.

        True when the detector is a bank detector, ``epoch >= warmup_epochs``, and either
        ``(epoch - warmup_epochs) % refresh_every == 0`` or the detector is not fitted.
        """
        detector = self.detector
        if not isinstance(detector, BankFalseNegativeDetector) or epoch < self.warmup_epochs:
            return False
        return detector.needs_refresh(epoch - self.warmup_epochs)

    def refresh(self, bank: Tensor, *, epoch: int, generator: torch.Generator) -> dict[str, float]:
        """Normalise the bank and refit a bank detector (``{}`` for other detectors).

        See :class:`~cslrobust.objectives.objective.BankObjective`; ``epoch`` is not used by the
        built-in detectors (the schedule lives in :meth:`needs_bank`).

        Shape:
            - bank: ``(N, D)`` head outputs, row ``i`` = dataset index ``i``
        """
        if not isinstance(self.detector, BankFalseNegativeDetector):
            return {}
        bank = F.normalize(bank.detach().to(torch.promote_types(bank.dtype, torch.float32)), dim=1)
        return self.detector.refresh(bank, generator=generator)

    def state_dict(self) -> dict[str, Tensor]:
        """The detector's fit under ``detector.<name>`` keys (``{}`` when there is none)."""
        if not isinstance(self.detector, BankFalseNegativeDetector):
            return {}
        return {f"detector.{k}": v for k, v in self.detector.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict` (``{}`` clears a bank detector's fit).

        Raises:
            ValueError: On keys that do not belong to the detector's state.
        """
        unknown = sorted(k for k in state if not k.startswith("detector."))
        if unknown:
            raise ValueError(f"unexpected simclr_fnr state keys: {unknown}")
        if not isinstance(self.detector, BankFalseNegativeDetector):
            if state:
                raise ValueError(f"the {type(self.detector).__name__} holds no state")
            return
        self.detector.load_state_dict({k.removeprefix("detector."): v for k, v in state.items()})

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

        Labels reach the detector (only the oracle reads them) and :func:`detection_quality`;
        label-free detectors never see them in a way that changes the loss.

        Returns:
            The loss and metrics ``loss``, ``pos_sim``, ``neg_sim`` (over the final masks) and
            ``fn_precision``, ``fn_recall``, ``fn_f1``, ``fn_removed_fraction``,
            ``fn_true_fraction`` (detection quality against labels; nothing is detected during
            warm-up).

        Shape:
            - outputs: ``(2 + S, B, D)`` projector outputs (normalised here); views ``2..`` are
              the support views
            - index, labels: ``(B,)`` int64

        Raises:
            RuntimeError: If a bank detector is used before it was fitted.
        """
        check_batch(outputs, index, labels, self.n_views)
        index, labels = index.to(outputs.device), labels.to(outputs.device)
        views = self.loss_views
        z = normalize_views(outputs[:views])  # (LB, D): the loss views only
        support = None
        if self.support_views > 0:
            support = F.normalize(outputs[views:].detach(), dim=-1)  # (S, B, D), detection only
        sample_ids = expand_to_views(index, views)  # (LB,)
        row_labels = expand_to_views(labels, views)  # (LB,)
        pos = instance_positive_mask(sample_ids)  # (2B, 2B)
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
                support=support,
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


class SimCLRFNRSection(ContrastiveSection):
    """Config section of ``simclr_fnr``: the temperature and the false-negative removal ``fn``.

    ``fn`` is the chosen detector's section (``fn.detector`` selects it, ``oracle`` by default)
    with ``mode`` and ``warmup_epochs`` beside the detector's own parameters, as in
    ``objective: {name: simclr_fnr, fn: {detector: topk, k: 10, warmup_epochs: 3}}``.
    """

    name: Literal["simclr_fnr"] = "simclr_fnr"
    family: ClassVar[str] = "fn_removal"
    fn: SerializeAsAny[FalseNegativeSection] = Field(default_factory=dict, validate_default=True)

    @field_validator("fn", mode="before")
    @classmethod
    def _detector_section(cls, value: object) -> FalseNegativeSection:
        return FN_DETECTORS.parse(value, default="oracle")


@OBJECTIVES.register("simclr_fnr", SimCLRFNRSection)
def build_simclr_fnr(section: SimCLRFNRSection) -> SimCLRFNRObjective:
    """The ``simclr_fnr`` objective of a config section (support views as the detector's)."""
    detector = build_fn_detector(section.fn)
    return SimCLRFNRObjective(
        detector=detector,
        mode=section.fn.mode,
        temperature=section.temperature,
        warmup_epochs=section.fn.warmup_epochs,
        support_views=detector.support_views,
    )
