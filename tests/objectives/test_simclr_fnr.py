import math

import pytest
import torch

from cslrobust.errors import ConfigError
from cslrobust.objectives import (
    OracleDetector,
    SimCLRFNRObjective,
    SimCLRObjective,
    SupConObjective,
    expand_to_views,
    instance_positive_mask,
    negative_mask,
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
