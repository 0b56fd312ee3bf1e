import math

import numpy as np
import pytest
import torch

from cslrobust.corruptions import evaluate, generate
from cslrobust.corruptions.evaluate import (
    CorruptionRow,
    evaluate_corruptions,
    evaluate_official,
    official_protocol,
    protocol,
    summarise,
)
from cslrobust.corruptions.registry import CORRUPTION_NAMES, SEVERITIES, family_of


def _bright_predictor(seen):
    """Class 1 if the image is brighter than mid-grey, else 0; records what it was given."""

    def predict(x):
        seen.append((x.dtype, tuple(x.shape), float(x.min()), float(x.max())))
        bright = x.mean(dim=(1, 2, 3)) > 0.5
        return torch.stack([(~bright).float(), bright.float()], dim=1)

    return predict


def test_one_row_per_corruption_and_severity(images):
    labels = (images.float().mean(dim=(1, 2, 3)) > 127.5).long()
    seen = []
    rows = evaluate_corruptions(_bright_predictor(seen), images, labels, seed=0, batch_size=5)
    assert [(r["corruption"], r["severity"]) for r in rows] == [
        (n, s) for n in CORRUPTION_NAMES for s in SEVERITIES
    ]
    assert all(r["family"] == family_of(r["corruption"]) and r["n"] == 8 for r in rows)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert all(dtype == torch.float32 and 0.0 <= lo and hi <= 1.0 for dtype, _, lo, hi in seen)
    assert {shape for _, shape, _, _ in seen} == {(5, 3, 32, 32), (3, 3, 32, 32)}
    contrast_1 = next(r for r in rows if r["corruption"] == "contrast" and r["severity"] == 1)
    assert contrast_1["accuracy"] == 1.0  # contrast keeps the mean, so brightness is unchanged


def test_accuracy_is_computed_on_the_corrupted_set(images, monkeypatch):
    flipped = (
        255 - images
    )  # a "corruption" that inverts the image: the bright predictor is always wrong
    monkeypatch.setattr(evaluate, "corrupted_test_set", lambda *a, **k: flipped)
    labels = (images.float().mean(dim=(1, 2, 3)) > 127.5).long()
    rows = evaluate_corruptions(
        _bright_predictor([]), images, labels, names=["fog"], severities=[2], seed=0
    )
    assert rows == [
        CorruptionRow(corruption="fog", family="weather", severity=2, accuracy=0.0, n=8)
    ]


def test_cache_is_used_across_evaluations(images, tmp_path, monkeypatch):
    calls = []
    real = generate.corrupt
    monkeypatch.setattr(generate, "corrupt", lambda *a: calls.append(a[1:]) or real(*a))
    labels = torch.zeros(8, dtype=torch.long)
    for _ in range(2):
        evaluate_corruptions(
            _bright_predictor([]), images, labels, names=["snow"], seed=1, cache_dir=tmp_path
        )
    assert len(calls) == 5


def test_evaluate_official_reads_the_release(tmp_path):
    images = np.zeros((10, 32, 32, 3), np.uint8)
    images[4:6] = 255  # severity 3 is white
    np.save(tmp_path / "fog.npy", images)
    np.save(tmp_path / "labels.npy", np.ones(10, np.uint8))
    rows = evaluate_official(_bright_predictor([]), tmp_path, names=["fog"])
    assert [r["accuracy"] for r in rows] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert all(r["n"] == 2 for r in rows)


def _rows(table):
    return [
        CorruptionRow(corruption=c, family=f, severity=s, accuracy=a, n=100)
        for (c, f), by_severity in table.items()
        for s, a in by_severity.items()
    ]


MODEL = _rows({("fog", "weather"): {1: 0.9, 2: 0.7}, ("snow", "weather"): {1: 0.8, 2: 0.4}})
REFERENCE = _rows({("fog", "weather"): {1: 0.8, 2: 0.6}, ("snow", "weather"): {1: 0.9, 2: 0.7}})


def test_summarise_means():
    summary = summarise(MODEL)
    assert summary["mean_accuracy"] == pytest.approx(0.7)
    assert summary["mean_error"] == pytest.approx(0.3)
    assert summary["n_conditions"] == 4
    assert summary["accuracy_by_corruption"] == pytest.approx({"fog": 0.8, "snow": 0.6})
    assert summary["accuracy_by_severity"] == pytest.approx({"1": 0.85, "2": 0.55})
    assert summary["accuracy_by_family"] == pytest.approx({"weather": 0.7})
    assert "mce" not in summary


def test_summarise_corruption_error_against_a_reference():
    summary = summarise(MODEL, REFERENCE, clean_accuracy=0.95, reference_clean_accuracy=0.92)
    # CE_fog = (0.1 + 0.3) / (0.2 + 0.4); CE_snow = (0.2 + 0.6) / (0.1 + 0.3)
    assert summary["ce_by_corruption"] == pytest.approx({"fog": 0.4 / 0.6, "snow": 0.8 / 0.4})
    assert summary["mce"] == pytest.approx((0.4 / 0.6 + 2.0) / 2)
    # relative: sum_s (E - E_clean) / sum_s (E_ref - E_ref_clean)
    fog = (0.4 - 2 * 0.05) / (0.6 - 2 * 0.08)
    snow = (0.8 - 2 * 0.05) / (0.4 - 2 * 0.08)
    assert summary["relative_ce_by_corruption"] == pytest.approx({"fog": fog, "snow": snow})
    assert summary["relative_mce"] == pytest.approx((fog + snow) / 2)
    assert summarise(REFERENCE, REFERENCE)["mce"] == pytest.approx(1.0)


def test_summarise_rejects_mismatched_or_duplicate_rows():
    with pytest.raises(ValueError, match="same"):
        summarise(MODEL, REFERENCE[:3])
    with pytest.raises(ValueError, match="two rows"):
        summarise(MODEL + MODEL[:1])
    with pytest.raises(ValueError, match="no corruption rows"):
        summarise([])


def test_a_perfect_reference_gives_nan_not_a_crash():
    perfect = _rows({("fog", "weather"): {1: 1.0}})
    assert math.isnan(summarise(_rows({("fog", "weather"): {1: 0.5}}), perfect)["mce"])


def test_protocol_strings():
    assert protocol(3) == (
        "cifar10-c-generated-v1 (Hendrycks & Dietterich 2019 CIFAR parameters), seed 3, "
        "severities 1-5"
    )
    assert protocol(0, [1, 3], dataset="cifar100").startswith("cifar100-c-generated-v1")
    assert protocol(0, [1, 3]).endswith("severities 1,3")
    assert official_protocol().startswith("cifar10-c-official")
