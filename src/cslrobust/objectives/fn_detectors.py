"""False-negative detectors: strategies that flag negatives suspected of sharing the anchor's class.

A detector maps a batch of embeddings to a boolean ``(M, M)`` mask ``F`` with ``F[i, j]`` True
when the candidate negative ``j`` of anchor ``i`` is judged a false negative. The objective then
either eliminates those pairs from the denominator or attracts them as positives (Huynh et al.,
2022, "Boosting Contrastive Self-Supervised Learning with False Negative Cancellation"). Detectors
hold no hidden state: anything they need (a feature bank, cluster assignments) is a constructor
argument or an explicit input.

Detection quality is measured against labels with :func:`detection_quality`. Labels are passed to
every detector so that the oracle can use them; label-free detectors (``uses_labels = False``) must
not read them, and the registry contract test checks that their output does not change when labels
do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives._params import check_params
from cslrobust.registry import Registry

__all__ = [
    "FN_DETECTORS",
    "FalseNegativeDetector",
    "OracleDetector",
    "build_fn_detector",
    "detection_quality",
]


class FalseNegativeDetector(ABC):
    """Interface of a false-negative detector.

    Subclasses are registered in :data:`FN_DETECTORS` and must be constructible from keyword
    arguments with defaults only (the registry contract test builds each one with no arguments).

    Attributes:
        uses_labels: Whether the detector reads ``labels`` (True only for the oracle upper bound).
    """

    uses_labels: ClassVar[bool] = False

    @abstractmethod
    def __call__(
        self,
        z: Tensor,
        *,
        sample_ids: Tensor,
        labels: Tensor,
        candidate_mask: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Flag suspected false negatives among the candidate negatives.

        Args:
            z: Embeddings of all rows, L2-normalised and detached from the graph.
            sample_ids: Dataset instance id of every row.
            labels: Class label of every row; only detectors with ``uses_labels`` may read it.
            candidate_mask: The current negatives; the result must be a subset of it.
            generator: Source of randomness, on the same device as ``z``; None uses the global RNG.

        Returns:
            Boolean mask of detected false-negative pairs.

        Shape:
            - z: ``(M, D)``
            - sample_ids, labels: ``(M,)`` int64
            - candidate_mask: ``(M, M)`` bool
            - output: ``(M, M)`` bool, a subset of ``candidate_mask``
        """


FN_DETECTORS: Registry[type[FalseNegativeDetector]] = Registry("fn_detector")


def _symmetric_pair_coins(
    sample_ids: Tensor, p: float, generator: torch.Generator | None
) -> Tensor:
    """One Bernoulli(p) draw per unordered instance pair, broadcast to all row pairs; ``(M, M)``."""
    m = sample_ids.shape[0]
    same_instance = sample_ids[:, None] == sample_ids[None, :]  # (M, M)
    # argmax returns the first maximal index: every row maps to the first row of its instance, so
    # all views of an instance share one draw, without a data-dependent (host-syncing) unique().
    first_row = same_instance.to(torch.uint8).argmax(dim=1)  # (M,)
    u = torch.rand((m, m), generator=generator, device=sample_ids.device)
    u = u.triu() + u.triu(diagonal=1).T  # symmetric: u[a, b] == u[b, a]
    return u[first_row[:, None], first_row[None, :]] < p  # (M, M)


@FN_DETECTORS.register("oracle")
@dataclass(frozen=True)
class OracleDetector(FalseNegativeDetector):
    """Upper-bound detector: every candidate negative with the anchor's label is a false negative.

    With ``removal_rate < 1`` each true false-negative pair is kept with probability
    ``removal_rate``. The decision is made once per unordered pair of *instances*, so ``(i, j)``
    and ``(j, i)`` agree and so do all views of the two instances. This simulates an imperfect
    detector of given recall and precision 1.

    Args:
        removal_rate: Fraction of true false-negative pairs to flag, in ``[0, 1]``.

    Raises:
        ConfigError: If ``removal_rate`` is outside ``[0, 1]``.
    """

    removal_rate: float = 1.0

    uses_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.removal_rate <= 1.0:
            raise ConfigError(f"removal_rate must be in [0, 1], got {self.removal_rate}")

    def __call__(
        self,
        z: Tensor,
        *,
        sample_ids: Tensor,
        labels: Tensor,
        candidate_mask: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Flag same-label candidate negatives (see :meth:`FalseNegativeDetector.__call__`).

        Draws from ``generator`` only when ``removal_rate < 1``.
        """
        detected = candidate_mask & (labels[:, None] == labels[None, :])  # (M, M)
        if self.removal_rate >= 1.0:
            return detected
        return detected & _symmetric_pair_coins(sample_ids, self.removal_rate, generator)


def build_fn_detector(name: str, /, **params: object) -> FalseNegativeDetector:
    """Build the detector registered as ``name`` from its constructor parameters.

    Args:
        name: A key of :data:`FN_DETECTORS` (e.g. ``"oracle"``).
        **params: Keyword arguments of that detector's constructor.

    Returns:
        The detector.

    Raises:
        ConfigError: If ``name`` is unknown, a parameter is unknown or missing, or a value is
            invalid.
    """
    factory: Callable[..., FalseNegativeDetector] = FN_DETECTORS.get(name)
    check_params(factory, params, what=f"fn_detector {name!r}")
    return factory(**params)


def detection_quality(
    detected: Tensor, candidate_mask: Tensor, labels: Tensor
) -> dict[str, Tensor]:
    """Precision and recall of a detected false-negative mask against true same-label pairs.

    True false negatives are the candidate pairs whose two rows share a label. Detected pairs
    outside ``candidate_mask`` are ignored. Conventions that keep every value finite (no NaN in
    logs): precision is 1 when nothing is detected, recall is 1 when there is no true false
    negative, F1 is 0 when precision + recall is 0, and the fractions are 0 when there is no
    candidate.

    Args:
        detected: Detected false-negative pairs.
        candidate_mask: The negatives the detector chose from.
        labels: Class label of every row.

    Returns:
        Detached 0-dim float tensors (no host sync): ``precision``, ``recall``, ``f1``,
        ``removed_fraction`` (flagged / candidate pairs) and ``true_fraction`` (true false
        negatives / candidate pairs).

    Shape:
        - detected, candidate_mask: ``(M, M)`` bool
        - labels: ``(M,)`` int64
    """
    true_fn = candidate_mask & (labels[:, None] == labels[None, :])  # (M, M)
    flagged = detected & candidate_mask
    tp = (flagged & true_fn).sum().float()
    n_flagged = flagged.sum().float()
    n_true = true_fn.sum().float()
    n_candidates = candidate_mask.sum().float()
    one = torch.ones((), device=detected.device)
    precision = torch.where(n_flagged > 0, tp / n_flagged.clamp(min=1), one)
    recall = torch.where(n_true > 0, tp / n_true.clamp(min=1), one)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=torch.finfo(precision.dtype).tiny)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "removed_fraction": n_flagged / n_candidates.clamp(min=1),
        "true_fraction": n_true / n_candidates.clamp(min=1),
    }
