"""The report writer: registered sections rendered in their order, selection, exports."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cslrobust.errors import ConfigError
from cslrobust.registry import Registry
from cslrobust.statistics import INTERVAL_METHODS, hierarchical_bootstrap
from cslrobust.study.report import (
    ReportContext,
    SectionOutput,
    StudyResults,
    Table,
    register_section,
    select_sections,
    write_report,
)
from cslrobust.study.report import sections as sections_module
from cslrobust.study.store import ResultsStore

BUILT_IN = [
    "findings",
    "clean",
    "attacks",
    "families",
    "frontier",
    "protocols",
    "evaluation",
    "corruptions",
    "detector",
    "geometry",
    "gates",
]


@pytest.fixture
def isolated_sections(monkeypatch):
    """A copy of the section registry, so sections registered by a test vanish after it."""
    copy: Registry = Registry("report section")
    for name in sections_module.SECTIONS.names():
        copy.register(name)(sections_module.SECTIONS.get(name))
    monkeypatch.setattr(sections_module, "SECTIONS", copy)
    return copy


def _write(db: Path, cells, folder: Path, **kwargs):
    with ResultsStore(db) as store:
        return write_report("Study t", cells, store, folder, **kwargs)


def test_built_in_sections_are_registered_in_report_order():
    assert [s.name for s in select_sections()] == BUILT_IN


def test_a_registered_section_is_rendered_in_its_order(report_store, tmp_path, isolated_sections):
    db, cells = report_store
    seen: list[tuple[list[str], ReportContext]] = []

    @register_section("seed_count", order=15)  # between clean (10) and attacks (20)
    def seed_count(res: StudyResults, ctx: ReportContext) -> SectionOutput:
        seen.append((res.methods, ctx))
        per_method = [[m, str(len(res.values(m, "probe/test_accuracy")))] for m in res.methods]
        table = Table("Seeds per method", ["method", "seeds"], per_method)
        export = ctx.folder / "seed_count.txt"
        export.write_text("2\n")
        return SectionOutput(
            blocks=[table], exports=[("seed counts", export)], summary=[table.text()]
        )

    folder = tmp_path / "report"
    summary, report = _write(db, cells, folder, supervised="supervised", contrastive="simclr")
    objectives = {"supervised": "supervised", "simclr": "simclr"}
    families = {"supervised": "supervised", "simclr": "contrastive"}
    context = ReportContext(
        folder, "supervised", "simclr", frozenset({"probe", "attack"}), objectives, families
    )
    assert seen == [(["supervised", "simclr"], context)]
    md = report.read_text()
    titles = [line for line in md.splitlines() if line.startswith("### ")]
    assert titles[:4] == [
        "### Findings",
        "### Clean accuracy (%)",
        "### Seeds per method",
        "### PGD robust accuracy (%) [95% CI]",
    ]
    assert "| supervised | 2 |" in md and "| simclr | 2 |" in md
    assert md.endswith(
        "![Robust accuracy vs eps](robust_accuracy.png)\n\n"
        "![Robust accuracy by method family (PGD)](families.png)\n\n- [seed counts](seed_count.txt)\n"
    )
    page = (folder / "report.html").read_text()
    assert page.index("Clean accuracy") < page.index("Seeds per method") < page.index("PGD robust")
    assert "<a href='seed_count.txt'>seed counts</a>" in page
    # Terminal summary: the sections' texts in section order.
    assert summary.index("Clean accuracy") < summary.index("Seeds per method")
    assert summary.index("Seeds per method") < summary.index("PGD robust accuracy")


def test_selected_sections_only_and_every_row_exported(report_store, tmp_path):
    db, cells = report_store
    folder = tmp_path / "report"
    summary, report = _write(db, cells, folder, sections=["clean"])
    md = report.read_text()
    assert "### Clean accuracy (%)" in md and "PGD" not in md and "PGD" not in summary
    assert not list(folder.glob("*.png"))
    # Oracle: supervised probe test accuracy 0.8 and 0.9 -> mean 85.0, t(0.975, df=1) = 12.7062 x sem 0.05.
    assert "| supervised | - | 2 | 85.0 [21.5, 148.5] |" in md
    with (folder / "results.csv").open() as handle:
        exported = list(csv.DictReader(handle))
    assert len(exported) == 4 * (1 + 4)  # per cell: one probe row, clean + robust at two eps
    rows = json.loads((folder / "results.json").read_text())
    assert len(rows) == len(exported) and not any(k.endswith("_bits") for r in rows for k in r)


def test_robust_table_and_plot_from_the_attacks_section(report_store, tmp_path):
    db, cells = report_store
    folder = tmp_path / "report"
    _, report = _write(db, cells, folder, sections=["attacks", "clean"])
    md = report.read_text()
    # Section order is the registry's, not the order asked for.
    assert md.index("### Clean accuracy") < md.index("### PGD robust accuracy")
    # RA at 2/255 of 0.5 and 0.7: mean 60.0; the interval is the hierarchical bootstrap over the two
    # seeds and the 10 images (images 0-4 correct in both seeds, 5-6 in seed 1 only).
    line = next(x for x in md.splitlines() if x.startswith("| supervised | 80.0 |"))
    matrix = np.stack([np.arange(10) < 5, np.arange(10) < 7])
    assert line.split(" | ")[-1] == hierarchical_bootstrap(matrix).format() + " |"
    assert "Intervals (95%): " + INTERVAL_METHODS["hierarchical"] in md
    assert "### Robustness gap and gap closed (PGD)" in md
    assert (folder / "robust_accuracy.png").is_file()
    assert not (folder / "gap_closure.png").exists()  # no third method whose closure could be drawn


def test_unknown_section_is_a_config_error(report_store, tmp_path):
    db, cells = report_store
    with pytest.raises(
        ConfigError, match="unknown report section 'nope'; expected one of: attacks"
    ):
        _write(db, cells, tmp_path / "report", sections=["clean", "nope"])
    assert not (tmp_path / "report").exists()  # checked before anything is written


def test_duplicate_section_names_are_refused(isolated_sections):
    with pytest.raises(ValueError, match="report section 'clean' is already registered"):
        register_section("clean", order=99)(lambda res, ctx: SectionOutput())
