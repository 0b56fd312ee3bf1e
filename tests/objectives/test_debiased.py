import math

import pytest
import torch

from cslrobust.errors import ConfigError
from cslrobust.objectives import (
    DebiasedObjective,
    DebiasedSection,
    SimCLRObjective,
    build_objective,
    debiased_contrastive_loss,
    instance_positive_mask,
    negative_mask,
)


def _inputs(batch: int, n_views: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    outputs = torch.randn(n_views, batch, 6, generator=g, dtype=torch.float64)
    index = torch.randperm(10 * batch, generator=g)[:batch]
    labels = torch.randint(0, 3, (batch,), generator=g)
    return outputs, index, labels


def _naive_dcl(outputs: torch.Tensor, tau: float, tau_plus: float) -> float:
    """Per-anchor scalar loop of the authors' formulation (Chuang et al., 2020, their code):

    Ng = max((-tau_plus * N * pos + sum(neg)) / (1 - tau_plus), N * e^{-1/tau}),
    loss = -log(pos / (pos + Ng)), with M = V - 1 positives: pos is their mean in Ng and the loss
    is averaged over them (V = 2: one positive, the paper's loss exactly).
    """
    n_views, batch = outputs.shape[:2]
    m = n_views * batch
    z = torch.nn.functional.normalize(outputs.reshape(m, -1), dim=1)
    total = 0.0
    for i in range(m):
        positives = [j for j in range(m) if j != i and j % batch == i % batch]
        negatives = [j for j in range(m) if j % batch != i % batch]
        e = {j: math.exp(float(z[i] @ z[j]) / tau) for j in positives + negatives}
        n = len(negatives)
        pos_mean = sum(e[p] for p in positives) / len(positives)
        ng = (-tau_plus * n * pos_mean + sum(e[k] for k in negatives)) / (1 - tau_plus)
        ng = max(ng, n * math.exp(-1 / tau))
        total += sum(-math.log(e[p] / (e[p] + ng)) for p in positives) / len(positives)
    return total / m


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_tau_plus_zero_equals_simclr(temperature: float) -> None:
    """With tau_plus = 0, N*Ng = max(sum_n e_in, N e^{-1/tau}) and every e_in >= e^{-1/tau}
    (cosines >= -1), so the clamp never changes the value and the loss is
    -log(e_ip / (e_ip + sum_n e_in)): NT-Xent, whose denominator holds the positive and every
    negative. Equal up to float rounding, gradients included."""
    outputs, index, labels = _inputs(16, 2, 0)
    a = outputs.clone().requires_grad_()
    b = outputs.clone().requires_grad_()
    dcl = DebiasedObjective(temperature=temperature, tau_plus=0.0)(a, index, labels)
    simclr = SimCLRObjective(temperature=temperature)(b, index, labels)
    torch.testing.assert_close(dcl.loss, simclr.loss, rtol=1e-12, atol=1e-12)
    dcl.loss.backward()
    simclr.loss.backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert dcl.metrics["dcl_clamped_fraction"].item() == 0.0


def test_clamp_never_binds_at_tau_plus_zero_even_for_antipodal_negatives() -> None:
    """Worst case for the identity: every negative exactly antipodal, where sum = N e^{-1/tau}."""
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    pos = instance_positive_mask(torch.tensor([0, 0, 1, 1]))
    neg = negative_mask(pos)
    loss, _ = debiased_contrastive_loss(z, pos, neg, 0.5, 0.0)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2 * math.exp(-2.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n_views", [2, 3])
@pytest.mark.parametrize(("tau", "tau_plus"), [(0.5, 0.1), (0.2, 0.3), (0.5, 0.9)])
def test_matches_the_naive_loop(n_views: int, tau: float, tau_plus: float) -> None:
    outputs, index, labels = _inputs(9, n_views, 1)
    out = DebiasedObjective(temperature=tau, tau_plus=tau_plus, n_views=n_views)(
        outputs, torch.arange(9), labels
    )
    assert out.loss.item() == pytest.approx(_naive_dcl(outputs, tau, tau_plus), rel=1e-10)


def test_large_tau_plus_clamps_and_stays_finite() -> None:
    outputs, index, labels = _inputs(9, 2, 2)
    outputs = outputs.float().requires_grad_()
    out = DebiasedObjective(temperature=0.5, tau_plus=0.9)(outputs, index, labels)
    assert out.metrics["dcl_clamped_fraction"].item() > 0
    out.loss.backward()
    assert outputs.grad is not None and torch.isfinite(outputs.grad).all()


def test_small_temperature_in_float32_is_finite() -> None:
    outputs, index, labels = _inputs(32, 2, 3)
    outputs = outputs.float().requires_grad_()
    out = DebiasedObjective(temperature=0.01, tau_plus=0.1)(outputs, index, labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert outputs.grad is not None and torch.isfinite(outputs.grad).all()


def test_debiased_is_registered_with_the_paper_defaults() -> None:
    objective = build_objective(DebiasedSection())
    assert objective == DebiasedObjective(temperature=0.5, tau_plus=0.1)
    assert objective.n_views == 2 and objective.head_kind == "projector"


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"tau_plus": 1.0}, "tau_plus"),
        ({"tau_plus": -0.1}, "tau_plus"),
        ({"temperature": 0.0}, "temperature"),
        ({"n_views": 1}, "n_views"),
    ],
)
def test_rejects_bad_config(kwargs: dict[str, float], bad: str) -> None:
    with pytest.raises(ConfigError, match=f"^{bad} must be"):
        DebiasedObjective(**kwargs)  # type: ignore[arg-type]
