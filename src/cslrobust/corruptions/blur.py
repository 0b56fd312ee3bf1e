"""Blur corruptions: defocus, glass, motion and zoom blur.

Snow reuses two of the operators defined here (:func:`motion_blur_stack`,
:func:`clipped_zoom_matrix`).

Constants are the CIFAR ones of ``make_cifar_c.py`` (see :mod:`cslrobust.corruptions`). Every
operator is vectorised over the batch.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from cslrobust.corruptions.registry import CORRUPTIONS, unit_to_uint8

# (disk radius, anti-alias sigma)
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))
# (gaussian sigma, max pixel displacement, iterations)
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
# (ImageMagick radius, sigma); the angle is uniform in [-45, 45) degrees per image
MOTION_BLUR = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))
MOTION_BLUR_ANGLE = (-45.0, 45.0)
# The reference's exact ``np.arange`` calls: by floating-point rounding they include the stop value
# for the first two severities (7 and 12 factors, not 6 and 11).
ZOOM_BLUR = (
    np.arange(1, 1.06, 0.01),
    np.arange(1, 1.11, 0.01),
    np.arange(1, 1.16, 0.01),
    np.arange(1, 1.21, 0.01),
    np.arange(1, 1.26, 0.01),
)


def gaussian_blur_stack(x: NDArray[np.floating], sigma: float) -> NDArray[np.float64]:
    """``skimage.filters.gaussian(x, sigma, multichannel=True)`` on each image of a batch.

    Same filter as skimage (scipy Gaussian, ``mode="nearest"``, ``truncate=4``), no channel mixing.

    Shape:
        x: ``(N, H, W, C)``.
    """
    out: NDArray[np.float64] = ndimage.gaussian_filter(
        x.astype(np.float64, copy=False), sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0
    )
    return out


def _defocus_kernel(radius: float, alias_blur: float) -> NDArray[np.float32]:
    """The reference's anti-aliased disk (for radius <= 8), cropped to its non-zero support.

    The reference filters with the full 17x17 kernel; its entries outside the support are exactly
    zero, so cropping (kept centred) changes nothing but the cost.
    """
    support = np.arange(-8, 9)
    xx, yy = np.meshgrid(support, support)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    kernel = np.asarray(cv2.GaussianBlur(disk, ksize=(3, 3), sigmaX=alias_blur), dtype=np.float32)
    rows = np.flatnonzero(kernel.any(axis=1))
    half = int(max(abs(rows[0] - 8), abs(rows[-1] - 8)))
    cropped: NDArray[np.float32] = kernel[8 - half : 9 + half, 8 - half : 9 + half]
    return cropped


@CORRUPTIONS.register("defocus_blur")
def defocus_blur(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Correlate each channel with an anti-aliased disk (OpenCV ``filter2D`` border: reflect-101)."""
    del rng  # deterministic
    kernel = _defocus_kernel(*DEFOCUS_BLUR[severity - 1])
    x = images / 255.0
    out = ndimage.correlate(x, kernel[None, :, :, None].astype(np.float64), mode="mirror")
    return unit_to_uint8(out)


