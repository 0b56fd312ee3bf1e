import numpy as np
import pytest
import skimage.color

from cslrobust.corruptions import weather
from cslrobust.errors import DataError


def test_brightness_equals_the_hsv_round_trip(images_hwc):
    x = np.concatenate([images_hwc, np.zeros((1, 32, 32, 3), np.uint8)])  # with a black image
    for severity, shift in enumerate(weather.BRIGHTNESS, start=1):
        hsv = skimage.color.rgb2hsv(x / 255.0)
        hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
        expected = (np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255).astype(np.uint8)
        out = weather.brightness(x, severity, np.random.default_rng(0))
        assert np.abs(out.astype(int) - expected).max() <= 1  # float noise at exact integers
        assert np.mean(out != expected) < 0.005


def test_plasma_fractal_is_in_unit_range_and_rougher_with_smaller_decay():
    rng = np.random.default_rng(0)
    smooth = weather.plasma_fractal(16, 32, 3.0, rng)
    rough = weather.plasma_fractal(16, 32, 1.75, np.random.default_rng(0))
    assert smooth.shape == (16, 32, 32)
    assert smooth.min(axis=(1, 2)) == pytest.approx(0) and smooth.max(axis=(1, 2)) == pytest.approx(
        1
    )
    assert np.abs(np.diff(rough, axis=1)).mean() > np.abs(np.diff(smooth, axis=1)).mean()
    with pytest.raises(ValueError, match="power of two"):
        weather.plasma_fractal(1, 24, 2.0, rng)


def test_frost_textures_come_from_the_imagecorruptions_package_data():
    textures = weather.load_frost_textures()
    assert len(textures) == 5
    assert all(t.dtype == np.uint8 and t.ndim == 3 and t.shape[2] == 3 for t in textures)
    assert all(t.shape[0] > 32 and t.shape[1] > 32 for t in textures)


def test_missing_frost_textures_raise_a_data_error_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="frost1.png"):
        weather.load_frost_textures(tmp_path)


def test_frost_blends_a_crop_of_a_texture(images_hwc):
    grey = np.full_like(images_hwc, 100)
    textures = [np.full((60, 70, 3), 200, np.uint8)] * 5
    out = weather.frost_with_textures(grey, 1, np.random.default_rng(0), textures)
    assert np.all(out == int(1.0 * 100 + 0.2 * 200))


def test_snow_only_brightens(images_hwc):
    # weight * x + (1 - weight) * max(x, 1.5 grey + 0.5) >= x, and the flake layer is >= 0
    for severity in (1, 5):
        out = weather.snow(images_hwc, severity, np.random.default_rng(0))
        assert np.all(out.astype(int) >= images_hwc.astype(int) - 1)


@pytest.mark.parametrize("severity", [1, 5])
def test_fog_stays_between_its_closed_form_bounds(severity):
    # out = (x + c * haze) * m / (m + c) with haze in [0, 1] and m = max(x) = x for a flat image
    m = 100 / 255
    strength = weather.FOG[severity - 1][0]
    out = weather.fog(np.full((4, 32, 32, 3), 100, np.uint8), severity, np.random.default_rng(0))
    assert out.min() >= int(255 * m * m / (m + strength)) - 1
    assert out.max() <= 100
    assert out.std() > 1  # the haze varies across the image
