"""Debiased contrastive loss (Chuang et al., 2020): a soft alternative to false-negative removal."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives.contrastive import similarity_logits
from cslrobust.objectives.contrastive_objective import ContrastiveObjective, ContrastiveSection
from cslrobust.objectives.masks import expand_to_views, instance_positive_mask
from cslrobust.objectives.objective import OBJECTIVES, HeadKind

__all__ = ["DebiasedObjective", "DebiasedSection", "build_debiased", "debiased_contrastive_loss"]


def debiased_contrastive_loss(
    z: Tensor, pos_mask: Tensor, neg_mask: Tensor, temperature: float, tau_plus: float
) -> tuple[Tensor, Tensor]:
    r"""Debiased contrastive loss of Chuang et al. (2020) on explicit positive/negative masks.

    Chuang, Robinson, Lin, Torralba, Jegelka, "Debiased Contrastive Learning", NeurIPS 2020,
    eq. (6) with the formulation of the authors' code. With ``e_ij = exp(z_i . z_j / tau)``,
    ``N = |N(i)|`` negatives and the mean positive term ``p_i = mean_{p in P(i)} e_ip``, the
    negative term is re-estimated as if a fraction ``tau_plus`` of the negatives shared the
    anchor's class:

    .. math::

        N g_i = \max\Big(\frac{\sum_{n \in N(i)} e_{in} - \tau^+ N p_i}{1 - \tau^+},
                         N e^{-1/\tau}\Big), \qquad
        \ell_i = \frac{1}{|P(i)|} \sum_{p \in P(i)} -\log \frac{e_{ip}}{e_{ip} + N g_i}.

    With one positive per anchor (two views) this is the paper's loss exactly; with more, the
    ``V - 1`` positives are the paper's ``M`` positive samples of the estimator and the loss is
    averaged over them.

    **Identity at** ``tau_plus = 0``: ``N g_i = max(sum_n e_in, N e^{-1/tau})``. Every term
    ``e_in >= e^{-1/tau}`` because ``z_i . z_n >= -1`` for unit vectors, so the clamp never
    changes the value (it binds only when every negative is antipodal, where both sides are
    equal), and ``ell_i = -log(e_ip / (e_ip + sum_n e_in))``: SimCLR's NT-Xent, whose denominator
    holds the positive plus every negative. Up to float rounding the two losses are equal.

    The computation is shifted by each row's largest logit (the shift cancels exactly, clamp
    included), so small temperatures do not overflow.

    Args:
        z: Embeddings, L2-normalised along the last dimension (not checked).
        pos_mask: Positive pairs (disjoint from ``neg_mask``).
        neg_mask: Negative pairs.
        temperature: Softmax temperature ``tau > 0``.
        tau_plus: Class prior ``tau^+`` in ``[0, 1)``: the assumed probability that a negative
            shares the anchor's class.

    Returns:
        The mean loss over anchors with a positive (0 if none) and the fraction of those anchors
        whose negative term was clamped (detached).

    Shape:
        - z: ``(M, D)``
        - pos_mask, neg_mask: ``(M, M)`` bool, disjoint, False on the diagonal
        - outputs: ``()`` and ``()``

    Raises:
        ValueError: On bad shapes or dtypes, ``temperature <= 0`` or ``tau_plus`` outside
            ``[0, 1)``.
    """
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D (M, D), got shape {tuple(z.shape)}")
    for name, mask in (("pos_mask", pos_mask), ("neg_mask", neg_mask)):
        if mask.dtype != torch.bool or tuple(mask.shape) != (z.shape[0], z.shape[0]):
            raise ValueError(f"{name} must be a bool (M, M) tensor, got {tuple(mask.shape)}")
    if not temperature > 0 or not 0.0 <= tau_plus < 1.0:
        raise ValueError(
            f"need temperature > 0 and tau_plus in [0, 1), got {temperature}, {tau_plus}"
        )
    denom = pos_mask | neg_mask  # (M, M)
    logits = similarity_logits(z, temperature)  # (M, M)
    masked = logits.masked_fill(~denom, torch.finfo(logits.dtype).min)
    shift = masked.amax(dim=1, keepdim=True).detach()  # (M, 1)
    zero = torch.zeros_like(logits)
    e = torch.where(denom, torch.exp(masked - shift), zero)  # (M, M), 0 outside P(i) ∪ N(i)

    n_pos = pos_mask.sum(dim=1)  # (M,)
    n_neg = neg_mask.sum(dim=1).to(e.dtype)  # (M,)
    pos_mean = torch.where(pos_mask, e, zero).sum(dim=1) / n_pos.clamp(min=1)  # (M,)
    neg_sum = torch.where(neg_mask, e, zero).sum(dim=1)  # (M,)
    ng = (neg_sum - tau_plus * n_neg * pos_mean) / (1.0 - tau_plus)  # (M,)
    floor = n_neg * torch.exp(-1.0 / temperature - shift.squeeze(1))  # (M,)
    clamped = ng < floor
    ng = torch.maximum(ng, floor)

    # -log(e_ip / (e_ip + Ng_i)) = log(e_ip + Ng_i) - (logit_ip - shift_i); the floor keeps the
    # log finite (and its gradient free of NaN) for entries masked out below.
    tiny = torch.finfo(e.dtype).tiny
    per_pair = torch.log((e + ng[:, None]).clamp(min=tiny)) - (logits - shift)  # (M, M)
    per_anchor = torch.where(pos_mask, per_pair, zero).sum(dim=1) / n_pos.clamp(min=1)  # (M,)
    has_pos = n_pos > 0
    n_valid = has_pos.sum().clamp(min=1)
    loss = per_anchor.sum() / n_valid
    clamped_fraction = (clamped & has_pos).sum().detach().float() / n_valid
    return loss, clamped_fraction


@dataclass(frozen=True)
class DebiasedObjective(ContrastiveObjective):
    """SimCLR's instance discrimination with the debiased loss of Chuang et al. (2020).

    The soft alternative to false-negative removal: instead of flagging individual negatives, the
    negative term of NT-Xent is corrected for a class prior ``tau_plus`` (the expected fraction of
    negatives that share the anchor's class; ``1 / C`` for ``C`` balanced classes). Positives are
    the other views of the anchor's instance, as in ``simclr``; labels are not used.
    ``tau_plus = 0`` is exactly ``simclr`` (see :func:`debiased_contrastive_loss`). Calling it
    returns the loss and metrics ``loss``, ``pos_sim``, ``neg_sim`` and ``dcl_clamped_fraction``
    (fraction of anchors whose corrected negative term hit the floor ``N e^{-1/tau}``).

    Args:
        temperature: Softmax temperature ``tau`` (default 0.5, as ``simclr``).
        tau_plus: Class prior in ``[0, 1)`` (default 0.1: CIFAR-10's ten classes).
        n_views: Views per sample (at least 2; 2 is the paper's setting).

    Raises:
        ConfigError: If ``temperature <= 0``, ``tau_plus`` is outside ``[0, 1)`` or
            ``n_views < 2``.
    """

    temperature: float = 0.5
    tau_plus: float = 0.1
    n_views: int = 2
    head_kind: HeadKind = field(default="projector", init=False)

    name: ClassVar[str] = "debiased"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.tau_plus) and 0.0 <= self.tau_plus < 1.0):
            raise ConfigError(f"tau_plus must be in [0, 1), got {self.tau_plus}")

    def positive_mask(self, index: Tensor, labels: Tensor) -> Tensor:
        """The other views of the anchor's instance, as ``simclr``; ``(V*B, V*B)``."""
        return instance_positive_mask(expand_to_views(index, self.n_views))

    def contrastive_loss(
        self, z: Tensor, pos_mask: Tensor, neg_mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`debiased_contrastive_loss` and its ``dcl_clamped_fraction``."""
        loss, clamped = debiased_contrastive_loss(
            z, pos_mask, neg_mask, self.temperature, self.tau_plus
        )
        return loss, {"dcl_clamped_fraction": clamped}


class DebiasedSection(ContrastiveSection):
    """Config section of ``debiased``: the temperature and the class prior ``tau_plus``."""

    name: Literal["debiased"] = "debiased"
    family: ClassVar[str] = "fn_removal"
    tau_plus: float = Field(default=0.1, ge=0.0, lt=1.0, description="class prior of 'debiased'")


@OBJECTIVES.register("debiased", DebiasedSection)
def build_debiased(section: DebiasedSection) -> DebiasedObjective:
    """The ``debiased`` objective of a config section."""
    return DebiasedObjective(temperature=section.temperature, tau_plus=section.tau_plus)
