"""Encoder (normalise -> backbone -> head) and the classifier composite for probes and attacks."""

from __future__ import annotations

import torch
from torch import nn

from cslrobust.models.backbone import Backbone
from cslrobust.models.normalize import Normalize

__all__ = ["Classifier", "Encoder"]


class Encoder(nn.Module):
    """A backbone with its input normalisation and a training head.

    Features, projection and logits are separate calls: :meth:`features` is the pre-head
    representation read by probes, geometry and attacks; :meth:`forward` adds the head used by the
    training objective (a :class:`~cslrobust.models.ProjectionHead` for contrastive objectives, a
    :class:`~cslrobust.models.LinearHead` for the supervised one).

    Args:
        normalize: Per-channel normalisation applied to the [0, 1] input.
        backbone: Conv trunk with ``forward_features`` and ``feature_dim``.
        head: Module mapping ``(B, feature_dim)`` features to the objective's output.

    Shape:
        - Input: ``(B, C, H, W)`` images in [0, 1] (never pre-normalised); clip encoders
          ``(B, C, T, H, W)``, where ``T = K * clip_frames`` is ``K`` clips averaged in
          :meth:`features`.
        - Output: ``(B, head_out_dim)``.
    """

    def __init__(
        self,
        normalize: Normalize,
        backbone: Backbone,
        head: nn.Module,
        *,
        clip_frames: int | None = None,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.head = head
        # Clip encoders: an input of K * clip_frames frames is K clips whose features are averaged
        # (multi-clip evaluation); training views have exactly clip_frames frames.
        self.clip_frames = clip_frames

    @property
    def feature_dim(self) -> int:
        """Dimension of :meth:`features`."""
        return self.backbone.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-head representation ``backbone.forward_features(normalize(x))``.

        Args:
            x: Images in [0, 1].

        Returns:
            Pooled backbone features.

        Shape:
            - x: ``(B, C, H, W)`` in [0, 1].
            - Returns: ``(B, feature_dim)``.
        """
        clip_frames = self.clip_frames
        if clip_frames is None or x.ndim != 5 or x.shape[2] == clip_frames:
            return self.backbone.forward_features(self.normalize(x))
        return self._clip_average(x, clip_frames)

    def _clip_average(self, x: torch.Tensor, clip_frames: int) -> torch.Tensor:
        """Mean of the features of the fewest uniformly placed ``clip_frames``-frame clips covering ``x``.

        ``K = ceil(T / clip_frames)`` clips start at ``round(linspace(0, T - clip_frames, K))``: for
        ``T = K * clip_frames`` (the evaluation samples) these are the ``K`` consecutive clips; a
        longer training clip (the views of a temporally jittered preset are shorter than the data's
        clips) gets overlapping ones.

        Shape:
            - x: ``(B, C, T, H, W)`` with ``T >= clip_frames``.
            - Returns: ``(B, feature_dim)``.
        """
        b, c, t, h, w = x.shape
        if t < clip_frames:
            raise ValueError(
                f"a clip input of {t} frames is shorter than the model's {clip_frames}"
            )
        k = -(-t // clip_frames)
        if t % clip_frames:
            starts = torch.linspace(0, t - clip_frames, k).round().long()
            index = (starts.view(-1, 1) + torch.arange(clip_frames)).flatten().to(x.device)
            x = x.index_select(2, index)  # (B, C, K * clip_frames, H, W)
        clips = x.reshape(b, c, k, clip_frames, h, w).transpose(1, 2)
        clips = clips.reshape(b * k, c, clip_frames, h, w)
        features = self.backbone.forward_features(self.normalize(clips))  # (B*K, D)
        return features.view(b, k, -1).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Head output ``head(features(x))`` (see the class docstring for shapes)."""
        out: torch.Tensor = self.head(self.features(x))
        return out


class Classifier(nn.Module):
    """An encoder's features followed by a separate linear head: normalise -> backbone -> head.

    This is the single composite used by the linear probe, clean evaluation and attacks, so clean
    and robust accuracy share one code path. The encoder's own training head is not used.

    Args:
        encoder: Provides :meth:`Encoder.features` (its normalisation and backbone).
        head: Maps ``(B, encoder.feature_dim)`` to logits, usually a
            :class:`~cslrobust.models.LinearHead`.

    Shape:
        - Input: ``(B, C, H, W)`` images in [0, 1].
        - Output: ``(B, num_classes)`` logits.
    """

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``head(encoder.features(x))`` (see the class docstring for shapes)."""
        logits: torch.Tensor = self.head(self.encoder.features(x))
        return logits
