from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cslrobust.attacks import AttackTarget, robust_accuracy
from cslrobust.attacks.autoattack import AutoAttackBudget
from cslrobust.attacks.sweep import (
    DEFAULT_L2_EPS,
    DEFAULT_LINF_EPS,
    autoattack_sweep,
    default_eps,
    eps50,
    minimal_perturbation,
    plot_sweep,
    quantile_with_inf,
    summarize_sweep,
    sweep,
    sweep_rows,
)

Data = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class StoredRow:
    attack: str
    norm: str
    eps: float
    clean_accuracy: float
    robust_accuracy: float
    n: int = 100


def test_default_eps() -> None:
    assert DEFAULT_LINF_EPS == (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    assert default_eps("linf") == tuple(e / 255 for e in DEFAULT_LINF_EPS)
    assert default_eps("l2") == DEFAULT_L2_EPS == (0.05, 0.1, 0.25, 0.5)


def test_eps50_interpolation() -> None:
    # Crossing between eps 2 (0.4) and 4 (0.8): 2 + (0.5 - 0.4) / (0.8 - 0.4) * 2 = 2.5.
    assert eps50([1, 2, 4], [0.2, 0.4, 0.8]) == pytest.approx(2.5)
    assert eps50([4, 1, 2], [0.8, 0.2, 0.4]) == pytest.approx(2.5)  # any input order
    assert eps50([2, 4], [0.5, 0.9]) == 2  # exactly one half at a point
    assert eps50([2], [1.0]) == pytest.approx(1.0)  # from the implicit (0, 0)
    assert eps50([0, 2], [0.0, 1.0]) == pytest.approx(1.0)
    assert eps50([1, 2, 4], [0.1, 0.2, 0.45]) == math.inf  # never reached
    assert eps50([1, 2, 3], [0.6, 0.3, 0.9]) == pytest.approx(1 / 1.2)  # first crossing
    assert math.isnan(eps50([1, 2], [math.nan, math.nan]))
    with pytest.raises(ValueError):
        eps50([1, 2], [0.5])


def test_quantile_with_inf_matches_numpy_and_handles_inf() -> None:
    values = torch.tensor([0.3, 0.1, 0.7, 0.2, 0.9])
    for q in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        assert quantile_with_inf(values, q) == pytest.approx(float(np.quantile(values.numpy(), q)))
    with_inf = torch.tensor([0.1, 0.2, math.inf, math.inf])
    assert quantile_with_inf(with_inf, 0.25) == pytest.approx(0.175)
    assert quantile_with_inf(with_inf, 0.5) == math.inf  # halfway between 0.2 and inf
    assert quantile_with_inf(with_inf, 1 / 3) == pytest.approx(0.2)  # exactly on a finite value
    assert math.isnan(quantile_with_inf(torch.tensor([]), 0.5))


def test_sweep_rows_and_summary(toy_model: nn.Module, toy_test_data: Data) -> None:
    target = AttackTarget(toy_model)
    radii = [1 / 255, 4 / 255, 8 / 255, 16 / 255]
    rows = sweep(target, *toy_test_data, attack="pgd", norm="linf", eps_list=radii, steps=5, seed=0)
    assert [r.eps for r in rows] == radii
    clean = rows[0].result.clean_correct
    for row in rows:
        assert torch.equal(row.result.clean_correct, clean)  # one shared set of samples
        assert row.robust_clean_ratio == pytest.approx(1 - row.attack_success_rate)
        assert row.metrics()["robust_clean_ratio"] == row.robust_clean_ratio
    rates = [r.attack_success_rate for r in rows]
    assert rates == sorted(rates) and rates[-1] > 0.5 > rates[0]
    summary = summarize_sweep(rows)
    assert 4 / 255 < summary.eps50 < 16 / 255
    assert summary.eps50 == eps50(radii, rates)
    assert summary.n_correct == int(clean.sum())
    # Relative step size reproduces an explicit one.
    direct = robust_accuracy(
        target, *toy_test_data, attack="pgd", eps=radii[1], steps=5, step_size=radii[1] / 4, seed=0
    )
    relative = sweep(
        target,
        *toy_test_data,
        attack="pgd",
        norm="linf",
        eps_list=radii[1:2],
        steps=5,
        relative_step_size=0.25,
        seed=0,
    )
    assert torch.equal(relative[0].result.robust_correct, direct.robust_correct)
    other = replace(rows[1].result, clean_correct=~clean)
    with pytest.raises(ValueError, match="share one set"):
        sweep_rows("pgd", "linf", [(rows[0].eps, rows[0].result), (rows[1].eps, other)])
    with pytest.raises(ValueError, match="mix"):
        summarize_sweep([rows[0], replace(rows[1], attack="fgsm")])


def test_autoattack_sweep(toy_model: nn.Module, toy_test_data: Data, tmp_path: Path) -> None:
    images, labels = toy_test_data[0][:64], toy_test_data[1][:64]
    rows, results = autoattack_sweep(
        AttackTarget(toy_model),
        images,
        labels,
        norm="linf",
        eps_list=[8 / 255, 2 / 255],
        version="custom",
        attacks=["apgd-ce"],
        seed=0,
        state_dir=tmp_path,
        budget=AutoAttackBudget(n_iter=5, n_restarts=1),
    )
    assert [r.attack for r in rows] == ["autoattack", "autoattack"]
    assert [r.eps for r in rows] == [2 / 255, 8 / 255] == [r.eps for r in results]
    assert rows[0].robust_accuracy >= rows[1].robust_accuracy
    assert rows[1].robust_accuracy == results[1].robust_accuracy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linf-eps0.00784314", "linf-eps0.0313725"]


def test_minimal_perturbation_fab(toy_model: nn.Module, toy_test_data: Data) -> None:
    target = AttackTarget(toy_model)
    images, labels = toy_test_data
    labels = labels.clone()
    labels[:4] = (labels[:4] + 1) % 4  # a few wrong from the start: norm 0
    rng = torch.get_rng_state()
    result = minimal_perturbation(target, images, labels, norm="linf", n_iter=20, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert result.norms.shape == (256,) and result.norms.dtype == torch.float64
    assert (result.norms[~result.clean_correct] == 0).all()
    assert (result.norms[result.clean_correct] > 0).all()
    assert math.isfinite(result.median) and 0 < result.median < 16 / 255
    q = result.quantiles
    assert q[0.1] <= q[0.25] <= q[0.5] == result.median <= q[0.75] <= q[0.9]
    assert result.success_rate > 0.9
    assert set(result.metrics()) >= {"min_norm_median", "fab_success_rate", "min_norm_q0.5"}
    # Loose consistency: PGD slightly above FAB's median flips about half or more.
    pgd = robust_accuracy(
        target, images, labels, attack="pgd", eps=1.1 * result.median, steps=20, seed=0
    )
    assert pgd.attack_success_rate >= 0.45
    # Restarts only ever lower a sample's minimal norm.
    first = minimal_perturbation(target, images[:32], labels[:32], norm="l2", n_iter=10, seed=0)
    more = minimal_perturbation(
        target, images[:32], labels[:32], norm="l2", n_iter=10, n_restarts=2, seed=0
    )
    assert bool((more.norms <= first.norms).all())


def test_plot_sweep_writes_pngs(toy_model: nn.Module, toy_test_data: Data, tmp_path: Path) -> None:
    target = AttackTarget(toy_model)
    images, labels = toy_test_data[0][:32], toy_test_data[1][:32]
    radii = [0.0, 2 / 255, 8 / 255]
    rows = sweep(target, images, labels, attack="fgsm", norm="linf", eps_list=radii, seed=0)
    rows += sweep(
        target, images, labels, attack="pgd", norm="linf", eps_list=radii, steps=3, seed=0
    )
    written = plot_sweep({"simclr": rows, "sup/ce": rows[:3]}, tmp_path / "robust.png", "linf")
    assert [p.name for p in written] == ["robust.png", "robust-simclr.png", "robust-sup_ce.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no sweep rows"):
        plot_sweep({"simclr": rows}, tmp_path / "l2.png", "l2")
    # Rows rebuilt from stored results (no per-sample tensors) plot the same way.
    stored = [StoredRow("pgd", "l2", e, 0.9, a) for e, a in ((0.1, 0.6), (0.5, 0.1))]
    assert len(plot_sweep({"m": stored}, tmp_path / "stored.png", "l2")) == 2