@CORRUPTIONS.register("glass_blur")
def glass_blur(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Gaussian blur, local pixel shuffling, Gaussian blur again.

    The reference "swaps" ``x[h, w]`` and ``x[h + dy, w + dx]`` with a tuple assignment of numpy
    views, which copies the second pixel onto the first and leaves the second unchanged. We
    reproduce what the reference computes, not what it meant: each pass sets pixel (h, w), for h, w
    in ``[d + 1, size - d]``, to its neighbour at offset (dy, dx) drawn uniformly from ``[-d, d)``
    per axis. With ``d = 1`` (every CIFAR severity) the offsets are in {-1, 0}, so each source pixel
    is visited after its target in the reference's descending scan and still holds its value from
    before the pass: one pass is exactly one vectorised gather.
    """
    sigma, max_delta, iterations = GLASS_BLUR[severity - 1]
    if max_delta != 1:  # pragma: no cover - guards the gather argument above
        raise NotImplementedError("glass_blur's vectorised shuffle assumes max_delta == 1")
    n, height, width, _ = images.shape
    x = unit_to_uint8(gaussian_blur_stack(images / 255.0, sigma))
    rows = np.arange(max_delta + 1, height - max_delta + 1)
    cols = np.arange(max_delta + 1, width - max_delta + 1)
    batch = np.arange(n)[:, None, None]
    for _ in range(iterations):
        offsets = rng.integers(-max_delta, max_delta, size=(2, n, rows.size, cols.size))
        source_rows = rows[None, :, None] + offsets[0]
        source_cols = cols[None, None, :] + offsets[1]
        shuffled = x.copy()
        shuffled[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = x[
            batch, source_rows, source_cols
        ]
        x = shuffled
    return unit_to_uint8(gaussian_blur_stack(x / 255.0, sigma))


def motion_blur_kernel(
    radius: float, sigma: float, angle: float
) -> tuple[NDArray[np.float32], tuple[int, int]]:
    """ImageMagick's ``MotionBlurImage`` kernel as a 2-D correlation kernel and its anchor.

    ``2 * ceil(radius) + 1`` taps of a one-sided Gaussian (``exp(-i^2 / (2 sigma^2))``, normalised to
    sum 1) placed along ``angle`` (degrees, clockwise from +x because rows grow downwards): tap ``i``
    reads the pixel at column offset ``ceil(i cos(angle) - 0.5)`` and row offset
    ``ceil(i sin(angle) - 0.5)``, as in ImageMagick's ``effect.c`` (and imagecorruptions' numpy
    port). Taps that land on the same offset add up.

    Returns:
        ``(kernel, (anchor_x, anchor_y))`` for ``cv2.filter2D``: the kernel is cropped to the taps'
        bounding box and the anchor is the position of offset (0, 0) in it.
    """
    taps = 2 * math.ceil(radius) + 1
    tap = np.arange(taps, dtype=np.float64)
    weights = np.exp(-(tap**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    theta = math.radians(angle)
    col_offsets = np.ceil(tap * math.cos(theta) - 0.5).astype(np.int64)
    row_offsets = np.ceil(tap * math.sin(theta) - 0.5).astype(np.int64)
    top, left = int(row_offsets.min()), int(col_offsets.min())
    kernel = np.zeros(
        (int(row_offsets.max()) - top + 1, int(col_offsets.max()) - left + 1), dtype=np.float64
    )
    np.add.at(kernel, (row_offsets - top, col_offsets - left), weights)
    return kernel.astype(np.float32), (-left, -top)


def motion_blur_stack(
    x: NDArray[np.generic], radius: float, sigma: float, angles: NDArray[np.float64]
) -> NDArray[np.float32]:
    """ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` on each image of a batch.

    Correlates each image with its :func:`motion_blur_kernel` with edge replication outside the
    image (ImageMagick's default virtual-pixel method), in float32 through ``cv2.filter2D``.

    Args:
        x: Images ``(N, H, W, C)`` in any range.
        radius: Kernel radius in pixels, not counting the centre.
        sigma: Standard deviation of the Gaussian, in pixels.
        angles: ``(N,)`` blur direction of each image, in degrees.

    Returns:
        The blurred images, float32, same shape (not rounded).
    """
    images = x.astype(np.float32)
    out = np.empty(images.shape, dtype=np.float32)
    for i, angle in enumerate(angles):
        kernel, anchor = motion_blur_kernel(radius, sigma, float(angle))
        for c in range(0, images.shape[3], 3):  # OpenCV filters up to 4 channels per call
            block = images[i, :, :, c : c + 3]
            filtered = cv2.filter2D(
                block, -1, kernel, anchor=anchor, borderType=cv2.BORDER_REPLICATE
            )
            out[i, :, :, c : c + 3] = filtered.reshape(block.shape)
    return out


@CORRUPTIONS.register("motion_blur")
def motion_blur(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Motion blur at a random angle per image; rounded to 8 bits as ImageMagick's PNG output is."""
    radius, sigma = MOTION_BLUR[severity - 1]
    angles = np.asarray(rng.uniform(*MOTION_BLUR_ANGLE, size=images.shape[0]), dtype=np.float64)
    out = motion_blur_stack(images, radius, sigma, angles)
    rounded: NDArray[np.uint8] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return rounded


def clipped_zoom_matrix(size: int, factor: float) -> NDArray[np.float64]:
    """The reference's ``clipped_zoom`` along one axis, as a ``(size, size)`` matrix.

    ``clipped_zoom`` crops the central ``ceil(size / factor)`` pixels, zooms them by ``factor``
    with ``scipy.ndimage.zoom(order=1)`` and trims the result back to ``size`` pixels around the
    centre. Linear interpolation is separable, so on an image ``clipped_zoom(x) = M @ x @ M.T``
    per channel with this ``M``, which is built by running the same scipy call on the identity.
    """
    crop = math.ceil(size / factor)
    top = (size - crop) // 2
    basis = np.eye(size)[top : top + crop]
    zoomed = ndimage.zoom(basis, (factor, 1), order=1)
    trim = (zoomed.shape[0] - size) // 2
    matrix: NDArray[np.float64] = zoomed[trim : trim + size]
    return matrix


def apply_separable(matrix: NDArray[np.floating], x: NDArray[np.floating]) -> NDArray[np.floating]:
    """``matrix @ image @ matrix.T`` for every image and channel of ``x`` ``(N, H, W, C)``."""
    rows_done = np.einsum("ik,nkwc->niwc", matrix, x, optimize=True)
    out: NDArray[np.floating] = np.einsum("jl,nilc->nijc", matrix, rows_done, optimize=True)
    return out


def zoom_blur_operator(size: int, factors: NDArray[np.float64]) -> NDArray[np.float64]:
    """The zoom-blur average as one ``(size**2, size**2)`` linear operator on row-major pixels.

    ``(x + sum_z M_z x M_z^T) / (len(factors) + 1)`` with ``M_z`` from :func:`clipped_zoom_matrix`;
    ``kron(M, M)`` is ``x -> M x M^T`` on the flattened image.
    """
    matrices = np.stack([np.eye(size)] + [clipped_zoom_matrix(size, float(f)) for f in factors])
    # sum_z kron(M_z, M_z)[(i, j), (k, l)] = sum_z M_z[i, k] M_z[j, l]: one product over z.
    by_pair = matrices.transpose(1, 2, 0).reshape(size * size, -1)  # [(i, k), z]
    summed = (by_pair @ by_pair.T).reshape(size, size, size, size)  # [i, k, j, l]
    operator = summed.transpose(0, 2, 1, 3).reshape(size * size, size * size)
    out: NDArray[np.float64] = operator / len(matrices)
    return out


@CORRUPTIONS.register("zoom_blur")
def zoom_blur(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Average of the image and its centre zooms by each factor of the severity (float32).

    Applied as one matrix product over the whole batch (:func:`zoom_blur_operator`).
    """
    del rng  # deterministic
    n, size, width, channels = images.shape
    if width != size:
        raise ValueError(f"zoom_blur needs square images, got {images.shape[1:3]}")
    operator = zoom_blur_operator(size, ZOOM_BLUR[severity - 1]).astype(np.float32)
    pixels = (images.astype(np.float32) / np.float32(255.0)).transpose(1, 2, 0, 3)
    out = operator @ pixels.reshape(size * size, n * channels)
    return unit_to_uint8(out.reshape(size, size, n, channels).transpose(2, 0, 1, 3))
