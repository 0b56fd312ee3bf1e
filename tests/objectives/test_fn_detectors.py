import pytest
import torch

from cslrobust.errors import ConfigError
from cslrobust.objectives import (
    FN_DETECTORS,
    BankFalseNegativeDetector,
    ClusterDetector,
    FalseNegativeDetector,
    OracleDetector,
    OracleSection,
    ThresholdDetector,
    TopKDetector,
    TopKSection,
    build_fn_detector,
    detection_quality,
    expand_to_views,
    instance_positive_mask,
    negative_mask,
)

# One or more example parameter sets per registered detector (required parameters have no
# default). A newly registered detector must add an entry: the coverage test below fails otherwise.
EXAMPLES: list[tuple[str, dict[str, object]]] = [
    ("oracle", {}),
    ("oracle", {"removal_rate": 0.5}),
    ("threshold", {"threshold": 0.2}),
    ("threshold", {"threshold": 0.2, "support_views": 2}),
    ("topk", {"k": 3}),
    ("topk", {"k": 3, "support_views": 2}),
    ("topk", {"k": 100}),
    ("cluster", {"n_clusters": 3}),
]


def _batch(
    batch: int, n_classes: int, seed: int, n_views: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, sample_ids, row_labels, candidate negatives) of a view-major SimCLR batch."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(10 * batch, generator=g)[:batch]
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    z = torch.nn.functional.normalize(torch.randn(n_views * batch, 8, generator=g), dim=1)
    sample_ids = expand_to_views(index, n_views)
    candidates = negative_mask(instance_positive_mask(sample_ids))
    return z, sample_ids, expand_to_views(labels, n_views), candidates


def test_oracle_flags_exactly_the_same_label_negatives() -> None:
    z, ids, labels, cand = _batch(16, 3, 0)
    detected = OracleDetector()(z, sample_ids=ids, labels=labels, candidate_mask=cand)
    assert detected.dtype == torch.bool and detected.shape == cand.shape
    assert not (detected & ~cand).any()
    assert torch.equal(detected, detected.T)
    assert torch.equal(detected, cand & (labels[:, None] == labels[None, :]))


def test_oracle_partial_removal_is_symmetric_per_instance_pair_and_about_p() -> None:
    batch, n_views = 96, 3
    z, ids, labels, cand = _batch(batch, 4, 1, n_views=n_views)
    full = OracleDetector()(z, sample_ids=ids, labels=labels, candidate_mask=cand)
    g = torch.Generator().manual_seed(123)
    half = OracleDetector(removal_rate=0.5)(
        z, sample_ids=ids, labels=labels, candidate_mask=cand, generator=g
    )
    assert not (half & ~full).any()
    assert torch.equal(half, half.T)
    # Every view combination of one instance pair shares the decision.
    blocks = half.reshape(n_views, batch, n_views, batch)
    assert torch.equal(blocks, blocks[:1, :, :1, :].expand_as(blocks))
    # About 1140 same-label instance pairs: the kept fraction is within ~7 standard deviations.
    kept = half.sum().item() / full.sum().item()
    assert 0.4 < kept < 0.6

    again = OracleDetector(removal_rate=0.5)(
        z,
        sample_ids=ids,
        labels=labels,
        candidate_mask=cand,
        generator=torch.Generator().manual_seed(123),
    )
    assert torch.equal(half, again)


def test_oracle_removal_rate_zero_flags_nothing() -> None:
    z, ids, labels, cand = _batch(8, 2, 2)
    detected = OracleDetector(removal_rate=0.0)(
        z, sample_ids=ids, labels=labels, candidate_mask=cand
    )
    assert not detected.any()


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_oracle_rejects_bad_removal_rate(rate: float) -> None:
    with pytest.raises(ConfigError, match="removal_rate"):
        OracleDetector(removal_rate=rate)


def test_build_fn_detector() -> None:
    assert build_fn_detector(OracleSection(removal_rate=0.25)) == OracleDetector(removal_rate=0.25)
    section = FN_DETECTORS.section("topk", k=4, support_views=1, mode="attract")
    assert section == TopKSection(k=4, support_views=1, mode="attract")
    assert build_fn_detector(section) == TopKDetector(k=4, support_views=1)
    with pytest.raises(ConfigError, match="removal_rat is not a parameter of detector 'oracle'"):
        FN_DETECTORS.section("oracle", removal_rat=0.25)
    with pytest.raises(ConfigError, match="unknown detector 'psychic'"):
        FN_DETECTORS.section("psychic")


