"""Digital corruptions: contrast, elastic transform, pixelate and JPEG compression.

Constants are the CIFAR ones of ``make_cifar_c.py`` (see :mod:`cslrobust.corruptions`). Pixelate
and JPEG go through Pillow image by image, as the reference does (Pillow's box filter and libjpeg
encoder define those corruptions); contrast and the elastic field are vectorised.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from cslrobust.corruptions.registry import CORRUPTIONS, unit_to_uint8

CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
_IMSIZE = 32
# (elastic alpha, elastic sigma, affine jitter), all in pixels; the reference writes them as
# multiples of the image size 32.
ELASTIC_TRANSFORM = (
    (_IMSIZE * 0.0, _IMSIZE * 0.0, _IMSIZE * 0.08),
    (_IMSIZE * 0.05, _IMSIZE * 0.2, _IMSIZE * 0.07),
    (_IMSIZE * 0.08, _IMSIZE * 0.06, _IMSIZE * 0.06),
    (_IMSIZE * 0.1, _IMSIZE * 0.04, _IMSIZE * 0.05),
    (_IMSIZE * 0.1, _IMSIZE * 0.03, _IMSIZE * 0.03),
)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
JPEG_QUALITY = (80, 65, 58, 50, 40)


@CORRUPTIONS.register("contrast")
def contrast(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Shrink each channel towards its per-image mean by a factor ``c``."""
    del rng  # deterministic
    x = images / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)
    return unit_to_uint8((x - means) * CONTRAST[severity - 1] + means)


def bilinear_reflect(
    x: NDArray[np.floating], rows: NDArray[np.floating], cols: NDArray[np.floating]
) -> NDArray[np.floating]:
    """Sample every image at its own real-valued coordinates with linear interpolation.

    Equals ``scipy.ndimage.map_coordinates(image, ..., order=1, mode="reflect")`` per image and
    channel (half-sample symmetric extension: ``... b a | a b c ... z | z y ...``), batched.

    Shape:
        x: ``(N, H, W, C)``; rows, cols: ``(N, H', W')``. Returns ``(N, H', W', C)``, float32 for
        float32 input.
    """
    n, height, width, channels = x.shape

    def reflect(index: NDArray[np.int64], size: int) -> NDArray[np.int64]:
        folded = np.mod(index, 2 * size)
        return np.where(folded >= size, 2 * size - 1 - folded, folded)

    row0 = np.floor(rows)
    col0 = np.floor(cols)
    row_weight = (rows - row0).astype(x.dtype)
    col_weight = (cols - col0).astype(x.dtype)
    r0 = row0.astype(np.int64)
    c0 = col0.astype(np.int64)
    base = (np.arange(n) * height)[:, None, None]
    top = (base + reflect(r0, height)) * width
    bottom = (base + reflect(r0 + 1, height)) * width
    left = reflect(c0, width)
    right = reflect(c0 + 1, width)
    corners = (top + left, top + right, bottom + left, bottom + right)
    out = np.empty((*rows.shape, channels), dtype=np.result_type(x.dtype, np.float32))
    for c in range(channels):  # per-channel planes keep every operand the same contiguous shape
        plane = np.ascontiguousarray(x[..., c]).reshape(-1)
        tl, tr, bl, br = (np.take(plane, corner) for corner in corners)
        upper = tl + (tr - tl) * col_weight
        lower = bl + (br - bl) * col_weight
        out[..., c] = upper + (lower - upper) * row_weight
    return out


@CORRUPTIONS.register("elastic_transform")
def elastic_transform(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """A random affine warp followed by a smooth random displacement field.

    Affine: the three points ``centre + (10, 10)``, ``centre + (10, -10)``, ``centre - (10, 10)``
    move by ``U(-jitter, jitter)`` each coordinate; OpenCV warps with bilinear interpolation and
    reflect-101 borders. Elastic: ``dx, dy = alpha * gaussian(U(-1, 1), sigma)`` (reflect mode,
    truncate 3), sampled bilinearly with reflect borders. Computed in float32 as the reference.

    Note:
        With the reference constants the affine jitter *decreases* with severity while the elastic
        part grows (severity 1 is a pure affine warp with the largest jitter); see the package
        docstring on what "more severe" means for this corruption.
    """
    alpha, sigma, jitter = ELASTIC_TRANSFORM[severity - 1]
    n, height, width, _ = images.shape
    x = (images / 255.0).astype(np.float32)
    centre = np.array([height, width], dtype=np.float32) // 2
    half_side = min(height, width) // 3
    anchors = np.array(
        [centre + half_side, [centre[0] + half_side, centre[1] - half_side], centre - half_side],
        dtype=np.float32,
    )
    moved = anchors + rng.uniform(-jitter, jitter, size=(n, 3, 2)).astype(np.float32)
    warped = np.stack(
        [
            np.asarray(
                cv2.warpAffine(
                    x[i],
                    cv2.getAffineTransform(anchors, moved[i]),
                    (width, height),
                    borderMode=cv2.BORDER_REFLECT_101,
                ),
                dtype=np.float32,
            )
            for i in range(n)
        ]
    )
    fields = rng.uniform(-1.0, 1.0, size=(2, n, height, width))
    smooth = ndimage.gaussian_filter(
        fields, sigma=(0, 0, sigma, sigma), mode="reflect", truncate=3.0
    )
    dx, dy = (smooth * alpha).astype(np.float32)
    grid_rows, grid_cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    out = bilinear_reflect(warped, grid_rows + dy, grid_cols + dx)
    return unit_to_uint8(out)


def _through_pillow(images: NDArray[np.uint8], operation: str, value: float) -> NDArray[np.uint8]:
    """Apply a per-image Pillow operation (``pixelate`` or ``jpeg``) to a uint8 batch."""
    out = np.empty_like(images)
    height, width = images.shape[1:3]
    for i, array in enumerate(images):
        image = Image.fromarray(array, mode="RGB")
        if operation == "pixelate":
            small = image.resize((int(width * value), int(height * value)), Image.Resampling.BOX)
            result = small.resize((width, height), Image.Resampling.BOX)
        else:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(value))
            buffer.seek(0)
            with Image.open(buffer) as decoded:
                result = decoded.convert("RGB")
        out[i] = np.asarray(result)
    return out


@CORRUPTIONS.register("pixelate")
def pixelate(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Box-downsample to ``int(32 * c)`` pixels, then box-upsample back (Pillow ``BOX`` both ways)."""
    del rng  # deterministic
    return _through_pillow(images, "pixelate", PIXELATE[severity - 1])


@CORRUPTIONS.register("jpeg_compression")
def jpeg_compression(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Encode with Pillow's JPEG encoder at the severity's quality (default 4:2:0) and decode."""
    del rng  # deterministic
    return _through_pillow(images, "jpeg", JPEG_QUALITY[severity - 1])
