import math

import pytest
import torch

from cslrobust.objectives import SimCLRObjective


def _naive_nt_xent(outputs: torch.Tensor, tau: float) -> float:
    """NT-Xent of Chen et al. (2020) over 2N rows, row v*N + b, written with scalar loops."""
    n = outputs.shape[1]
    z = torch.nn.functional.normalize(outputs.reshape(2 * n, -1), dim=1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / denominator)
    return total / (2 * n)


def _naive_multi_view(outputs: torch.Tensor, tau: float) -> float:
    """Multi-positive InfoNCE (SupCon L_out form) with the other views as positives."""
    n_views, n = outputs.shape[:2]
    m = n_views * n
    z = torch.nn.functional.normalize(outputs.reshape(m, -1), dim=1)
    total = 0.0
    for i in range(m):
        denominator = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(m) if k != i)
        positives = [p for p in range(m) if p != i and p % n == i % n]
        logs = [math.log(math.exp(float(z[i] @ z[p]) / tau) / denominator) for p in positives]
        total += -sum(logs) / len(positives)
    return total / m


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_simclr_matches_naive_nt_xent(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    index = torch.randperm(100, generator=g)[:6]
    labels = torch.randint(0, 3, (6,), generator=g)
    out = SimCLRObjective(temperature=tau)(outputs, index, labels)
    assert out.loss.item() == pytest.approx(_naive_nt_xent(outputs, tau), rel=1e-6)


def test_simclr_with_three_views_matches_naive_multi_positive() -> None:
    g = torch.Generator().manual_seed(1)
    outputs = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    out = SimCLRObjective(n_views=3)(outputs, torch.arange(5), torch.zeros(5, dtype=torch.long))
    assert out.loss.item() == pytest.approx(_naive_multi_view(outputs, 0.5), rel=1e-6)


@pytest.mark.parametrize("n", [1, 4, 16])
def test_simclr_closed_form_for_identical_embeddings(n: int) -> None:
    """All 2N rows equal: every logit is 1/tau, so each anchor's loss is log(2N - 1)."""
    outputs = torch.ones(2, n, 3, dtype=torch.float64)
    out = SimCLRObjective(temperature=0.2)(outputs, torch.arange(n), torch.arange(n))
    assert out.loss.item() == pytest.approx(math.log(2 * n - 1), abs=1e-10)
    assert out.metrics["pos_sim"].item() == pytest.approx(1.0)


def test_simclr_ignores_labels() -> None:
    outputs = torch.randn(2, 6, 8, dtype=torch.float64)
    a = SimCLRObjective()(outputs, torch.arange(6), torch.zeros(6, dtype=torch.long))
    b = SimCLRObjective()(outputs, torch.arange(6), torch.arange(6))
    torch.testing.assert_close(a.loss, b.loss)
