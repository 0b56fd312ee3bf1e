"""Write the report files from the registered sections.

The selected sections are rendered in order and laid out as markdown and a self-contained HTML page;
every row is exported as CSV and JSON.
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cslrobust.config import RunConfig
from cslrobust.objectives import family_of
from cslrobust.records import ensure_writable_dir, write_json_atomic
from cslrobust.study.report.results import Note, StudyResults, current_rows
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


GATES_NOT_RUN = "gates not run: the robust accuracies below carry no sanity check"
"""First line of a report whose study runs no ``gates`` stage."""

ABOUT_ORDER = 5
"""The study description is placed before the first section of at least this order (after findings)."""


@dataclass(frozen=True)
class IntroLine:
    """A line above the sections; ``warn`` lines are bold in markdown and red in HTML."""

    text: str
    warn: bool = False


def _gate_lines(cells: Sequence[Cell], res: StudyResults, failures: list[str]) -> list[IntroLine]:
    """The gate status: not run (first), failures, cells without gate results yet, or all passed.

    Failures of gates recorded by other stages (the evaluate stage) are listed even when the gates
    stage does not run.
    """
    ran = any("gates" in c.stages for c in cells)
    lines = [] if ran else [IntroLine(GATES_NOT_RUN, warn=True)]
    if failures:
        lines.append(
            IntroLine(
                f"WARNING: {len(failures)} sanity gate(s) failed; numbers of these cells are suspect:",
                warn=True,
            )
        )
        lines += [IntroLine(f"- GATE FAILED: {line}", warn=True) for line in failures]
    if not ran:
        return lines
    gated = {r["cell_id"] for r in res.rows if r["metric"].startswith("gate/")}
    pending = [c.config.name for c in cells if "gates" in c.stages and c.cell_id not in gated]
    if pending:
        lines.append(IntroLine(f"gates have no results yet for {', '.join(pending)}", warn=True))
    if not failures and not pending:
        lines.append(IntroLine("All sanity gates passed."))
    return lines


def _compute_time(cells: Sequence[Cell], store: ResultsStore, wall_seconds: float | None) -> str:
    """The stages' compute time summed over cells (the same after a rerun that only skips cells)."""
    total, unknown = store.stage_seconds({c.cell_id: list(c.stages.values()) for c in cells})
    line = f"Compute time of all stages (summed over cells): {_duration(total)}"
    if unknown:
        line += f" ({unknown} stage(s) stored before durations were recorded are not counted)"
    if wall_seconds is not None:
        line += f"; this invocation: {_duration(wall_seconds)}"
    return line + "."


def _duration(seconds: float) -> str:
    """``"12.3 s"`` under a minute, else ``"4.5 min"``."""
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _about(cells: Sequence[Cell], res: StudyResults, ctx: ReportContext, compute_time: str) -> Note:
    """The study description: cells, references, compute time, missing cells."""
    missing = [c.config.name for c in cells if not any(r["cell_id"] == c.cell_id for r in res.rows)]
    lines = [
        f"{len(cells)} cells ({len(res.methods)} methods); references: supervised = "
        f"`{ctx.supervised}`, contrastive = `{ctx.contrastive}`. All numbers come from the results "
        "database; every row is in `results.csv` / `results.json`."
    ]
    data_line = _data_line(cells)
    if data_line:
        lines.append(data_line)
    lines.append(compute_time)
    if missing:
        lines.append(f"**Incomplete: no results yet for {', '.join(missing)}.**")
    return Note(lines)


def _data_line(cells: Sequence[Cell]) -> str | None:
    """What the models saw: data set, sample layout (clip length, clips per evaluation sample), model."""
    described: list[str] = []
    for cell in cells:
        cfg = cell.config
        if not isinstance(cfg, RunConfig):
            continue
        data, model = cfg.data, cfg.model
        text = f"`{data.name}`"
        if data.layout == "clip":
            variant = f" ({data.variant})" if data.name == "synthetic_clips" else ""
            text += (
                f"{variant} clips: {data.clip_frames} frames per training clip, the model sees "
                f"{cfg.clip_frames()}-frame clips; an evaluation sample is {data.eval_clips} "
                "uniformly placed clip(s), features averaged, attacked as one input (one eps ball "
                "over all its frames)"
            )
        else:
            text += " images"
        text += f"; model `{model.arch}` width {model.width}"
        if text not in described:
            described.append(text)
    return "Data: " + " | ".join(described) + "." if described else None


