"""InfoNCE on explicit positive and negative masks: the one contrastive loss of cslrobust.

SimCLR's NT-Xent (Chen et al., 2020), SupCon's L_out (Khosla et al., 2020, eq. 2) and the
false-negative elimination / attraction variants (Huynh et al., 2022) differ only in the masks
passed to :func:`info_nce`; see :mod:`cslrobust.objectives.masks`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Reduction",
    "info_nce",
    "info_nce_logits",
    "normalize_views",
    "pair_similarity_means",
    "similarity_logits",
]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS: frozenset[str] = frozenset(("mean", "sum", "none"))


def _check_pair_mask(name: str, mask: Tensor, m: int) -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) != (m, m):
        raise ValueError(
            f"{name} must be a bool ({m}, {m}) tensor, "
            f"got {mask.dtype} of shape {tuple(mask.shape)}"
        )


def info_nce(
    z: Tensor,
    pos_mask: Tensor,
    neg_mask: Tensor,
    temperature: float,
    *,
    reduction: Reduction = "mean",
    check_disjoint: bool = True,
) -> Tensor:
    r"""Multi-positive InfoNCE (SupCon L_out form) over masked pairs of rows.

    For anchor ``i`` with positives ``P(i)`` and negatives ``N(i)`` and ``s_ij = z_i . z_j``:

    .. math::

        \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
            \log \frac{\exp(s_{ip}/\tau)}{\sum_{a \in P(i) \cup N(i)} \exp(s_{ia}/\tau)}

    With exactly one positive per anchor and every other row a negative this is SimCLR's NT-Xent;
    with positives = same label it is SupCon's L_out (Khosla et al., 2020, eq. 2). Rows that are in
    neither mask are ignored for that anchor (that is how false negatives are eliminated).

    The denominator is a masked ``logsumexp`` (masked entries set to the dtype's most negative
    finite value, not ``-inf``, so no NaN reaches the backward pass). Half-precision similarities
    are promoted to float32 before the division by the temperature.

    Anchors without any positive get loss 0 and are excluded from the mean; if no anchor has a
    positive, the mean is 0 (still attached to the graph).

    Args:
        z: Embeddings, L2-normalised along the last dimension (not checked).
        pos_mask: ``pos_mask[i, j]`` marks ``j`` as a positive of anchor ``i``.
        neg_mask: ``neg_mask[i, j]`` marks ``j`` as a negative of anchor ``i``.
        temperature: Softmax temperature ``tau > 0``.
        reduction: ``"mean"`` over anchors with a positive, ``"sum"``, or ``"none"`` (per anchor).
        check_disjoint: Verify that no pair is both positive and negative. This reads a value back
            from the device (a host sync); callers whose masks are disjoint by construction pass
            False.

    Returns:
        Scalar loss, or per-anchor losses if ``reduction="none"``.

    Shape:
        - z: ``(M, D)``, L2-normalised rows
        - pos_mask, neg_mask: ``(M, M)`` bool; the diagonal is ignored
        - output: ``()``, or ``(M,)`` with ``reduction="none"``

    Raises:
        ValueError: On bad shapes or dtypes, ``temperature <= 0``, an unknown reduction, or (with
            ``check_disjoint``) an off-diagonal pair that is both positive and negative.
    """
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D (M, D), got shape {tuple(z.shape)}")
    m = z.shape[0]
    _check_pair_mask("pos_mask", pos_mask, m)
    _check_pair_mask("neg_mask", neg_mask, m)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")

    not_self = ~torch.eye(m, dtype=torch.bool, device=z.device)  # (M, M)
    if check_disjoint and bool((pos_mask & neg_mask & not_self).any()):
        raise ValueError("pos_mask and neg_mask overlap: a pair cannot be positive and negative")
    pos = pos_mask & not_self
    denom = (pos_mask | neg_mask) & not_self  # P(i) ∪ N(i)

    logits = similarity_logits(z, temperature)  # (M, M)
    return _masked_info_nce(logits, pos, denom, reduction)


def info_nce_logits(
    logits: Tensor, pos_mask: Tensor, neg_mask: Tensor, *, reduction: Reduction = "mean"
) -> Tensor:
    r"""The loss of :func:`info_nce` on given logits: anchors against a separate candidate set.

    For methods whose anchors are not their own candidates (MoCo: queries against their positive
    key and a queue of earlier keys), ``logits[i, j] = s_ij / tau`` is anchor ``i`` against candidate
    ``j``; the masks select each anchor's positives and negatives among the candidates, and the loss
    is :func:`info_nce`'s formula (same conventions for anchors without a positive). There is no
    diagonal: the caller builds the masks.

    Args:
        logits: Similarities divided by the temperature (at least float32 for low temperatures).
        pos_mask: Positives of each anchor.
        neg_mask: Negatives of each anchor, disjoint from ``pos_mask`` (not checked).
        reduction: As :func:`info_nce`.

    Returns:
        Scalar loss, or per-anchor losses if ``reduction="none"``.

    Shape:
        - logits: ``(M, N)``
        - pos_mask, neg_mask: ``(M, N)`` bool
        - output: ``()``, or ``(M,)`` with ``reduction="none"``

    Raises:
        ValueError: On mask shapes or dtypes that do not match ``logits``, or an unknown reduction.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (M, N), got shape {tuple(logits.shape)}")
    for name, mask in (("pos_mask", pos_mask), ("neg_mask", neg_mask)):
        if mask.dtype != torch.bool or mask.shape != logits.shape:
            raise ValueError(
                f"{name} must be a bool {tuple(logits.shape)} tensor, "
                f"got {mask.dtype} of shape {tuple(mask.shape)}"
            )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return _masked_info_nce(logits, pos_mask, pos_mask | neg_mask, reduction)


