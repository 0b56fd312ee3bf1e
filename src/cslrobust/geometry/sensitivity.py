r"""Feature sensitivity ``||f(x + delta) - f(x)||_2 / ||delta||`` and random perturbations to compare.

The caller runs the encoder (this package never runs models): it computes ``f(x)``, ``f(x + delta)``
for the adversarial ``delta`` (for example PGD against the probed classifier) and ``f(x + r)`` for
``r = random_like_norm(delta, norm, generator)``, a random direction with the same per-sample norm.
The ratio of the two sensitivities says how much more the features move along adversarial directions
than along random ones. Pass the norms of the perturbations actually applied
(:func:`perturbation_norms` of ``clip(x + r, 0, 1) - x``): clipping to the image box can shrink
them.

Features are used as given (not normalised): pass normalised features to measure movement on the
hypersphere instead.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from cslrobust.geometry.inputs import DEFAULT_CHUNK_SIZE, check_features, row_chunks
from cslrobust.geometry.summary import summarize_values

__all__ = [
    "Norm",
    "feature_sensitivity",
    "perturbation_norms",
    "random_like_norm",
    "summarize_sensitivity",
]

Norm = Literal["linf", "l2"]
_NORMS: tuple[str, ...] = ("linf", "l2")


def _check_norm(norm: str) -> None:
    if norm not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of: {', '.join(_NORMS)}")


def perturbation_norms(delta: Tensor, norm: Norm = "l2") -> Tensor:
    """Per-sample norm of a perturbation over all non-batch dimensions.

    Shape:
        delta: ``(B, ...)``. Returns ``(B,)`` in the dtype of ``delta``.
    """
    _check_norm(norm)
    order = float("inf") if norm == "linf" else 2.0
    norms: Tensor = torch.linalg.vector_norm(delta.flatten(1), ord=order, dim=1)
    return norms


@torch.no_grad()
def random_like_norm(delta: Tensor, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A random perturbation with the same per-sample ``norm`` as ``delta``.

    For ``"linf"`` every entry is ``+-eps_i`` with an independent fair random sign, where ``eps_i``
    is the L-inf norm of ``delta[i]`` (a random vertex of the L-inf ball, so the L-inf norm is exactly
    preserved). For ``"l2"`` it is a standard Gaussian direction rescaled to ``||delta[i]||_2``. A
    zero ``delta[i]`` gives a zero row. The result is not clipped to the [0, 1] image box.

    Args:
        delta: Perturbations, for example ``x_adv - x``.
        norm: ``"linf"`` or ``"l2"``.
        generator: Random generator on ``delta``'s device (None uses the global RNG).

    Shape:
        delta: ``(B, ...)``. Returns the shape, dtype and device of ``delta``.

    Raises:
        ValueError: On an unknown norm, a non-floating or empty ``delta``.
    """
    _check_norm(norm)
    if not delta.is_floating_point() or delta.ndim < 2:
        raise ValueError(
            f"delta must be a floating (B, ...) tensor, got {delta.dtype} of shape {tuple(delta.shape)}"
        )
    radius = perturbation_norms(delta, norm).view(-1, *([1] * (delta.ndim - 1)))
    if norm == "linf":
        bits = torch.randint(0, 2, delta.shape, generator=generator, device=delta.device)
        return (2 * bits - 1).to(delta.dtype) * radius
    noise = torch.randn(delta.shape, generator=generator, device=delta.device, dtype=delta.dtype)
    noise_norm = perturbation_norms(noise, "l2").view_as(radius)
    return noise / noise_norm.clamp_min(torch.finfo(delta.dtype).tiny) * radius


@torch.no_grad()
def feature_sensitivity(
    f_clean: Tensor,
    f_pert: Tensor,
    delta_norms: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Per-sample ``||f_pert[i] - f_clean[i]||_2 / delta_norms[i]``.

    Args:
        f_clean: Features of the clean inputs ``f(x)``.
        f_pert: Features of the perturbed inputs ``f(x + delta)``, same row order.
        delta_norms: Norm of each applied perturbation (> 0), for example
            ``perturbation_norms(x_pert - x, "l2")``.
        chunk_size: Rows per block.

    Shape:
        f_clean, f_pert: ``(N, D)``; delta_norms: ``(N,)``. Returns ``(N,)`` float64 on the CPU.

    Raises:
        ValueError: On mismatched shapes, non-finite values or a non-positive perturbation norm.
    """
    check_features(f_clean, "f_clean")
    check_features(f_pert, "f_pert")
    if f_clean.shape != f_pert.shape:
        raise ValueError(
            f"f_clean and f_pert must have the same shape, got {tuple(f_clean.shape)} and {tuple(f_pert.shape)}"
        )
    n = f_clean.shape[0]
    if delta_norms.shape != (n,):
        raise ValueError(f"delta_norms must have shape ({n},), got {tuple(delta_norms.shape)}")
    if not bool((delta_norms > 0).all()) or not bool(torch.isfinite(delta_norms).all()):
        raise ValueError("delta_norms must be finite and > 0 (a zero perturbation has no ratio)")
    moved = torch.empty(n, dtype=torch.float64, device=f_clean.device)
    for rows in row_chunks(n, chunk_size):
        diff = f_pert[rows].double() - f_clean[rows].double()
        moved[rows] = torch.linalg.vector_norm(diff, dim=1)
    return (moved / delta_norms.to(moved)).cpu()


def summarize_sensitivity(sensitivity: Tensor) -> dict[str, float]:
    """Mean, median and quantiles of per-sample sensitivities (see :func:`summarize_values`)."""
    return summarize_values(sensitivity)
