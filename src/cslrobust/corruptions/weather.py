"""Weather corruptions: snow, frost, fog and brightness.

Constants are the CIFAR ones of ``make_cifar_c.py`` (see :mod:`cslrobust.corruptions`). Frost needs
the reference's frost photographs; they are read from the package data of the installed
``imagecorruptions`` distribution (located with ``importlib.util.find_spec``, which does not import
that package) or from a directory the caller names.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from cslrobust.corruptions.blur import apply_separable, clipped_zoom_matrix, motion_blur_stack
from cslrobust.corruptions.registry import CORRUPTIONS, unit_to_uint8
from cslrobust.errors import DataError

# (mean, std of the flake field, zoom, threshold, motion radius, motion sigma, image weight)
SNOW = (
    (0.1, 0.2, 1.0, 0.6, 8, 3.0, 0.95),
    (0.1, 0.2, 1.0, 0.5, 10, 4.0, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4.0, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6.0, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12.0, 0.8),
)
SNOW_ANGLE = (-135.0, -45.0)
# (image weight, frost weight)
FROST = ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
# The reference draws ``randint(5)`` over a six-name list: frost6.jpg is never used.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_SCALE = 0.2
# (fog strength, plasma wibble decay); the plasma map is 32x32
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))
FOG_MAP_SIZE = 32
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # OpenCV's RGB2GRAY weights


@CORRUPTIONS.register("snow")
def snow(images: NDArray[np.uint8], severity: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    """Motion-blurred flakes (and their 180-degree rotation) over a brightened, greyed image.

    The flake layer is Gaussian noise, zoomed, thresholded and quantised to 8 bits, then motion
    blurred at an angle uniform in [-135, -45) degrees and quantised again, as in the reference's
    PNG round trips through ImageMagick.
    """
    loc, scale, zoom, threshold, radius, sigma, weight = SNOW[severity - 1]
    n, size, width, _ = images.shape
    if width != size:
        raise ValueError(f"snow needs square images, got {images.shape[1:3]}")
    x = (images / 255.0).astype(np.float32)
    noise = rng.normal(loc=loc, scale=scale, size=(n, size, size, 1))
    flakes = apply_separable(clipped_zoom_matrix(size, zoom), noise)
    flakes[flakes < threshold] = 0.0
    flakes_8bit = (np.clip(flakes, 0.0, 1.0) * 255.0).astype(np.uint8)
    angles = np.asarray(rng.uniform(*SNOW_ANGLE, size=n), dtype=np.float64)
    blurred = np.clip(np.rint(motion_blur_stack(flakes_8bit, radius, sigma, angles)), 0, 255)
    layer = blurred / 255.0
    grey = (x @ _LUMA)[..., None]
    x = weight * x + (1.0 - weight) * np.maximum(x, grey * 1.5 + 0.5)
    return unit_to_uint8(x + layer + layer[:, ::-1, ::-1])


def default_frost_dir() -> Path:
    """The ``frost`` folder of the installed ``imagecorruptions`` package (not imported).

    Raises:
        DataError: If ``imagecorruptions`` is not installed.
    """
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "frost needs the frost texture images (frost1.png ... frost5.jpg) shipped with the "
            "'imagecorruptions' package, which is not installed; pip install imagecorruptions"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "frost"


def load_frost_textures(directory: Path | None = None) -> list[NDArray[np.uint8]]:
    """The five frost textures, RGB, resized by 0.2 as in the reference.

    Args:
        directory: Folder holding ``frost1.png`` ... ``frost5.jpg``; ``None`` means
            :func:`default_frost_dir`.

    Returns:
        ``(h_k, w_k, 3)`` uint8 arrays (alpha dropped, as ``cv2.imread`` does).

    Raises:
        DataError: If a texture is missing or unreadable (the message names it).
    """
    folder = default_frost_dir() if directory is None else directory
    textures = []
    for name in FROST_FILES:
        path = folder / name
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if image is None:
            raise DataError(
                f"frost texture {path} is missing or unreadable; frost needs {', '.join(FROST_FILES)} "
                "from the 'imagecorruptions' package data"
            )
        small = cv2.resize(image, (0, 0), fx=FROST_SCALE, fy=FROST_SCALE)
        textures.append(np.ascontiguousarray(small[..., ::-1], dtype=np.uint8))
    return textures


def frost_with_textures(
    images: NDArray[np.uint8],
    severity: int,
    rng: np.random.Generator,
    textures: list[NDArray[np.uint8]],
) -> NDArray[np.uint8]:
    """Blend each image with a random crop of a random frost texture (see :func:`frost`)."""
    image_weight, frost_weight = FROST[severity - 1]
    n, height, width, _ = images.shape
    choice = np.asarray(rng.integers(0, len(textures), size=n), dtype=np.int64)
    texture_heights = np.array([t.shape[0] for t in textures])[choice]
    texture_widths = np.array([t.shape[1] for t in textures])[choice]
    if (texture_heights <= height).any() or (texture_widths <= width).any():
        raise ValueError(f"frost textures are too small for {height}x{width} images")
    tops = rng.integers(0, texture_heights - height)
    lefts = rng.integers(0, texture_widths - width)
    crops = np.stack(
        [
            textures[k][top : top + height, left : left + width]
            for k, top, left in zip(choice.tolist(), tops.tolist(), lefts.tolist(), strict=True)
        ]
    )
    mixed = np.clip(image_weight * images + frost_weight * crops.astype(np.float64), 0, 255)
    out: NDArray[np.uint8] = mixed.astype(np.uint8)
    return out


@CORRUPTIONS.register("frost")
def frost(images: NDArray[np.uint8], severity: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    """``image_weight * x + frost_weight * crop`` in [0, 255], with textures from the default folder.

    Raises:
        DataError: If the frost textures cannot be found (see :func:`load_frost_textures`).
    """
    return frost_with_textures(images, severity, rng, load_frost_textures())


def plasma_fractal(
    n: int, map_size: int, wibble_decay: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """``n`` diamond-square height maps on a torus, each rescaled to [0, 1].

    The reference's generator, batched: the random term added at each midpoint is
    ``wibble * U(-wibble, wibble)``, with ``wibble`` starting at 100 and divided by
    ``wibble_decay`` per octave (a smaller decay keeps more fine detail).

    Shape:
        Returns ``(n, map_size, map_size)``; ``map_size`` must be a power of two.
    """
    if map_size < 2 or map_size & (map_size - 1):
        raise ValueError(f"map_size must be a power of two >= 2, got {map_size}")
    heights = np.zeros((n, map_size, map_size))
    step = map_size
    wibble = 100.0

    def wibbled_mean(total: NDArray[np.float64]) -> NDArray[np.float64]:
        return total / 4.0 + wibble * rng.uniform(-wibble, wibble, size=total.shape)

    while step >= 2:
        half = step // 2
        corners = heights[:, ::step, ::step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares = squares + np.roll(squares, -1, axis=2)
        heights[:, half::step, half::step] = wibbled_mean(squares)
        centres = heights[:, half::step, half::step]
        corners = heights[:, ::step, ::step]
        left_right = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        heights[:, ::step, half::step] = wibbled_mean(left_right)
        top_bottom = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        heights[:, half::step, ::step] = wibbled_mean(top_bottom)
        step = half
        wibble /= wibble_decay
    heights -= heights.min(axis=(1, 2), keepdims=True)
    peak = heights.max(axis=(1, 2), keepdims=True)
    return heights / np.where(peak > 0, peak, 1.0)


@CORRUPTIONS.register("fog")
def fog(images: NDArray[np.uint8], severity: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    """Add a plasma-fractal haze, then rescale by ``max / (max + strength)`` per image."""
    strength, decay = FOG[severity - 1]
    n, height, width, _ = images.shape
    if height > FOG_MAP_SIZE or width > FOG_MAP_SIZE:
        raise ValueError(
            f"fog's {FOG_MAP_SIZE}x{FOG_MAP_SIZE} plasma map is too small for {height}x{width}"
        )
    x = images / 255.0
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    haze = plasma_fractal(n, FOG_MAP_SIZE, decay, rng)[:, :height, :width, None]
    return unit_to_uint8((x + strength * haze) * peak / (peak + strength))


@CORRUPTIONS.register("brightness")
def brightness(
    images: NDArray[np.uint8], severity: int, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """Add a constant to the HSV value channel (clipped to 1), keeping hue and saturation.

    The reference round-trips through ``skimage.color.rgb2hsv``/``hsv2rgb``. For fixed hue and
    saturation RGB is proportional to the value V = max(R, G, B), so the same result is
    ``rgb * V' / V`` (and grey ``V'`` for black pixels, whose saturation is 0), in closed form.
    """
    del rng  # deterministic
    x = images / 255.0
    value = np.maximum(np.maximum(x[..., 0:1], x[..., 1:2]), x[..., 2:3])
    new_value = np.minimum(value + BRIGHTNESS[severity - 1], 1.0)
    lit = value > 0
    scaled = x / np.where(lit, value, 1.0) * new_value  # x / value is exactly 1 on the max channel
    return unit_to_uint8(np.where(lit, scaled, new_value))
