import math

import cv2
import numpy as np
import pytest
from scipy import ndimage

from cslrobust.corruptions import blur


def test_defocus_equals_filter2d_with_the_full_reference_kernel(images_hwc):
    for severity, (radius, alias) in enumerate(blur.DEFOCUS_BLUR, start=1):
        support = np.arange(-8, 9)
        xx, yy = np.meshgrid(support, support)
        disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
        full = cv2.GaussianBlur(disk / disk.sum(), ksize=(3, 3), sigmaX=alias)
        x = images_hwc / 255.0
        expected = np.stack(
            [np.stack([cv2.filter2D(im[..., c], -1, full) for c in range(3)], -1) for im in x]
        )
        expected = (np.clip(expected, 0, 1) * 255).astype(np.uint8)
        out = blur.defocus_blur(images_hwc, severity, np.random.default_rng(0))
        assert np.abs(out.astype(int) - expected).max() <= 1
        assert np.mean(out != expected) < 1e-3


class _FixedIntegers:
    """Stands in for a Generator whose ``integers`` returns prepared arrays in order."""

    def __init__(self, arrays):
        self.arrays = list(arrays)

    def integers(self, low, high, size):
        return self.arrays.pop(0)


def _glass_reference_loop(x, offsets, sigma):
    """The reference's scalar loop, including its copy-not-swap tuple assignment of numpy views."""
    x = blur.unit_to_uint8(blur.gaussian_blur_stack(x[None] / 255.0, sigma))[0]
    for pass_offsets in offsets:
        for h in range(31, 1, -1):
            for w in range(31, 1, -1):
                dx, dy = pass_offsets[1][h - 2, w - 2], pass_offsets[0][h - 2, w - 2]
                x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
    return blur.unit_to_uint8(blur.gaussian_blur_stack(x[None] / 255.0, sigma))[0]


@pytest.mark.parametrize("severity", [1, 4])
def test_glass_blur_gather_equals_the_reference_loop(images_hwc, severity):
    sigma, _, passes = blur.GLASS_BLUR[severity - 1]
    x = images_hwc[:2]
    rng = np.random.default_rng(severity)
    offsets = [rng.integers(-1, 1, size=(2, 2, 30, 30)) for _ in range(passes)]
    out = blur.glass_blur(x, severity, _FixedIntegers(offsets))
    for i in range(2):
        per_image = [(o[0][i], o[1][i]) for o in offsets]
        np.testing.assert_array_equal(out[i], _glass_reference_loop(x[i], per_image, sigma))


def _motion_blur_naive(image, radius, sigma, angle):
    """ImageMagick's definition pixel by pixel: taps along the angle, edge-clamped reads."""
    taps = 2 * math.ceil(radius) + 1
    weights = np.exp(-(np.arange(taps) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    height, width = image.shape[:2]
    out = np.zeros(image.shape)
    for i in range(taps):
        dx = math.ceil(i * math.cos(math.radians(angle)) - 0.5)
        dy = math.ceil(i * math.sin(math.radians(angle)) - 0.5)
        for r in range(height):
            for c in range(width):
                out[r, c] += (
                    weights[i]
                    * image[min(max(r + dy, 0), height - 1), min(max(c + dx, 0), width - 1)]
                )
    return out


@pytest.mark.parametrize(("radius", "sigma", "angle"), [(6, 1.5, 30.0), (14, 12.0, -100.0)])
def test_motion_blur_stack_matches_the_pixelwise_definition(images_hwc, radius, sigma, angle):
    x = images_hwc[:1, :16, :16]
    out = blur.motion_blur_stack(x, radius, sigma, np.array([angle]))
    np.testing.assert_allclose(
        out[0], _motion_blur_naive(x[0].astype(float), radius, sigma, angle), atol=1e-3
    )


def test_motion_blur_kernel_sums_to_one_and_points_along_the_angle():
    kernel, (ax, ay) = blur.motion_blur_kernel(6, 2.0, 0.0)
    assert kernel.shape == (1, 13) and (ax, ay) == (0, 0)
    assert kernel.sum() == pytest.approx(1.0)
    assert np.all(np.diff(kernel[0]) < 0)  # one-sided: the heaviest tap is the pixel itself
    kernel, (ax, ay) = blur.motion_blur_kernel(6, 2.0, 90.0)
    assert kernel.shape == (13, 1) and (ax, ay) == (0, 0)


def _clipped_zoom_reference(img, factor):
    h = img.shape[0]
    crop = math.ceil(h / factor)
    top = (h - crop) // 2
    zoomed = ndimage.zoom(img[top : top + crop, top : top + crop], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - h) // 2
    return zoomed[trim : trim + h, trim : trim + h]


@pytest.mark.parametrize("factor", [1.0, 1.01, 1.06, 1.13, 1.25, 1.75, 2.25])
def test_clipped_zoom_matrix_is_scipy_zoom(images_hwc, factor):
    x = images_hwc[0] / 255.0
    m = blur.clipped_zoom_matrix(32, factor)
    np.testing.assert_allclose(
        np.einsum("ik,klc,jl->ijc", m, x, m), _clipped_zoom_reference(x, factor), atol=1e-12
    )


def test_zoom_blur_operator_is_the_average_of_the_zooms(images_hwc):
    factors = blur.ZOOM_BLUR[2]
    x = images_hwc[0] / 255.0
    expected = (x + sum(_clipped_zoom_reference(x, f) for f in factors)) / (len(factors) + 1)
    flat = blur.zoom_blur_operator(32, factors) @ x.reshape(1024, 3)
    np.testing.assert_allclose(flat.reshape(32, 32, 3), expected, atol=1e-12)


def test_zoom_factors_are_the_reference_aranges():
    # np.arange(1, 1.06, 0.01) includes 1.06 by rounding: 7 factors, as in the reference
    assert [len(f) for f in blur.ZOOM_BLUR] == [7, 12, 16, 21, 26]