def test_detection_quality_on_a_hand_made_case() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    candidates = ~torch.eye(4, dtype=torch.bool)  # 12 pairs, 4 of them true false negatives
    detected = torch.zeros(4, 4, dtype=torch.bool)
    detected[0, 1] = detected[1, 0] = True  # true positives
    detected[0, 2] = True  # a false alarm
    detected[3, 3] = True  # not a candidate: ignored
    q = detection_quality(detected, candidates, labels)
    assert q["precision"].item() == pytest.approx(2 / 3)
    assert q["recall"].item() == pytest.approx(2 / 4)
    assert q["f1"].item() == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert q["removed_fraction"].item() == pytest.approx(3 / 12)
    assert q["true_fraction"].item() == pytest.approx(4 / 12)


def test_detection_quality_conventions_are_nan_free() -> None:
    labels = torch.tensor([0, 0, 1])
    candidates = ~torch.eye(3, dtype=torch.bool)
    nothing = torch.zeros(3, 3, dtype=torch.bool)
    q = detection_quality(nothing, candidates, labels)
    assert (q["precision"].item(), q["recall"].item(), q["f1"].item()) == (1.0, 0.0, 0.0)

    distinct = torch.tensor([0, 1, 2])
    q = detection_quality(nothing, candidates, distinct)
    assert (q["precision"].item(), q["recall"].item(), q["f1"].item()) == (1.0, 1.0, 1.0)
    q = detection_quality(nothing, nothing, distinct)
    assert q["removed_fraction"].item() == 0.0 and q["true_fraction"].item() == 0.0


def test_every_registered_detector_has_a_contract_example() -> None:
    assert {name for name, _ in EXAMPLES} == set(FN_DETECTORS.names())


def _ready(detector: FalseNegativeDetector, n_bank: int, dim: int) -> FalseNegativeDetector:
    """Fit a bank detector on a random bank (other detectors are returned as they are)."""
    if isinstance(detector, BankFalseNegativeDetector):
        g = torch.Generator().manual_seed(5)
        bank = torch.nn.functional.normalize(torch.randn(n_bank, dim, generator=g), dim=1)
        detector.refresh(bank, generator=torch.Generator().manual_seed(0))
    return detector


@pytest.mark.parametrize(("name", "params"), EXAMPLES)
def test_fn_detector_contract(name: str, params: dict[str, object]) -> None:
    """Every registered detector returns a bool subset of the candidates of the right shape, and
    a label-free one ignores the labels. Masks need not be symmetric (topk decides per anchor)."""
    batch = 12
    detector = _ready(
        build_fn_detector(FN_DETECTORS.section(name, **params)), n_bank=10 * batch, dim=8
    )
    z, ids, labels, cand = _batch(batch, 3, 4)
    g = torch.Generator().manual_seed(9)
    support = None
    if detector.support_views:
        raw = torch.randn(detector.support_views, batch, 8, generator=g)
        support = torch.nn.functional.normalize(raw, dim=-1)

    def run(row_labels: torch.Tensor) -> torch.Tensor:
        return detector(
            z,
            sample_ids=ids,
            labels=row_labels,
            candidate_mask=cand,
            generator=torch.Generator().manual_seed(1),
            support=support,
        )

    detected = run(labels)
    assert detected.dtype == torch.bool and detected.shape == cand.shape
    assert not (detected & ~cand).any()
    if not detector.uses_labels:
        shuffled = labels[torch.randperm(labels.shape[0], generator=g)]
        assert torch.equal(detected, run(shuffled)), f"{name} is label-free but depends on labels"


# --- planted clusters -------------------------------------------------------------------------


def _planted(
    n_classes: int, per_class: int, noise: float, seed: int, dim: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two noisy views and an un-augmented copy of points around orthonormal class centres.

    Returns (views (2, N, D) unit rows, bank (N, D) unit rows, labels (N,)); sample i has dataset
    index i.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.linalg.qr(torch.randn(dim, n_classes, generator=g)).Q.T  # (C, D) orthonormal
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(labels.shape[0], generator=g)]
    n = labels.shape[0]
    base = centres[labels] + noise * torch.randn(n, dim, generator=g)  # (N, D)
    views = base[None] + noise * torch.randn(2, n, dim, generator=g)  # (2, N, D)
    normalize = torch.nn.functional.normalize
    return normalize(views, dim=-1), normalize(base, dim=-1), labels


