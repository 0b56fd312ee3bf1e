import pytest
import torch

from cslrobust.data.raw import RawDataset
from cslrobust.data.synthetic_clips import (
    MOTIONS,
    make_synthetic_clips,
    motion_thetas,
    synthetic_clip_splits,
)
from cslrobust.errors import ConfigError

N, T, S = 36, 6, 32
CLASSES = ("a", "b", "c")


def _pool(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, S, S), generator=gen, dtype=torch.uint8)
    return images, torch.arange(n) % len(CLASSES)


@pytest.mark.parametrize("variant", ["camera", "motion_only"])
def test_deterministic_from_the_seed_and_shapes(variant: str) -> None:
    images, labels = _pool()
    a = make_synthetic_clips(images, labels, CLASSES, variant=variant, frames=T, seed=3)  # type: ignore[arg-type]
    b = make_synthetic_clips(images, labels, CLASSES, variant=variant, frames=T, seed=3)  # type: ignore[arg-type]
    c = make_synthetic_clips(images, labels, CLASSES, variant=variant, frames=T, seed=4)  # type: ignore[arg-type]
    assert torch.equal(a.clips, b.clips) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.motions, c.motions)
    assert a.clips.shape == (N, 3, T, S, S) and a.clips.dtype == torch.uint8
    assert a.labels.dtype == torch.int64 and a.labels.shape == (N,)
    state = torch.random.get_rng_state()
    make_synthetic_clips(images, labels, CLASSES, variant=variant, frames=T, seed=3)  # type: ignore[arg-type]
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is never used


def test_camera_variant_keeps_the_class_and_moves_the_image() -> None:
    # A horizontal ramp (value 40 + 4 x column): bilinear sampling of a ramp is exact, so a pan by
    # d pixels adds 4 d to every pixel of the frame, and a vertical pan changes nothing.
    ramp = (40 + 4 * torch.arange(S)).view(1, 1, 1, S).expand(len(MOTIONS) * 4, 3, S, S)
    images = ramp.to(torch.uint8).contiguous()
    labels = torch.arange(images.shape[0]) % 3
    clips = make_synthetic_clips(images, labels, CLASSES, variant="camera", frames=T, seed=0)
    assert torch.equal(clips.labels, labels) and clips.classes == CLASSES
    thetas = motion_thetas(clips.motions, torch.ones(images.shape[0]), T)  # for the centres only
    assert thetas.shape == (images.shape[0], T, 2, 3)
    inner = (slice(None), slice(4, -4), slice(4, -4))  # (C, H, W) away from the frame border
    for n in range(images.shape[0]):
        clip = clips.clips[n].float()  # (3, T, S, S)
        first = clip[:, 0][inner]
        motion = MOTIONS[int(clips.motions[n])]
        for t in range(1, T):
            delta = clip[:, t][inner] - first
            if motion in ("pan_up", "pan_down"):
                assert delta.abs().max() <= 1
            elif motion in ("pan_left", "pan_right"):
                step = delta.mean()
                assert (delta - step).abs().max() <= 1.01  # one uniform shift (rounding only)
                assert step < 0 if motion == "pan_left" else step > 0
                assert abs(step) > 1.5 * t / (T - 1)  # it really moves
    # the first frame is the centred start window for every motion
    start = clips.clips[:, :, 0].float()
    assert (start - start[0]).abs().max() <= 1


def test_motion_only_first_frames_carry_no_label() -> None:
    images, labels = _pool()
    a = make_synthetic_clips(images, labels, CLASSES, variant="motion_only", frames=T, seed=1)
    b = make_synthetic_clips(images, labels, CLASSES, variant="motion_only", frames=T, seed=2)
    assert a.classes == MOTIONS and torch.equal(a.labels, a.motions)
    assert not torch.equal(a.labels, b.labels)  # other classes for the same source images ...
    assert torch.equal(a.clips[:, :, 0], b.clips[:, :, 0])  # ... and the same first frames
    assert not torch.equal(a.clips[:, :, -1], b.clips[:, :, -1])  # the motion is in later frames
    # clips of different classes from one source image are identical in their first frame
    same_image = make_synthetic_clips(
        images[:1].expand(12, -1, -1, -1).contiguous(),
        labels[:12],
        CLASSES,
        variant="motion_only",
        frames=T,
        seed=0,
    )
    assert len(set(same_image.labels.tolist())) == len(MOTIONS)
    assert (same_image.clips[:, :, 0] == same_image.clips[:1, :, 0]).all()


def test_motion_only_labels_are_balanced() -> None:
    images, labels = _pool(n=40)
    clips = make_synthetic_clips(images, labels, CLASSES, variant="motion_only", frames=2, seed=0)
    counts = torch.bincount(clips.labels, minlength=len(MOTIONS))
    assert counts.max() - counts.min() <= 1 and counts.sum() == 40


