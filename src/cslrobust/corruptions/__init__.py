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
    constants differ from the ImageNet-C ones (``make_imagenet_c.py``); for example
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
      batched order, instead of the global legacy RNG; the distributions are the reference's.
    - motion_blur and snow's motion blur: the reference calls ImageMagick's ``MotionBlurImage``
      through Wand. We re-implement that kernel in numpy (as ``imagecorruptions`` does, and as
      ImageMagick's ``effect.c`` defines it: ``2*ceil(radius)+1`` one-sided Gaussian taps along the
      angle, edge-replicated borders, output rounded to 8 bits). Differences are at most rounding.
    - glass_blur reproduces what the reference computes: its tuple "swap" of numpy views copies a
      neighbour instead of swapping (see :func:`~cslrobust.corruptions.blur.glass_blur`).
    - Library versions: skimage/scipy/OpenCV/Pillow/libjpeg versions differ from 2019, which can
      move individual pixels by a grey level (JPEG most).
    - Floats are converted to uint8 by truncation, exactly like the reference's ``np.uint8(...)``.

What "more severe" means:
    For 14 corruptions the distortion (PSNR against the clean image) grows monotonically with
    severity. elastic_transform is the exception in the reference itself: its affine jitter shrinks
    from severity 1 to 5 while the elastic field grows, so severity 1 (a pure affine warp) has the
    lowest PSNR. For it the tests check that the non-affine, elastic part of the displacement grows
    (the ``(alpha, sigma)`` constants) and document the reference's non-monotone PSNR.
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
