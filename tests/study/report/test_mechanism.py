"""The report's mechanism tables: the false-negative detector table (last epoch, active-epoch means)."""

from cslrobust.study.report import StudyResults, detector_table


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
