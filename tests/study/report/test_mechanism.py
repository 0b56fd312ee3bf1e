"""The report's mechanism tables: the false-negative detector table (last epoch, active-epoch means)."""

from cslrobust.study.report import StudyResults, detector_table, geometry_table
from cslrobust.study.report.mechanism import GEOMETRY_COLUMNS


def _row(seed: int, epoch: int, metric: str, value: float) -> dict:
    return {
        "method": "topk",
        "seed": seed,
        "epoch": epoch,
        "metric": f"train/{metric}",
        "value": value,
    }


def test_warm_up_epochs_are_left_out_of_the_active_means():
    rows = []
    for seed in (0, 1):
        # Epoch 1 is warm-up: nothing removed, precision 1 and recall 0 by convention.
        rows += [_row(seed, 1, "fn_removed_fraction", 0.0), _row(seed, 1, "fn_precision", 1.0)]
        rows += [_row(seed, 1, "fn_recall", 0.0)]
        for epoch, precision in ((2, 0.2), (3, 0.4)):
            rows += [
                _row(seed, epoch, "fn_removed_fraction", 0.05),
                _row(seed, epoch, "fn_precision", precision),
                _row(seed, epoch, "fn_recall", 0.5),
            ]
    table = detector_table(StudyResults(rows=rows, methods=["topk"]))
    assert table is not None
    line = dict(zip(table.header, table.rows[0], strict=True))
    assert line["precision"] == "40.0"  # last epoch
    assert line["precision (active epochs)"] == "30.0"  # (20 + 40) / 2, not (100 + 20 + 40) / 3
    assert line["recall (active epochs)"] == "50.0"


def test_geometry_table_puts_scale_free_sensitivity_first_and_labels_raw_columns():
    values = {
        "uniformity": (-2.0, -3.0),
        "sensitivity_pgd_2/median": (4.0, 6.0),
        "sensitivity_random_2/median": (1.0, 1.0),
        "sensitivity_pgd_normalized_2/median": (0.25, 0.75),
        "sensitivity_random_normalized_2/median": (0.1, 0.1),
        "sensitivity_ratio_2/median": (4.0, 6.0),
        "sensitivity_ratio_16/median": (8.0, 8.0),
        "sensitivity_pgd_2/mean": (9.0, 9.0),  # only medians are tabled
    }
    rows = [
        {"method": "simclr", "seed": seed, "metric": f"geometry/{key}", "value": pair[seed]}
        for key, pair in values.items()
        for seed in (0, 1)
    ]
    table = geometry_table(StudyResults(rows, ["simclr"]))
    assert table is not None
    assert table.header[len(GEOMETRY_COLUMNS) + 1 :] == [
        "pgd_normalized sens. 2/255",
        "random_normalized sens. 2/255",
        "ratio sens. 2/255",
        "ratio sens. 16/255",
        "pgd sens. 2/255 (raw, scale-dependent)",
        "random sens. 2/255 (raw, scale-dependent)",
    ]
    line = dict(zip(table.header, table.rows[0], strict=True))
    assert line["uniformity"] == "-2.500" and line["alignment"] == "n/a"
    assert line["pgd_normalized sens. 2/255"] == "0.500"  # mean over seeds of the medians
    assert line["ratio sens. 16/255"] == "8.000"
    assert line["pgd sens. 2/255 (raw, scale-dependent)"] == "5.000"
    assert "scale-dependent" in table.note and "no interval" in table.note
