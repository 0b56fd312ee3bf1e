import dataclasses

import pytest
import torch

from cslrobust.augment import (
    AUGMENTATIONS,
    AugmentParams,
    CropFlipAugmentSection,
    SimCLRAugmentSection,
    ViewAugment,
    build_augment,
)
from cslrobust.errors import ConfigError

B, H, W = 8, 32, 32
SIMCLR_KINDS = ["simclr", "simclr_fast"]  # the kornia preset and its sync-free twin
# Presets of image samples (clip presets are tested in test_clip_views.py).
IMAGE_KINDS = [k for k in AUGMENTATIONS.names() if "image" in AUGMENTATIONS.get(k).section.layouts]


@pytest.fixture
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    return torch.rand(B, 3, H, W, generator=gen)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
@pytest.mark.parametrize("n_views", [1, 2, 3])
def test_shape_dtype_range(kind: str, n_views: int, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = build_augment(AUGMENTATIONS.section(kind))(images, n_views)
    assert out.shape == (n_views * B, 3, H, W)
    assert out.dtype == images.dtype and out.device == images.device
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_input_not_modified(kind: str, images: torch.Tensor) -> None:
    before = images.clone()
    build_augment(AUGMENTATIONS.section(kind))(images, 2)
    assert torch.equal(images, before)


@pytest.mark.parametrize("kind", SIMCLR_KINDS)
def test_extreme_inputs_stay_in_range(kind: str) -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.zeros(4, 3, H, W), torch.ones(4, 3, H, W)])
    out = build_augment(AUGMENTATIONS.section(kind))(x, 4)
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("kind", SIMCLR_KINDS)
def test_simclr_views_differ(kind: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = build_augment(AUGMENTATIONS.section(kind))(images, 2)
    v0, v1 = out[:B], out[B:]
    for b in range(B):
        assert not torch.allclose(v0[b], v1[b])
        assert not torch.allclose(v0[b], images[b])
        assert not torch.allclose(v1[b], images[b])


@pytest.mark.parametrize("kind", SIMCLR_KINDS)
def test_view_major_layout(kind: str) -> None:
    # Constant images survive resized crops and flips unchanged (colour ops are off), so every row
    # must equal the sample it was made from.
    torch.manual_seed(0)
    levels = torch.linspace(0.1, 0.9, B)
    x = levels.view(B, 1, 1, 1).expand(B, 3, H, W).contiguous()
    aug = build_augment(AUGMENTATIONS.section(kind, jitter_p=0.0, grayscale_p=0.0))
    out = aug(x, 3)
    for v in range(3):
        torch.testing.assert_close(out[v * B : (v + 1) * B], x)


def test_none_returns_exact_copies(images: torch.Tensor) -> None:
    out = build_augment(AUGMENTATIONS.section("none"))(images, 3)
    for v in range(3):
        assert torch.equal(out[v * B : (v + 1) * B], images)
    assert out.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("kind", [*SIMCLR_KINDS, "crop_flip"])
def test_seed_determinism(kind: str, images: torch.Tensor) -> None:
    aug = build_augment(AUGMENTATIONS.section(kind))
    torch.manual_seed(7)
    a = aug(images, 2)
    torch.manual_seed(7)
    b = aug(images, 2)
    torch.manual_seed(8)
    c = aug(images, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # A fresh module draws the same views from the same seed.
    torch.manual_seed(7)
    assert torch.equal(build_augment(AUGMENTATIONS.section(kind))(images, 2), a)


@pytest.mark.parametrize("kind", SIMCLR_KINDS)
def test_grayscale_p1_gives_equal_channels(kind: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = build_augment(AUGMENTATIONS.section(kind, grayscale_p=1.0))(images, 2)
    torch.testing.assert_close(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 1], out[:, 2])


def test_crop_flip_identity_when_disabled(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = build_augment(CropFlipAugmentSection(flip_p=0.0, crop_padding=0))(images, 2)
    assert torch.equal(out, images.repeat(2, 1, 1, 1))


def test_crop_flip_padding_shifts(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = build_augment(CropFlipAugmentSection(flip_p=0.0))(images, 4)
    assert out.shape == (4 * B, 3, H, W)
    assert not torch.equal(out, images.repeat(4, 1, 1, 1))


def test_flip_p1_mirrors(images: torch.Tensor) -> None:
    out = build_augment(CropFlipAugmentSection(flip_p=1.0, crop_padding=0))(images, 1)
    assert torch.equal(out, images.flip(-1))


def test_other_image_sizes() -> None:
    torch.manual_seed(0)
    aug = build_augment(SimCLRAugmentSection())
    assert aug(torch.rand(2, 3, 32, 32), 2).shape == (4, 3, 32, 32)
    assert aug(torch.rand(2, 3, 24, 40), 2).shape == (4, 3, 24, 40)


def test_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="simclr"):
        build_augment("autoaugment")
    with pytest.raises(ConfigError):
        ViewAugment("blur")


@pytest.mark.parametrize(
    "override",
    [
        {"flip_p": 1.5},
        {"jitter_p": -0.1},
        {"crop_scale": (0.0, 1.0)},
        {"crop_scale": (0.8, 0.2)},
        {"crop_ratio": (2.0, 1.0)},
        {"jitter": (0.4, 0.4, 0.4, 0.6)},
        {"jitter": (-0.1, 0.4, 0.4, 0.1)},
    ],
)
def test_invalid_params(override: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AugmentParams(**override)  # type: ignore[arg-type]


def test_params_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        AugmentParams().flip_p = 0.0  # type: ignore[misc]


def test_bad_inputs(images: torch.Tensor) -> None:
    aug = build_augment(SimCLRAugmentSection())
    with pytest.raises(ValueError):
        aug(images, 0)
    with pytest.raises(ValueError):
        aug(images[0], 2)
    with pytest.raises(ValueError):
        aug((images * 255).to(torch.uint8), 2)


def test_never_normalises(images: torch.Tensor) -> None:
    # Mean of a normalised batch would be ~0; augmented [0, 1] views keep a positive mean.
    torch.manual_seed(0)
    out = build_augment(SimCLRAugmentSection())(images, 2)
    assert 0.2 < out.mean().item() < 0.8