def _detect(
    detector: FalseNegativeDetector, views: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Detection on the batch of every planted sample, and its quality against the labels."""
    n = views.shape[1]
    ids = expand_to_views(torch.arange(n), 2)
    row_labels = expand_to_views(labels, 2)
    cand = negative_mask(instance_positive_mask(ids))
    detected = detector(views.flatten(0, 1), sample_ids=ids, labels=row_labels, candidate_mask=cand)
    quality = detection_quality(detected, cand, row_labels)
    return detected, {k: v.item() for k, v in quality.items()}


N_CLASSES, PER_CLASS = 5, 12
TRUE_PER_ANCHOR = 2 * (PER_CLASS - 1)  # both views of every other same-class sample


def _planted_detectors(bank: torch.Tensor, threshold: float = 0.5) -> list[FalseNegativeDetector]:
    cluster = ClusterDetector(n_clusters=N_CLASSES)
    cluster.refresh(bank, generator=torch.Generator().manual_seed(0))
    return [ThresholdDetector(threshold=threshold), TopKDetector(k=TRUE_PER_ANCHOR), cluster]


def test_label_free_detectors_recover_planted_clusters() -> None:
    views, bank, labels = _planted(N_CLASSES, PER_CLASS, noise=0.05, seed=0)
    for detector in _planted_detectors(bank):
        _, quality = _detect(detector, views, labels)
        assert quality["precision"] >= 0.95 and quality["recall"] >= 0.95, (detector, quality)


def test_precision_drops_when_clusters_overlap() -> None:
    """Sanity: the same detectors on heavily overlapping clusters (noise norm ~2.3 against unit
    centre distance) flag mostly other-class negatives. A lower threshold keeps the threshold
    detector's recall comparable (at 0.5 it flags almost nothing there)."""
    views, bank, labels = _planted(N_CLASSES, PER_CLASS, noise=0.05, seed=1)
    noisy_views, noisy_bank, noisy_labels = _planted(N_CLASSES, PER_CLASS, noise=0.4, seed=1)
    for clean, noisy in zip(
        _planted_detectors(bank, threshold=0.2),
        _planted_detectors(noisy_bank, threshold=0.2),
        strict=True,
    ):
        _, q_clean = _detect(clean, views, labels)
        _, q_noisy = _detect(noisy, noisy_views, noisy_labels)
        assert q_noisy["precision"] < 0.6 and q_clean["precision"] > 0.9, (clean, q_clean, q_noisy)


def test_label_free_detectors_ignore_a_label_permutation() -> None:
    views, bank, labels = _planted(N_CLASSES, PER_CLASS, noise=0.2, seed=2)
    relabel = torch.tensor([3, 0, 4, 1, 2])  # a permutation of the class ids
    for detector in _planted_detectors(bank):
        detected, _ = _detect(detector, views, labels)
        permuted, _ = _detect(detector, views, relabel[labels])
        assert torch.equal(detected, permuted), detector


# --- threshold and topk -----------------------------------------------------------------------


def test_threshold_flags_candidates_strictly_above_it() -> None:
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=1)
    cand = ~torch.eye(3, dtype=torch.bool)
    ids = torch.arange(3)
    detected = ThresholdDetector(threshold=0.5)(z, sample_ids=ids, labels=ids, candidate_mask=cand)
    expected = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)  # cos 0.707 > 0.5
    assert torch.equal(detected, expected)
    at_cos = ThresholdDetector(threshold=1.0)(z, sample_ids=ids, labels=ids, candidate_mask=cand)
    assert not at_cos.any()


def _naive_topk(scores: torch.Tensor, cand: torch.Tensor, k: int) -> torch.Tensor:
    """Per-anchor loop: the k best-scoring candidates of every row (all of them if fewer)."""
    out = torch.zeros_like(cand)
    for i in range(cand.shape[0]):
        columns = [j for j in range(cand.shape[1]) if cand[i, j]]
        columns.sort(key=lambda j: -float(scores[i, j]))
        for j in columns[:k]:
            out[i, j] = True
    return out


