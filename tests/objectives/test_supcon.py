import math

import pytest
import torch

from cslrobust.objectives import SimCLRObjective, SupConObjective


def _naive_supcon_out(outputs: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    """Khosla et al. (2020) eq. 2 (L_out), rows v*B + b, written with scalar loops."""
    n_views, b = outputs.shape[:2]
    m = n_views * b
    z = torch.nn.functional.normalize(outputs.reshape(m, -1), dim=1)
    row_labels = [int(labels[i % b]) for i in range(m)]
    total = 0.0
    for i in range(m):
        a_i = [a for a in range(m) if a != i]
        p_i = [p for p in a_i if row_labels[p] == row_labels[i]]
        denominator = sum(math.exp(float(z[i] @ z[a]) / tau) for a in a_i)
        logs = [math.log(math.exp(float(z[i] @ z[p]) / tau) / denominator) for p in p_i]
        total += -sum(logs) / len(p_i)
    return total / m


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_supcon_matches_naive_l_out(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(2, 10, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (10,), generator=g)
    out = SupConObjective(temperature=tau)(outputs, torch.arange(10), labels)
    assert out.loss.item() == pytest.approx(_naive_supcon_out(outputs, labels, tau), rel=1e-6)


def test_supcon_with_distinct_labels_equals_simclr() -> None:
    g = torch.Generator().manual_seed(1)
    outputs = torch.randn(2, 8, 6, generator=g, dtype=torch.float64)
    index = torch.arange(8)
    labels = torch.randperm(8, generator=g)
    supcon = SupConObjective(temperature=0.3)(outputs, index, labels)
    simclr = SimCLRObjective(temperature=0.3)(outputs, index, labels)
    torch.testing.assert_close(supcon.loss, simclr.loss)
