from __future__ import annotations

import pytest
import torch

from cslrobust.attacks import check_logits, check_perturbation


def test_check_perturbation_accepts_feasible_points() -> None:
    x = torch.rand(4, 3, 8, 8)
    check_perturbation(x, x.clone(), 0.0, "linf")
    check_perturbation(x, (x + 0.03).clamp(0, 1), 0.03, "linf")
    delta = torch.randn_like(x)
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.5
    check_perturbation(x.clamp(0.2, 0.8), x.clamp(0.2, 0.8) + delta * 0.1 / 0.5, 0.1, "l2")


def test_check_perturbation_reports_numbers() -> None:
    x = torch.full((3, 3, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[1, 0, 0, 0] += 0.1
    with pytest.raises(ValueError, match=r"sample 1: linf perturbation 0\.1\d* exceeds eps 0\.05"):
        check_perturbation(x, x_adv, 0.05, "linf")
    with pytest.raises(ValueError, match="sample 1: l2"):
        check_perturbation(x, x_adv, 0.05, "l2")
    with pytest.raises(ValueError, match=r"leaves \[0,1\]: min -0\.1"):
        check_perturbation(x - 0.55, x - 0.6, 1.0, "linf")
    with pytest.raises(ValueError, match="NaN"):
        check_perturbation(x, x * float("nan"), 1.0, "linf")
    with pytest.raises(ValueError, match="shape"):
        check_perturbation(x, x[:2], 1.0, "linf")


def test_check_perturbation_tolerance() -> None:
    x = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    check_perturbation(x, x + 0.05 + 5e-7, 0.05, "linf")
    with pytest.raises(ValueError):
        check_perturbation(x, x + 0.05 + 5e-6, 0.05, "linf")


def test_check_logits_rejects_probabilities() -> None:
    logits = torch.randn(8, 10)
    check_logits(logits)
    with pytest.raises(ValueError, match="probabilities"):
        check_logits(logits.softmax(dim=1))
