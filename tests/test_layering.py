"""Enforce the import table of STYLE.md: a package imports only the packages allowed for it.

Only module-level imports count; ``config`` may look names up in registries lazily inside validators.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cslrobust"
# sections (the config-section base classes) imports nothing and may be imported everywhere.
FOUNDATION = {
    "errors",
    "registry",
    "sections",
    "seeding",
    "provenance",
    "distributed",
    "records",
    "run_files",
    "layouts",
}
ALLOWED: dict[str, set[str]] = {
    "errors": {"sections"},
    "sections": set(),
    "registry": {"errors", "sections"},
    "seeding": {"sections"},
    "provenance": {"sections"},
    "distributed": {"errors", "sections"},
    "run_files": {"errors", "sections"},
    "records": {"errors", "sections", "run_files"},
    "layouts": {"errors", "sections"},
    "config": {"errors", "sections", "records", "run_files", "layouts"},
    "data": {"errors", "registry", "sections", "seeding", "layouts"},
    "augment": {"errors", "registry", "sections", "layouts"},
    "models": {"errors", "registry", "sections", "layouts"},
    "objectives": {"errors", "registry", "sections", "models", "layouts"},
    "statistics": {"sections"},
    "geometry": {"errors", "registry", "sections"},
    "corruptions": {"errors", "registry", "sections", "seeding", "distributed"},
    "attacks": FOUNDATION | {"models"},
    "training": FOUNDATION | {"objectives", "models", "data"},
    "probe": FOUNDATION | {"models", "training"},
    "study": FOUNDATION
    | {
        "config",
        "data",
        "augment",
        "models",
        "objectives",
        "training",
        "probe",
        "attacks",
        "statistics",
        "geometry",
        "corruptions",
        "study",
    },
    "cli": FOUNDATION | {"config", "study"},
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _top_level_imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in tree.body:
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("cslrobust.")
        ):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cslrobust."):
                    found.add(alias.name.split(".")[1])
    return found


FILES = sorted(p for p in SRC.rglob("*.py") if _package_of(p) not in {"__init__", "__main__"})


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_layering(path: Path):
    package = _package_of(path)
    assert package in ALLOWED, f"new top-level module {package}: add it to the layering table"
    imported = _top_level_imports(ast.parse(path.read_text())) - {package}
    forbidden = imported - ALLOWED[package]
    assert not forbidden, f"{path.relative_to(SRC)} imports {sorted(forbidden)}"
