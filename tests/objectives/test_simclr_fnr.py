import io
import math

import pytest
import torch

from cslrobust.errors import ConfigError
from cslrobust.objectives import (
    OBJECTIVES,
    ClusterDetector,
    FalseNegativeDetector,
    OracleDetector,
    SimCLRFNRObjective,
    SimCLRFNRSection,
    SimCLRObjective,
    SupConObjective,
    ThresholdDetector,
    TopKDetector,
    TopKSection,
    build_objective,
    expand_to_views,
    instance_positive_mask,
    load_objective_state,
    negative_mask,
    objective_needs_bank,
    objective_state,
    refresh_objective,
)


def _inputs(
    batch: int, n_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    outputs = torch.randn(2, batch, 6, generator=g, dtype=torch.float64)
    index = torch.randperm(10 * batch, generator=g)[:batch]
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    return outputs, index, labels


def _naive_fnr(outputs: torch.Tensor, flagged: torch.Tensor, tau: float, mode: str) -> float:
    """SimCLR over 2N rows with flagged pairs F(i) eliminated or attracted, scalar loops."""
    n = outputs.shape[1]
    m = 2 * n
    z = torch.nn.functional.normalize(outputs.reshape(m, -1), dim=1)
    total = 0.0
    for i in range(m):
        partner = (i + n) % m
        f_i = [k for k in range(m) if flagged[i, k]]
        if mode == "eliminate":
            positives = [partner]
            denominator = [k for k in range(m) if k != i and k not in f_i]
        else:
            positives = [partner, *f_i]
            denominator = [k for k in range(m) if k != i]
        norm = sum(math.exp(float(z[i] @ z[k]) / tau) for k in denominator)
        logs = [math.log(math.exp(float(z[i] @ z[p]) / tau) / norm) for p in positives]
        total += -sum(logs) / len(positives)
    return total / m


def _oracle_flags(
    index: torch.Tensor, labels: torch.Tensor, rate: float, seed: int
) -> torch.Tensor:
    ids, row_labels = expand_to_views(index, 2), expand_to_views(labels, 2)
    cand = negative_mask(instance_positive_mask(ids))
    return OracleDetector(removal_rate=rate)(
        torch.zeros(ids.shape[0], 1),
        sample_ids=ids,
        labels=row_labels,
        candidate_mask=cand,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("mode", ["eliminate", "attract"])
def test_fnr_with_distinct_labels_equals_simclr(mode: str) -> None:
    outputs, index, _ = _inputs(8, 8, 0)
    labels = torch.arange(8)
    fnr = SimCLRFNRObjective(mode=mode, temperature=0.2)(outputs, index, labels)  # type: ignore[arg-type]
    simclr = SimCLRObjective(temperature=0.2)(outputs, index, labels)
    torch.testing.assert_close(fnr.loss, simclr.loss)
    assert fnr.metrics["fn_removed_fraction"].item() == 0.0


def test_fnr_attract_with_full_oracle_equals_supcon() -> None:
    """Attract moves every same-label negative into P(i), so P(i) = same label and N(i) = other
    labels: exactly SupCon's L_out on the same embeddings."""
    outputs, index, labels = _inputs(12, 3, 1)
    fnr = SimCLRFNRObjective(mode="attract", temperature=0.3)(outputs, index, labels)
    supcon = SupConObjective(temperature=0.3)(outputs, index, labels)
    torch.testing.assert_close(fnr.loss, supcon.loss)


@pytest.mark.parametrize("mode", ["eliminate", "attract"])
@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_fnr_matches_naive_loop(mode: str, rate: float) -> None:
    outputs, index, labels = _inputs(10, 3, 2)
    objective = SimCLRFNRObjective(
        detector=OracleDetector(removal_rate=rate),
        mode=mode,  # type: ignore[arg-type]
        temperature=0.5,
    )
    out = objective(outputs, index, labels, generator=torch.Generator().manual_seed(7))
    flagged = _oracle_flags(index, labels, rate, seed=7)
    assert out.loss.item() == pytest.approx(_naive_fnr(outputs, flagged, 0.5, mode), rel=1e-6)


@pytest.mark.parametrize("mode", ["eliminate", "attract"])
def test_fnr_with_removal_rate_zero_equals_simclr(mode: str) -> None:
    outputs, index, labels = _inputs(10, 2, 3)
    fnr = SimCLRFNRObjective(detector=OracleDetector(removal_rate=0.0), mode=mode)  # type: ignore[arg-type]
    simclr = SimCLRObjective()
    torch.testing.assert_close(
        fnr(outputs, index, labels).loss, simclr(outputs, index, labels).loss
    )


def test_fnr_half_removal_reports_quality() -> None:
    outputs, index, labels = _inputs(64, 4, 4)
    objective = SimCLRFNRObjective(detector=OracleDetector(removal_rate=0.5))
    out = objective(outputs, index, labels, generator=torch.Generator().manual_seed(0))
    assert out.metrics["fn_precision"].item() == 1.0
    assert 0.35 < out.metrics["fn_recall"].item() < 0.65
    removed = out.metrics["fn_removed_fraction"].item()
    assert removed == pytest.approx(
        out.metrics["fn_recall"].item() * out.metrics["fn_true_fraction"].item()
    )


def test_fnr_warmup_equals_simclr_until_warmup_ends() -> None:
    outputs, index, labels = _inputs(10, 2, 5)
    objective = SimCLRFNRObjective(mode="attract", warmup_epochs=3)
    simclr = SimCLRObjective()(outputs, index, labels).loss
    for epoch in range(3):
        out = objective(outputs, index, labels, epoch=epoch)
        torch.testing.assert_close(out.loss, simclr)
        assert out.metrics["fn_removed_fraction"].item() == 0.0
    after = objective(outputs, index, labels, epoch=3)
    torch.testing.assert_close(after.loss, SupConObjective()(outputs, index, labels).loss)


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "cancel"}, {"temperature": -1.0}, {"warmup_epochs": -1}, {"detector": "oracle"}],
)
def test_fnr_rejects_bad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SimCLRFNRObjective(**kwargs)  # type: ignore[arg-type]


