"""The registry of report sections: each section turns the study's results into blocks and plots.

A section is a name, an order and a render function ``(StudyResults, ReportContext) -> SectionOutput``.
The writer renders the selected sections by increasing order (ties by name) and lays the report out as
all blocks, then all plots, then all exports, each in section order. Built-in sections are registered
in the modules that own their tables (``robustness.py``, ``mechanism.py``); adding one is a new function
plus ``@register_section(name, order=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cslrobust.registry import Registry
from cslrobust.study.report.results import StudyResults


class Block(Protocol):
    """Anything the report can lay out: a :class:`~cslrobust.study.report.results.Table`, a note."""

    def markdown(self) -> str:
        """GitHub markdown of the block."""
        ...

    def html(self) -> str:
        """HTML of the block (escaped; no page scaffolding)."""
        ...


@dataclass(frozen=True)
class ReportContext:
    """What sections know besides the results.

    Args:
        folder: Output folder; sections write their plots and exports here.
        supervised: Method name of the supervised reference.
        contrastive: Method name of the contrastive reference.
        stages: Names of the stages that at least one cell of the study runs.
        objectives: Per method, the name of its training objective (e.g. ``simclr_fnr``).
        families: Per method, its family key (a key of :data:`~cslrobust.objectives.FAMILIES`,
            from :func:`~cslrobust.objectives.family_of`); methods not in it are not grouped.
        configs: Per cell ``(method, seed)``, its config as saved (JSON values), for sections that
            compare cells by their settings (the protocols section pairs methods that differ only
            by false-negative removal).
    """

    folder: Path
    supervised: str
    contrastive: str
    stages: frozenset[str] = frozenset()
    objectives: Mapping[str, str] = field(default_factory=dict)
    families: Mapping[str, str] = field(default_factory=dict)
    configs: Mapping[tuple[str, int], Mapping[str, Any]] = field(default_factory=dict)


@dataclass
class SectionOutput:
    """What one section contributes to the report.

    Args:
        blocks: Tables or notes, in order (markdown and HTML).
        plots: ``(caption, path)`` of PNG files written into the report folder (embedded in HTML).
        exports: ``(caption, path)`` of other files written into the report folder (linked).
        summary: Fixed-width texts for the terminal summary.
    """

    blocks: list[Block] = field(default_factory=list)
    plots: list[tuple[str, Path]] = field(default_factory=list)
    exports: list[tuple[str, Path]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


RenderFn = Callable[[StudyResults, ReportContext], SectionOutput]


@dataclass(frozen=True)
class Section:
    """A registered report section.

    Args:
        name: Registry key (snake_case), as passed to ``write_report(sections=...)``.
        order: Position in the report; lower comes first.
        render: Builds the section's output; may write files into ``ReportContext.folder``.
    """

    name: str
    order: int
    render: RenderFn


SECTIONS: Registry[Section] = Registry("report section")


def register_section(name: str, *, order: int) -> Callable[[RenderFn], RenderFn]:
    """Decorator that registers a render function as the report section ``name``.

    Args:
        name: Section name (unique).
        order: Position in the report; lower comes first.

    Returns:
        A decorator returning the function unchanged.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def decorator(render: RenderFn) -> RenderFn:
        SECTIONS.register(name)(Section(name, order, render))
        return render

    return decorator


def select_sections(names: Sequence[str] | None = None) -> list[Section]:
    """Sections to render, in report order.

    Args:
        names: Section names; None selects every registered section.

    Returns:
        The sections sorted by ``(order, name)``.

    Raises:
        ConfigError: If a name is not registered.
    """
    chosen = SECTIONS.names() if names is None else list(dict.fromkeys(names))
    return sorted((SECTIONS.get(n) for n in chosen), key=lambda s: (s.order, s.name))