def _masked_info_nce(logits: Tensor, pos: Tensor, denom: Tensor, reduction: Reduction) -> Tensor:
    """The loss on logits ``(M, N)``, positives and denominator masks ``(M, N)`` (no checks)."""
    # Finite fill instead of -inf: a row with an empty denominator would otherwise give
    # logsumexp = -inf and NaN gradients even though that anchor is excluded below.
    masked = logits.masked_fill(~denom, torch.finfo(logits.dtype).min)
    log_denom = torch.logsumexp(masked, dim=1, keepdim=True)  # (M, 1)
    log_prob = logits - log_denom  # (M, N)

    n_pos = pos.sum(dim=1)  # (M,)
    pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)  # (M,)
    per_anchor = -pos_log_prob / n_pos.clamp(min=1)  # (M,), 0 where n_pos == 0

    if reduction == "none":
        return per_anchor
    if reduction == "sum":
        return per_anchor.sum()
    n_valid = (n_pos > 0).sum().clamp(min=1)
    return per_anchor.sum() / n_valid


def similarity_logits(z: Tensor, temperature: float) -> Tensor:
    """Pairwise similarity logits ``z_i . z_j / tau``, promoted to at least float32.

    The shared first step of every contrastive loss here (:func:`info_nce` and the debiased loss).
    Half-precision similarities are promoted before the division so that small temperatures do
    not overflow.

    Args:
        z: Embeddings, L2-normalised along the last dimension (not checked).
        temperature: Softmax temperature ``tau > 0`` (not checked).

    Returns:
        The logits, differentiable with respect to ``z``.

    Shape:
        - z: ``(M, D)``
        - output: ``(M, M)``, float32 or wider
    """
    sim = z @ z.T  # (M, M) cosine similarities
    return sim.to(torch.promote_types(sim.dtype, torch.float32)) / temperature


@torch.no_grad()
def pair_similarity_means(z: Tensor, pos_mask: Tensor, neg_mask: Tensor) -> dict[str, Tensor]:
    """Mean cosine similarity over positive and over negative pairs (monitoring only, no grad).

    Args:
        z: Embeddings, L2-normalised along the last dimension.
        pos_mask: Positive pairs.
        neg_mask: Negative pairs.

    Returns:
        ``{"pos_sim": ..., "neg_sim": ...}`` as detached 0-dim tensors (no host sync); 0 for an
        empty mask.

    Shape:
        - z: ``(M, D)``
        - pos_mask, neg_mask: ``(M, M)`` bool
    """
    sim = z.detach() @ z.detach().T  # (M, M)
    sim = sim.to(torch.promote_types(sim.dtype, torch.float32))
    zero = torch.zeros_like(sim)
    return {
        "pos_sim": torch.where(pos_mask, sim, zero).sum() / pos_mask.sum().clamp(min=1),
        "neg_sim": torch.where(neg_mask, sim, zero).sum() / neg_mask.sum().clamp(min=1),
    }


def normalize_views(outputs: Tensor) -> Tensor:
    """Flatten stacked view outputs to view-major rows and L2-normalise each row.

    Args:
        outputs: Projector outputs of every view; ``outputs[v, b]`` is view ``v`` of sample ``b``.

    Returns:
        Unit-norm embeddings with row ``v * B + b`` holding ``outputs[v, b]``.

    Shape:
        - outputs: ``(V, B, D)``
        - output: ``(V * B, D)``, L2-normalised rows
    """
    return F.normalize(outputs.flatten(0, 1), dim=-1)