@pytest.mark.parametrize("support_views", [0, 3])
def test_topk_matches_a_per_anchor_loop_over_candidates_only(support_views: int) -> None:
    batch, dim, k = 7, 5, 4
    g = torch.Generator().manual_seed(3)
    normalize = torch.nn.functional.normalize
    z = normalize(torch.randn(2 * batch, dim, generator=g, dtype=torch.float64), dim=1)
    support = normalize(
        torch.randn(support_views, batch, dim, generator=g, dtype=torch.float64), dim=-1
    )
    # An arbitrary candidate set, some rows with fewer than k candidates.
    cand = (torch.rand(2 * batch, 2 * batch, generator=g) < 0.4).fill_diagonal_(False)
    ids = expand_to_views(torch.arange(batch), 2)
    detected = TopKDetector(k=k, support_views=support_views)(
        z,
        sample_ids=ids,
        labels=ids,
        candidate_mask=cand,
        support=support if support_views else None,
    )
    if support_views:
        # FNC scoring, aggregated by the mean over support views: row r is sample r % B.
        scores = (
            torch.stack(
                [
                    torch.stack([support[s, r % batch] @ z[j] for j in range(2 * batch)])
                    for r in range(2 * batch)
                    for s in range(support_views)
                ]
            )
            .reshape(2 * batch, support_views, 2 * batch)
            .mean(dim=1)
        )
    else:
        scores = z @ z.T
    assert torch.equal(detected, _naive_topk(scores, cand, k))
    assert (detected.sum(dim=1) == cand.sum(dim=1).clamp(max=k)).all()


def test_topk_support_views_change_the_selection() -> None:
    """Anchor 0 looks like sample 1, but its support view looks like sample 2: with support the
    top-2 (both views of one sample) moves from sample 1 to sample 2."""
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    near_e1 = torch.nn.functional.normalize(torch.tensor([1.0, 0.2, 0.0]), dim=0)
    samples = torch.stack([e1, near_e1, e2])  # (B=3, D)
    z = torch.cat([samples, samples])  # (2B, D): both views identical
    ids = expand_to_views(torch.arange(3), 2)
    cand = negative_mask(instance_positive_mask(ids))
    support = torch.stack([e2, near_e1, e2])[None]  # (S=1, B, D): sample 0's support view is e2
    plain = TopKDetector(k=2)(z, sample_ids=ids, labels=ids, candidate_mask=cand)
    supported = TopKDetector(k=2, support_views=1)(
        z, sample_ids=ids, labels=ids, candidate_mask=cand, support=support
    )
    for anchor_row in (0, 3):  # both views of sample 0
        assert plain[anchor_row].nonzero().flatten().tolist() == [1, 4]  # sample 1
        assert supported[anchor_row].nonzero().flatten().tolist() == [2, 5]  # sample 2


def test_topk_is_per_anchor_and_may_be_asymmetric() -> None:
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.3]]), dim=1)
    cand = ~torch.eye(3, dtype=torch.bool)
    ids = torch.arange(3)
    detected = TopKDetector(k=1)(z, sample_ids=ids, labels=ids, candidate_mask=cand)
    assert detected.sum(dim=1).tolist() == [1, 1, 1]
    assert detected[2, 1] and not detected[1, 2]  # 2's nearest is 1; 1's nearest is 0


def test_support_detectors_need_support() -> None:
    z, ids, labels, cand = _batch(4, 2, 0)
    for detector in (TopKDetector(k=2, support_views=2), ThresholdDetector(0.5, support_views=2)):
        with pytest.raises(ValueError, match="support"):
            detector(z, sample_ids=ids, labels=labels, candidate_mask=cand)
        with pytest.raises(ValueError, match="support"):
            detector(
                z, sample_ids=ids, labels=labels, candidate_mask=cand, support=torch.zeros(3, 4, 8)
            )


# --- cluster ----------------------------------------------------------------------------------


def test_cluster_detector_uses_the_pseudo_labels_of_the_sample_ids() -> None:
    detector = ClusterDetector(n_clusters=2)
    bank = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0], [1.0, -0.1]]), dim=1
    )
    metrics = detector.refresh(bank, generator=torch.Generator().manual_seed(0))
    assert metrics["cluster_size_min"] == 2 and metrics["cluster_size_max"] == 3
    pseudo = detector.pseudo_labels
    assert pseudo is not None and pseudo[0] == pseudo[2] == pseudo[4] != pseudo[1] == pseudo[3]
    ids = expand_to_views(torch.tensor([4, 1, 0]), 2)  # dataset indices, not batch positions
    cand = negative_mask(instance_positive_mask(ids))
    detected = detector(torch.zeros(6, 2), sample_ids=ids, labels=ids, candidate_mask=cand)
    assert torch.equal(detected, detected.T)
    same = torch.tensor([True, False, True] * 2)
    assert torch.equal(detected, cand & (same[:, None] == same[None, :]))


