"""Summaries of a study, built from the run folders' JSON records only (never runs a model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cslrobust.config import RunConfig
from cslrobust.study.spec import method_of
from cslrobust.study.stages import ATTACK_FILE, PROBE_FILE, TRAIN_FILE
from cslrobust.training.checkpoint import write_json_atomic


def collect_rows(cells: list[RunConfig]) -> list[dict[str, Any]]:
    """Long-format rows: one per (cell, metric condition), with the cell's method and seed."""
    rows: list[dict[str, Any]] = []
    for cfg in cells:
        run_dir = cfg.run_dir
        base = {"method": method_of(cfg), "seed": cfg.seed, "run_id": cfg.run_id()}
        train_path, probe_path = run_dir / TRAIN_FILE, run_dir / PROBE_FILE
        attack_path = run_dir / ATTACK_FILE
        if train_path.is_file():
            train = json.loads(train_path.read_text())
            rows.append({**base, "metric": "train_seconds", "value": train["wall_seconds"]})
        if probe_path.is_file():
            probe = json.loads(probe_path.read_text())
            rows.append({**base, "metric": "probe_test_accuracy", "value": probe["test_accuracy"]})
            rows.append({**base, "metric": "probe_val_accuracy", "value": probe["val_accuracy"]})
            if "own_head_test_accuracy" in probe:
                rows.append(
                    {
                        **base,
                        "metric": "own_head_test_accuracy",
                        "value": probe["own_head_test_accuracy"],
                    }
                )
        if attack_path.is_file():
            attack = json.loads(attack_path.read_text())
            for r in attack["results"]:
                cond = {"attack": r["attack"], "norm": r["norm"], "eps": r["eps"], "n": r["n"]}
                rows.append(
                    {**base, **cond, "metric": "clean_accuracy", "value": r["clean_accuracy"]}
                )
                rows.append(
                    {**base, **cond, "metric": "robust_accuracy", "value": r["robust_accuracy"]}
                )
                rows.append(
                    {
                        **base,
                        **cond,
                        "metric": "attack_success_rate",
                        "value": r["attack_success_rate"],
                    }
                )
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _eps_label(norm: str, eps: float) -> str:
    return f"{eps * 255:g}/255" if norm == "linf" else f"L2 {eps:g}"


def summary_table(
    rows: list[dict[str, Any]], attack: str = "pgd"
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the method x eps table (means over seeds), in percent.

    Columns: method, seeds, probe test accuracy (full test set), clean accuracy on the attacked subset,
    then robust accuracy under ``attack`` at each budget.
    """
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted(
        {(r["norm"], r["eps"]) for r in rows if r.get("attack") == attack},
        key=lambda b: (b[0] != "linf", b[1]),
    )
    header = ["method", "seeds", "probe test", "clean (attacked set)"]
    header += [f"{attack.upper()} {_eps_label(n, e)}" for n, e in budgets]
    table = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        seeds = sorted({r["seed"] for r in mine})
        probe = _mean([r["value"] for r in mine if r["metric"] == "probe_test_accuracy"])
        clean = _mean(
            [
                r["value"]
                for r in mine
                if r["metric"] == "clean_accuracy" and r.get("attack") == attack
            ]
        )
        line = [method, str(len(seeds)), f"{100 * probe:.1f}", f"{100 * clean:.1f}"]
        for norm, eps in budgets:
            values = [
                r["value"]
                for r in mine
                if r["metric"] == "robust_accuracy"
                and r.get("attack") == attack
                and (r["norm"], r["eps"]) == (norm, eps)
            ]
            line.append(f"{100 * _mean(values):.1f}")
        table.append(line)
    return header, table


def format_markdown(header: list[str], table: list[list[str]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def format_text(header: list[str], table: list[list[str]]) -> str:
    """A fixed-width plain-text table for the terminal."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        + [fmt.format(*r) for r in table]
    )


def plot_robust_accuracy(
    rows: list[dict[str, Any]], path: Path, attack: str = "pgd"
) -> Path | None:
    """Robust accuracy vs L-inf eps per method (mean over seeds), with clean accuracy at eps=0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    linf = [r for r in rows if r.get("attack") == attack and r.get("norm") == "linf"]
    if not linf:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in linf):
        mine = [r for r in linf if r["method"] == method]
        clean = _mean([r["value"] for r in mine if r["metric"] == "clean_accuracy"])
        eps_values = sorted({r["eps"] for r in mine if r["eps"] > 0})
        xs = [0.0] + [e * 255 for e in eps_values]
        ys = [100 * clean] + [
            100
            * _mean(
                [r["value"] for r in mine if r["metric"] == "robust_accuracy" and r["eps"] == e]
            )
            for e in eps_values
        ]
        ax.plot(xs, ys, marker="o", label=method)
    ax.set_xlabel("eps (x/255, L-inf)")
    ax.set_ylabel(f"{attack.upper()} robust accuracy (%)")
    ax.set_title("Robust accuracy vs perturbation size (linear probe)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_summary(
    cells: list[RunConfig], folder: Path, *, title: str, wall_seconds: float | None = None
) -> tuple[str, Path]:
    """Write ``summary.json`` (all rows), ``report.md`` and ``robust_accuracy.png`` into ``folder``.

    Returns:
        The plain-text table (for printing) and the path of ``report.md``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(cells)
    write_json_atomic(folder / "summary.json", {"title": title, "rows": rows})
    header, table = summary_table(rows)
    plot = plot_robust_accuracy(rows, folder / "robust_accuracy.png")
    parts = [
        f"# {title}",
        "",
        "Accuracies in %, means over seeds. `probe test`: linear probe on the full test set; the attack",
        "columns use a fixed test subset, attacking normalise -> backbone -> probe head in eval mode.",
        "",
        format_markdown(header, table),
    ]
    if wall_seconds is not None:
        parts += ["", f"Wall time of this invocation: {wall_seconds / 60:.1f} min."]
    if plot is not None:
        parts += ["", f"![robust accuracy vs eps]({plot.name})"]
    report = folder / "report.md"
    report.write_text("\n".join(parts) + "\n")
    return format_text(header, table), report
