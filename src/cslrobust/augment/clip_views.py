"""SimCLR views of clips: one crop, flip and colour draw per clip, applied to every frame.

The ``"simclr_clip"`` preset is the ``"simclr_fast"`` recipe (:mod:`cslrobust.augment.fast_views`)
made temporally consistent: each view of a clip draws one crop box, one flip, one set of colour
factors (and one grayscale decision), and every frame of the view goes through exactly those. The
batch is processed as ``N * T`` frames in one ``affine_grid`` + ``grid_sample`` with each clip's
affine repeated over its ``T`` frames, and the colour factors broadcast the same way, so clips cost
what ``N * T`` images cost in ``simclr_fast``. Contrast blends with the mean luma of each frame (as
torchvision's video transforms do); the factor is the clip's.

Temporal jitter: with ``frames`` set, the input clips are longer windows (``T_in >= frames``, already
sampled with the data set's stride) and each view takes its own ``frames`` consecutive frames
starting at a uniform random offset, so the two views of a clip generally cover different moments.
Without ``frames`` every view keeps all input frames (no temporal jitter).

Random numbers come from the global RNG on the input's device, like ``simclr_fast``: one
``torch.rand`` for the image parameters (and a CPU ``randperm`` of the colour order) plus one
``torch.rand`` for the temporal offsets; the training loop scopes that RNG per epoch.

Reference:
    T. Chen et al. "A Simple Framework for Contrastive Learning of Visual Representations." ICML
    2020; R. Qian et al. "Spatiotemporal Contrastive Video Representation Learning." CVPR 2021
    (temporally consistent spatial augmentation and temporal jitter between views).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from cslrobust.augment.fast_views import SimCLRFastAugment, SimCLRViewParams
from cslrobust.augment.views import AUGMENTATIONS, AugmentParams, SimCLRViewsSection
from cslrobust.layouts import Layout

__all__ = [
    "ClipViewParams",
    "SimCLRClipAugment",
    "SimCLRClipAugmentSection",
    "build_simclr_clip_pipeline",
]


@dataclass(frozen=True)
class ClipViewParams:
    """The random parameters of one batch of clip views.

    Attributes:
        image: One row of crop / flip / colour / grayscale parameters per clip (not per frame).
        start: ``(N,)`` int64 first frame of each view's window in the input clip.
    """

    image: SimCLRViewParams
    start: torch.Tensor


class SimCLRClipAugment(nn.Module):
    """Temporally consistent SimCLR views of clips, with temporal jitter between views.

    Args:
        params: Strengths and probabilities of the SimCLR recipe.
        size: Output ``(height, width)``.
        frames: Frames per output view; ``None`` keeps the input's length (no temporal jitter).
        random_order: As :class:`~cslrobust.augment.fast_views.SimCLRFastAugment`.

    Shape:
        - Input: ``(N, 3, T_in, H, W)`` floating point in [0, 1], ``T_in >= frames``.
        - Output: ``(N, 3, frames, *size)`` in [0, 1], same dtype and device, contiguous.
    """

    def __init__(
        self,
        params: AugmentParams,
        size: tuple[int, int],
        frames: int | None = None,
        *,
        random_order: bool = True,
    ) -> None:
        super().__init__()
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be >= 1; got {frames}")
        self.frames = frames
        self.image = SimCLRFastAugment(params, size, random_order=random_order)

    def sample(
        self,
        n: int,
        in_frames: int,
        in_size: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> ClipViewParams:
        """Draw the parameters of ``n`` clip views from the global RNG.

        Args:
            n: Number of clips (rows).
            in_frames: Frames of each input clip.
            in_size: Input ``(height, width)``.
            device: Where to draw and keep the parameters.

        Raises:
            ValueError: If the input clips are shorter than ``frames``.
        """
        frames = in_frames if self.frames is None else self.frames
        if in_frames < frames:
            raise ValueError(f"clips of {in_frames} frames are shorter than the views' {frames}")
        image = self.image.sample(n, in_size, device)
        offsets = in_frames - frames + 1  # possible window starts
        start = (torch.rand(n, device=device) * offsets).long().clamp_(max=offsets - 1)
        return ClipViewParams(image=image, start=start)

    def apply_params(self, clips: torch.Tensor, view_params: ClipViewParams) -> torch.Tensor:
        """Cut each clip's window, then crop + colour every frame with its clip's parameters.

        Raises:
            ValueError: If ``clips`` is not a 5-D floating-point tensor.

        Shape:
            - clips: ``(N, C, T_in, H, W)`` in [0, 1].
            - Output: ``(N, C, frames, *size)`` in [0, 1].
        """
        if clips.ndim != 5 or not clips.is_floating_point():
            raise ValueError(
                f"expected a (N, C, T, H, W) float tensor; got {tuple(clips.shape)} {clips.dtype}"
            )
        n, c, t_in, h, w = clips.shape
        t = t_in if self.frames is None else self.frames
        if t < t_in:
            index = view_params.start.view(n, 1) + torch.arange(t, device=clips.device)  # (N, T)
            clips = clips.gather(2, index.view(n, 1, t, 1, 1).expand(n, c, t, h, w))
        frames = clips.transpose(1, 2).reshape(n * t, c, h, w)  # (N*T, C, H, W), clip-major
        p = view_params.image
        per_frame = SimCLRViewParams(
            theta=p.theta.repeat_interleave(t, dim=0),
            color=p.color.repeat_interleave(t, dim=0),
            grayscale=p.grayscale.repeat_interleave(t, dim=0),
            order=p.order,
        )
        out = self.image.apply_params(frames, per_frame)  # (N*T, C, *size)
        return out.view(n, t, c, *self.image.size).transpose(1, 2).contiguous()

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Draw fresh parameters for every clip and apply them (shapes as in the class docstring)."""
        if clips.ndim != 5:
            raise ValueError(f"expected a (N, C, T, H, W) tensor; got {tuple(clips.shape)}")
        n, _, t_in, h, w = clips.shape
        return self.apply_params(clips, self.sample(n, t_in, (h, w), clips.device))

    def extra_repr(self) -> str:
        """Show the settings in ``repr``."""
        return f"frames={self.frames}"


class SimCLRClipAugmentSection(SimCLRViewsSection):
    """Config section of ``simclr_clip``: SimCLR strengths drawn per clip, plus the view length.

    Attributes:
        frames: Frames of each view, cut at a random offset from the longer input clip (temporal
            jitter between views); ``None`` keeps every input frame.
    """

    kind: Literal["simclr_clip"] = "simclr_clip"
    frames: int | None = Field(default=None, ge=1)
    layouts: ClassVar[tuple[Layout, ...]] = ("clip",)


@AUGMENTATIONS.register("simclr_clip", SimCLRClipAugmentSection)
def build_simclr_clip_pipeline(
    section: SimCLRClipAugmentSection, size: tuple[int, int]
) -> nn.Module:
    """SimCLR's recipe per clip (temporally consistent) with temporal jitter between views."""
    return SimCLRClipAugment(section.params(), size, section.frames)
