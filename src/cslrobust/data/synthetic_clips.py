"""Labelled synthetic clips made from real images by camera motion, deterministic from a seed.

No action data set can be downloaded on the project's machines, so tests and the CPU demo train on
clips rendered from real images (CIFAR-10): each clip is a virtual camera looking at one image
through a window that moves over ``T`` frames. Two variants:

* ``"camera"``: the clip keeps its image's class; the camera motion (a pan in one of four directions
  or a zoom in or out, with a random amount) is a nuisance, as in real footage.
* ``"motion_only"``: the class is the motion itself (:data:`MOTIONS`); the images are drawn at random
  from the pool whatever their class. Every motion starts from the same window (the centred window
  of ``start_scale``), so the first frame is the same function of the image for every class and
  carries no label information; only the change between frames tells the class.

The window of frame ``t`` is an affine map in ``F.affine_grid``'s normalised coordinates, scale ``s``
and centre ``(cx, cy)`` with ``|c| <= 1 - s``, so it never leaves the image (no padding is ever
sampled). Positions are continuous (sub-pixel pans, smooth zooms), resampled bilinearly
(``align_corners=False``) at the image's size and rounded back to uint8.

Motion parameters (``u`` is the clip's amount, uniform in ``[0.5, 1]``; ``s0 = start_scale``;
``f = t / (T - 1)`` the frame's fraction of the clip):

* pans: ``s = s0``, centre moves from 0 to ``u (1 - s0)`` along the pan's direction (left = -x,
  up = -y: the window moves, so the content moves the other way);
* ``zoom_in``: ``s = s0 (1 - 0.4 u f)`` (the window shrinks, the object grows);
* ``zoom_out``: ``s = s0 + u (1 - s0) f`` (up to the whole image).

Randomness comes only from an explicit ``torch.Generator`` seeded from ``(seed, "synthetic_clips",
variant, split)``, never the global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import torch
import torch.nn.functional as F

from cslrobust.data.raw import RawDataset
from cslrobust.data.splits import stratified_subset, train_val_split
from cslrobust.data.stats import channel_mean_std
from cslrobust.data.tensor_data import TensorClipDataset
from cslrobust.errors import ConfigError
from cslrobust.seeding import make_generator

if TYPE_CHECKING:
    from cslrobust.data import DataSplits

__all__ = [
    "MOTIONS",
    "VARIANTS",
    "build_synthetic_clip_datasets",
    "ClipVariant",
    "SyntheticClips",
    "make_synthetic_clips",
    "motion_thetas",
    "render_clips",
    "synthetic_clip_splits",
]

MOTIONS: tuple[str, ...] = ("pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out")
"""Camera motions; in the ``"motion_only"`` variant ``MOTIONS[k]`` names class ``k``."""

ClipVariant = Literal["camera", "motion_only"]
VARIANTS: tuple[ClipVariant, ...] = get_args(ClipVariant)

_PAN_DIRECTIONS = ((-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))  # (dx, dy) of the window
_ZOOM_IN_DEPTH = 0.4  # the window shrinks to at most 60 % of its start side
_AMOUNT_RANGE = (0.5, 1.0)
_RENDER_CHUNK = 512  # clips rendered per grid_sample call (bounds the float32 working memory)


@dataclass(frozen=True)
class SyntheticClips:
    """Rendered clips with labels.

    Attributes:
        clips: ``(N, 3, T, H, W)`` uint8 clips.
        labels: ``(N,)`` int64 class of each clip.
        motions: ``(N,)`` int64 index into :data:`MOTIONS` of each clip's camera motion.
        sources: ``(N,)`` int64 index of each clip's source image in the image pool.
        classes: Class names (image classes for ``"camera"``, :data:`MOTIONS` for ``"motion_only"``).
    """

    clips: torch.Tensor
    labels: torch.Tensor
    motions: torch.Tensor
    sources: torch.Tensor
    classes: tuple[str, ...]


def motion_thetas(
    motions: torch.Tensor, amounts: torch.Tensor, frames: int, *, start_scale: float = 0.75
) -> torch.Tensor:
    """Per-frame camera windows as ``F.affine_grid`` maps (see the module docstring).

    Args:
        motions: Index into :data:`MOTIONS` per clip.
        amounts: Motion amount per clip in ``(0, 1]``.
        frames: Frames per clip (``T >= 1``; one frame is the start window).
        start_scale: Side of the first window as a fraction of the image's, in ``(0, 1]``.

    Returns:
        The windows, ``theta[n, t] = [[s, 0, cx], [0, s, cy]]``.

    Shape:
        - motions, amounts: ``(N,)``.
        - Returns: ``(N, T, 2, 3)`` float32.
    """
    if frames < 1 or not 0.0 < start_scale <= 1.0:
        raise ConfigError(f"need frames >= 1 and 0 < start_scale <= 1; got {frames}, {start_scale}")
    n = motions.shape[0]
    f = torch.linspace(0.0, 1.0, frames) if frames > 1 else torch.zeros(1)  # (T,)
    u = amounts.float().view(n, 1)
    grid = f.view(1, frames)
    scale = torch.full((n, frames), start_scale)
    scale = torch.where(
        (motions == 4).view(n, 1), start_scale * (1 - _ZOOM_IN_DEPTH * u * grid), scale
    )
    scale = torch.where(
        (motions == 5).view(n, 1), start_scale + u * (1 - start_scale) * grid, scale
    )
    direction = torch.zeros(n, 2)
    for k, (dx, dy) in enumerate(_PAN_DIRECTIONS):
        direction[motions == k] = torch.tensor([dx, dy])
    shift = (u * (1 - start_scale) * grid).unsqueeze(-1) * direction.view(n, 1, 2)  # (N, T, 2)
    theta = torch.zeros(n, frames, 2, 3)
    theta[..., 0, 0] = scale
    theta[..., 1, 1] = scale
    theta[..., :, 2] = shift
    return theta


def render_clips(images: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Render each image through its per-frame windows (bilinear, at the image's size).

    Args:
        images: Source images.
        thetas: Windows from :func:`motion_thetas`.

    Returns:
        The clips, rounded to uint8.

    Shape:
        - images: ``(N, 3, H, W)`` uint8.
        - thetas: ``(N, T, 2, 3)``.
        - Returns: ``(N, 3, T, H, W)`` uint8.
    """
    n, c, h, w = images.shape
    t = thetas.shape[1]
    out = torch.empty(n, c, t, h, w, dtype=torch.uint8)
    for lo in range(0, n, _RENDER_CHUNK):
        hi = min(n, lo + _RENDER_CHUNK)
        frames = images[lo:hi].float().repeat_interleave(t, dim=0)  # (m*T, C, H, W), clip-major
        grid = F.affine_grid(
            thetas[lo:hi].reshape(-1, 2, 3), [frames.shape[0], c, h, w], align_corners=False
        )
        rendered = F.grid_sample(
            frames, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        clips = rendered.round_().clamp_(0, 255).to(torch.uint8).view(hi - lo, t, c, h, w)
        out[lo:hi] = clips.transpose(1, 2)
    return out


def make_synthetic_clips(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    *,
    variant: ClipVariant,
    frames: int,
    seed: int,
    split: str = "train",
    start_scale: float = 0.75,
) -> SyntheticClips:
    """Render one clip per image of the pool, deterministically from ``(seed, variant, split)``.

    Args:
        images: The pool of real images.
        labels: Their classes (used by ``"camera"``; ignored by ``"motion_only"``).
        classes: Names of the image classes.
        variant: ``"camera"`` (class = the image's) or ``"motion_only"`` (class = the motion).
        frames: Frames per clip.
        seed: Run seed.
        split: Names the random stream (``"train"``, ``"test"``), so splits draw independently.
        start_scale: Side of the first window as a fraction of the image side.

    Returns:
        ``N`` clips. ``"motion_only"`` labels are balanced (``N // 6`` or one more per class,
        in a random order) and clip ``i`` is made from image ``i``.

    Raises:
        ConfigError: If ``variant`` is unknown or ``frames``/``start_scale`` are invalid.

    Shape:
        - images: ``(N, 3, H, W)`` uint8; labels: ``(N,)`` int64.
    """
    if variant not in VARIANTS:
        raise ConfigError(
            f"unknown synthetic clip variant {variant!r}; expected one of {list(VARIANTS)}"
        )
    n = images.shape[0]
    generator = make_generator(seed, "synthetic_clips", variant, split)
    if variant == "motion_only":
        balanced = torch.arange(n) % len(MOTIONS)
        motions = balanced[torch.randperm(n, generator=generator)]
        clip_labels, clip_classes = motions.clone(), MOTIONS
    else:
        motions = torch.randint(len(MOTIONS), (n,), generator=generator)
        clip_labels, clip_classes = labels.clone(), classes
    lo, hi = _AMOUNT_RANGE
    amounts = lo + (hi - lo) * torch.rand(n, generator=generator)
    thetas = motion_thetas(motions, amounts, frames, start_scale=start_scale)
    return SyntheticClips(
        clips=render_clips(images, thetas),
        labels=clip_labels,
        motions=motions,
        sources=torch.arange(n),
        classes=clip_classes,
    )


def synthetic_clip_splits(
    raw: RawDataset, *, variant: ClipVariant, frames: int, seed: int
) -> tuple[SyntheticClips, SyntheticClips]:
    """Train and test clips from a real image data set's official splits (e.g. CIFAR-10).

    Test clips are rendered from test images only, so no source image is shared between splits.
    """
    train = make_synthetic_clips(
        raw.train_images,
        raw.train_labels,
        raw.classes,
        variant=variant,
        frames=frames,
        seed=seed,
        split="train",
    )
    test = make_synthetic_clips(
        raw.test_images,
        raw.test_labels,
        raw.classes,
        variant=variant,
        frames=frames,
        seed=seed,
        split="test",
    )
    return train, test


def build_synthetic_clip_datasets(
    raw: RawDataset,
    *,
    variant: ClipVariant,
    frames: int,
    train_per_class: int | None,
    val_per_class: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> DataSplits:
    """Train / validation / test clip sets from a real image data set, as :class:`DataSplits`.

    The images are split as :func:`cslrobust.data.build_datasets` splits them (stratified
    validation carved from the official train split, then the optional per-class subset), and only
    then rendered, each split from its own random stream, so no source image is shared between
    splits and no unused image is rendered.

    Returns:
        Clip splits (``layout == "clip"``) with the per-channel mean/std of the training clips.
    """
    from cslrobust.data import DataSplits  # the package imports this module

    train_idx, val_idx = train_val_split(raw.train_labels, val_per_class, seed)
    if train_per_class is not None:
        train_idx = train_idx[stratified_subset(raw.train_labels[train_idx], train_per_class, seed)]
    parts = {
        "train": (raw.train_images[train_idx], raw.train_labels[train_idx]),
        "val": (raw.train_images[val_idx], raw.train_labels[val_idx]),
        "test": (raw.test_images, raw.test_labels),
    }
    rendered = {
        split: make_synthetic_clips(
            images, labels, raw.classes, variant=variant, frames=frames, seed=seed, split=split
        )
        for split, (images, labels) in parts.items()
    }
    train = rendered["train"].clips
    n, c, t, h, w = train.shape
    mean, std = channel_mean_std(train.view(n, c, t * h, w))  # frames as one tall image: no copy
    sets = {k: TensorClipDataset(v.clips, v.labels, device) for k, v in rendered.items()}
    return DataSplits(
        train=sets["train"],
        val=sets["val"],
        test=sets["test"],
        classes=rendered["train"].classes,
        mean=mean,
        std=std,
    )
