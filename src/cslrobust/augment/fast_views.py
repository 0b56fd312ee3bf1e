"""SimCLR CIFAR views written as a few batched tensor ops: no host sync, no data-dependent shapes.

The ``"simclr_fast"`` preset draws the view distribution of the ``"simclr"`` (kornia) preset --
random resized crop, horizontal flip, colour jitter with probability ``jitter_p``, grayscale with
probability ``grayscale_p`` -- with every per-row decision expressed as arithmetic or
``torch.where`` on the input's device. Random numbers come from one ``torch.rand(N, 29)`` draw on
that device per batch (plus, with ``random_order``, a ``torch.randperm(4)`` on the CPU), both from the
global RNG that the training loop scopes per epoch with :func:`cslrobust.seeding.rng_scope`.

Per row ``n`` (every view of every image draws its own parameters):

* Crop + flip. Area fraction ``s ~ U(crop_scale)``, aspect ratio ``r = exp(U(log crop_ratio))``
  (width / height, in pixels), crop size as fractions of the input ``w = sqrt(s r H / W)``,
  ``h = sqrt(s W / (r H))`` (``sqrt(s r)``, ``sqrt(s / r)`` for square images). The crop centre is
  uniform over the positions that keep the crop inside the image; a flip (probability ``flip_p``)
  negates the x scale. One ``F.affine_grid`` + ``F.grid_sample`` (bilinear, ``align_corners=False``,
  border padding) resamples the whole batch to ``size``.
* Colour jitter, applied to a row with probability ``jitter_p``: brightness ``x f_b``, contrast
  ``lerp(mean(luma(x)), x, f_c)``, saturation ``lerp(luma(x), x, f_s)``, each clamped to [0, 1], and a
  hue shift of ``d_h`` turns in HSV space, with ``f ~ U[max(0, 1 - s), 1 + s]`` and
  ``d_h ~ U[-h, h]`` (torchvision's ``ColorJitter`` semantics). Rows without jitter get the identity
  factors (1, 1, 1, 0), so every row goes through the same ops.
* Grayscale with probability ``grayscale_p``: ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` copied
  to the three channels.

Differences from ``"simclr"`` (kornia) and torchvision, all deliberate:

* Crop geometry is continuous: sub-pixel crop sizes and offsets, where torchvision and kornia round
  them to whole pixels; resampling is bilinear with border padding and no antialiasing (the crops
  are upsampled when ``size`` is the input size, where antialiasing does nothing). Output pixels
  within half an upsampled pixel of a crop edge interpolate with the image pixels just outside the
  crop, where crop-then-resize replicates the crop's edge pixels (border padding applies only at
  the image's edges).
* The crop-size rule (``crop_rule="retry"``, the default) is torchvision's: 10 candidate
  ``(s, r)`` pairs are drawn, the first whose crop fits inside the image is used, and if none fits
  the crop falls back to the centre crop of the largest in-range aspect ratio. torchvision loops and
  kornia picks the first fitting candidate as here, but with integer sizes. ``crop_rule="clamp"``
  instead clamps ``w`` and ``h`` of the first candidate to 1: no rejection, but it changes the
  distribution -- with the SimCLR defaults (scale (0.2, 1), ratio (3/4, 4/3)) 16% of the draws do not
  fit, and the mean area fraction becomes 0.593 instead of torchvision's 0.539 (median 0.600 vs
  0.535), i.e. weaker crops.
* The order of the four colour adjustments is drawn once per batch (a permutation from the global
  CPU RNG, no device sync), as kornia does; torchvision draws it per image. ``random_order=False``
  fixes brightness, contrast, saturation, hue (no CPU draw; a static graph for ``torch.compile``).
* Luma uses 0.299 for red (kornia, PIL); torchvision's tensor path uses 0.2989.
* The hue shift uses the closed-form HSV -> RGB map ``c = max - (max - min) clamp(min(k, 4 - k), 0, 1)``,
  ``k = (n + 6 hue) mod 6`` with ``n = 5, 3, 1``, equal to torchvision's sextant table up to round-off.
* kornia clamps the input to [0, 1] before jitter and skips an adjustment when all factors of the
  batch are neutral (a data-dependent check); here inputs are taken to be in [0, 1] and an
  adjustment is skipped only when its strength (or ``jitter_p`` / ``grayscale_p``) is 0.
* Parameters are drawn on the input's device, so one seed gives different views on CPU and CUDA
  (kornia draws them on the CPU).

Reference:
    T. Chen, S. Kornblith, M. Norouzi, G. Hinton. "A Simple Framework for Contrastive Learning of
    Visual Representations." ICML 2020, Appendix A (data augmentation details) and B.9 (CIFAR-10:
    no Gaussian blur).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cslrobust.augment.views import AUGMENTATIONS, AugmentParams, SimCLRViewsSection

__all__ = [
    "CROP_CANDIDATES",
    "SimCLRFastAugment",
    "SimCLRFastAugmentSection",
    "SimCLRViewParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "build_simclr_fast_pipeline",
    "resized_crop",
    "rgb_to_luma",
]

CROP_CANDIDATES = 10
"""Crop-size candidates per row for ``crop_rule="retry"`` (torchvision's ``RandomResizedCrop``: 10)."""

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as kornia and PIL
# Columns of the per-batch uniform draw: CROP_CANDIDATES area + CROP_CANDIDATES log-ratio draws, then
# the rest in this order.
_CX, _CY, _FLIP, _JITTER, _BRIGHTNESS, _CONTRAST, _SATURATION, _HUE, _GRAY = range(9)
_N_DRAWS = 2 * CROP_CANDIDATES + 9


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(N,)`` values as ``(N, 1, 1, 1)`` in ``like``'s dtype, for broadcasting over images."""
    return values.to(like.dtype).view(-1, 1, 1, 1)


def rgb_to_luma(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` of RGB images.

    Args:
        images: RGB images.

    Returns:
        The luma channel.

    Shape:
        - images: ``(N, 3, H, W)`` in [0, 1].
        - Output: ``(N, 1, H, W)`` in [0, 1].
    """
    r, g, b = images.unbind(1)
    # Python-scalar weights: no small weight tensor copied to the device on every call.
    return (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale every pixel by a per-row factor, then clamp (torchvision's ``adjust_brightness``).

    Args:
        images: Images.
        factor: Non-negative brightness factor per row; 1 is the identity.

    Returns:
        ``clamp(images * factor, 0, 1)``.

    Shape:
        - images: ``(N, C, H, W)`` in [0, 1].
        - factor: ``(N,)``.
        - Output: ``(N, C, H, W)`` in [0, 1].
    """
    return (images * _per_row(factor, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with the mean of its luma (torchvision's ``adjust_contrast``).

    Args:
        images: RGB images.
        factor: Non-negative contrast factor per row; 1 is the identity, 0 the uniform mean image.

    Returns:
        ``clamp(factor * images + (1 - factor) * mean(luma(images)), 0, 1)``.

    Shape:
        - images: ``(N, 3, H, W)`` in [0, 1].
        - factor: ``(N,)``.
        - Output: ``(N, 3, H, W)`` in [0, 1].
    """
    mean = rgb_to_luma(images).mean(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1)
    return torch.lerp(mean, images, _per_row(factor, images)).clamp_(0.0, 1.0)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its luma image (torchvision's ``adjust_saturation``).

    Args:
        images: RGB images.
        factor: Non-negative saturation factor per row; 1 is the identity, 0 the grayscale image.

    Returns:
        ``clamp(factor * images + (1 - factor) * luma(images), 0, 1)``.

    Shape:
        - images: ``(N, 3, H, W)`` in [0, 1].
        - factor: ``(N,)``.
        - Output: ``(N, 3, H, W)`` in [0, 1].
    """
    return torch.lerp(rgb_to_luma(images), images, _per_row(factor, images)).clamp_(0.0, 1.0)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by a per-row shift in turns (torchvision's ``adjust_hue``).

    Value (max channel) and saturation are kept; the hue, in sextants ``[0, 6)``, moves by
    ``6 * shift`` modulo 6. The RGB image is rebuilt with the closed form
    ``c = max - (max - min) * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + hue) mod 6``, ``n = 5, 3, 1`` for
    R, G, B, which needs neither the saturation nor a per-pixel sextant table.

    Args:
        images: RGB images.
        shift: Hue shift per row in turns (kornia's ``adjust_hue`` takes ``2 * pi * shift`` radians).

    Returns:
        The hue-shifted images; a zero shift returns the input up to round-off.

    Shape:
        - images: ``(N, 3, H, W)`` in [0, 1].
        - shift: ``(N,)``, any real value (periodic with period 1).
        - Output: ``(N, 3, H, W)`` in [0, 1].
    """
    min_c, max_c = torch.aminmax(images, dim=1, keepdim=True)  # (N, 1, H, W) each
    delta = max_c - min_c
    # Gray pixels (delta = 0) get an arbitrary hue; their output is max_c whatever it is.
    div = delta.clamp_min(torch.finfo(images.dtype).tiny)
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    hue = torch.where(
        max_c == r,
        (g - b) / div,
        torch.where(max_c == g, (b - r) / div + 2.0, (r - g) / div + 4.0),
    )  # (N, 1, H, W) in sextants, [-1, 5]
    hue = hue + 6.0 * _per_row(shift, images)
    offsets = torch.arange(5, 0, -2, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = torch.remainder(hue + offsets, 6.0)  # (N, 3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(max_c, delta, ramp, value=-1.0)


def resized_crop(images: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample each image through its affine crop (+ flip) in one bilinear ``grid_sample``.

    Args:
        images: Images.
        theta: Per-row affine map from output to input coordinates, both normalised to [-1, 1]
            (``F.affine_grid`` convention); ``[[w, 0, cx], [0, h, cy]]`` crops the box of half sizes
            ``w``, ``h`` centred at ``(cx, cy)``, and a negative ``w`` mirrors it.
        size: Output ``(height, width)``.

    Returns:
        The crops, bilinear with ``align_corners=False`` and border padding.

    Shape:
        - images: ``(N, C, H, W)``.
        - theta: ``(N, 2, 3)``.
        - Output: ``(N, C, *size)``, same dtype as ``images``.
    """
    n, c = images.shape[:2]
    grid = F.affine_grid(theta.to(images.dtype), [n, c, *size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class SimCLRViewParams:
    """The random parameters of one batch of views, as drawn by :meth:`SimCLRFastAugment.sample`, applied by :meth:`SimCLRFastAugment.apply_params`.

    Attributes:
        theta: ``(N, 2, 3)`` float32 crop + flip affine (see :func:`resized_crop`).
        color: ``(N, 4)`` float32 brightness, contrast and saturation factors and hue shift in
            turns; ``(1, 1, 1, 0)`` on rows without jitter.
        grayscale: ``(N,)`` bool, rows converted to grayscale after jitter.
        order: Order of the colour adjustments, indices into (brightness, contrast, saturation,
            hue); adjustments with strength 0 are left out.
    """

    theta: torch.Tensor
    color: torch.Tensor
    grayscale: torch.Tensor
    order: tuple[int, ...]


class SimCLRFastAugment(nn.Module):
    """SimCLR CIFAR views (crop, flip, colour jitter, grayscale) without host syncs.

    See the module docstring for the distribution and its documented differences from the kornia
    ``"simclr"`` preset and torchvision. Computation is in float32 for half-precision inputs and in
    the input's dtype otherwise; the output has the input's dtype and device.

    Args:
        params: Strengths and probabilities (``crop_scale``, ``crop_ratio``, ``flip_p``, ``jitter``,
            ``jitter_p``, ``grayscale_p``).
        size: Output ``(height, width)``.
        random_order: Draw the colour-adjustment order once per batch from the global CPU RNG (as
            kornia); ``False`` fixes brightness, contrast, saturation, hue.
        crop_rule: ``"retry"``: torchvision's rule (first of 10 candidates that fits, else a centre
            crop); ``"clamp"``: the first candidate's sides clamped to the image.

    Raises:
        ValueError: If ``crop_rule`` is unknown or ``size`` is not positive.

    Shape:
        - Input: ``(N, 3, H, W)`` floating point in [0, 1] (any ``C`` when jitter and grayscale are
          off); any memory format.
        - Output: ``(N, 3, *size)`` in [0, 1], same dtype and device.

    Reference:
        T. Chen et al. "A Simple Framework for Contrastive Learning of Visual Representations."
        ICML 2020, Appendix A and B.9.
    """

    def __init__(
        self,
        params: AugmentParams,
        size: tuple[int, int],
        *,
        random_order: bool = True,
        crop_rule: Literal["retry", "clamp"] = "retry",
    ) -> None:
        super().__init__()
        if crop_rule not in ("retry", "clamp"):
            raise ValueError(f"crop_rule must be 'retry' or 'clamp'; got {crop_rule!r}")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be two positive ints; got {size}")
        self.params = params
        self.size = (int(size[0]), int(size[1]))
        self.random_order = random_order
        self.crop_rule = crop_rule
        # Static skips (no data-dependent checks): adjustments that can never change a row.
        jitter_on = params.jitter_p > 0.0
        self._color_ops = tuple(i for i in range(4) if jitter_on and params.jitter[i] > 0.0)

    def sample(
        self, n: int, in_size: tuple[int, int], device: torch.device | str = "cpu"
    ) -> SimCLRViewParams:
        """Draw the parameters of ``n`` views of ``in_size`` images from the global RNG.

        One ``torch.rand`` on ``device`` (and, with ``random_order``, one ``torch.randperm(4)`` on
        the CPU); everything else is arithmetic, so nothing waits for the device.

        Args:
            n: Number of rows.
            in_size: Input ``(height, width)``, which sets the pixel aspect of the crops.
            device: Where to draw and keep the parameters (the images' device).

        Returns:
            The per-row parameters.
        """
        p = self.params
        order = tuple(torch.randperm(4).tolist()) if self.random_order else (0, 1, 2, 3)
        u = torch.rand(n, _N_DRAWS, device=device)  # all per-row uniforms of the batch
        area_u = u[:, :CROP_CANDIDATES]
        ratio_u = u[:, CROP_CANDIDATES : 2 * CROP_CANDIDATES]
        rest = u[:, 2 * CROP_CANDIDATES :]
        w, h, found = self._crop_size(area_u, ratio_u, in_size)  # (n,) fractions, (n,) bool
        # Centre uniform over the positions inside [-1, 1]; the fallback crop is centred.
        cx = torch.where(found, (1.0 - w) * (2.0 * rest[:, _CX] - 1.0), 0.0)
        cy = torch.where(found, (1.0 - h) * (2.0 * rest[:, _CY] - 1.0), 0.0)
        sx = torch.where(rest[:, _FLIP] < p.flip_p, -w, w)  # flip = mirrored x axis
        zero = torch.zeros_like(w)
        theta = torch.stack([sx, zero, cx, zero, h, cy], dim=1).view(n, 2, 3)

        b, c, s, hue = p.jitter
        # torchvision's ranges: factors in [max(0, 1 - x), 1 + x], hue shift in [-h, h] turns. The
        # bounds are Python numbers, so each column is scalar arithmetic (no tensor sent to the device).
        ranges = (
            (max(0.0, 1.0 - b), 1.0 + b),
            (max(0.0, 1.0 - c), 1.0 + c),
            (max(0.0, 1.0 - s), 1.0 + s),
        )
        columns = [lo + (hi - lo) * rest[:, _BRIGHTNESS + i] for i, (lo, hi) in enumerate(ranges)]
        columns.append(hue * (2.0 * rest[:, _HUE] - 1.0))
        factors = torch.stack(columns, dim=1)  # (n, 4)
        identity = torch.ones_like(factors)
        identity[:, 3] = 0.0  # (1, 1, 1, 0): the row is left as it is
        jittered = (rest[:, _JITTER] < p.jitter_p).unsqueeze(1)
        color = torch.where(jittered, factors, identity)
        grayscale = rest[:, _GRAY] < p.grayscale_p
        return SimCLRViewParams(
            theta=theta,
            color=color,
            grayscale=grayscale,
            order=tuple(i for i in order if i in self._color_ops),
        )

    def _crop_size(
        self, area_u: torch.Tensor, ratio_u: torch.Tensor, in_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop width and height as fractions of the input's, and whether a random crop fitted.

        Draws are ``(n, CROP_CANDIDATES)`` uniforms; rows without a fitting candidate (``"retry"``)
        get torchvision's fallback size and are to be centred.
        """
        height, width = in_size
        (s_lo, s_hi), (r_lo, r_hi) = self.params.crop_scale, self.params.crop_ratio
        area = s_lo + (s_hi - s_lo) * area_u  # fraction of the image
        log_lo, log_hi = math.log(r_lo), math.log(r_hi)
        ratio = torch.exp(log_lo + (log_hi - log_lo) * ratio_u)  # width / height in pixels
        w = torch.sqrt(area * ratio * (height / width))
        h = torch.sqrt(area / ratio * (width / height))
        if self.crop_rule == "clamp":
            return (
                w[:, 0].clamp(max=1.0),
                h[:, 0].clamp(max=1.0),
                torch.ones_like(w[:, 0], dtype=torch.bool),
            )
        fits = (w <= 1.0) & (h <= 1.0)
        first = fits & (fits.cumsum(dim=1) == 1)  # one-hot of the first fitting candidate, or none
        chosen_w = (w * first).sum(dim=1)
        chosen_h = (h * first).sum(dim=1)
        # torchvision's fallback: the centre crop of the in-range aspect ratio closest to the image's.
        in_ratio = width / height
        if in_ratio < r_lo:
            fallback = (1.0, in_ratio / r_lo)
        elif in_ratio > r_hi:
            fallback = (r_hi / in_ratio, 1.0)
        else:
            fallback = (1.0, 1.0)
        found = first.any(dim=1)
        return (
            torch.where(found, chosen_w, fallback[0]),
            torch.where(found, chosen_h, fallback[1]),
            found,
        )

    def apply_params(self, images: torch.Tensor, view_params: SimCLRViewParams) -> torch.Tensor:
        """Apply drawn parameters: crop + flip, colour adjustments in ``order``, grayscale.

        Args:
            images: Input images.
            view_params: Parameters with ``N`` rows on the images' device.

        Returns:
            The views.

        Raises:
            ValueError: If ``images`` is not a 4-D floating-point tensor, or colour ops are on and
                ``C != 3``.

        Shape:
            - images: ``(N, C, H, W)`` in [0, 1].
            - Output: ``(N, C, *size)`` in [0, 1], same dtype and device.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"expected a (N, C, H, W) float tensor; got {tuple(images.shape)} {images.dtype}"
            )
        colour_on = bool(view_params.order) or self.params.grayscale_p > 0.0
        if colour_on and images.shape[1] != 3:
            raise ValueError(
                f"colour jitter and grayscale need RGB images; got {images.shape[1]} channels"
            )
        half = images.dtype in (torch.float16, torch.bfloat16)
        work = images.float() if half else images
        out = resized_crop(work, view_params.theta, self.size)
        adjust = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        for op in view_params.order:
            out = adjust[op](out, view_params.color[:, op])
        if self.params.grayscale_p > 0.0:
            gray = view_params.grayscale.view(-1, 1, 1, 1)
            out = torch.where(gray, rgb_to_luma(out), out)  # luma broadcast to the 3 channels
        return out.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Draw fresh parameters for every row and apply them (shapes as in the class docstring)."""
        if images.ndim != 4:
            raise ValueError(f"expected a (N, C, H, W) tensor; got {tuple(images.shape)}")
        view_params = self.sample(
            images.shape[0], (images.shape[2], images.shape[3]), images.device
        )
        return self.apply_params(images, view_params)

    def extra_repr(self) -> str:
        """Show the settings in ``repr``."""
        return (
            f"size={self.size}, random_order={self.random_order}, crop_rule={self.crop_rule!r}, "
            f"params={self.params}"
        )


class SimCLRFastAugmentSection(SimCLRViewsSection):
    """Config section of ``simclr_fast``: the strengths of ``simclr``, drawn without host syncs."""

    kind: Literal["simclr_fast"] = "simclr_fast"


@AUGMENTATIONS.register("simclr_fast", SimCLRFastAugmentSection)
def build_simclr_fast_pipeline(section: SimCLRViewsSection, size: tuple[int, int]) -> nn.Module:
    """SimCLR's CIFAR recipe (as ``"simclr"``) as batched tensor ops with no host sync.

    Random resized crop, horizontal flip, colour jitter (random order per batch) and grayscale; no
    blur. See :mod:`cslrobust.augment.fast_views` for the differences from the kornia preset.

    Reference:
        T. Chen, S. Kornblith, M. Norouzi, G. Hinton. "A Simple Framework for Contrastive Learning
        of Visual Representations." ICML 2020, Appendix A and B.9 (Gaussian blur is dropped on
        CIFAR-10).
    """
    return SimCLRFastAugment(section.params(), size)