def _markdown(title: str, intro: list[IntroLine], out: SectionOutput) -> str:
    """report.md: title, gate status, blocks, plots (images), exports (links)."""
    head = [f"# {title}"]
    for line in intro:
        bold = line.warn and not line.text.startswith("- ")
        head.append(f"**{line.text}**" if bold else line.text)
    md = "\n\n".join(head) + "\n\n" + "\n\n".join(b.markdown() for b in out.blocks)
    md += "\n\n" + "\n\n".join(f"![{name}]({p.name})" for name, p in out.plots) + "\n"
    if out.exports:
        md += "\n" + "\n".join(f"- [{name}]({p.name})" for name, p in out.exports) + "\n"
    return md


def _html(title: str, intro: list[IntroLine], out: SectionOutput) -> str:
    """report.html: one self-contained page (plots embedded as base64 PNG)."""
    paragraphs = "".join(
        f"<p class='warn'>{html.escape(line.text)}</p>"
        if line.warn
        else f"<p>{html.escape(line.text)}</p>"
        for line in intro
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
        + f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + paragraphs
        + "".join(b.html() for b in out.blocks)
        + figures
        + links
        + "</body></html>"
    )


def render_report(title: str, intro: list[IntroLine], out: SectionOutput, folder: Path) -> Path:
    """Write ``report.md`` and ``report.html`` (plots embedded) into ``folder``; the markdown's path."""
    report = folder / "report.md"
    report.write_text(_markdown(title, intro, out))
    (folder / "report.html").write_text(_html(title, intro, out))
    return report


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
    notes: Sequence[str] = (),
) -> tuple[str, Path]:
    """Write ``report.md``, ``report.html``, ``results.csv``, ``results.json`` and the plots.

    Args:
        title: Report title.
        cells: The study's cells (rows of other cells or stale stages are left out).
        store: The study's results database (only read).
        folder: Output folder (created if missing).
        supervised: Method name of the supervised reference.
        contrastive: Method name of the contrastive reference.
        wall_seconds: Wall time of this ``study run`` invocation, shown beside the compute time
            of all stages (summed over cells, from the store) when given.
        sections: Registered section names to render (report order is the sections' own);
            None renders every registered section.
        notes: Lines shown after the gate status (e.g. what an audit compared).

    The report opens with the gate status (``gates not run`` when no cell runs the gates stage;
    failed gates first), then the sections in order (findings first), with the study description
    before the first section of order >= :data:`ABOUT_ORDER`.

    Returns:
        The terminal summary (gates not run / failed gates, then the sections' summary texts) and
        the path of ``report.md``.

    Raises:
        ConfigError: If a name in ``sections`` is not a registered section.
    """
    chosen = select_sections(sections)
    ensure_writable_dir(folder, "report folder")
    rows = current_rows(store, cells)
    res = StudyResults(rows, list(dict.fromkeys(c.method for c in cells)))
    ctx = ReportContext(
        folder=folder,
        supervised=supervised,
        contrastive=contrastive,
        stages=frozenset(name for c in cells for name in c.stages),
        objectives={c.method: c.config.objective.name for c in cells},
        families={c.method: family_of(c.config.objective) for c in cells},
        configs={
            (c.method, int(c.config.seed)): c.config.model_dump(mode="json")
            for c in cells
            if hasattr(c.config, "model_dump")
        },
    )
    export_rows(rows, folder)

    about: Note | None = _about(cells, res, ctx, _compute_time(cells, store, wall_seconds))
    out = SectionOutput()
    for section in chosen:
        if about is not None and section.order >= ABOUT_ORDER:
            out.blocks.append(about)
            about = None
        part = section.render(res, ctx)
        out.blocks += part.blocks
        out.plots += part.plots
        out.exports += part.exports
        out.summary += part.summary
    if about is not None:
        out.blocks.append(about)

    failures = gate_failures(res)
    intro = _gate_lines(cells, res, failures) + [IntroLine(text) for text in notes]
    report = render_report(title, intro, out, folder)

    summary = list(out.summary)
    if failures:
        summary.insert(0, "\n".join(["!!! SANITY GATES FAILED:"] + failures))
    if "gates" not in ctx.stages:
        summary.insert(0, f"!!! {GATES_NOT_RUN}")
    return "\n\n".join(summary), report
