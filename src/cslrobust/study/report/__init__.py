"""The study report, built from the results database only (never runs a model).

Writes into the report folder: ``report.md``, a self-contained ``report.html`` (plots embedded),
``results.csv`` and ``results.json`` (every row), and PNG plots. The report is a list of registered
sections (:mod:`~cslrobust.study.report.sections`); importing this package registers the built-in ones
(clean, attacks, evaluation, corruptions, detector, geometry).
"""

from cslrobust.study.report.mechanism import detector_table, geometry_table, geometry_vs_robustness
from cslrobust.study.report.results import StudyResults, Table, accuracy_estimate, current_rows
from cslrobust.study.report.robustness import (
    clean_table,
    corruption_table,
    evaluation_table,
    gap_table,
    gate_failures,
    matched_table,
    robust_table,
    success_table,
)
from cslrobust.study.report.sections import (
    Block,
    ReportContext,
    Section,
    SectionOutput,
    register_section,
    select_sections,
)
from cslrobust.study.report.writer import write_report

__all__ = [
    "Block",
    "ReportContext",
    "Section",
    "SectionOutput",
    "StudyResults",
    "Table",
    "accuracy_estimate",
    "clean_table",
    "corruption_table",
    "current_rows",
    "detector_table",
    "evaluation_table",
    "gap_table",
    "gate_failures",
    "geometry_table",
    "geometry_vs_robustness",
    "matched_table",
    "register_section",
    "robust_table",
    "select_sections",
    "success_table",
    "write_report",
]
