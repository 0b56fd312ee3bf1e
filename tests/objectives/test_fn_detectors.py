import pytest
import torch

from cslrobust.errors import ConfigError
from cslrobust.objectives import (
    FN_DETECTORS,
    OracleDetector,
    build_fn_detector,
    detection_quality,
    expand_to_views,
    instance_positive_mask,
    negative_mask,
)


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
    assert build_fn_detector("oracle", removal_rate=0.25) == OracleDetector(removal_rate=0.25)
    with pytest.raises(ConfigError, match="removal_rat"):
        build_fn_detector("oracle", removal_rat=0.25)
    with pytest.raises(ConfigError, match="unknown fn_detector"):
        build_fn_detector("psychic")


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


@pytest.mark.parametrize("name", FN_DETECTORS.names())
def test_fn_detector_contract(name: str) -> None:
    """Every registered detector builds with defaults and returns a bool subset of candidates."""
    detector = FN_DETECTORS.get(name)()
    z, ids, labels, cand = _batch(12, 3, 4)
    detected = detector(
        z, sample_ids=ids, labels=labels, candidate_mask=cand, generator=torch.Generator()
    )
    assert detected.dtype == torch.bool and detected.shape == cand.shape
    assert not (detected & ~cand).any()
    if not detector.uses_labels:
        shuffled = labels[torch.randperm(labels.shape[0])]
        other = detector(
            z, sample_ids=ids, labels=shuffled, candidate_mask=cand, generator=torch.Generator()
        )
        assert torch.equal(detected, other), f"{name} is label-free but depends on labels"
