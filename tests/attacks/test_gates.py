from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from cslrobust.attacks import AttackTarget, input_gradient
from cslrobust.attacks.autoattack import AutoAttackBudget, run_autoattack
from cslrobust.attacks.gates import (
    ConvergenceSettings,
    GateAttack,
    GateResult,
    GateThresholds,
    binomial_tolerance,
    check_eps_zero,
    check_large_eps,
    format_gates,
    gate_adversarial_examples,
    gate_attack_ordering,
    gate_eps_zero,
    gate_input_gradients,
    gate_large_eps,
    gate_monotone_in_eps,
    gate_pgd_convergence,
    run_gates,
)

Data = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Row:
    attack: str
    norm: str
    eps: float
    clean_accuracy: float
    robust_accuracy: float
    n: int = 1000


def test_eps_zero() -> None:
    assert gate_eps_zero(0.9, 0.9).passed
    bad = gate_eps_zero(0.9, 0.899, label="pgd/linf")
    assert not bad.passed and bad.name == "eps_zero[pgd/linf]"
    assert bad.details == {"clean_accuracy": 0.9, "accuracy_at_zero": 0.899}


def test_monotone_in_eps() -> None:
    assert gate_monotone_in_eps([0.0, 1.0, 2.0], [0.9, 0.5, 0.5]).passed
    assert gate_monotone_in_eps([2.0, 0.0, 1.0], [0.1, 0.9, 0.5]).passed  # order of input
    bad = gate_monotone_in_eps([1, 2, 4, 8], [0.8, 0.5, 0.6, 0.7])
    assert not bad.passed
    # Checked against the running minimum: both 4 and 8 rise above eps=2.
    assert [(v["eps_low"], v["eps_high"]) for v in bad.details["violations"]] == [(2, 4), (2, 8)]
    assert "rises by 20.00% from eps=2 to eps=8" in bad.message
    assert gate_monotone_in_eps([1, 2], [0.5, 0.502], tolerance=0.004).passed
    with pytest.raises(ValueError, match="length"):
        gate_monotone_in_eps([1, 2], [0.5])


def test_pgd_convergence() -> None:
    assert gate_pgd_convergence(0.40, 0.397, steps=10).passed
    bad = gate_pgd_convergence(0.40, 0.38, steps=10)
    assert not bad.passed and "PGD-20 is 2.00% lower than PGD-10" in bad.message
    restarts = gate_pgd_convergence(0.40, 0.40, steps=10, accuracy_restarts=0.39, restarts=5)
    assert not restarts.passed and "5 restarts are 1.00% lower" in restarts.message
    assert restarts.details["drops"]["restarts"] == pytest.approx(0.01)


def test_attack_ordering() -> None:
    good = {"clean": 0.9, "fgsm": 0.5, "pgd": 0.3, "autoattack": 0.28}
    ok = gate_attack_ordering(good, 1000)
    assert ok.passed
    # clean >= attacked holds by construction: it is not compared.
    assert "clean" not in ok.details["accuracies"] and ok.message.startswith("order fgsm >= pgd")
    # PGD a little above FGSM: within two standard errors of 500 samples (4.4 points).
    assert gate_attack_ordering({"clean": 0.9, "fgsm": 0.40, "pgd": 0.41}, 500).passed
    bad = gate_attack_ordering({"clean": 0.9, "fgsm": 0.10, "pgd": 0.40}, 1000)
    assert not bad.passed
    assert bad.details["violations"][0]["weaker"] == "fgsm"
    assert "pgd leaves 30.00% more accuracy than fgsm" in bad.message
    assert gate_attack_ordering({"clean": 0.9, "pgd": 0.3}, 10).passed  # missing names skipped
    assert binomial_tolerance(0.5, 100) == pytest.approx(0.1)
    assert binomial_tolerance(0.0, 100) == 0.0


def test_large_eps() -> None:
    assert gate_large_eps(0.01, eps=16 / 255).passed
    bad = gate_large_eps(0.35, eps=16 / 255, label="pgd/linf")
    assert not bad.passed and "gradient masking suspected" in bad.message


