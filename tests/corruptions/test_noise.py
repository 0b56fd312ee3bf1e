import numpy as np
import pytest

from cslrobust.corruptions import noise


@pytest.fixture
def grey() -> np.ndarray:
    return np.full((4, 32, 32, 3), 128, dtype=np.uint8)


@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_noise_has_the_reference_std(grey, severity):
    out = noise.gaussian_noise(grey, severity, np.random.default_rng(0)) / 255.0
    expected = noise.GAUSSIAN_NOISE_STD[severity - 1]
    # truncation lowers the mean by half a grey level; the spread is the noise std
    assert out.std() == pytest.approx(expected, rel=0.05)
    assert out.mean() == pytest.approx(128 / 255 - 0.5 / 255, abs=0.005)


def test_shot_noise_is_poisson(grey):
    photons = noise.SHOT_NOISE_PHOTONS[4]
    out = noise.shot_noise(grey, 5, np.random.default_rng(0)).astype(float)
    counts = np.rint(out / 255 * photons)  # back to photon counts (out = floor(255 k / c))
    lam = 128 / 255 * photons
    assert counts.mean() == pytest.approx(lam, rel=0.02)
    assert counts.var() == pytest.approx(lam, rel=0.1)


@pytest.mark.parametrize("severity", [1, 5])
def test_impulse_noise_flips_the_reference_fraction_to_black_or_white(grey, severity):
    out = noise.impulse_noise(grey, severity, np.random.default_rng(0))
    amount = noise.IMPULSE_NOISE_AMOUNT[severity - 1]
    assert set(np.unique(out)) <= {0, 127, 128, 255}  # 128 / 255 * 255 may truncate to 127
    assert np.mean((out == 0) | (out == 255)) == pytest.approx(amount, rel=0.15)
    assert np.mean(out == 255) == pytest.approx(np.mean(out == 0), rel=0.3)
