"""False-negative detectors: strategies that flag negatives suspected of sharing the anchor's class.

A detector maps a batch of embeddings to a boolean ``(M, M)`` mask ``F`` with ``F[i, j]`` True
when the candidate negative ``j`` of anchor ``i`` is judged a false negative. The objective then
either eliminates those pairs from the denominator or attracts them as positives (Huynh et al.,
2022, "Boosting Contrastive Self-Supervised Learning with False Negative Cancellation", FNC).

Built-in detectors (MISSION.md, "Definitions"):

- ``oracle``: same label (the upper bound; the only detector that reads labels);
- ``threshold``: cosine similarity to the anchor above a threshold;
- ``topk``: the ``k`` most similar candidates of each anchor, optionally scored through extra
  *support views* of the anchor (FNC);
- ``cluster``: same k-means pseudo-label, from a feature bank of the whole training set.

**External candidates.** By default the candidates are the rows of the batch itself (``(M, M)``
masks). A method with a memory of earlier keys (MoCo's queue) passes them as ``candidates``
(:class:`CandidateSet`: embeddings, instance ids and labels of ``N`` entries); masks are then ``(M, N)``
with rows = anchors and columns = those entries, and every detector scores the anchors against them
the same way.

Masks need not be symmetric: ``topk`` decides per anchor (``j`` may be among ``i``'s nearest
candidates without ``i`` being among ``j``'s), as FNC does. The oracle is symmetric.

State is explicit. Per-batch detectors are frozen and stateless. Bank detectors
(:class:`BankFalseNegativeDetector`) hold one piece of state, their fit on the feature bank, which
changes only through :meth:`~BankFalseNegativeDetector.refresh` and
:meth:`~BankFalseNegativeDetector.load_state_dict` and is saved with
:meth:`~BankFalseNegativeDetector.state_dict`; calling one before it is fitted is an error.

Each detector registers its config section (a :class:`FalseNegativeSection` subclass: the
detector's parameters beside ``mode`` and ``warmup_epochs``, which tell ``simclr_fnr`` how to apply
the mask) together with a builder from that section; :func:`build_fn_detector` dispatches a section
to its builder.

Detection quality is measured against labels with :func:`detection_quality`. Labels are passed to
every detector so that the oracle can use them; label-free detectors (``uses_labels = False``) must
not read them, and the registry contract test checks that their output does not change when labels
do.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BeforeValidator, Field, SerializeAsAny
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives.kmeans import spherical_kmeans
from cslrobust.registry import ComponentRegistry
from cslrobust.sections import Section

__all__ = [
    "FN_DETECTORS",
    "BankFalseNegativeDetector",
    "CandidateSet",
    "ClusterDetector",
    "ClusterSection",
    "FNRMode",
    "FalseNegativeDetector",
    "FalseNegativeSection",
    "OracleDetector",
    "OracleSection",
    "ThresholdDetector",
    "ThresholdSection",
    "TopKDetector",
    "TopKSection",
    "build_fn_detector",
    "detection_quality",
]

FNRMode = Literal["eliminate", "attract"]
"""How ``simclr_fnr`` treats detected false negatives: leave them out, or make them positives."""


@dataclass(frozen=True)
class CandidateSet:
    """Candidate negatives outside the batch (e.g. MoCo's queue), scored against the batch's anchors.

    Attributes:
        z: Embeddings, L2-normalised and detached.
        sample_ids: Dataset instance id of every entry (indexes a bank detector's fit).
        labels: Class label of every entry; only detectors with ``uses_labels`` may read it (and
            :func:`detection_quality`, for measurement).

    Shape:
        - z: ``(N, D)``
        - sample_ids, labels: ``(N,)`` int64
    """

    z: Tensor
    sample_ids: Tensor
    labels: Tensor


class FalseNegativeDetector(ABC):
    """Interface of a false-negative detector.

    Subclasses are built from typed keyword arguments (required ones have no default: a threshold or
    ``k`` has no sensible universal value); their registered builders in :data:`FN_DETECTORS` take
    them from the detector's config section. The registry contract test builds each one from an
    example parameter set.

    Attributes:
        uses_labels: Whether the detector reads ``labels`` (True only for the oracle upper bound).
    """

    uses_labels: ClassVar[bool] = False

    @property
    def support_views(self) -> int:
        """Extra augmented views per sample the detector needs as ``support`` (0: none)."""
        return 0

    @abstractmethod
    def __call__(
        self,
        z: Tensor,
        *,
        sample_ids: Tensor,
        labels: Tensor,
        candidate_mask: Tensor,
        generator: torch.Generator | None = None,
        support: Tensor | None = None,
        candidates: CandidateSet | None = None,
    ) -> Tensor:
        """Flag suspected false negatives among the candidate negatives.

        Rows are view-major: with ``B`` samples, row ``r`` belongs to sample ``r % B``.

        Args:
            z: Embeddings of all rows, L2-normalised and detached from the graph.
            sample_ids: Dataset instance id of every row.
            labels: Class label of every row; only detectors with ``uses_labels`` may read it.
            candidate_mask: The current negatives; the result must be a subset of it.
            generator: Source of randomness, on the same device as ``z``; None uses the global RNG.
            support: Extra views of every sample used only for detection (never in the loss),
                L2-normalised and detached, or None. Detectors with ``support_views == 0`` ignore
                it.
            candidates: Candidates outside the batch (MoCo's queue), or None: the rows of ``z``
                are the candidates. With it, ``candidate_mask`` and the output have one column per
                entry of ``candidates``.

        Returns:
            Boolean mask of detected false-negative pairs; not necessarily symmetric.

        Shape:
            - z: ``(M, D)`` with ``M = V * B``
            - sample_ids, labels: ``(M,)`` int64
            - candidate_mask: ``(M, N)`` bool, ``N = M`` without ``candidates``
            - support: ``(S, B, D)``
            - output: ``(M, N)`` bool, a subset of ``candidate_mask``
        """


class BankFalseNegativeDetector(FalseNegativeDetector):
    """A detector fitted on a feature bank of the whole training set and refreshed in training.

    The fit (e.g. k-means pseudo-labels) is the detector's only state. It is replaced by
    :meth:`refresh` and saved and restored with :meth:`state_dict` / :meth:`load_state_dict`, so
    that a resumed run detects exactly as an uninterrupted one.
    """

    @property
    @abstractmethod
    def is_fitted(self) -> bool:
        """Whether :meth:`refresh` or :meth:`load_state_dict` has provided a fit."""

    @abstractmethod
    def needs_refresh(self, epochs_active: int) -> bool:
        """Whether to refit at the start of an epoch.

        Args:
            epochs_active: Epochs since detection started (0 at the first epoch after warm-up).

        Returns:
            True on the refresh schedule, and whenever the detector is not fitted.
        """

    @abstractmethod
    def refresh(self, bank: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        """Refit on the feature bank.

        Args:
            bank: Features of every training sample, row ``i`` = dataset index ``i``,
                L2-normalised.
            generator: Source of randomness (any device).

        Returns:
            Diagnostics of the fit, for logging.

        Shape:
            - bank: ``(N, D)``
        """

    @abstractmethod
    def state_dict(self) -> dict[str, Tensor]:
        """The fit as tensors (empty when not fitted)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore a fit saved by :meth:`state_dict` (an empty mapping clears it)."""


class FalseNegativeSection(Section):
    """Base of the ``objective.fn`` sections: a detector's parameters and how the mask is applied.

    Attributes:
        detector: Registry key of the detector (each subclass fixes it).
        mode: ``"eliminate"`` or ``"attract"`` the detected false negatives (read by
            ``simclr_fnr``, not by the detector).
        warmup_epochs: Epochs of plain SimCLR before detection starts (read by ``simclr_fnr``).
    """

    detector: str
    mode: FNRMode = "eliminate"
    warmup_epochs: int = Field(default=0, ge=0)


FalseNegativeDetectorBuilder = Callable[[Any], FalseNegativeDetector]
"""A registered builder: the detector from an instance of its section."""

FN_DETECTORS: ComponentRegistry[FalseNegativeSection, FalseNegativeDetectorBuilder] = (
    ComponentRegistry("detector", key="detector", base=FalseNegativeSection)
)
"""False-negative detectors keyed by ``objective.fn.detector``: section class and builder each."""


def _optional_detector_section(value: object) -> FalseNegativeSection | None:
    """``None`` (no removal) or the section of the detector ``value`` names (``oracle`` if unnamed)."""
    if value is None:
        return None
    return FN_DETECTORS.parse(value, default="oracle")


OptionalRemoval = Annotated[
    SerializeAsAny[FalseNegativeSection] | None, BeforeValidator(_optional_detector_section)
]
"""The ``fn`` field of an objective whose false-negative removal is optional (``moco``, ``acl``,
``rocl``, ``dynacl``): ``null`` for none, else a detector section exactly as ``simclr_fnr``'s."""


def _check_int(name: str, value: object, minimum: int) -> None:
    """ConfigError unless ``value`` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_real(name: str, value: object, low: float, high: float) -> None:
    """ConfigError unless ``value`` is a finite real number in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")


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


def _candidate_coins(
    sample_ids: Tensor, n_candidates: int, p: float, generator: torch.Generator | None
) -> Tensor:
    """One Bernoulli(p) draw per (anchor instance, external candidate), shared by the anchor's views.

    The pair is not symmetric (the candidate is not an anchor), so only the views of an anchor's
    instance are tied: they all read the draws of the instance's first row. ``(M, N)``.
    """
    m = sample_ids.shape[0]
    same_instance = sample_ids[:, None] == sample_ids[None, :]  # (M, M)
    first_row = same_instance.to(torch.uint8).argmax(dim=1)  # (M,)
    u = torch.rand((m, n_candidates), generator=generator, device=sample_ids.device)
    return u[first_row] < p  # (M, N)


def _similarity_scores(
    z: Tensor,
    support: Tensor | None,
    support_views: int,
    what: str,
    others: Tensor | None = None,
) -> Tensor:
    r"""Score of candidate ``j`` for anchor row ``i``: cosine similarity, or its support-view mean.

    Without support views the score is ``z_i . z_j``. With ``S`` support views ``u_1..u_S`` of
    anchor ``i``'s sample it is the mean similarity ``(1/S) \sum_s u_s . z_j``, computed as one
    matmul with the mean support vector (the mean of dot products is the dot product with the
    mean); every view of a sample then gets the same scores. The candidates ``j`` are the rows of
    ``others`` (``(N, D)``, default ``z``).
    """
    others = z if others is None else others
    if support_views == 0:
        sim = z @ others.T  # (M, N)
        return sim.to(torch.promote_types(sim.dtype, torch.float32))
    if support is None:
        raise ValueError(f"{what} with support_views={support_views} needs support views, got None")
    m = z.shape[0]
    if support.dim() != 3 or support.shape[0] != support_views or m % support.shape[1] != 0:
        raise ValueError(
            f"{what} expects support of shape (S={support_views}, B, D) with B dividing "
            f"{m} rows, got {tuple(support.shape)}"
        )
    anchor = support.mean(dim=0).to(z.dtype)  # (B, D): mean support view of every sample
    scores = anchor @ others.T  # (B, N)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    return scores.repeat(m // support.shape[1], 1)  # (M, N): row r is sample r % B


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
        _check_real("removal_rate", self.removal_rate, 0.0, 1.0)

    def __call__(
        self,
        z: Tensor,
        *,
        sample_ids: Tensor,
        labels: Tensor,
        candidate_mask: Tensor,
        generator: torch.Generator | None = None,
        support: Tensor | None = None,
        candidates: CandidateSet | None = None,
    ) -> Tensor:
        """Flag same-label candidate negatives (see :meth:`FalseNegativeDetector.__call__`).

        Draws from ``generator`` only when ``removal_rate < 1``; ignores ``support``. Against
        external ``candidates`` one decision is drawn per (anchor instance, entry).
        """
        other_labels = labels if candidates is None else candidates.labels
        detected = candidate_mask & (labels[:, None] == other_labels[None, :])  # (M, N)
        if self.removal_rate >= 1.0:
            return detected
        if candidates is not None:
            n = candidates.labels.shape[0]
            return detected & _candidate_coins(sample_ids, n, self.removal_rate, generator)
        return detected & _symmetric_pair_coins(sample_ids, self.removal_rate, generator)


class _SimilarityDetector(FalseNegativeDetector):
    """Base of the detectors that flag candidates by a similarity score (``threshold``, ``topk``).

    Subclasses are frozen dataclasses with a ``support_views`` field and a ``name`` class attribute
    (their registry key, for messages). They state only how scores select candidates
    (:meth:`_flag`); scoring, with or without support views, and its validation live here.
    """

    name: ClassVar[str]

    def __post_init__(self) -> None:
        _check_int("support_views", self.support_views, 0)

    @abstractmethod
    def _flag(self, scores: Tensor, candidate_mask: Tensor) -> Tensor:
        """Select the flagged pairs from the scores; ``(M, N)`` float and bool -> ``(M, N)`` bool."""

    def __call__(
        self,
        z: Tensor,
        *,
        sample_ids: Tensor,
        labels: Tensor,
        candidate_mask: Tensor,
        generator: torch.Generator | None = None,
        support: Tensor | None = None,
        candidates: CandidateSet | None = None,
    ) -> Tensor:
        """Flag candidates by their similarity scores (see ``FalseNegativeDetector``).

        Raises:
            ValueError: If ``support_views > 0`` and ``support`` is missing or mis-shaped.
        """
        others = None if candidates is None else candidates.z
        scores = _similarity_scores(z, support, self.support_views, self.name, others)  # (M, N)
        return self._flag(scores, candidate_mask)


@dataclass(frozen=True)
class ThresholdDetector(_SimilarityDetector):
    """Flag candidate negatives whose cosine similarity to the anchor exceeds a threshold.

    The similarity-threshold variant of FNC (Huynh et al., 2022, "Finding potential false
    negatives"). With support views the
    score is the mean similarity of the candidate to the anchor's support views (as
    :class:`TopKDetector`); without them the mask is symmetric.

    Args:
        threshold: Cosine similarity above which (strictly) a candidate is flagged, in
            ``[-1, 1]``.
        support_views: Extra views per sample used to score candidates (0: the anchor itself).

    Raises:
        ConfigError: If ``threshold`` is not a number in ``[-1, 1]`` or ``support_views`` is not an
            integer ``>= 0``.
    """

    threshold: float
    support_views: int = 0

    name: ClassVar[str] = "threshold"

    def __post_init__(self) -> None:
        _check_real("threshold", self.threshold, -1.0, 1.0)
        super().__post_init__()

    def _flag(self, scores: Tensor, candidate_mask: Tensor) -> Tensor:
        """Candidates scoring above the threshold."""
        return candidate_mask & (scores > self.threshold)


@dataclass(frozen=True)
class TopKDetector(_SimilarityDetector):
    """Flag, for every anchor, its ``k`` highest-scoring candidate negatives.

    FNC's top-k rule (Huynh et al., 2022, "Finding potential false negatives"). Scores are cosine
    similarities to the anchor, or, with ``support_views = S > 0``, FNC's support-view scoring:
    every candidate is compared with each of ``S`` extra augmented views of the anchor's image and
    the ``S`` per-view similarities are aggregated into one score per candidate before selecting.
    We aggregate by the **mean**; the alternative of taking a top-k set per support view and
    merging the sets is not implemented, because its size would vary with ``S`` and with how
    much the views agree, while the mean flags exactly ``k`` candidates per anchor. Support views
    serve detection only; they never enter the loss.

    Non-candidates are masked out before the top-k, so the flags fall among the candidates; an
    anchor with fewer than ``k`` candidates flags all of them. The decision is per anchor and the
    mask is in general not symmetric. Ties are broken by :func:`torch.topk`.

    Args:
        k: Candidates flagged per anchor (at least 1). With ``V`` views of ``B`` samples and
            ``C`` balanced classes, the true count per anchor is about ``V * (B / C - 1)``.
        support_views: Extra views per sample used to score candidates (0: the anchor itself).

    Raises:
        ConfigError: If ``k`` is not an integer ``>= 1`` or ``support_views`` not one ``>= 0``.
    """

    k: int
    support_views: int = 0

    name: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        _check_int("k", self.k, 1)
        super().__post_init__()

    def _flag(self, scores: Tensor, candidate_mask: Tensor) -> Tensor:
        """Each anchor's ``k`` best-scoring candidates."""
        scores = scores.masked_fill(~candidate_mask, -math.inf)
        top = scores.topk(min(self.k, scores.shape[1]), dim=1).indices  # (M, k)
        detected = torch.zeros_like(candidate_mask).scatter_(1, top, True)  # (M, M)
        # An anchor with fewer than k candidates picked some -inf entries: drop them.
        return detected & candidate_mask


@dataclass
class _ClusterFit:
    """The mutable fit of a :class:`ClusterDetector` (None until fitted)."""

    pseudo_labels: Tensor | None = None
    centroids: Tensor | None = None


@dataclass(frozen=True)
class ClusterDetector(BankFalseNegativeDetector):
    """Flag candidate negatives whose k-means pseudo-label equals the anchor's.

    Pseudo-labels come from spherical k-means (:func:`~.kmeans.spherical_kmeans`) on a feature
    bank of the whole training set (un-augmented images, eval mode), refitted every
    ``refresh_every`` epochs, in the spirit of clustering-based false-negative detection (e.g.
    Caron et al., 2018, DeepCluster; Li et al., 2021, PCL). ``sample_ids`` index the bank, so a
    pair is flagged by the clusters of the two *images*, whatever the views' augmentations; the
    mask is symmetric.

    Args:
        n_clusters: Number of k-means clusters (at least 2; the number of classes is the natural
            choice).
        refresh_every: Epochs between refits (at least 1).
        iters: Maximum Lloyd iterations per fit (at least 1).

    Raises:
        ConfigError: If a parameter is not an integer in its range.
    """

    n_clusters: int
    refresh_every: int = 1
    iters: int = 20
    _fit: _ClusterFit = field(default_factory=_ClusterFit, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int("n_clusters", self.n_clusters, 2)
        _check_int("refresh_every", self.refresh_every, 1)
        _check_int("iters", self.iters, 1)

    @property
    def is_fitted(self) -> bool:
        """Whether pseudo-labels are available."""
        return self._fit.pseudo_labels is not None

    @property
    def pseudo_labels(self) -> Tensor | None:
        """Cluster of every training sample (row ``i`` = dataset index ``i``), or None; ``(N,)``."""
        return self._fit.pseudo_labels

    def needs_refresh(self, epochs_active: int) -> bool:
        """True every ``refresh_every`` epochs of detection, and whenever not fitted."""
        return not self.is_fitted or epochs_active % self.refresh_every == 0

    def refresh(self, bank: Tensor, *, generator: torch.Generator) -> dict[str, float]:
        """Fit k-means on the bank and store its pseudo-labels (see the base class).

        Returns:
            ``kmeans_inertia`` (sum of cosine distances to the centroids), ``kmeans_iterations``,
            ``cluster_size_min`` and ``cluster_size_max``.

        Raises:
            ConfigError: If the bank has fewer rows than ``n_clusters``.
            ValueError: If ``bank`` is not 2-D.
        """
        if bank.dim() != 2:
            raise ValueError(f"bank must be 2-D (N, D), got shape {tuple(bank.shape)}")
        if bank.shape[0] < self.n_clusters:
            raise ConfigError(
                f"n_clusters={self.n_clusters} exceeds the {bank.shape[0]} samples of the bank"
            )
        result = spherical_kmeans(bank, self.n_clusters, iters=self.iters, generator=generator)
        self._fit.pseudo_labels = result.labels
        self._fit.centroids = result.centroids
        sizes = torch.bincount(result.labels, minlength=self.n_clusters)
        return {
            "kmeans_inertia": float(result.inertia),
            "kmeans_iterations": float(result.iterations),
            "cluster_size_min": float(sizes.min()),
            "cluster_size_max": float(sizes.max()),
        }

    def state_dict(self) -> dict[str, Tensor]:
        """``pseudo_labels`` ``(N,)`` and ``centroids`` ``(K, D)``, or ``{}`` if not fitted."""
        if self._fit.pseudo_labels is None or self._fit.centroids is None:
            return {}
        return {"pseudo_labels": self._fit.pseudo_labels, "centroids": self._fit.centroids}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the fit of :meth:`state_dict`; ``{}`` clears it.

        Raises:
            ValueError: On missing or unexpected keys or a mismatched number of clusters.
        """
        if not state:
            self._fit.pseudo_labels = self._fit.centroids = None
            return
        if set(state) != {"pseudo_labels", "centroids"}:
            raise ValueError(
                f"cluster detector state needs keys pseudo_labels and centroids, got {sorted(state)}"
            )
        pseudo_labels, centroids = state["pseudo_labels"], state["centroids"]
        if pseudo_labels.dim() != 1 or centroids.dim() != 2:
            raise ValueError("cluster detector state: pseudo_labels must be (N,), centroids (K, D)")
        if centroids.shape[0] != self.n_clusters:
            raise ValueError(
                f"cluster detector state has {centroids.shape[0]} centroids, "
                f"expected n_clusters={self.n_clusters}"
            )
        self._fit.pseudo_labels = pseudo_labels.long()
        self._fit.centroids = centroids

    def __call__(
        self,
        z: Tensor,
        *,
        sample_ids: Tensor,
        labels: Tensor,
        candidate_mask: Tensor,
        generator: torch.Generator | None = None,
        support: Tensor | None = None,
        candidates: CandidateSet | None = None,
    ) -> Tensor:
        """Flag candidates in the anchor's cluster (see ``FalseNegativeDetector``).

        Raises:
            RuntimeError: If called before :meth:`refresh` or :meth:`load_state_dict` (the
                training loop must refresh the objective when it asks for a bank).
        """
        pseudo_labels = self._fit.pseudo_labels
        if pseudo_labels is None:
            raise RuntimeError(
                "cluster detector used before it was fitted: call refresh_objective(...) "
                "whenever objective_needs_bank(...) is True, or load its saved state"
            )
        if pseudo_labels.device != sample_ids.device:
            # Move once and keep the copy: the same values, no per-step transfer.
            pseudo_labels = self._fit.pseudo_labels = pseudo_labels.to(sample_ids.device)
        row_clusters = pseudo_labels[sample_ids]  # (M,)
        if candidates is None:
            return candidate_mask & (row_clusters[:, None] == row_clusters[None, :])
        other_clusters = pseudo_labels[candidates.sample_ids.to(pseudo_labels.device)]  # (N,)
        return candidate_mask & (row_clusters[:, None] == other_clusters[None, :])


class OracleSection(FalseNegativeSection):
    """Config section of the ``oracle`` detector (see :class:`OracleDetector`)."""

    detector: Literal["oracle"] = "oracle"
    removal_rate: float = Field(default=1.0, ge=0.0, le=1.0)


class _SimilaritySection(FalseNegativeSection):
    """The ``support_views`` shared by the similarity detectors' sections."""

    support_views: int = Field(default=0, ge=0)


class ThresholdSection(_SimilaritySection):
    """Config section of the ``threshold`` detector (see :class:`ThresholdDetector`)."""

    detector: Literal["threshold"] = "threshold"
    threshold: float = Field(ge=-1.0, le=1.0)


class TopKSection(_SimilaritySection):
    """Config section of the ``topk`` detector (see :class:`TopKDetector`)."""

    detector: Literal["topk"] = "topk"
    k: int = Field(ge=1)


class ClusterSection(FalseNegativeSection):
    """Config section of the ``cluster`` detector (see :class:`ClusterDetector`)."""

    detector: Literal["cluster"] = "cluster"
    n_clusters: int = Field(ge=2)
    refresh_every: int = Field(default=1, ge=1)
    iters: int = Field(default=20, ge=1)


@FN_DETECTORS.register("oracle", OracleSection)
def build_oracle(section: OracleSection) -> OracleDetector:
    """The ``oracle`` detector of a config section."""
    return OracleDetector(removal_rate=section.removal_rate)


@FN_DETECTORS.register("threshold", ThresholdSection)
def build_threshold(section: ThresholdSection) -> ThresholdDetector:
    """The ``threshold`` detector of a config section."""
    return ThresholdDetector(threshold=section.threshold, support_views=section.support_views)


@FN_DETECTORS.register("topk", TopKSection)
def build_topk(section: TopKSection) -> TopKDetector:
    """The ``topk`` detector of a config section."""
    return TopKDetector(k=section.k, support_views=section.support_views)


@FN_DETECTORS.register("cluster", ClusterSection)
def build_cluster(section: ClusterSection) -> ClusterDetector:
    """The ``cluster`` detector of a config section."""
    return ClusterDetector(
        n_clusters=section.n_clusters, refresh_every=section.refresh_every, iters=section.iters
    )


def build_fn_detector(section: FalseNegativeSection) -> FalseNegativeDetector:
    """Build the detector that ``section`` configures.

    Args:
        section: A registered detector's section, e.g. ``FN_DETECTORS.section("topk", k=5)`` or
            ``TopKSection(k=5)``.

    Returns:
        The detector (``mode`` and ``warmup_epochs`` are for the objective and not read here).

    Raises:
        ConfigError: If ``section`` is not a registered detector's section or a value is invalid.
    """
    return FN_DETECTORS.entry_for(section).build(section)


def detection_quality(
    detected: Tensor,
    candidate_mask: Tensor,
    labels: Tensor,
    candidate_labels: Tensor | None = None,
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
        labels: Class label of every row (anchor).
        candidate_labels: Class label of every column when the candidates are external (MoCo's
            queue); None: the columns are the rows.

    Returns:
        Detached 0-dim float tensors (no host sync): ``precision``, ``recall``, ``f1``,
        ``removed_fraction`` (flagged / candidate pairs) and ``true_fraction`` (true false
        negatives / candidate pairs).

    Shape:
        - detected, candidate_mask: ``(M, N)`` bool (``N = M`` without ``candidate_labels``)
        - labels: ``(M,)`` int64
        - candidate_labels: ``(N,)`` int64
    """
    other = labels if candidate_labels is None else candidate_labels
    true_fn = candidate_mask & (labels[:, None] == other[None, :])  # (M, N)
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
