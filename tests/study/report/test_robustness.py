"""Robustness tables: gap closure only where the gap is positive, hierarchical intervals, dead
features, and the gates table with the report's gate status lines."""

from pathlib import Path

import numpy as np
import pytest

from cslrobust.statistics import INTERVAL_METHODS, hierarchical_bootstrap, t_interval
from cslrobust.study.report import (
    ReportContext,
    StudyResults,
    budget_gaps,
    clean_table,
    gap_table,
    gates_table,
    robust_table,
    write_report,
)
from cslrobust.study.report.robustness import attacks_section
from cslrobust.study.report.writer import GATES_NOT_RUN
from cslrobust.study.store import ResultsStore

N = 200
METHODS = ["supervised", "simclr", "fnr"]


def _column(table, name: str) -> list[str]:
    index = table.header.index(name)
    return [row[index] for row in table.rows]


def _gap_results(make_robust_row, budgets: dict[float, dict[str, int]]) -> StudyResults:
    """One seed; per eps, the number of correct images (of N, the first ones) per method."""
    rows = [
        make_robust_row(method, 0, n, N, eps=eps)
        for eps, per_method in budgets.items()
        for method, n in per_method.items()
    ]
    return StudyResults(rows, METHODS)


def test_negative_gap_gives_no_closure_but_the_difference(make_robust_row):
    res = _gap_results(
        make_robust_row,
        {
            1 / 255: {"supervised": 140, "simclr": 60, "fnr": 100},  # gap +40 pts
            2 / 255: {"supervised": 60, "simclr": 140, "fnr": 100},  # gap -40 pts
        },
    )
    table, plot_data = gap_table(res, "pgd", "supervised", "simclr")
    assert table is not None
    assert _column(table, "eps") == ["1/255", "2/255"]
    gaps = _column(table, "gap supervised - simclr (pts)")
    assert gaps[0].startswith("40.0 [") and gaps[1].startswith("-40.0 [")
    # The difference RA(fnr) - RA(simclr) is shown at both budgets, whatever the gap's sign.
    diffs = _column(table, "fnr - simclr (pts)")
    assert diffs[0].startswith("20.0 [") and diffs[1].startswith("-20.0 [")
    closure = _column(table, "closed by fnr (%)")
    assert closure[0].startswith("50 [")  # 20 / 40
    assert closure[1] == "n/a (no positive gap)"
    # Images 60..139 separate the models: every resample has a positive gap at 1/255, none at 2/255.
    assert _column(table, "resamples with gap <= 0 (%)") == ["0.0", "100.0"]
    # Only the budget with a positive gap is plotted.
    assert [label for label, _ in plot_data["fnr"]] == ["1/255"]
    assert plot_data["fnr"][0][1].value == pytest.approx(0.5)


def test_gap_closure_plot_is_omitted_with_a_note_without_a_positive_gap(
    make_robust_row, tmp_path: Path
):
    res = _gap_results(make_robust_row, {2 / 255: {"supervised": 60, "simclr": 140, "fnr": 100}})
    out = attacks_section(res, ReportContext(tmp_path, "supervised", "simclr"))
    assert not (tmp_path / "gap_closure.png").exists()
    assert all("Gap closure" not in caption for caption, _ in out.plots)
    notes = [b.markdown() for b in out.blocks if "Gap-closure plot omitted" in b.markdown()]
    assert len(notes) == 1 and "RA(supervised) - RA(simclr)" in notes[0]


def test_gap_closure_plot_draws_positive_budgets(make_robust_row, tmp_path: Path):
    res = _gap_results(make_robust_row, {2 / 255: {"supervised": 140, "simclr": 60, "fnr": 100}})
    out = attacks_section(res, ReportContext(tmp_path, "supervised", "simclr"))
    assert (
        "Gap closure (budgets with a positive gap only)",
        tmp_path / "gap_closure.png",
    ) in out.plots
    assert not any("omitted" in b.markdown() for b in out.blocks)


def test_hierarchical_interval_is_wider_than_the_t_interval_with_few_images(make_robust_row):
    # Five seeds on the same 10 images: seeds agree closely (0.5 or 0.6), so the t-interval across
    # seeds is narrow, but 10 images say little about the accuracy on the test distribution.
    counts = [5, 5, 6, 5, 6]
    rows = [make_robust_row("simclr", seed, n, 10) for seed, n in enumerate(counts)]
    res = StudyResults(rows, ["simclr"])
    table = robust_table(res, "pgd")
    cell = _column(table, "2/255")[0]
    matrix = np.stack([np.arange(10) < n for n in counts])
    hierarchical = hierarchical_bootstrap(matrix)
    seeds_only = t_interval(np.array(counts) / 10)
    assert cell == hierarchical.format() and hierarchical.method == "hierarchical"
    assert hierarchical.high - hierarchical.low > 2 * (seeds_only.high - seeds_only.low)
    # Oracle of the t-interval: 54 +- t(0.975, 4) x sd / sqrt(5) = 54 +- 2.776 x 2.449 = [47.2, 60.8].
    assert seeds_only.format() == "54.0 [47.2, 60.8]"
    assert INTERVAL_METHODS["hierarchical"] in table.note


def test_without_per_image_bits_the_interval_is_t_across_seeds(make_robust_row):
    rows = [make_robust_row("simclr", seed, n, 10) for seed, n in enumerate([5, 6])]
    for r in rows:
        del r["correct_bits"]
    table = robust_table(StudyResults(rows, ["simclr"]), "pgd")
    assert _column(table, "2/255") == [t_interval(np.array([0.5, 0.6])).format()]
    assert (
        INTERVAL_METHODS["t"] in table.note and INTERVAL_METHODS["hierarchical"] not in table.note
    )


