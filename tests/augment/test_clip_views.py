import pytest
import torch

from cslrobust.augment import (
    AUGMENTATIONS,
    SimCLRClipAugment,
    SimCLRClipAugmentSection,
    build_augment,
)
from cslrobust.seeding import rng_scope

N, T, H, W = 4, 6, 16, 16


def _clips(t: int = T, seed: int = 0) -> torch.Tensor:
    return torch.rand(N, 3, t, H, W, generator=torch.Generator().manual_seed(seed))


def test_registered_as_a_clip_preset() -> None:
    section = AUGMENTATIONS.section("simclr_clip")
    assert type(section) is SimCLRClipAugmentSection
    assert type(section).layouts == ("clip",)
    assert section.frames is None


def test_identical_frames_give_identical_output_frames() -> None:
    frame = torch.rand(N, 3, 1, H, W, generator=torch.Generator().manual_seed(1))
    clips = frame.expand(N, 3, T, H, W).contiguous()
    with rng_scope(0):
        out = SimCLRClipAugment(SimCLRClipAugmentSection().params(), (H, W))(clips)
    assert out.shape == (N, 3, T, H, W)
    for t in range(1, T):
        assert torch.equal(out[:, :, t], out[:, :, 0])
    # ... and the clips of the batch did get different augmentations
    assert not torch.equal(out[0, :, 0], out[1, :, 0])


def test_every_frame_gets_its_clips_crop_and_colour() -> None:
    """Frame t of a view == the image augmentation of input frame t with the clip's parameters."""
    augment = SimCLRClipAugment(SimCLRClipAugmentSection(jitter_p=1.0).params(), (12, 12))
    clips = _clips()
    with rng_scope(3):
        params = augment.sample(N, T, (H, W))
    out = augment.apply_params(clips, params)
    assert out.shape == (N, 3, T, 12, 12)
    assert (params.image.color[:, :3] != 1).all()  # jitter really on
    for t in range(T):
        expected = augment.image.apply_params(clips[:, :, t].contiguous(), params.image)
        torch.testing.assert_close(out[:, :, t], expected, rtol=0, atol=1e-6)


def test_known_shift_between_frames_is_kept_under_crop_and_flip() -> None:
    """Frames that are horizontal shifts of each other stay shifts (mirrored by a flip) by the same
    crop: without colour ops, a pure-translation crop at the input size moves all frames alike."""
    params = SimCLRClipAugmentSection(crop_scale=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0).params()
    augment = SimCLRClipAugment(params, (H, W))
    base = torch.rand(N, 3, 1, H, W + T, generator=torch.Generator().manual_seed(2))
    clips = torch.cat([base[..., t : t + W] for t in range(T)], dim=2)  # frame t = shift by t
    with rng_scope(5):
        out = augment(clips)
    flipped = out.flip(-1)
    for n in range(N):
        a, b = out[n, :, 0, :, 1:], out[n, :, 1, :, :-1]  # frame 1 = frame 0 moved left by 1
        fa, fb = flipped[n, :, 0, :, 1:], flipped[n, :, 1, :, :-1]
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(fa, fb, atol=1e-5)


def test_temporal_jitter_between_views() -> None:
    section = SimCLRClipAugmentSection(
        frames=4, jitter_p=0.0, grayscale_p=0.0, flip_p=0.0, crop_scale=(1.0, 1.0)
    )
    t_in = 16
    # frame t is the constant t / 16: the window start can be read off the output
    clips = (
        (torch.arange(t_in).float() / t_in)
        .view(1, 1, t_in, 1, 1)
        .expand(8, 3, t_in, H, W)
        .contiguous()
    )
    with rng_scope(0):
        out = build_augment(section)(clips, 2)
    assert out.shape == (16, 3, 4, H, W)
    starts = (out[:, 0, 0, 0, 0] * t_in).round().long()
    for r in range(16):  # consecutive frames from the start
        torch.testing.assert_close(out[r, 0, :, 0, 0], (starts[r] + torch.arange(4)).float() / t_in)
    assert not torch.equal(starts[:8], starts[8:])  # the two views differ in time
    assert 0 <= starts.min() and starts.max() <= t_in - 4


def test_views_differ_range_and_determinism() -> None:
    views = build_augment(AUGMENTATIONS.section("simclr_clip", frames=4))
    clips = _clips()
    with rng_scope(7):
        a = views(clips, 2)
    with rng_scope(7):
        b = views(clips, 2)
    assert torch.equal(a, b)
    assert a.shape == (2 * N, 3, 4, H, W) and a.is_contiguous()
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a[:N], a[N:])


def test_refuses_images_and_short_clips() -> None:
    views = build_augment(AUGMENTATIONS.section("simclr_clip", frames=8))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        views(torch.rand(2, 3, H, W), 2)
    with pytest.raises(ValueError, match="shorter than the views' 8"):
        views(_clips(t=4), 2)
