"""Budgets: one study per training budget, and the report of the gap SL - CSL across them."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cslrobust.cli.main import app
from cslrobust.errors import ConfigError
from cslrobust.statistics import Estimate
from cslrobust.study.report.budget import budget_results, ordering
from cslrobust.study.spec import expand_study, load_study

TWO_METHODS = (
    "methods={supervised: {objective: {name: supervised}}, simclr: {objective: {name: simclr}}}"
)
BUDGETS = "budgets={small: {data: {train_per_class: 12}}, large: {train: {epochs: 3}}}"


def test_each_budget_is_a_study_of_its_own(synthetic_study):
    spec = load_study(synthetic_study(epochs=2), [TWO_METHODS, BUDGETS])
    studies = dict(spec.budget_studies())
    assert list(studies) == ["small", "large"]
    small, large = studies["small"], studies["large"]
    assert (small.name, small.output_dir) == ("synthetic-small", spec.output_dir / "small")
    assert small.report_folder == spec.report_folder / "small" and not small.budgets
    assert {c.data.train_per_class for c in expand_study(small)} == {12}
    assert {c.train.epochs for c in expand_study(large)} == {3}
    assert {c.train.epochs for c in expand_study(small)} == {2}  # the base's
    # different budgets train different cells
    ids = {c.run_id() for s in (small, large) for c in expand_study(s)}
    assert len(ids) == 4


def test_a_study_without_budgets_is_itself(synthetic_study):
    spec = load_study(synthetic_study(), [TWO_METHODS])
    assert spec.budget_studies() == [("", spec)]


def test_a_bad_budget_names_the_budget(synthetic_study):
    with pytest.raises(ConfigError, match="budget 'tiny': .*train.epochs"):
        load_study(synthetic_study(), [TWO_METHODS, "budgets={tiny: {train: {epochs: -1}}}"])
    with pytest.raises(ConfigError, match="budget name 'a b'"):
        load_study(synthetic_study(), [TWO_METHODS, "budgets={'a b': {}}"])


@pytest.mark.parametrize(
    ("estimate", "expected"),
    [
        (Estimate(0.05, 0.01, 0.09, "bootstrap"), "SL > CSL (paper)"),
        (Estimate(-0.05, -0.09, -0.01, "bootstrap"), "SL < CSL"),
        (Estimate(0.01, -0.02, 0.04, "bootstrap"), "inconclusive"),
        (Estimate(0.01, float("nan"), float("nan"), "none"), "no interval"),
    ],
)
def test_ordering_reads_the_interval(estimate: Estimate, expected: str):
    assert ordering(estimate) == expected


def test_budget_study_runs_every_budget_and_reports_the_gap_across_them(synthetic_study):
    study = synthetic_study(epochs=2)
    sets = [
        TWO_METHODS,
        "budgets={small: {data: {train_per_class: 12}}, full: {}}",
        "stages=[train,probe,attack]",
        "base.attack.attacks=[pgd]",
        "trajectory_every=1",
    ]
    args = ["study", "run", str(study), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    spec = load_study(study, sets)
    for budget in ("small", "full"):
        assert (spec.report_folder / budget / "report.md").is_file()
    report = (spec.report_folder / "report.md").read_text()
    assert "The gap RA(supervised) - RA(simclr) across training budgets" in report
    assert (spec.report_folder / "budget_gaps.png").is_file()
    results = budget_results(spec)
    assert [r.budget for r in results] == ["small", "full"]
    for r in results:
        assert r.attack == "pgd" and 0 <= r.sl_clean <= 1 and 0 <= r.csl_clean <= 1
        assert [g.eps for g in r.gaps] == [2 / 255]  # eps 0 is the clean gap: left out
        assert set(r.matched) == {("linf", 0.0), ("linf", 2 / 255)}  # trajectories kept
        # the final models' gap is the difference of the attack stage's mean robust accuracies
        assert r.gaps[0].analysis.gap.value == pytest.approx(
            _robust_gap(spec, r.budget, 2 / 255), abs=1e-9
        )
    rows = [
        line
        for line in report.splitlines()
        if line.startswith("| small") or line.startswith("| full")
    ]
    assert len(rows) == 2  # two budgets x one radius > 0
    # a rerun only skips and writes the same table
    again = CliRunner().invoke(
        app, ["study", "report", str(study), *[x for s in sets for x in ("--set", s)]]
    )
    assert again.exit_code == 0, again.output
    assert (spec.report_folder / "report.md").read_text() == report


def _robust_gap(spec, budget: str, eps: float) -> float:
    """SL - CSL mean robust accuracy of ``budget`` at ``eps``, from the attack stage's rows."""
    from cslrobust.study.report.results import StudyResults, current_rows
    from cslrobust.study.runner import open_store, study_cells

    study = dict(spec.budget_studies())[budget]
    cells = study_cells(study)
    with open_store(study) as store:
        res = StudyResults(current_rows(store, cells), ["supervised", "simclr"])
    cond = {"attack": "pgd", "norm": "linf", "eps": eps}
    sl = res.values("supervised", "robust_accuracy", **cond)
    csl = res.values("simclr", "robust_accuracy", **cond)
    return sum(sl) / len(sl) - sum(csl) / len(csl)


def test_status_lists_every_budget(synthetic_study, tmp_path: Path):
    study = synthetic_study()
    result = CliRunner().invoke(
        app, ["study", "status", str(study), "--set", TWO_METHODS, "--set", BUDGETS]
    )
    assert result.exit_code == 0, result.output
    assert "budget small" in result.output and "budget large" in result.output
    assert result.output.count("pending") >= 4
