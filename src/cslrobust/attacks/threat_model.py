"""The threat model: L-inf and L2 balls of radius eps in [0,1] pixel space.

Everything geometric that FGSM and PGD share lives here: per-sample perturbation norms, the ascent
direction for a given norm, projection onto the eps-ball intersected with the [0,1] box, and uniform
sampling in the ball for random starts. Functions take any per-sample shape ``(B, ...)`` (images
``(B, C, H, W)`` or clips ``(B, C, T, H, W)``); norms are taken over all non-batch dimensions.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import Tensor

Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")

# Guards divisions by a norm that can be exactly zero (a zero gradient or a zero perturbation).
_TINY = 1e-12


def validate_norm(norm: str) -> Norm:
    """Return ``norm`` typed as :data:`Norm`.

    Raises:
        ValueError: If ``norm`` is not ``"linf"`` or ``"l2"``.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of: {', '.join(NORMS)}")
    return cast(Norm, norm)


def perturbation_norm(delta: Tensor, norm: Norm) -> Tensor:
    """Per-sample norm of a perturbation.

    Shape:
        delta: ``(B, ...)``. Returns ``(B,)``.
    """
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return torch.linalg.vector_norm(flat, ord=2, dim=1)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def ascent_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent direction of unit ``norm`` for a first-order step.

    L-inf: ``sign(grad)``; L2: ``grad / ||grad||_2`` per sample (zero where the gradient is zero).

    Shape:
        grad: ``(B, ...)``. Returns the same shape.
    """
    if norm == "linf":
        return grad.sign()
    return grad / _per_sample(perturbation_norm(grad, "l2").clamp_min(_TINY), grad)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: Norm) -> Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x``, then onto the [0,1] box.

    For L-inf both sets are boxes, so this is the exact projection onto their intersection. For L2
    the box clamp moves every coordinate towards ``x`` (which lies in [0,1]), so the result stays in
    the ball: it is feasible, as in Madry et al. (2018), though not the exact Euclidean projection.

    Shape:
        x_adv, x: ``(B, ...)`` with ``x`` in [0,1]. Returns the same shape, in [0,1].
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        scale = (eps / perturbation_norm(delta, "l2").clamp_min(_TINY)).clamp(max=1.0)
        delta = delta * _per_sample(scale, delta)
    return (x + delta).clamp(0.0, 1.0)


def sample_ball(x: Tensor, eps: float, norm: Norm, generator: torch.Generator) -> Tensor:
    """Draw one perturbation per sample uniformly from the eps-ball, using ``generator`` only.

    L-inf: i.i.d. uniform in ``[-eps, eps]``. L2: a Gaussian direction normalised to unit length,
    scaled by radius ``eps * u ** (1 / d)`` with ``u ~ U[0, 1)`` and ``d`` the per-sample dimension,
    which is uniform in volume. The global RNG is never touched.

    Shape:
        x: ``(B, ...)`` (only its shape, dtype and device are used). Returns a delta of that shape.

    Raises:
        ValueError: If ``generator`` is on another device than ``x``.
    """
    if generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device} but inputs are on {x.device}")
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2.0 * u - 1.0) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _per_sample(perturbation_norm(direction, "l2").clamp_min(_TINY), x)
    dim = x[0].numel()
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    return direction * _per_sample(eps * u.pow(1.0 / dim), x)