def test_clean_table_shows_dead_features_per_seed():
    rows = [
        {"method": m, "seed": seed, "metric": metric, "value": value}
        for m, dead in (("supervised", (0, 3)), ("simclr", (12, 7)))
        for seed, n_dead in enumerate(dead)
        for metric, value in (("probe/test_accuracy", 0.5), ("probe/dead_features", n_dead))
    ]
    rows.append({"method": "old", "seed": 0, "metric": "probe/test_accuracy", "value": 0.5})
    table = clean_table(StudyResults(rows, ["supervised", "simclr", "old"]))
    assert _column(table, "dead features (per seed)") == ["0 / 3", "12 / 7", "-"]
    assert INTERVAL_METHODS["t"] in table.note


def test_clean_table_states_views_per_image_per_step():
    rows = [
        {"method": m, "seed": 0, "metric": metric, "value": value}
        for m, views in (("supervised", 1), ("simclr", 2), ("fnr_topk", 3))
        for metric, value in (("probe/test_accuracy", 0.5), ("train/views_per_image", views))
    ]
    rows.append({"method": "old", "seed": 0, "metric": "probe/test_accuracy", "value": 0.5})
    table = clean_table(StudyResults(rows, ["supervised", "simclr", "fnr_topk", "old"]))
    assert _column(table, "views / image / step") == ["1", "2", "3", "-"]


def _gate(method: str, seed: int, name: str, passed: bool, message: str) -> dict:
    return {
        "method": method,
        "seed": seed,
        "stage": "gates:k",
        "metric": f"gate/{name}",
        "value": float(passed),
        "message": message,
    }


def test_gates_table_has_a_row_per_cell_with_failure_messages():
    rows = [
        _gate("supervised", 0, "eps_zero_path_pgd", True, "x_adv == x"),
        _gate("supervised", 0, "large_eps_pgd", True, "0.0% <= 2%"),
        _gate("simclr", 0, "eps_zero_path_pgd", True, "x_adv == x"),
        _gate("simclr", 0, "large_eps_pgd", False, "robust 31.0% > 2% at 16/255"),
    ]
    table = gates_table(StudyResults(rows, ["supervised", "simclr"]))
    assert table is not None
    assert table.header == [
        "method",
        "seed",
        "stage",
        "passed",
        "eps_zero_path_pgd",
        "large_eps_pgd",
    ]
    assert table.rows == [
        ["supervised", "0", "gates", "2/2", "pass", "pass"],
        ["simclr", "0", "gates", "1/2", "pass", "FAIL: robust 31.0% > 2% at 16/255"],
    ]
    assert gates_table(StudyResults([], ["simclr"])) is None


def _write(db: Path, cells, folder: Path):
    with ResultsStore(db) as store:
        return write_report("Study t", cells, store, folder)


def test_report_says_gates_not_run_first_when_no_cell_runs_them(report_store, tmp_path: Path):
    db, cells = report_store
    summary, report = _write(db, cells, tmp_path / "report")
    md = report.read_text()
    assert md.splitlines()[2] == f"**{GATES_NOT_RUN}**"  # the first line after the title
    assert md.index(GATES_NOT_RUN) < md.index("### Findings")
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"<p class='warn'>{GATES_NOT_RUN}</p>" in page
    assert page.index(GATES_NOT_RUN) < page.index("Findings")
    assert summary.splitlines()[0] == f"!!! {GATES_NOT_RUN}"
    assert "Sanity gates per cell" not in md


def test_report_lists_failed_gates_first_and_has_the_gates_table(report_store, tmp_path: Path):
    db, cells = report_store
    with ResultsStore(db) as store:
        for cell in cells:
            failed = cell.cell_id == "simclr-0"
            gate = _gate("", 0, "large_eps_pgd", not failed, "robust 31.0% > 2% at 16/255")
            rows = [{k: gate[k] for k in ("metric", "value", "message")}]
            store.commit_stage(cell.cell_id, "gates:k", rows, "sha")
            cell.stages["gates"] = "gates:k"
    summary, report = _write(db, cells, tmp_path / "report")
    md = report.read_text()
    assert GATES_NOT_RUN not in md and GATES_NOT_RUN not in summary
    lines = md.splitlines()
    assert lines[2] == "**WARNING: 1 sanity gate(s) failed; numbers of these cells are suspect:**"
    assert lines[4] == "- GATE FAILED: simclr (seed 0): large_eps_pgd: robust 31.0% > 2% at 16/255"
    assert md.index("GATE FAILED") < md.index("### Findings")
    assert "### Sanity gates per cell" in md
    assert "| simclr | 0 | gates | 0/1 | FAIL: robust 31.0% > 2% at 16/255 |" in md
    assert "| supervised | 1 | gates | 1/1 | pass |" in md
    assert summary.startswith("!!! SANITY GATES FAILED:\nsimclr (seed 0): large_eps_pgd")


def test_report_names_cells_whose_gates_have_no_results_yet(report_store, tmp_path: Path):
    db, cells = report_store
    for cell in cells:
        cell.stages["gates"] = "gates:k"
    _, report = _write(db, cells, tmp_path / "report")
    lines = report.read_text().splitlines()
    assert lines[2].startswith("**gates have no results yet for supervised-s0, supervised-s1")
    assert GATES_NOT_RUN not in report.read_text()


def test_gap_analyses_are_computed_once_per_results(make_robust_row):
    res = _gap_results(make_robust_row, {2 / 255: {"supervised": 140, "simclr": 60, "fnr": 100}})
    first = budget_gaps(res, "pgd", "supervised", "simclr")
    assert budget_gaps(res, "pgd", "supervised", "simclr") is first  # table and findings share it
    assert budget_gaps(res, "pgd", "simclr", "supervised") is not first