def test_adversarial_examples_gate(toy_model: nn.Module, toy_test_data: Data) -> None:
    images, labels = toy_test_data[0][:64], toy_test_data[1][:64]
    target = AttackTarget(toy_model)
    eps = 8 / 255
    result = run_autoattack(
        target,
        images,
        labels,
        eps=eps,
        version="custom",
        attacks=["apgd-ce"],
        seed=0,
        budget=AutoAttackBudget(n_iter=10, n_restarts=1),
    )
    assert result.robust_accuracy < result.clean_accuracy

    def gate(x_adv: Tensor, **kwargs: object) -> GateResult:
        kwargs.setdefault("reported_robust_correct", result.robust_correct)
        return gate_adversarial_examples(
            target, images, labels, x_adv, eps=eps, norm="linf", **kwargs
        )

    ok = gate(result.x_adv)
    assert ok.passed, ok.message
    assert ok.details["reevaluated_robust_accuracy"] == result.robust_accuracy
    assert gate(
        result.x_adv, reported_robust_correct=None, reported_robust_accuracy=0.5
    ).passed is (result.robust_accuracy == 0.5)
    outside = result.x_adv.clone()
    outside[0] = (images[0] + 2 * eps).clamp(0, 1)
    bad = gate(outside)
    assert not bad.passed and bad.details["n_outside_ball"] >= 1 and "eps-ball" in bad.message
    box = result.x_adv.clone()
    box[1, 0, 0, 0] = -0.5
    assert "leaves [0,1]" in gate(box).message
    # Claiming every sample robust while x_adv fools some: the re-evaluation disagrees.
    claimed = gate(result.x_adv, reported_robust_correct=result.clean_correct)
    assert not claimed.passed and "differs from the reported" in claimed.message
    assert claimed.details["mismatched_samples"] == int(
        (result.clean_correct & ~result.robust_correct).sum()
    )


class _Detached(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).detach()


class _Step(nn.Module):
    """A step function of the input: piecewise constant, so the gradient is zero everywhere."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 8) / 8)  # d round / dx = 0


def test_input_gradient_gate(toy_model: nn.Module, toy_test_data: Data) -> None:
    images, labels = toy_test_data[0][:64], toy_test_data[1][:64]
    ok = gate_input_gradients(toy_model, images, labels)
    assert ok.passed and ok.details["nonzero_fraction"] == 1.0
    for masked in (_Detached(toy_model), _Step(toy_model)):
        bad = gate_input_gradients(masked, images, labels)
        assert not bad.passed, type(masked).__name__
        assert bad.details["n_zero"] == 64 and "gradient masking" in bad.message
    # The plain model was frozen only for the call.
    assert all(p.requires_grad for p in toy_model.parameters())


def test_run_gates_on_rows_and_format() -> None:
    rows = [
        Row("pgd", "linf", 0.0, 0.9, 0.9),
        Row("pgd", "linf", 2 / 255, 0.9, 0.5),
        Row("pgd", "linf", 4 / 255, 0.9, 0.3),
        Row("pgd", "linf", 16 / 255, 0.9, 0.0),
        Row("fgsm", "linf", 2 / 255, 0.9, 0.6),
        Row("fgsm", "linf", 4 / 255, 0.9, 0.45),
        Row("fgsm", "linf", 16 / 255, 0.9, 0.01),
        Row("pgd", "l2", 0.1, 0.9, 0.7),
    ]
    gates = run_gates(rows)
    names = sorted(g.name for g in gates)
    assert names == sorted(
        [
            "eps_zero[pgd/linf]",
            "monotone_in_eps[pgd/linf]",
            "monotone_in_eps[fgsm/linf]",
            "attack_ordering[linf/eps=0.007843]",
            "attack_ordering[linf/eps=0.01569]",
            "attack_ordering[linf/eps=0.06275]",
            "large_eps[pgd/linf]",  # not FGSM: one step may stay above 2%
        ]
    )
    assert all(g.passed for g in gates)
    assert format_gates(gates).startswith("sanity gates: all 7 passed")

    broken = [
        *rows[:3],
        Row("pgd", "linf", 16 / 255, 0.9, 0.4),  # high at 16/255 and a rise: two failures
        Row("fgsm", "linf", 4 / 255, 0.9, 0.05),  # FGSM far stronger than PGD
    ]
    gates = run_gates(broken, thresholds=GateThresholds(large_eps_max_accuracy=0.05))
    failed = {g.name for g in gates if not g.passed}
    assert failed == {
        "monotone_in_eps[pgd/linf]",
        "large_eps[pgd/linf]",
        "attack_ordering[linf/eps=0.01569]",
    }
    text = format_gates(gates)
    lines = text.splitlines()
    assert lines[0] == f"sanity gates: {len(gates) - 3} passed, 3 FAILED"
    assert all(line.startswith("GATE FAILED: ") for line in lines[1:4])
    assert all(line.startswith("gate passed: ") for line in lines[4:])
    with pytest.raises(ValueError, match="two results"):
        run_gates([rows[1], rows[1]])


def test_run_gates_with_target(toy_model: nn.Module, toy_test_data: Data) -> None:
    images, labels = toy_test_data[0][:64], toy_test_data[1][:64]
    target = AttackTarget(toy_model)
    results = [
        run_autoattack(
            target,
            images,
            labels,
            eps=eps,
            version="custom",
            attacks=["apgd-ce"],
            seed=0,
            budget=AutoAttackBudget(n_iter=5, n_restarts=1),
        )
        for eps in (0.0, 8 / 255)
    ]
    gates = run_gates(
        autoattack=results,
        target=target,
        images=images,
        labels=labels,
        convergence=[ConvergenceSettings(eps=8 / 255, steps=3, restarts=2)],
    )
    by_name = {g.name.split("[")[0] for g in gates}
    assert by_name == {
        "eps_zero",
        "eps_zero_path",  # always run with a target
        "large_eps",  # always run with a target, at thresholds.large_eps
        "monotone_in_eps",
        "adversarial_examples",
        "input_gradients",
        "pgd_convergence",
    }
    assert "large_eps[pgd/linf/eps=0.06275]" in {g.name for g in gates}
    assert sum(g.name.startswith("adversarial_examples") for g in gates) == 2
    for g in gates:
        if g.name.startswith("pgd_convergence"):
            assert set(g.details["drops"]) == {"double_steps", "restarts"}
            assert not math.isnan(g.details["accuracy_restarts"])
        else:
            assert g.passed, g


class _Quantised(nn.Module):
    """Rounds its input to 8 bits before the model: piecewise constant, so input gradients are 0."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 255) / 255)


