"""Write the report files from the registered sections.

The selected sections are rendered in order and laid out as markdown and a self-contained HTML page;
every row is exported as CSV and JSON.
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cslrobust.records import write_json_atomic
from cslrobust.study.report.results import StudyResults, current_rows
from cslrobust.study.report.robustness import gate_failures
from cslrobust.study.report.sections import ReportContext, SectionOutput, select_sections
from cslrobust.study.runner import Cell
from cslrobust.study.store import ResultsStore

EXPORT_KEYS = (
    "method",
    "seed",
    "cell_id",
    "stage",
    "metric",
    "attack",
    "norm",
    "eps",
    "corruption",
    "severity",
    "epoch",
    "value",
    "git_sha",
    "created_at",
)

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto}"
    "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:right}th{background:#eee}.warn{color:#b00;font-weight:bold}"
)


def export_rows(rows: list[dict[str, Any]], folder: Path) -> None:
    """Write every row to ``results.csv`` (main columns) and ``results.json`` (all but packed bits)."""
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(EXPORT_KEYS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    slim = [{k: v for k, v in r.items() if not k.endswith("_bits")} for r in rows]
    write_json_atomic(folder / "results.json", slim)


def _intro(
    title: str,
    cells: Sequence[Cell],
    res: StudyResults,
    ctx: ReportContext,
    wall_seconds: float | None,
    failures: list[str],
) -> list[str]:
    """Markdown lines above the sections: title, cells, wall time, missing cells, sanity gates."""
    missing = [c.config.name for c in cells if not any(r["cell_id"] == c.cell_id for r in res.rows)]
    intro = [
        f"# {title}",
        "",
        f"{len(cells)} cells ({len(res.methods)} methods); references: supervised = "
        f"`{ctx.supervised}`, contrastive = `{ctx.contrastive}`. All numbers come from the results "
        "database; every row is in `results.csv` / `results.json`.",
    ]
    if wall_seconds is not None:
        intro += ["", f"Wall time of the last `study run`: {wall_seconds / 60:.1f} min."]
    if missing:
        intro += ["", f"**Incomplete: no results yet for {', '.join(missing)}.**"]
    if failures:
        intro += [
            "",
            f"**WARNING: {len(failures)} sanity gate(s) failed; numbers of these cells are suspect:**",
        ]
        intro += [f"- GATE FAILED: {line}" for line in failures]
    elif any(r["metric"].startswith("gate/") for r in res.rows):
        intro += ["", "All sanity gates passed."]
    return intro


def _markdown(intro: list[str], out: SectionOutput) -> str:
    """report.md: intro, blocks, plots (images), exports (links)."""
    md = "\n".join(intro) + "\n\n" + "\n\n".join(b.markdown() for b in out.blocks)
    md += "\n\n" + "\n\n".join(f"![{name}]({p.name})" for name, p in out.plots) + "\n"
    if out.exports:
        md += "\n" + "\n".join(f"- [{name}]({p.name})" for name, p in out.exports) + "\n"
    return md


def _html(title: str, intro: list[str], out: SectionOutput) -> str:
    """report.html: one self-contained page (plots embedded as base64 PNG)."""
    paragraphs = "".join(
        f"<p class='warn'>{html.escape(line)}</p>"
        if ("GATE" in line or "WARNING" in line)
        else f"<p>{html.escape(line)}</p>"
        for line in intro[2:]
        if line
    )
    figures = "".join(
        f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'/>"
        for name, p in out.plots
    )
    links = "".join(
        f"<p><a href='{html.escape(p.name)}'>{html.escape(name)}</a></p>" for name, p in out.exports
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + f"</title><style>{STYLE}</style></head><body>"
        + paragraphs
        + "".join(b.html() for b in out.blocks)
        + figures
        + links
        + "</body></html>"
    )


def write_report(
    title: str,
    cells: Sequence[Cell],
    store: ResultsStore,
    folder: Path,
    *,
    supervised: str = "supervised",
    contrastive: str = "simclr",
    wall_seconds: float | None = None,
    sections: Sequence[str] | None = None,
) -> tuple[str, Path]:
    """Write ``report.md``, ``report.html``, ``results.csv``, ``results.json`` and the plots.

    Args:
        title: Report title.
        cells: The study's cells (rows of other cells or stale stages are left out).
        store: The study's results database (only read).
        folder: Output folder (created if missing).
        supervised: Method name of the supervised reference.
        contrastive: Method name of the contrastive reference.
        wall_seconds: Wall time of the last ``study run``, shown when given.
        sections: Registered section names to render (report order is the sections' own);
            None renders every registered section.

    Returns:
        The terminal summary (failed gates, then the sections' summary texts) and the path of
        ``report.md``.

    Raises:
        ConfigError: If a name in ``sections`` is not a registered section.
    """
    chosen = select_sections(sections)
    folder.mkdir(parents=True, exist_ok=True)
    rows = current_rows(store, cells)
    res = StudyResults(rows, list(dict.fromkeys(c.method for c in cells)))
    ctx = ReportContext(folder=folder, supervised=supervised, contrastive=contrastive)
    export_rows(rows, folder)

    out = SectionOutput()
    for section in chosen:
        part = section.render(res, ctx)
        out.blocks += part.blocks
        out.plots += part.plots
        out.exports += part.exports
        out.summary += part.summary

    failures = gate_failures(res)
    intro = _intro(title, cells, res, ctx, wall_seconds, failures)
    report = folder / "report.md"
    report.write_text(_markdown(intro, out))
    (folder / "report.html").write_text(_html(title, intro, out))

    summary = list(out.summary)
    if failures:
        summary.insert(0, "\n".join(["!!! SANITY GATES FAILED:"] + failures))
    return "\n\n".join(summary), report
