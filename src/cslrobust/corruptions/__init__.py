"""Common corruptions in the style of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019).

Importing this package registers the 15 benchmark corruptions in :data:`CORRUPTIONS`.

Public API:
    - :func:`corrupt` ``(images uint8 (N,3,32,32), name, severity 1..5, seed) -> uint8 (N,3,32,32)``;
    - :func:`corrupted_test_set`: the same, cached on disk as safetensors;
    - :func:`load_official`: one ``(name, severity)`` of the released CIFAR-10-C / CIFAR-100-C files;
    - :func:`evaluate_corruptions` / :func:`evaluate_official` -> long-format rows, :func:`summarise`
      (mean accuracy, CE/mCE and relative mCE against a reference), :func:`protocol`.

Source of the constants:
    ``hendrycks/robustness``, ``ImageNet-C/create_c/make_cifar_c.py`` (read at commit
    ca360085d57889288c4143fddd8a707bbcae01bd), the script that generated CIFAR-10-C. Its severity
    constants differ from the ImageNet-C ones (as carried by ``imagecorruptions`` 1.1.2); e.g.
    gaussian_noise std ``[.04, .06, .08, .09, .10]`` (ImageNet ``[.08, .12, .18, .26, .38]``),
    shot_noise ``[500, 250, 100, 75, 50]`` (``[60, 25, 12, 5, 3]``), defocus_blur radius
    ``[.3, .4, .5, 1, 1.5]`` (``[3, 4, 6, 8, 10]``), jpeg quality ``[80, 65, 58, 50, 40]``
    (``[25, 18, 15, 10, 7]``), pixelate ``[.95, .9, .85, .75, .65]`` with a BOX upsample (ImageNet:
    ``[.6, .5, .4, .3, .25]``, NEAREST), and elastic_transform is a random affine plus a smooth
    field with CIFAR-specific (alpha, sigma, affine) triples. Every constant is copied into the family
    modules (``noise``, ``blur``, ``weather``, ``digital``) next to the function that uses it.

What ``imagecorruptions`` does for 32x32 inputs (finding, from its 1.1.2 source):
    ``imagecorruptions`` (bethgelab; also what imgaug's ``imgcorruptlike`` augmenters wrap) carries
    only the ImageNet-C constants, unscaled, and applies them to any image of at least 32x32 pixels.
    Only a few steps adapt to the image size (fog's plasma map size, the frost texture rescale, the
    glass-blur loop bounds, and an ImageNet-style elastic transform whose sigma and displacement are
    proportional to the image size). So on CIFAR images it produces ImageNet-strength corruptions
    (e.g. a defocus disk of radius 3-10 px on a 32 px image), not CIFAR-10-C. We therefore implement
    the CIFAR parameterisation ourselves (numpy/scipy/scikit-image/OpenCV, Pillow for JPEG and
    pixelate, as the reference) and use ``imagecorruptions`` only for its frost texture files, read
    from its package folder without importing it.

Deviations from the reference (all documented where implemented):
    - Randomness: one ``numpy.random.Generator`` per ``(seed, corruption, severity)``, drawn in
      batched order, instead of the global legacy RNG; the distributions are the reference's. An
      image gets independent draws at each severity (as in the reference's single global stream).
    - motion_blur and snow's motion blur: the reference calls ImageMagick's ``MotionBlurImage``
      through Wand. We re-implement that kernel in numpy (as ``imagecorruptions`` does, and as
      ImageMagick's ``effect.c`` defines it: ``2*ceil(radius)+1`` one-sided Gaussian taps along the
      angle, edge-replicated borders, output rounded to 8 bits). Differences are at most rounding.
    - glass_blur reproduces what the reference computes: its tuple "swap" of numpy views copies a
      neighbour instead of swapping (see :func:`~cslrobust.corruptions.blur.glass_blur`).
    - Library versions: we use the installed scipy/OpenCV/Pillow/libjpeg, not the 2019 ones; where
      those changed, single pixels may move by a grey level.
    - Checked against a transcription of the reference with identical random draws: every corruption
      agrees exactly, except +-1 grey level on < 0.2% of values (float rounding where the
      reference's truncation sits on an exact integer: zoom_blur, brightness, snow).

What "more severe" means (checked in ``tests/corruptions/test_severity_order.py``, with the same
random draws at every severity):
    - 12 corruptions: PSNR against the clean image falls monotonically from severity 1 to 5.
      motion_blur severities 3 and 4 are practically identical in the reference (same sigma 2; radius
      6 vs 8 only adds taps of weight < 1e-9).
    - frost: the image weight falls and the frost weight rises, but darkening the image partly cancels
      the bright frost, so PSNR is not monotone; the part of the output not explained by the clean
      image (1 - Pearson correlation) grows monotonically.
    - glass_blur: severities 1-3 are one shuffling pass with blur sigma 0.05/0.25/0.4, 4-5 two passes
      with 0.25/0.4. The second blur also removes shuffle noise, so PSNR is flat (even slightly rising)
      within a pass count; blur grows within each pass count and distortion grows with the passes.
    - elastic_transform: the reference's affine jitter shrinks from severity 1 to 5 while its elastic
      field grows, so severity 1 (a pure affine warp) has the largest displacement and the lowest
      PSNR. What grows is the non-affine (elastic) displacement.
    These are properties of the official constants, kept as they are so that generated sets match
    CIFAR-10-C.

Other reference details kept: zoom_blur's factor lists are the reference's ``np.arange`` calls, which
include the stop value for severities 1-2 by rounding (7 and 12 factors); frost picks among
frost1-frost5 only (``randint(5)`` over six names); all float-to-uint8 conversions truncate.
"""

from cslrobust.corruptions import blur, digital, noise, weather
from cslrobust.corruptions.cifar_c import OFFICIAL_NAMES, load_official
from cslrobust.corruptions.evaluate import (
    CorruptionRow,
    evaluate_corruptions,
    evaluate_official,
    official_protocol,
    protocol,
    summarise,
)
from cslrobust.corruptions.generate import (
    GENERATOR_VERSION,
    corrupt,
    corrupted_test_set,
    images_digest,
)
from cslrobust.corruptions.registry import (
    CORRUPTION_NAMES,
    CORRUPTIONS,
    FAMILIES,
    SEVERITIES,
    CorruptionFn,
    family_of,
)

__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_NAMES",
    "FAMILIES",
    "GENERATOR_VERSION",
    "OFFICIAL_NAMES",
    "SEVERITIES",
    "CorruptionFn",
    "CorruptionRow",
    "blur",
    "corrupt",
    "corrupted_test_set",
    "digital",
    "evaluate_corruptions",
    "evaluate_official",
    "family_of",
    "images_digest",
    "load_official",
    "noise",
    "official_protocol",
    "protocol",
    "summarise",
    "weather",
]
