"""The families section on constructed rows: family means of method means and their ranges, the
plots, the frontier and geometry by family, and when the section has nothing to show."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cslrobust.objectives import FAMILIES
from cslrobust.study.report import ReportContext, StudyResults, family_groups, family_table
from cslrobust.study.report.families import (
    families_section,
    family_colours,
    family_frontier,
    family_geometry_table,
)
from cslrobust.study.store import ResultsStore

EPS = (0.0, 2 / 255, 8 / 255)
FAMILY = {"supervised": "supervised", "simclr": "contrastive", "supcon": "fn_removal"}
FAMILY["fnr"] = "fn_removal"
# method -> per seed: (clean accuracy on the attacked set, RA at 2/255, RA at 8/255). fnr has one
# seed only: a family mean weighted by seeds would differ from the mean of method means.
VALUES = {
    "supervised": {0: (0.90, 0.50, 0.20), 1: (0.80, 0.70, 0.30)},
    "simclr": {0: (0.80, 0.30, 0.10), 1: (0.84, 0.30, 0.05)},
    "supcon": {0: (0.90, 0.40, 0.20), 1: (0.90, 0.50, 0.10)},
    "fnr": {0: (0.70, 0.25, 0.05)},
}
UNIFORMITY = {"supervised": (-1.0, -1.2), "simclr": (-3.0, -3.0), "supcon": (-2.0, -2.4)}
UNIFORMITY["fnr"] = (-3.0,)
NO_ATTACK = {"attack": None, "norm": None, "eps": None, "epoch": 5}
"""Condition columns of a row of a stage other than attack (stored rows carry every column)."""


def _attack_rows(method: str) -> list[dict]:
    rows = []
    for seed, (clean, *robust) in VALUES[method].items():
        for eps, ra in zip(EPS, (clean, *robust), strict=True):
            cond = {"method": method, "seed": seed, "attack": "pgd", "norm": "linf", "eps": eps}
            rows += [
                {**cond, "metric": "clean_accuracy", "value": clean},
                {**cond, "metric": "robust_accuracy", "value": ra},
            ]
    return rows


def _geometry_rows(method: str) -> list[dict]:
    return [
        {**NO_ATTACK, "method": method, "seed": seed, "metric": "geometry/uniformity", "value": v}
        for seed, v in enumerate(UNIFORMITY[method])
    ]


def _trajectory_rows(method: str, points: list[tuple[int, float, float]]) -> list[dict]:
    """Trajectory rows of seed 0 at 2/255 and 8/255: per (epoch, clean, robust at 8/255)."""
    rows = []
    for epoch, clean, robust in points:
        cond = {"method": method, "seed": 0, "attack": "pgd", "norm": "linf", "epoch": epoch}
        for eps, ra in ((2 / 255, clean), (8 / 255, robust)):
            rows += [
                {**cond, "eps": eps, "metric": "trajectory/clean_accuracy", "value": clean},
                {**cond, "eps": eps, "metric": "trajectory/robust_accuracy", "value": ra},
            ]
    return rows


def _results(*, geometry: bool = False, trajectory: bool = False) -> StudyResults:
    rows = [r for m in VALUES for r in _attack_rows(m)]
    if geometry:
        rows += [r for m in VALUES for r in _geometry_rows(m)]
    if trajectory:
        rows += _trajectory_rows("supervised", [(3, 0.5, 0.2), (6, 0.7, 0.3)])
        rows += _trajectory_rows("supcon", [(3, 0.4, 0.1), (6, 0.6, 0.2), (9, 0.8, 0.3)])
        rows += _trajectory_rows(
            "fnr", [(3, 0.2, 0.05), (6, 0.4, 0.1), (9, 0.6, 0.2), (12, 0.7, 0.2)]
        )
    return StudyResults(rows, list(VALUES))


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _expected(method_means: list[float]) -> str:
    """The family cell: mean of the method means [min, max], in percent."""
    mean, low, high = np.mean(method_means), min(method_means), max(method_means)
    return f"{_pct(mean)} [{_pct(low)}, {_pct(high)}]"


def test_family_table_gives_means_of_method_means_and_their_ranges():
    res = _results()
    groups, ungrouped = family_groups(res.methods, FAMILY)
    assert list(groups) == ["supervised", "contrastive", "fn_removal"] and not ungrouped
    table = family_table(res, groups, "pgd")
    assert table.header == ["family", "methods", "clean (attacked set)", "0/255", "2/255", "8/255"]
    lines = {row[0]: dict(zip(table.header, row, strict=True)) for row in table.rows}
    assert list(lines) == [FAMILIES["supervised"], FAMILIES["contrastive"], FAMILIES["fn_removal"]]
    fn = lines[FAMILIES["fn_removal"]]
    assert fn["methods"] == "supcon, fnr"
    # supcon: seed means 0.90 / 0.45 / 0.15; fnr (one seed): 0.70 / 0.25 / 0.05.
    assert fn["clean (attacked set)"] == _expected([0.90, 0.70]) == "80.0 [70.0, 90.0]"
    assert fn["0/255"] == "80.0 [70.0, 90.0]"  # eps 0: robust = clean
    assert fn["2/255"] == _expected([0.45, 0.25]) == "35.0 [25.0, 45.0]"  # not (40+50+25)/3
    assert fn["8/255"] == _expected([0.15, 0.05]) == "10.0 [5.0, 15.0]"
    sl = lines[FAMILIES["supervised"]]
    assert sl["clean (attacked set)"] == "85.0 [85.0, 85.0]"
    assert sl["2/255"] == "60.0 [60.0, 60.0]" and sl["8/255"] == "25.0 [25.0, 25.0]"
    assert lines[FAMILIES["contrastive"]]["8/255"] == "7.5 [7.5, 7.5]"
    assert "No interval" in table.note


def test_a_method_without_a_value_is_named_in_its_family_cell():
    res = _results()
    rows = [r for r in res.rows if not (r["method"] == "fnr" and r["eps"] == 8 / 255)]
    res = StudyResults(rows, res.methods)
    groups, _ = family_groups(res.methods, FAMILY)
    table = family_table(res, groups, "pgd")
    fn = dict(zip(table.header, table.rows[2], strict=True))
    assert fn["8/255"] == "15.0 [15.0, 15.0] (1 of 2 methods)"
    assert fn["2/255"] == "35.0 [25.0, 45.0]"


def test_groups_follow_the_family_order_and_colours_are_fixed():
    groups, ungrouped = family_groups(
        ["byol", "fnr", "x", "supervised", "odd"],
        {"byol": "negative_free", "fnr": "fn_removal", "supervised": "supervised", "odd": "new"},
    )
    assert groups == {
        "supervised": ["supervised"],
        "fn_removal": ["fnr"],
        "negative_free": ["byol"],
        "new": ["odd"],
    }
    assert ungrouped == ["x"]
    # A family keeps its colour whichever families the study has.
    assert family_colours(["negative_free"])["negative_free"] == "C3"
    assert family_colours(["supervised", "new"]) == {
        **{k: f"C{i}" for i, k in enumerate(FAMILIES)},
        "new": "C6",
    }


def test_frontier_by_family_averages_method_means_at_shared_checkpoints():
    res = _results(trajectory=True)
    groups, _ = family_groups(res.methods, FAMILY)
    frontier = family_frontier(res, groups)
    assert frontier is not None
    assert (frontier.attack, frontier.norm, frontier.eps) == ("pgd", "linf", 8 / 255)
    assert list(frontier.lines) == ["supervised", "fn_removal"]  # simclr has no trajectory
    assert frontier.methods["fn_removal"] == ["supcon", "fnr"]
    clean, robust = frontier.lines["fn_removal"]  # epochs 3, 6, 9 (fnr's 12 is not shared)
    assert clean.tolist() == [[0.4, 0.6, 0.8], [0.2, 0.4, 0.6]]
    assert robust.tolist() == [[0.1, 0.2, 0.3], [0.05, 0.1, 0.2]]


def test_geometry_by_family_averages_method_means():
    res = _results(geometry=True)
    groups, _ = family_groups(res.methods, FAMILY)
    table = family_geometry_table(res, groups)
    assert table is not None
    column = table.header.index("uniformity")
    # supcon -2.2, fnr -3.0 -> -2.6 [-3.0, -2.2]; supervised -1.1.
    assert [row[column] for row in table.rows] == [
        "-1.100 [-1.100, -1.100]",
        "-3.000 [-3.000, -3.000]",
        "-2.600 [-3.000, -2.200]",
    ]
    assert table.rows[0][table.header.index("alignment")] == "n/a"
    assert family_geometry_table(_results(), groups) is None


def test_section_writes_the_table_plots_and_notes(tmp_path: Path):
    res = _results(geometry=True, trajectory=True)
    out = families_section(res, ReportContext(tmp_path, "supervised", "simclr", families=FAMILY))
    assert [path.name for _, path in out.plots] == ["families.png", "families_frontier.png"]
    for name in ("families.png", "families_frontier.png"):
        width, height = Image.open(tmp_path / name).size
        assert width > 300 and height > 300
    titles = [block.markdown().splitlines()[0] for block in out.blocks]
    assert titles[0] == "### Method families"
    assert "### PGD robust accuracy by method family (%)" in titles
    assert "### Representation geometry by method family (backbone features, test set)" in titles
    text = "\n".join(block.markdown() for block in out.blocks)
    assert "SupCon and debiased" in text and "Not grouped" not in text
    assert (
        "Methods drawn: supervised: supervised; contrastive with false-negative removal: supcon, fnr."
        in text
    )


def test_section_without_trajectory_or_geometry_has_the_table_and_plot_only(tmp_path: Path):
    out = families_section(
        _results(), ReportContext(tmp_path, "supervised", "simclr", families=FAMILY)
    )
    assert [path.name for _, path in out.plots] == ["families.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["families.png"]
    assert len(out.blocks) == 2


@pytest.mark.parametrize(
    "families",
    [
        {},  # no families in the context (e.g. a context built without them)
        {
            "supervised": "contrastive",
            "simclr": "contrastive",
            "supcon": "contrastive",
            "fnr": "contrastive",
        },
        {"supcon": "fn_removal", "fnr": "fn_removal"},  # the others unknown: one family left
    ],
)
def test_one_family_or_none_gives_no_section(tmp_path: Path, families):
    out = families_section(
        _results(), ReportContext(tmp_path, "supervised", "simclr", families=families)
    )
    assert not out.blocks and not out.plots and not list(tmp_path.iterdir())


def test_methods_missing_from_the_context_are_named_and_left_out(tmp_path: Path):
    families = {m: f for m, f in FAMILY.items() if m != "simclr"}
    out = families_section(
        _results(), ReportContext(tmp_path, "supervised", "simclr", families=families)
    )
    text = [block.markdown() for block in out.blocks]
    assert "Not grouped (family unknown): simclr." in text[0]
    assert "| contrastive with negatives |" not in text[1] and "simclr" not in text[1]


def test_section_is_empty_without_attack_rows(tmp_path: Path):
    rows = [
        {**NO_ATTACK, "method": m, "seed": 0, "metric": "probe/test_accuracy", "value": 0.8}
        for m in VALUES
    ]
    out = families_section(
        StudyResults(rows, list(VALUES)),
        ReportContext(tmp_path, "supervised", "simclr", families=FAMILY),
    )
    assert not out.blocks and not out.plots and not list(tmp_path.iterdir())


def test_the_writer_fills_families_from_the_cells(report_store, tmp_path: Path):
    from cslrobust.study.report import write_report

    db, cells = report_store
    folder = tmp_path / "report"
    with ResultsStore(db) as store:
        _, report = write_report("Study t", cells, store, folder, sections=["families"])
    md = report.read_text()
    assert "### PGD robust accuracy by method family (%)" in md
    # supervised: RA at 2/255 of 0.5 and 0.7 (one method) -> 60.0.
    assert (
        "| supervised | supervised | 80.0 [80.0, 80.0] | 80.0 [80.0, 80.0] | 60.0 [60.0, 60.0] |"
        in md
    )
    assert (folder / "families.png").is_file()