class _FixedMask(FalseNegativeDetector):
    """Test double: returns a given mask whatever the inputs."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(
        self,
        z: torch.Tensor,
        *,
        sample_ids: torch.Tensor,
        labels: torch.Tensor,
        candidate_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        support: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.mask


@pytest.mark.parametrize("mode", ["eliminate", "attract"])
@pytest.mark.parametrize("support_views", [1, 3])
def test_support_views_feed_detection_only(mode: str, support_views: int) -> None:
    """With S support views: n_views = 2 + S, and the loss equals simclr_fnr on views 0..1 with
    the same detection mask (the detector's mask given the normalised support views)."""
    batch = 10
    g = torch.Generator().manual_seed(11)
    outputs = torch.randn(2 + support_views, batch, 6, generator=g, dtype=torch.float64)
    outputs.requires_grad_()
    index = torch.randperm(100, generator=g)[:batch]
    labels = torch.randint(0, 3, (batch,), generator=g)
    detector = TopKDetector(k=4, support_views=support_views)
    objective = SimCLRFNRObjective(detector=detector, mode=mode, support_views=support_views)  # type: ignore[arg-type]
    assert objective.n_views == 2 + support_views

    out = objective(outputs, index, labels)

    normalize = torch.nn.functional.normalize
    ids = expand_to_views(index, 2)
    cand = negative_mask(instance_positive_mask(ids))
    mask = detector(
        normalize(outputs[:2].detach().flatten(0, 1), dim=1),
        sample_ids=ids,
        labels=expand_to_views(labels, 2),
        candidate_mask=cand,
        support=normalize(outputs[2:].detach(), dim=-1),
    )
    plain_mask = TopKDetector(k=4)(
        normalize(outputs[:2].detach().flatten(0, 1), dim=1),
        sample_ids=ids,
        labels=ids,
        candidate_mask=cand,
    )
    assert not torch.equal(mask, plain_mask)  # the support views did change the detection
    reference = SimCLRFNRObjective(
        detector=_FixedMask(mask), mode=mode
    )(  # type: ignore[arg-type]
        outputs[:2].detach(), index, labels
    )
    torch.testing.assert_close(out.loss, reference.loss)
    for key, value in reference.metrics.items():
        torch.testing.assert_close(out.metrics[key], value, msg=key)
    out.loss.backward()
    assert outputs.grad is not None
    assert outputs.grad[:2].abs().sum() > 0
    assert torch.equal(outputs.grad[2:], torch.zeros_like(outputs.grad[2:]))


def test_support_views_must_match_the_detector() -> None:
    with pytest.raises(ConfigError, match="support_views=0 of simclr_fnr"):
        SimCLRFNRObjective(detector=TopKDetector(k=2, support_views=2))
    with pytest.raises(ConfigError, match="support_views=2 of simclr_fnr"):
        SimCLRFNRObjective(detector=TopKDetector(k=2), support_views=2)
    with pytest.raises(ConfigError, match="support_views must be >= 0"):
        SimCLRFNRObjective(support_views=-1)


def test_build_objective_takes_support_views_from_the_detector() -> None:
    section = SimCLRFNRSection(fn=TopKSection(k=5, support_views=2, warmup_epochs=1))
    objective = build_objective(section)
    assert objective.n_views == 4
    assert objective == SimCLRFNRObjective(
        detector=TopKDetector(k=5, support_views=2), support_views=2, warmup_epochs=1
    )
    # The objective's own support_views is no config key: it always follows the detector.
    with pytest.raises(ConfigError, match="support_views is not a parameter of objective"):
        OBJECTIVES.section("simclr_fnr", support_views=1)


@pytest.mark.parametrize(
    "detector",
    [ThresholdDetector(threshold=0.5), TopKDetector(k=3), ClusterDetector(n_clusters=3)],
    ids=["threshold", "topk", "cluster"],
)
@pytest.mark.parametrize("mode", ["eliminate", "attract"])
def test_label_free_detectors_report_quality_and_ignore_labels(
    detector: FalseNegativeDetector, mode: str
) -> None:
    outputs, index, labels = _inputs(16, 3, 6)
    objective = SimCLRFNRObjective(detector=detector, mode=mode)  # type: ignore[arg-type]
    bank = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    refresh_objective(objective, bank, epoch=0, generator=torch.Generator().manual_seed(0))
    out = objective(outputs, index, labels)
    for name in ("precision", "recall", "f1", "removed_fraction", "true_fraction"):
        assert f"fn_{name}" in out.metrics
    assert out.metrics["fn_removed_fraction"].item() > 0
    relabelled = objective(outputs, index, (labels + 1) % 3)
    torch.testing.assert_close(out.loss, relabelled.loss)


def test_cluster_detection_quality_on_planted_clusters() -> None:
    """End to end through the objective: bank refresh, then precision/recall near 1."""
    g = torch.Generator().manual_seed(0)
    n_classes, n = 4, 200
    centres = torch.linalg.qr(torch.randn(16, n_classes, generator=g)).Q.T  # (C, D)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    bank = 3.0 * (centres[labels] + 0.05 * torch.randn(n, 16, generator=g))  # not normalised
    objective = SimCLRFNRObjective(detector=ClusterDetector(n_clusters=n_classes), mode="attract")
    metrics = refresh_objective(objective, bank, epoch=0, generator=torch.Generator())
    assert set(metrics) == {
        "kmeans_inertia", "kmeans_iterations", "cluster_size_min", "cluster_size_max"
    }  # fmt: skip
    index = torch.randperm(n, generator=g)[:32]
    outputs = centres[labels[index]][None] + 0.05 * torch.randn(2, 32, 16, generator=g)
    out = objective(outputs, index, labels[index])
    assert out.metrics["fn_precision"].item() >= 0.95
    assert out.metrics["fn_recall"].item() >= 0.95


def test_needs_bank_schedule() -> None:
    """warmup 2, refresh every 3: fit at epochs 2, 5, 8, ...; and whenever the fit is missing."""
    objective = SimCLRFNRObjective(
        detector=ClusterDetector(n_clusters=2, refresh_every=3), warmup_epochs=2
    )
    assert [objective_needs_bank(objective, e) for e in range(4)] == [False, False, True, True]
    refresh_objective(objective, torch.eye(4), epoch=2, generator=torch.Generator())
    schedule = [objective_needs_bank(objective, e) for e in range(10)]
    assert schedule == [False, False, True, False, False, True, False, False, True, False]
    load_objective_state(objective, {})  # e.g. a resume without saved state
    assert objective_needs_bank(objective, 3) and not objective_needs_bank(objective, 1)


def test_objective_state_round_trip_gives_identical_losses() -> None:
    outputs, index, labels = _inputs(12, 3, 7)
    bank = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    fitted = SimCLRFNRObjective(
        detector=ClusterDetector(n_clusters=3, refresh_every=2), mode="attract"
    )
    refresh_objective(fitted, bank, epoch=0, generator=torch.Generator().manual_seed(2))
    buffer = io.BytesIO()
    torch.save(objective_state(fitted), buffer)  # as the loop's checkpoint does
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"detector.pseudo_labels", "detector.centroids"}

    resumed = SimCLRFNRObjective(
        detector=ClusterDetector(n_clusters=3, refresh_every=2), mode="attract"
    )
    with pytest.raises(RuntimeError, match="refresh"):
        resumed(outputs, index, labels)
    assert objective_needs_bank(resumed, 1)  # not fitted
    load_objective_state(resumed, state)
    assert not objective_needs_bank(resumed, 1) and objective_needs_bank(resumed, 2)
    torch.testing.assert_close(
        resumed(outputs, index, labels).loss, fitted(outputs, index, labels).loss
    )
    with pytest.raises(ValueError, match="unexpected"):
        load_objective_state(resumed, {"pseudo_labels": state["detector.pseudo_labels"]})


def test_warmup_skips_a_bank_detector_that_is_not_fitted_yet() -> None:
    outputs, index, labels = _inputs(8, 2, 8)
    objective = SimCLRFNRObjective(detector=ClusterDetector(n_clusters=2), warmup_epochs=1)
    out = objective(outputs, index, labels, epoch=0)
    torch.testing.assert_close(out.loss, SimCLRObjective()(outputs, index, labels).loss)


def test_stateless_detectors_have_no_bank_and_no_state() -> None:
    for detector in (OracleDetector(), TopKDetector(k=2)):
        objective = SimCLRFNRObjective(detector=detector)
        assert not objective_needs_bank(objective, 0)
        assert (
            refresh_objective(objective, torch.eye(3), epoch=0, generator=torch.Generator()) == {}
        )
        assert objective_state(objective) == {}
        load_objective_state(objective, {})
        with pytest.raises(ValueError, match="holds no state"):
            load_objective_state(objective, {"detector.pseudo_labels": torch.zeros(3)})
