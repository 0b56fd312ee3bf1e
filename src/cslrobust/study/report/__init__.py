"""The study report, built from the results database only (never runs a model).

Writes into the report folder: ``report.md``, a self-contained ``report.html`` (plots embedded),
``results.csv`` and ``results.json`` (every row), and PNG plots. The report is a list of registered
sections (:mod:`~cslrobust.study.report.sections`); importing this package registers the built-in ones
(findings, clean, attacks, families, frontier, protocols, evaluation, corruptions, detector, geometry,
gates).
"""

from cslrobust.study.report.budget import write_budget_report
from cslrobust.study.report.families import family_groups, family_table
from cslrobust.study.report.findings import CLAIMS, Finding, assess_claims, register_claim
from cslrobust.study.report.frontier import frontier_table, method_trajectory
from cslrobust.study.report.mechanism import detector_table, geometry_table, geometry_vs_robustness
from cslrobust.study.report.protocols import fn_pairs, protocol_table
from cslrobust.study.report.results import (
    Note,
    StudyResults,
    Table,
    accuracy_estimate,
    current_rows,
    interval_caption,
)
from cslrobust.study.report.robustness import (
    budget_gaps,
    clean_table,
    corruption_table,
    evaluation_table,
    gap_table,
    gate_failures,
    gates_table,
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
    "CLAIMS",
    "Block",
    "Finding",
    "Note",
    "ReportContext",
    "Section",
    "SectionOutput",
    "StudyResults",
    "Table",
    "accuracy_estimate",
    "budget_gaps",
    "clean_table",
    "corruption_table",
    "current_rows",
    "detector_table",
    "evaluation_table",
    "family_groups",
    "family_table",
    "fn_pairs",
    "frontier_table",
    "assess_claims",
    "gap_table",
    "gate_failures",
    "gates_table",
    "geometry_table",
    "geometry_vs_robustness",
    "interval_caption",
    "matched_table",
    "protocol_table",
    "method_trajectory",
    "register_claim",
    "register_section",
    "robust_table",
    "select_sections",
    "success_table",
    "write_budget_report",
    "write_report",
]
