"""The frontier section on constructed trajectories: matched-accuracy gaps with known answers, n/a
without shared clean accuracy, and the frontier plot."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cslrobust.study.report import ReportContext, StudyResults, frontier_table, method_trajectory
from cslrobust.study.report.frontier import frontier_section
from cslrobust.study.store import pack_bits

N = 200
EPS = 2 / 255


def _rows(method: str, seed: int, points: list[tuple[int, int, int]]) -> list[dict]:
    """Trajectory rows of one cell: per (epoch, clean count, robust count), the first images correct."""
    rows = []
    for epoch, clean, robust in points:
        cond = {"method": method, "seed": seed, "attack": "pgd", "norm": "linf", "epoch": epoch}
        for eps, ra in ((0.0, clean), (EPS, robust)):
            rows += [
                {**cond, "eps": eps, "metric": "trajectory/clean_accuracy", "value": clean / N},
                {
                    **cond,
                    "eps": eps,
                    "metric": "trajectory/robust_accuracy",
                    "value": ra / N,
                    "n": N,
                    "clean_bits": pack_bits(np.arange(N) < clean),
                    "correct_bits": pack_bits(np.arange(N) < ra),
                },
            ]
    return rows


def _results() -> StudyResults:
    # supervised: RA = 0.5 clean + 5 pts; simclr: 10 pts below it (both seeds alike), its last
    # checkpoint falls back in clean accuracy; far: clean accuracy 5-15 %, no overlap.
    rows = []
    for seed in (0, 1):
        rows += _rows("supervised", seed, [(3, 60, 40), (6, 100, 60), (9, 140, 80)])
        rows += _rows("simclr", seed, [(3, 40, 10), (6, 120, 50), (9, 80, 30)])
        rows += _rows("far", seed, [(3, 10, 5), (6, 30, 10)])
    return StudyResults(rows, ["supervised", "simclr", "far"])


def test_trajectory_is_read_from_the_rows_in_epoch_order():
    found = method_trajectory(_results(), "simclr", attack="pgd", norm="linf", eps=EPS)
    assert found is not None and found.epochs == [3, 6, 9]
    assert found.robust.tolist() == [[0.05, 0.25, 0.15]] * 2
    assert found.correct is not None and found.correct.shape == (2, 2, 3, N)
    assert found.correct[0, 0].sum(axis=-1).tolist() == [40, 120, 80]  # clean correct counts
    assert method_trajectory(_results(), "nobody", attack="pgd", norm="linf", eps=EPS) is None


def test_matched_table_gives_the_offset_and_na_without_shared_clean_accuracy():
    res = _results()
    trajectories = {
        ("linf", EPS): {
            m: method_trajectory(res, m, attack="pgd", norm="linf", eps=EPS) for m in res.methods
        }
    }
    table = frontier_table(trajectories, "pgd", "supervised")
    assert table is not None
    lines = {row[0]: dict(zip(table.header, row, strict=True)) for row in table.rows}
    gap = "RA(supervised) - RA(method) (pts) [95% CI]"
    simclr = lines["simclr"]
    assert simclr["eps"] == "2/255" and simclr["shared range (%)"] == "30.0-60.0"
    value, interval = simclr[gap].split(" [")
    assert float(value) == pytest.approx(10.0)
    low, high = (float(x) for x in interval.rstrip("]").split(", "))
    assert low <= 10.0 <= high
    assert lines["far"][gap] == (
        "n/a (no shared clean accuracy: far 5.0-15.0 %, supervised 30.0-70.0 %)"
    )
    assert lines["far"]["resamples without overlap (%)"] == "100.0"
    assert "seeds and test images" in table.note  # hierarchical intervals with 2 seeds


def test_frontier_section_writes_the_plot_note_and_table(tmp_path: Path):
    out = frontier_section(_results(), ReportContext(tmp_path, "supervised", "simclr"))
    assert [path.name for _, path in out.plots] == ["frontier_pgd.png"]
    width, height = Image.open(tmp_path / "frontier_pgd.png").size
    assert width > 300 and height > 300
    text = [block.markdown() for block in out.blocks]
    assert text[0].startswith("### Accuracy frontier along training")
    assert "Robustness at matched clean accuracy (PGD)" in text[1]


def test_frontier_section_is_empty_without_trajectory_rows(tmp_path: Path, make_robust_row):
    res = StudyResults([make_robust_row("supervised", 0, 50, N)], ["supervised"])
    out = frontier_section(res, ReportContext(tmp_path, "supervised", "simclr"))
    assert not out.blocks and not out.plots and not list(tmp_path.iterdir())