def test_windows_stay_inside_the_image() -> None:
    motions = torch.arange(len(MOTIONS)).repeat(3)
    thetas = motion_thetas(motions, torch.ones(motions.shape[0]), 16)
    scale, cx, cy = thetas[..., 0, 0], thetas[..., 0, 2], thetas[..., 1, 2]
    assert (scale > 0).all() and (scale <= 1).all()
    assert (cx.abs() <= 1 - scale + 1e-6).all() and (cy.abs() <= 1 - scale + 1e-6).all()


def test_splits_and_errors() -> None:
    images, labels = _pool(n=6)
    raw = RawDataset(images, labels, images.flip(0), labels, CLASSES, "toy")
    train, test = synthetic_clip_splits(raw, variant="camera", frames=3, seed=0)
    assert train.clips.shape == test.clips.shape == (6, 3, 3, S, S)
    with pytest.raises(ConfigError, match="unknown synthetic clip variant 'rotation'"):
        make_synthetic_clips(images, labels, CLASSES, variant="rotation", frames=3, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="frames >= 1"):
        motion_thetas(torch.zeros(1, dtype=torch.long), torch.ones(1), 0)


def test_clip_data_splits_from_an_image_set() -> None:
    from cslrobust.data import build_synthetic_clip_datasets

    images, labels = _pool(n=30)
    raw = RawDataset(images, labels, images[:6], labels[:6], CLASSES, "toy")
    splits = build_synthetic_clip_datasets(
        raw, variant="motion_only", frames=4, train_per_class=5, val_per_class=2, seed=0
    )
    assert splits.layout == "clip" and splits.classes == MOTIONS
    assert len(splits.train) == 15 and len(splits.val) == 6 and len(splits.test) == 6
    assert splits.train.images.shape[1:] == (3, 4, S, S)
    frames = splits.train.images.transpose(1, 2).flatten(0, 1).double() / 255  # (N*T, 3, H, W)
    expected = frames.mean(dim=(0, 2, 3))
    torch.testing.assert_close(torch.tensor(splits.mean, dtype=torch.float64), expected)


@pytest.mark.slow
def test_clips_from_the_real_cifar10_images(cifar10_jpeg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # cifar10_jpeg (tests/conftest.py): ../shared/data/cifar10-jpeg.tar.gz, skipped when absent.
    from cslrobust.data import build_synthetic_clip_datasets, load_image_folder

    raw = load_image_folder(cifar10_jpeg, tmp_path / "cache", progress=False)
    for variant, classes in (("camera", raw.classes), ("motion_only", MOTIONS)):
        splits = build_synthetic_clip_datasets(
            raw, variant=variant, frames=8, train_per_class=4, val_per_class=1, seed=0
        )
        assert splits.classes == classes and splits.layout == "clip"
        assert len(splits.train) == 40 and len(splits.val) == 10 and len(splits.test) == 10_000
        assert splits.train.images.shape[1:] == (3, 8, 32, 32)
        assert 0.3 < min(splits.mean) and max(splits.mean) < 0.6  # real photographs


def test_build_datasets_cuts_evaluation_samples_into_model_clips(make_folder) -> None:  # type: ignore[no-untyped-def]
    from cslrobust.data import ClipSettings, build_datasets, eval_windows
    from cslrobust.data.video import eval_clip_indices

    folder = make_folder(per_split=(4, 2))
    common = {"root": folder.parent / "cache", "source": folder, "val_per_class": 1, "seed": 0}
    whole = build_datasets(
        "synthetic_clips", **common, clips=ClipSettings(frames=6, view_frames=6), progress=False
    )
    assert whole.train_eval is None and whole.probe_train is whole.train
    assert whole.test.images.shape[1:3] == (3, 6)
    cut = build_datasets(
        "synthetic_clips",
        **common,
        clips=ClipSettings(frames=6, view_frames=4, eval_clips=2),
        progress=False,
    )
    assert torch.equal(cut.train.images, whole.train.images)  # training clips stay whole
    index = eval_clip_indices(6, 4, 1, 2).flatten()  # starts 0 and 2: frames 0-3, 2-5
    assert index.tolist() == [0, 1, 2, 3, 2, 3, 4, 5]
    for name in ("val", "test"):
        expected = getattr(whole, name).images[:, :, index]
        assert torch.equal(getattr(cut, name).images, expected)
        assert torch.equal(getattr(cut, name).labels, getattr(whole, name).labels)
    assert cut.probe_train is cut.train_eval
    assert torch.equal(cut.probe_train.images, whole.train.images[:, :, index])
    assert cut.mean == whole.mean  # statistics of the training frames
    with pytest.raises(ConfigError, match="do not fit in samples of 6 frames"):
        eval_windows(whole.test.images, 7, 1)
    with pytest.raises(ConfigError, match="needs clip settings"):
        build_datasets("synthetic_clips", **common, progress=False)