def test_cluster_detector_before_refresh_is_an_error() -> None:
    z, ids, labels, cand = _batch(4, 2, 0)
    with pytest.raises(RuntimeError, match="refresh"):
        ClusterDetector(n_clusters=2)(z, sample_ids=ids, labels=labels, candidate_mask=cand)


def test_cluster_detector_state_round_trip() -> None:
    _, bank, _ = _planted(3, 10, noise=0.1, seed=4)
    fitted = ClusterDetector(n_clusters=3)
    fitted.refresh(bank, generator=torch.Generator().manual_seed(0))
    state = fitted.state_dict()
    assert set(state) == {"pseudo_labels", "centroids"}
    restored = ClusterDetector(n_clusters=3)
    assert not restored.is_fitted and restored.state_dict() == {}
    restored.load_state_dict(state)
    assert restored.is_fitted and restored.pseudo_labels is not None
    assert torch.equal(restored.pseudo_labels, state["pseudo_labels"])
    assert restored == fitted  # equality compares the configuration only
    with pytest.raises(ValueError, match="centroids"):
        ClusterDetector(n_clusters=4).load_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        restored.load_state_dict({"labels": state["pseudo_labels"]})
    restored.load_state_dict({})
    assert not restored.is_fitted


def test_cluster_detector_refresh_schedule() -> None:
    detector = ClusterDetector(n_clusters=2, refresh_every=3)
    assert detector.needs_refresh(1)  # not fitted yet
    detector.refresh(torch.eye(4), generator=torch.Generator().manual_seed(0))
    assert [detector.needs_refresh(e) for e in range(7)] == [
        True, False, False, True, False, False, True
    ]  # fmt: skip


def test_cluster_detector_rejects_a_bank_smaller_than_n_clusters() -> None:
    with pytest.raises(ConfigError, match="n_clusters=5"):
        ClusterDetector(n_clusters=5).refresh(torch.eye(3), generator=torch.Generator())


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "bad"),
    [
        ("threshold", {"threshold": 1.5}, "threshold"),
        ("threshold", {"threshold": "0.5"}, "threshold"),
        ("threshold", {"threshold": float("nan")}, "threshold"),
        ("threshold", {"threshold": 0.5, "support_views": -1}, "support_views"),
        ("topk", {"k": 0}, "k"),
        ("topk", {"k": 2.5}, "k"),
        ("topk", {"k": True}, "k"),
        ("topk", {"k": 2, "support_views": 1.0}, "support_views"),
        ("cluster", {"n_clusters": 1}, "n_clusters"),
        ("cluster", {"n_clusters": 4, "refresh_every": 0}, "refresh_every"),
        ("cluster", {"n_clusters": 4, "iters": 0}, "iters"),
        ("oracle", {"removal_rate": "all"}, "removal_rate"),
    ],
)
def test_detectors_reject_bad_values_in_one_line(
    name: str, params: dict[str, object], bad: str
) -> None:
    classes: dict[str, type[FalseNegativeDetector]] = {
        "oracle": OracleDetector,
        "threshold": ThresholdDetector,
        "topk": TopKDetector,
        "cluster": ClusterDetector,
    }
    with pytest.raises(ConfigError, match=f"^{bad} must be") as info:
        classes[name](**params)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "params", "bad"),
    [
        ("threshold", {"threshold": 1.5}, "threshold=1.5"),
        ("threshold", {"threshold": float("nan")}, "threshold=nan"),
        ("topk", {"k": 0}, "k=0"),
        ("topk", {"k": 2, "support_views": -1}, "support_views=-1"),
        ("cluster", {"n_clusters": 1}, "n_clusters=1"),
        ("cluster", {"n_clusters": 4, "iters": 0}, "iters=0"),
        ("oracle", {"removal_rate": 1.5}, "removal_rate=1.5"),
        ("oracle", {"warmup_epochs": -1}, "warmup_epochs=-1"),
        ("oracle", {"mode": "repel"}, "mode='repel'"),
    ],
)
def test_detector_sections_range_check_values_in_one_line(
    name: str, params: dict[str, object], bad: str
) -> None:
    with pytest.raises(ConfigError, match=f"invalid detector '{name}': {bad}") as info:
        FN_DETECTORS.section(name, **params)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["threshold", "topk", "cluster"])
def test_required_detector_parameters_are_named_when_missing(name: str) -> None:
    required = {"threshold": "threshold", "topk": "k", "cluster": "n_clusters"}[name]
    with pytest.raises(ConfigError, match=f"{required}: Field required"):
        FN_DETECTORS.section(name)
