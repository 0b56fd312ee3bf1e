"""The report's plots: PNG files of the expected size, drawn without touching matplotlib's global state."""

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from cslrobust.statistics import Estimate
from cslrobust.study.report import StudyResults
from cslrobust.study.report.plots import DPI, plot_detector_quality, plot_gap_closure, plot_robust


def _results() -> StudyResults:
    rows = []
    for method, acc in (("supervised", 0.6), ("simclr", 0.3)):
        for seed in (0, 1):
            for eps in (1 / 255, 2 / 255, 4 / 255):
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "metric": "robust_accuracy",
                        "attack": "pgd",
                        "norm": "linf",
                        "eps": eps,
                        "value": acc - eps + 0.01 * seed,
                    }
                )
            for epoch in (1, 2):
                for key in ("fn_precision", "fn_recall"):
                    rows.append(
                        {
                            "method": method,
                            "seed": seed,
                            "epoch": epoch,
                            "metric": f"train/{key}",
                            "value": 0.5,
                            "attack": "",
                        }
                    )
    return StudyResults(rows, ["supervised", "simclr"])


def _draw_all(folder: Path) -> list[Path | None]:
    res = _results()
    gap = {"m": [("1/255", Estimate(0.5, 0.2, 0.8, "bootstrap"))]}
    return [
        plot_robust(res, "pgd", folder / "robust.png"),
        plot_gap_closure(gap, folder / "gap.png"),
        plot_detector_quality(res, folder / "detector.png"),
    ]


def test_plots_are_pngs_of_figsize_times_dpi(tmp_path: Path):
    robust, gap, detector = _draw_all(tmp_path)
    for path, (width, height) in ((robust, (6.4, 4.2)), (gap, (6.4, 4.2)), (detector, (9, 3.6))):
        assert path is not None
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (round(width * DPI), round(height * DPI))
            # Something was drawn: not a blank white canvas.
            assert np.asarray(image.convert("L")).min() < 128


def test_plots_leave_the_backend_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(matplotlib.rcParams, "backend", "pdf")
    assert all(p is not None for p in _draw_all(tmp_path))
    assert matplotlib.get_backend() == "pdf"


def test_no_plot_without_data(tmp_path: Path):
    empty = StudyResults([], ["supervised"])
    assert plot_robust(empty, "pgd", tmp_path / "r.png") is None
    assert plot_gap_closure({}, tmp_path / "g.png") is None
    assert plot_detector_quality(empty, tmp_path / "d.png") is None
    assert not list(tmp_path.iterdir())
