import math

import pytest

from cslrobust.training.schedules import warmup_cosine


def test_warmup_then_cosine_closed_form():
    lr = warmup_cosine(1.0, total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert lr.shape == (110,)
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0)
    # Half way through the decay: min + (1-min)/2.
    assert lr[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert float(lr.min()) >= 0.1 - 1e-12
    assert all(lr[i] >= lr[i + 1] for i in range(10, 109))


def test_no_warmup_and_bad_length():
    lr = warmup_cosine(0.5, total_steps=4, warmup_steps=0)
    assert lr[0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        warmup_cosine(0.5, total_steps=0, warmup_steps=0)
