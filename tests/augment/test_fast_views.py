import math
import random

import pytest
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
)
from kornia.enhance import (
    adjust_hue as kornia_adjust_hue,
)

from cslrobust.augment import (
    AUGMENTATIONS,
    AugmentParams,
    SimCLRFastAugment,
    SimCLRFastAugmentSection,
    SimCLRViewParams,
    ViewAugment,
    build_augment,
)
from cslrobust.augment.fast_views import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    resized_crop,
    rgb_to_luma,
)
from cslrobust.config import build_run_config
from cslrobust.errors import ConfigError
from cslrobust.seeding import rng_scope

# Every random choice off: the pipeline must reduce to the identity.
OFF = {
    "jitter_p": 0.0,
    "grayscale_p": 0.0,
    "flip_p": 0.0,
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
}
NO_COLOUR = {"jitter_p": 0.0, "grayscale_p": 0.0}
STAT_ROWS = 20_000  # rows for the rate/distribution tests: binomial s.e. <= 0.0035


def _augment(size: tuple[int, int] = (32, 32), **params: object) -> SimCLRFastAugment:
    return SimCLRFastAugment(AugmentParams(**params), size)  # type: ignore[arg-type]


def _colour_images(n: int, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    """Random RGB images with the HSV corner cases planted: gray, black, white, primaries, ties."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=gen)
    special = torch.tensor(
        [
            [0.5, 0.5, 0.5],
            [0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0],
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.8, 0.8, 0.2],  # R = G maximal
            [0.3, 0.9, 0.9],  # G = B maximal
            [0.7, 0.1, 0.7],  # R = B maximal
            [0.2, 0.6, 0.6],
        ]
    )
    x[:, :, 0, : len(special)] = special.T
    return x


def _coordinate_images(n: int, h: int, w: int) -> torch.Tensor:
    """Channel 0 holds each pixel's x centre, channel 1 its y centre (fractions of the image)."""
    xs = (torch.arange(w) + 0.5) / w
    ys = (torch.arange(h) + 0.5) / h
    x = torch.empty(n, 3, h, w)
    x[:, 0] = xs.view(1, 1, w)
    x[:, 1] = ys.view(1, h, 1)
    x[:, 2] = 0.5
    return x


def _measure_crops(out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Crop boxes (fractions of the input) read back from augmented coordinate images.

    Bilinear resampling of a linear ramp is exact, so output pixel ``j`` holds
    ``start + (j + 0.5) / W_out * span``; the fit uses pixels 2 and ``W_out - 3``, whose samples stay
    clear of the border padding for crops wider than 1/5 of the image.
    """
    _, _, h, w = out.shape
    row = out[:, 0, h // 2]
    col = out[:, 1, :, w // 2]

    def fit(profile: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = 2, size - 3
        span = (profile[:, hi] - profile[:, lo]) * size / (hi - lo)  # signed extent
        start = profile[:, lo] - (lo + 0.5) / size * span
        return start, span

    x_start, x_span = fit(row, w)
    y_start, y_span = fit(col, h)
    return {
        "left": torch.minimum(x_start, x_start + x_span),
        "right": torch.maximum(x_start, x_start + x_span),
        "top": y_start,
        "bottom": y_start + y_span,
        "width": x_span.abs(),
        "height": y_span,
        "flipped": x_span < 0,
    }


def _reference_crop_areas(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], rule: str, seed: int
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` loop, continuous sizes, in plain Python."""
    rng = random.Random(seed)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    areas = []
    for _ in range(n):
        area = 1.0  # the centre-crop fallback of a square image with 1 in the ratio range
        for _ in range(10 if rule == "retry" else 1):
            s = rng.uniform(*scale)
            r = math.exp(rng.uniform(log_lo, log_hi))
            w, h = math.sqrt(s * r), math.sqrt(s / r)
            if rule == "clamp":
                area = min(w, 1.0) * min(h, 1.0)
            elif w <= 1.0 and h <= 1.0:
                area = w * h
                break
        areas.append(area)
    return torch.tensor(areas)


def _torchvision_adjust_hue(img: torch.Tensor, hue_factor: torch.Tensor) -> torch.Tensor:
    """torchvision.transforms.functional_tensor's ``_rgb2hsv`` / ``_hsv2rgb`` hue shift (turns)."""
    r, g, b = img.unbind(dim=-3)
    maxc = torch.max(img, dim=-3).values
    minc = torch.min(img, dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = (h + hue_factor.view(-1, 1, 1)) % 1.0
    v = maxc
    i = torch.floor(h * 6.0)
    f = (h * 6.0) - i
    i = i.to(dtype=torch.int32)
    p = torch.clamp((v * (1.0 - s)), 0.0, 1.0)
    q = torch.clamp((v * (1.0 - s * f)), 0.0, 1.0)
    t = torch.clamp((v * (1.0 - s * (1.0 - f))), 0.0, 1.0)
    i = i % 6
    mask = i.unsqueeze(dim=-3) == torch.arange(6).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    a4 = torch.stack((a1, a2, a3), dim=-4)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(dtype=img.dtype), a4)


# --- contract: shape, dtype, device, range, determinism --------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shape_dtype_device_range(dtype: torch.dtype, channels_last: bool) -> None:
    torch.manual_seed(0)
    x = _colour_images(16, 32, 32).to(dtype)
    x[:4] = 0.0
    x[4:8] = 1.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = _augment()(x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_output_size_and_non_square_input() -> None:
    torch.manual_seed(0)
    x = _colour_images(4, 24, 40)
    assert _augment(size=(16, 20))(x).shape == (4, 3, 16, 20)
    assert _augment(size=(24, 40))(x).shape == (4, 3, 24, 40)


def test_seed_determinism() -> None:
    x = _colour_images(8, 32, 32)
    aug = _augment()
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    torch.manual_seed(8)
    c = aug(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(7)
    assert torch.equal(_augment()(x), a)  # a fresh module: the same draws


def test_rows_get_different_parameters() -> None:
    torch.manual_seed(0)
    aug = _augment(jitter_p=1.0, grayscale_p=0.0)
    p = aug.sample(64, (32, 32))
    assert torch.unique(p.theta.view(64, 6), dim=0).shape[0] == 64
    assert torch.unique(p.color, dim=0).shape[0] == 64
    # The same image in every row gives 64 different views.
    x = _colour_images(1, 32, 32).expand(64, -1, -1, -1)
    out = aug.apply_params(x, p).view(64, -1)
    assert torch.cdist(out, out).add(torch.eye(64)).min() > 1e-3


def test_sample_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    params = AugmentParams()
    p = SimCLRFastAugment(params, (32, 32)).sample(4096, (32, 32))
    assert isinstance(p, SimCLRViewParams)
    assert p.theta.shape == (4096, 2, 3) and p.color.shape == (4096, 4)
    assert p.grayscale.shape == (4096,) and p.grayscale.dtype == torch.bool
    assert sorted(p.order) == [0, 1, 2, 3]
    jittered = (p.color != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(dim=1)
    b, c, s, h = params.jitter
    factors = p.color[jittered]
    for col, strength in enumerate((b, c, s)):
        assert factors[:, col].min() >= 1 - strength and factors[:, col].max() <= 1 + strength
    assert factors[:, 3].abs().max() <= h


def test_random_order_varies_per_batch_and_can_be_fixed() -> None:
    torch.manual_seed(0)
    aug = _augment()
    orders = {aug.sample(2, (8, 8)).order for _ in range(50)}
    assert len(orders) > 10 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    fixed = SimCLRFastAugment(AugmentParams(), (8, 8), random_order=False)
    assert {fixed.sample(2, (8, 8)).order for _ in range(5)} == {(0, 1, 2, 3)}
    # Adjustments with strength 0 are left out of the order.
    zero_hue = _augment(jitter=(0.4, 0.0, 0.4, 0.0))
    assert sorted(zero_hue.sample(2, (8, 8)).order) == [0, 2]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="crop_rule"):
        SimCLRFastAugment(AugmentParams(), (8, 8), crop_rule="shrink")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RGB"):
        _augment()(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError):
        _augment()(torch.rand(3, 8, 8))
    with pytest.raises(ValueError):
        _augment()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    # Geometry alone works for any channel count.
    assert _augment(**NO_COLOUR)(torch.rand(2, 5, 8, 8)).shape == (2, 5, 32, 32)


# --- colour ops against kornia's torchvision-compatible functionals --------------------------
# kornia.enhance.adjust_brightness is additive, adjust_contrast a plain multiply and
# adjust_saturation scales the HSV saturation; torchvision's (and SimCLR's) definitions are the
# *_accumulative / *_with_mean_subtraction / *_with_gray_subtraction variants, which ColorJitter uses.


@pytest.fixture
def colour_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = _colour_images(24)
    factors = torch.rand(24, generator=gen) * 2.0  # [0, 2): covers clamping and factor 0 regions
    factors[0], factors[1] = 0.0, 1.0
    shifts = torch.rand(24, generator=gen) - 0.5  # [-0.5, 0.5) turns
    shifts[0] = 0.0
    return x, factors, shifts


def test_luma_matches_kornia(colour_batch: tuple[torch.Tensor, ...]) -> None:
    x = colour_batch[0]
    torch.testing.assert_close(rgb_to_luma(x), rgb_to_grayscale(x), atol=1e-6, rtol=0)


def test_brightness_matches_kornia(colour_batch: tuple[torch.Tensor, ...]) -> None:
    x, f, _ = colour_batch
    expected = adjust_brightness_accumulative(x, f)
    torch.testing.assert_close(adjust_brightness(x, f), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(expected, (x * f.view(-1, 1, 1, 1)).clamp(0, 1))  # torchvision


def test_contrast_matches_kornia(colour_batch: tuple[torch.Tensor, ...]) -> None:
    x, f, _ = colour_batch
    expected = adjust_contrast_with_mean_subtraction(x, f)
    torch.testing.assert_close(adjust_contrast(x, f), expected, atol=1e-5, rtol=0)
    # torchvision: blend with the mean of the grayscale image, one mean per image.
    mean = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2))
    fv, mv = f.view(-1, 1, 1, 1), mean.view(-1, 1, 1, 1)
    torch.testing.assert_close(expected, (fv * x + (1 - fv) * mv).clamp(0, 1), atol=1e-6, rtol=0)


def test_saturation_matches_kornia(colour_batch: tuple[torch.Tensor, ...]) -> None:
    x, f, _ = colour_batch
    expected = adjust_saturation_with_gray_subtraction(x, f)
    torch.testing.assert_close(adjust_saturation(x, f), expected, atol=1e-5, rtol=0)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    fv = f.view(-1, 1, 1, 1)
    torch.testing.assert_close(expected, (fv * x + (1 - fv) * gray).clamp(0, 1), atol=1e-6, rtol=0)


def test_hue_matches_kornia_and_torchvision(colour_batch: tuple[torch.Tensor, ...]) -> None:
    x, _, shift = colour_batch
    ours = adjust_hue(x, shift)
    # kornia's adjust_hue takes radians in [-pi, pi]; torchvision's (and our) shift is in turns.
    torch.testing.assert_close(ours, kornia_adjust_hue(x, shift * 2 * math.pi), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, _torchvision_adjust_hue(x, shift), atol=1e-5, rtol=0)


def test_hsv_round_trip_is_identity() -> None:
    x = _colour_images(32, 16, 16, seed=3)
    torch.testing.assert_close(adjust_hue(x, torch.zeros(32)), x, atol=1e-6, rtol=0)
    # Shifts are periodic and invertible.
    torch.testing.assert_close(adjust_hue(x, torch.ones(32)), x, atol=1e-5, rtol=0)
    shift = torch.linspace(-0.5, 0.5, 32)
    torch.testing.assert_close(adjust_hue(adjust_hue(x, shift), -shift), x, atol=1e-5, rtol=0)


def test_hue_keeps_value_and_saturation() -> None:
    x = _colour_images(8, seed=4)
    out = adjust_hue(x, torch.full((8,), 0.3))
    torch.testing.assert_close(out.amax(dim=1), x.amax(dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.amin(dim=1), x.amin(dim=1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_colour_pipeline_matches_kornia_composition(seed: int) -> None:
    # No crop or flip: the output is the colour pipeline alone, in the batch's drawn order.
    torch.manual_seed(seed)
    aug = _augment(
        size=(12, 12), flip_p=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), grayscale_p=0.3
    )
    x = _colour_images(64)
    p = aug.sample(64, (12, 12))
    steps = (
        adjust_brightness_accumulative,
        adjust_contrast_with_mean_subtraction,
        adjust_saturation_with_gray_subtraction,
        lambda img, f: kornia_adjust_hue(img, f * 2 * math.pi),
    )
    expected = x
    for op in p.order:
        expected = steps[op](expected, p.color[:, op])
    gray = rgb_to_grayscale(expected).expand(-1, 3, -1, -1)
    expected = torch.where(p.grayscale.view(-1, 1, 1, 1), gray, expected)
    torch.testing.assert_close(aug.apply_params(x, p), expected, atol=1e-5, rtol=0)


# --- geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_when_everything_is_off(shape: tuple[int, int], dtype: torch.dtype) -> None:
    # crop_ratio is width / height in pixels: the whole image has ratio W / H (1 when square).
    torch.manual_seed(0)
    x = _colour_images(8, *shape).to(dtype).contiguous(memory_format=torch.channels_last)
    whole = shape[1] / shape[0]
    out = _augment(size=shape, **{**OFF, "crop_ratio": (whole, whole)})(x)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_flip_theta_mirrors() -> None:
    x = _colour_images(4, 16, 16)
    theta = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(4, 2, 3)
    torch.testing.assert_close(resized_crop(x, theta, (16, 16)), x.flip(-1), atol=1e-6, rtol=0)


def test_pixel_aligned_crop_matches_crop_then_resize() -> None:
    # The top-left 16x16 box of a 32x32 image, resized to 32x32, is torchvision's crop + bilinear
    # resize, except in the last output row/column: there the continuous crop reads the pixels just
    # outside the box, where crop-then-resize replicates the box's edge (documented difference).
    x = _colour_images(4, 32, 32)
    theta = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]]).expand(4, 2, 3)
    ours = resized_crop(x, theta, (32, 32))
    expected = F.interpolate(x[..., :16, :16], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours[..., :-1, :-1], expected[..., :-1, :-1], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("ratio", "expected_wh"), [((2.0, 3.0), (1.0, 0.5)), ((1 / 3, 1 / 2), (0.5, 1.0))]
)
def test_centre_crop_fallback_when_nothing_fits(
    ratio: tuple[float, float], expected_wh: tuple[float, float]
) -> None:
    # Full area with an aspect ratio the square image cannot hold: every candidate fails and
    # torchvision falls back to the centre crop of the closest in-range aspect ratio.
    torch.manual_seed(0)
    aug = _augment(size=(16, 16), crop_scale=(1.0, 1.0), crop_ratio=ratio, **NO_COLOUR, flip_p=0.0)
    box = _measure_crops(aug(_coordinate_images(8, 16, 16)))
    w, h = expected_wh
    torch.testing.assert_close(box["width"], torch.full((8,), w), atol=1e-5, rtol=0)
    torch.testing.assert_close(box["height"], torch.full((8,), h), atol=1e-5, rtol=0)
    torch.testing.assert_close(box["left"], torch.full((8,), (1 - w) / 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(box["top"], torch.full((8,), (1 - h) / 2), atol=1e-5, rtol=0)


# --- statistics over many rows --------------------------------------------------------------


@pytest.mark.parametrize("flip_p", [0.5, 0.2])
def test_flip_rate(flip_p: float) -> None:
    torch.manual_seed(0)
    aug = _augment(size=(8, 8), flip_p=flip_p, **NO_COLOUR)
    box = _measure_crops(aug(_coordinate_images(STAT_ROWS, 8, 8)))
    assert abs(box["flipped"].float().mean().item() - flip_p) < 0.02


def test_grayscale_rate_with_jitter_on() -> None:
    torch.manual_seed(0)
    x = torch.rand(STAT_ROWS, 3, 4, 4)
    out = _augment(size=(4, 4))(x)  # SimCLR defaults: grayscale_p 0.2 after jitter
    gray = (out.amax(dim=1) - out.amin(dim=1)).amax(dim=(1, 2)) < 1e-6
    assert abs(gray.float().mean().item() - 0.2) < 0.02


@pytest.mark.parametrize("jitter_p", [0.8, 0.3])
def test_jitter_rate(jitter_p: float) -> None:
    # Constant colour images: crops leave them unchanged, so any change is the jitter.
    torch.manual_seed(0)
    colours = 0.2 + 0.6 * torch.rand(STAT_ROWS, 3, 1, 1)
    x = colours.expand(-1, -1, 4, 4)
    aug = _augment(size=(4, 4), jitter_p=jitter_p, grayscale_p=0.0)
    p = aug.sample(STAT_ROWS, (4, 4))
    changed = (aug.apply_params(x, p) - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert abs(changed.float().mean().item() - jitter_p) < 0.02
    drew_jitter = (p.color != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(dim=1)
    assert torch.equal(changed, drew_jitter)


def test_crop_area_is_uniform_in_crop_scale() -> None:
    # Square crops of a square image always fit, so the area fraction is exactly U(crop_scale).
    torch.manual_seed(0)
    lo, hi = 0.2, 1.0
    aug = _augment(size=(8, 8), crop_scale=(lo, hi), crop_ratio=(1.0, 1.0), **NO_COLOUR)
    box = _measure_crops(aug(_coordinate_images(STAT_ROWS, 8, 8)))
    area = box["width"] * box["height"]
    assert area.min() >= lo - 1e-4 and area.max() <= hi + 1e-4
    assert abs(area.mean().item() - (lo + hi) / 2) < 0.01
    # Kolmogorov-Smirnov distance to U(lo, hi); the 0.1% critical value is 1.95 / sqrt(n) = 0.014.
    sorted_area = area.sort().values
    ecdf = torch.arange(1, STAT_ROWS + 1) / STAT_ROWS
    assert (ecdf - (sorted_area - lo) / (hi - lo)).abs().max() < 0.02
    torch.testing.assert_close(box["width"], box["height"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("rule", ["retry", "clamp"])
def test_crop_boxes_match_torchvision_rule(rule: str) -> None:
    torch.manual_seed(0)
    params = AugmentParams(jitter_p=0.0, grayscale_p=0.0)
    aug = SimCLRFastAugment(params, (8, 8), crop_rule=rule)  # type: ignore[arg-type]
    box = _measure_crops(aug(_coordinate_images(STAT_ROWS, 8, 8)))
    tol = 1e-4
    assert box["left"].min() >= -tol and box["right"].max() <= 1 + tol  # crops inside the image
    assert box["top"].min() >= -tol and box["bottom"].max() <= 1 + tol
    log_ratio = torch.log(box["width"] / box["height"])
    assert log_ratio.abs().max() <= math.log(4 / 3) + 1e-3
    area = box["width"] * box["height"]
    reference = _reference_crop_areas(STAT_ROWS, params.crop_scale, params.crop_ratio, rule, seed=0)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(area.quantile(q).item() - reference.quantile(q).item()) < 0.02
    assert abs(area.mean().item() - reference.mean().item()) < 0.01
    # The crop centre is uniform over the positions that keep the crop inside the image.
    free = 1 - box["width"]
    rel = ((box["left"] / free.clamp_min(1e-3))[free > 0.05]).clamp(0, 1)
    assert abs(rel.mean().item() - 0.5) < 0.02 and abs(rel.var().item() - 1 / 12) < 0.01


def test_crop_rules_differ_as_documented() -> None:
    # torchvision's rejection favours small crops when the ratio is far from 1: mean area 0.539
    # against 0.593 for clamping (module docstring).
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    retry = _reference_crop_areas(50_000, scale, ratio, "retry", seed=1).mean().item()
    clamp = _reference_crop_areas(50_000, scale, ratio, "clamp", seed=1).mean().item()
    assert abs(retry - 0.539) < 0.005 and abs(clamp - 0.593) < 0.005


# --- against the kornia preset, and integration -------------------------------------------------


def test_simclr_and_simclr_fast_have_similar_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(64, 3, 4, 4, generator=gen), size=(32, 32), mode="bilinear")
    x = 0.7 * smooth + 0.3 * torch.rand(64, 3, 32, 32, generator=gen)
    stats = {}
    for kind in ("simclr", "simclr_fast"):
        torch.manual_seed(0)
        out = build_augment(AUGMENTATIONS.section(kind))(x, 8)
        stats[kind] = (out.mean(dim=(0, 2, 3)), out.std(dim=(2, 3)).mean(dim=0))
    torch.testing.assert_close(stats["simclr"][0], stats["simclr_fast"][0], atol=0.03, rtol=0)
    torch.testing.assert_close(stats["simclr"][1], stats["simclr_fast"][1], atol=0.02, rtol=0)


def test_view_augment_end_to_end() -> None:
    assert "simclr_fast" in AUGMENTATIONS.names()
    x = _colour_images(8, 32, 32)
    aug = ViewAugment(SimCLRFastAugmentSection())
    with rng_scope(3):
        a = aug(x, 2)
    with rng_scope(3):
        b = build_augment(SimCLRFastAugmentSection())(x, 2)
    assert a.shape == (16, 3, 32, 32) and torch.equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert not torch.allclose(a[:8], a[8:])
    # View-major layout: with colour ops off, views of constant images equal their source.
    levels = torch.linspace(0.1, 0.9, 8).view(8, 1, 1, 1).expand(8, 3, 32, 32)
    views = ViewAugment(SimCLRFastAugmentSection(**NO_COLOUR))(levels, 3)  # type: ignore[arg-type]
    torch.testing.assert_close(views, levels.repeat(3, 1, 1, 1))


def test_config_accepts_simclr_fast() -> None:
    section = build_run_config({"augment": {"kind": "simclr_fast", "grayscale_p": 0.1}}).augment
    assert section == SimCLRFastAugmentSection(grayscale_p=0.1)
    with pytest.raises(ConfigError, match="unknown augmentation 'simclr_faster'"):
        build_run_config({"augment": {"kind": "simclr_faster"}})


def test_colour_ops_match_torchvision(colour_batch: tuple[torch.Tensor, ...]) -> None:
    # torchvision is not a dependency; this runs where it is installed (e.g. the GPU image).
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x, f, shift = colour_batch
    ours = (
        adjust_brightness(x, f),
        adjust_contrast(x, f),
        adjust_saturation(x, f),
        adjust_hue(x, shift),
    )
    for i in range(x.shape[0]):
        factor, hue = f[i].item(), shift[i].item()
        torch.testing.assert_close(
            ours[0][i], tvf.adjust_brightness(x[i], factor), atol=1e-5, rtol=0
        )
        # torchvision's tensor luma weighs red 0.2989, not 0.299: up to ~1e-4 apart.
        torch.testing.assert_close(ours[1][i], tvf.adjust_contrast(x[i], factor), atol=2e-4, rtol=0)
        torch.testing.assert_close(
            ours[2][i], tvf.adjust_saturation(x[i], factor), atol=2e-4, rtol=0
        )
        torch.testing.assert_close(ours[3][i], tvf.adjust_hue(x[i], hue), atol=1e-5, rtol=0)


@pytest.mark.gpu
def test_cuda_no_host_sync_and_same_distribution() -> None:
    x = _colour_images(256, 32, 32).cuda().contiguous(memory_format=torch.channels_last)
    aug = ViewAugment(SimCLRFastAugmentSection())
    aug(x, 2)  # warm-up: lazy CUDA initialisation may synchronise
    torch.manual_seed(0)  # seeding is the loop's per-epoch business, outside the checked region
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        out = aug(x, 2)
        bf16 = aug(x.bfloat16(), 2)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert out.device == x.device and bf16.dtype == torch.bfloat16
    assert out.min() >= 0 and out.max() <= 1
    cpu = ViewAugment(SimCLRFastAugmentSection())(x.cpu(), 2)
    torch.testing.assert_close(out.mean().cpu(), cpu.mean(), atol=0.02, rtol=0)