def _perturbs_at_zero(size: float) -> Callable[..., Tensor]:
    """An attack that takes one gradient-sign step of ``size`` and forgets to project on the ball."""

    def leaky_fgsm(target: AttackTarget, x: Tensor, y: Tensor, **_: object) -> Tensor:
        _, _, grad = input_gradient(target, x, y)
        return (x + size * grad.sign()).clamp(0, 1)

    return leaky_fgsm


@pytest.mark.parametrize(
    "settings",
    [GateAttack(), GateAttack(norm="l2", restarts=2), GateAttack("fgsm")],
    ids=["pgd-linf", "pgd-l2-restarts", "fgsm"],
)
def test_eps_zero_path_passes_for_the_builtin_attacks(
    toy_model: nn.Module, toy_test_data: Data, settings: GateAttack
) -> None:
    images, labels = toy_test_data[0][:64], toy_test_data[1][:64]
    gate = check_eps_zero(toy_model, images, labels, settings, seed=0)
    assert gate.passed, gate.message
    assert gate.details["max_perturbation"] == 0.0
    assert gate.details["accuracy_at_zero"] == gate.details["clean_accuracy"] > 0.9
    assert gate.details["step_size"] > 0  # the steps really move before the projection


@pytest.mark.parametrize("size", [1e-7, 4 / 255])
def test_eps_zero_path_fails_for_an_attack_that_perturbs_at_eps_zero(
    toy_model: nn.Module, toy_test_data: Data, size: float
) -> None:
    images, labels = toy_test_data[0][:64], toy_test_data[1][:64]
    gate = check_eps_zero(toy_model, images, labels, GateAttack(_perturbs_at_zero(size)), seed=0)
    assert not gate.passed and gate.name == "eps_zero_path[leaky_fgsm/linf]"
    if size < 1e-6:  # inside the per-batch check's float32 tolerance: caught by exact equality
        assert gate.details["max_perturbation"] > 0
        assert "differs from x" in gate.message
    else:  # the per-batch threat-model check trips; the gate reports it instead of raising
        assert "leaves the threat model" in gate.message and "exceeds eps 0" in gate.message


def test_large_eps_check_fails_on_input_quantisation(
    toy_model: nn.Module, toy_test_data: Data
) -> None:
    images, labels = toy_test_data[0][:64], toy_test_data[1][:64]
    ok = check_large_eps(toy_model, images, labels, seed=0)
    assert ok.passed and ok.details["accuracy"] <= 0.02, ok.message
    assert ok.name == "large_eps[pgd/linf/eps=0.06275]" and ok.details["eps"] == 16 / 255
    masked = _Quantised(toy_model)
    bad = check_large_eps(masked, images, labels, seed=0)
    # Clean accuracy is unchanged by 8-bit rounding, but PGD cannot move: masking is flagged.
    assert bad.details["clean_accuracy"] == ok.details["clean_accuracy"]
    assert not bad.passed and bad.details["accuracy"] > 0.5
    assert "gradient masking suspected" in bad.message
    assert not gate_input_gradients(masked, images, labels).passed  # the other masking gate


def test_run_gates_passes_the_large_eps_radius(toy_model: nn.Module, toy_test_data: Data) -> None:
    images, labels = toy_test_data[0][:32], toy_test_data[1][:32]
    gates = run_gates(
        target=toy_model,
        images=images,
        labels=labels,
        gate_attacks=[GateAttack(steps=5, relative_step_size=0.5), GateAttack("fgsm")],
        thresholds=GateThresholds(large_eps=0.1),
    )
    by_name = {g.name: g for g in gates}
    assert set(by_name) == {
        "eps_zero_path[pgd/linf]",
        "eps_zero_path[fgsm/linf]",
        "large_eps[pgd/linf/eps=0.1]",  # not FGSM (exempt)
        "input_gradients",
    }
    assert by_name["large_eps[pgd/linf/eps=0.1]"].details["eps"] == 0.1
    assert by_name["large_eps[pgd/linf/eps=0.1]"].details["step_size"] == pytest.approx(0.05)
    assert by_name["eps_zero_path[pgd/linf]"].details["step_size"] == pytest.approx(0.05)
