import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cslrobust.corruptions import digital


def test_contrast_keeps_each_channel_mean_and_shrinks_the_spread(images_hwc):
    out = digital.contrast(images_hwc, 5, np.random.default_rng(0)).astype(float)
    x = images_hwc.astype(float)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1.0)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 0.15 * x.std(axis=(1, 2)), atol=0.5)


def test_bilinear_reflect_equals_map_coordinates(images_hwc):
    rng = np.random.default_rng(0)
    x = images_hwc[:2].astype(np.float64)
    grid_rows, grid_cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    rows = grid_rows + rng.uniform(-3, 3, size=(2, 32, 32))  # reaches past every border
    cols = grid_cols + rng.uniform(-3, 3, size=(2, 32, 32))
    out = digital.bilinear_reflect(x, rows, cols)
    for i in range(2):
        for c in range(3):
            expected = ndimage.map_coordinates(
                x[i, ..., c], [rows[i], cols[i]], order=1, mode="reflect"
            )
            np.testing.assert_allclose(out[i, ..., c], expected, atol=1e-9)


def test_elastic_severity_1_is_a_pure_affine_warp():
    # a coordinate image: the output's red/green channels give each pixel's source column/row x 8
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    coords = np.stack([8 * cols, 8 * rows, np.full_like(rows, 128)], axis=-1).astype(np.uint8)[None]
    out = digital.elastic_transform(coords, 1, np.random.default_rng(0))[0].astype(float) / 8
    inner = (slice(6, 26), slice(6, 26))
    design = np.stack([rows[inner].ravel(), cols[inner].ravel(), np.ones(400)], axis=1)
    source = np.stack([out[..., 1][inner].ravel(), out[..., 0][inner].ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, source, rcond=None)
    assert np.sqrt(((source - design @ coef) ** 2).sum(1).mean()) < 0.1  # 1/8-pixel quantisation
    assert np.abs(coef[:2] - np.eye(2)).max() < 0.3  # a mild warp, not a scramble


@pytest.mark.parametrize("severity", [1, 5])
def test_pixelate_and_jpeg_are_pillow_round_trips(images_hwc, severity):
    image = Image.fromarray(images_hwc[0])
    side = int(32 * digital.PIXELATE[severity - 1])
    expected = image.resize((side, side), Image.Resampling.BOX).resize(
        (32, 32), Image.Resampling.BOX
    )
    out = digital.pixelate(images_hwc[:1], severity, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0], np.asarray(expected))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=digital.JPEG_QUALITY[severity - 1])
    out = digital.jpeg_compression(images_hwc[:1], severity, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0], np.asarray(Image.open(buffer)))
