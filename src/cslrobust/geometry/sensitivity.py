r"""Feature sensitivity ``||f(x + delta) - f(x)||_2 / ||delta||`` and random perturbations to compare.

The caller runs the encoder (this package never runs models): it computes ``f(x)``, ``f(x + delta)``
for the adversarial ``delta`` (for example PGD against the probed classifier) and ``f(x + r)`` for
``r = random_like_norm(delta, norm, generator)``, a random direction with the same per-sample norm.
The ratio of the two sensitivities says how much more the features move along adversarial directions
than along random ones. Pass the norms of the perturbations actually applied
(:func:`perturbation_norms` of ``clip(x + r, 0, 1) - x``): clipping to the image box can shrink
them.

Three measures per perturbation kind, because raw features have method-dependent scales (a supervised
backbone's median feature norm can be a quarter of a contrastive one's), which the raw ratio inherits:

- :func:`feature_sensitivity`: raw features, as given. Scale-dependent: multiplying the features by
  ``c`` multiplies it by ``c``.
- :func:`normalized_feature_sensitivity`: movement of the L2-normalised features (on the unit
  hypersphere, the geometry the contrastive loss acts on) per unit input norm. Scale-free.
- :func:`sensitivity_ratio`: per sample, adversarial sensitivity over random-direction sensitivity
  (raw features); the feature scale cancels. Scale-free.

:data:`SENSITIVITY_MEASURES` registers them by name (``pgd``, ``random``, ``pgd_normalized``,
``random_normalized``, ``ratio``), each flagged ``scale_free``; :func:`sensitivity_summaries` runs
them all on one :class:`SensitivityInputs`. A sample whose applied perturbation has norm 0 has no
ratio: it is NaN in the per-sample measures and left out of the summaries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from cslrobust.geometry.inputs import (
    DEFAULT_CHUNK_SIZE,
    check_chunk_size,
    check_features,
    normalize_rows,
    row_chunks,
)
from cslrobust.geometry.summary import summarize_values
from cslrobust.registry import Registry

__all__ = [
    "SENSITIVITY_MEASURES",
    "Norm",
    "SensitivityInputs",
    "SensitivityMeasure",
    "feature_sensitivity",
    "normalized_feature_sensitivity",
    "perturbation_norms",
    "random_like_norm",
    "register_sensitivity",
    "sensitivity_ratio",
    "sensitivity_summaries",
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
    _check_pair(f_clean, f_pert, delta_norms)
    if not bool((delta_norms > 0).all()):
        raise ValueError("delta_norms must be finite and > 0 (a zero perturbation has no ratio)")
    return _moved(f_clean, f_pert, chunk_size, _as_float64) / delta_norms.double().cpu()


@torch.no_grad()
def normalized_feature_sensitivity(
    f_clean: Tensor,
    f_pert: Tensor,
    delta_norms: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Per-sample ``||u(f_pert[i]) - u(f_clean[i])||_2 / delta_norms[i]`` with ``u(f) = f / ||f||_2``.

    Movement on the unit hypersphere per unit input norm: invariant to any positive rescaling of the
    features (per sample, so also to a constant factor), and at most ``2 / delta_norms[i]``.

    Args:
        f_clean: Features of the clean inputs ``f(x)``.
        f_pert: Features of the perturbed inputs ``f(x + delta)``, same row order.
        delta_norms: Norm of each applied perturbation (> 0).
        chunk_size: Rows per block.

    Shape:
        f_clean, f_pert: ``(N, D)``; delta_norms: ``(N,)``. Returns ``(N,)`` float64 on the CPU.

    Raises:
        ValueError: On mismatched shapes, non-finite values, an all-zero feature row or a
            non-positive perturbation norm.
    """
    _check_pair(f_clean, f_pert, delta_norms)
    if not bool((delta_norms > 0).all()):
        raise ValueError("delta_norms must be finite and > 0 (a zero perturbation has no ratio)")
    return _moved(f_clean, f_pert, chunk_size, _unit_rows) / delta_norms.double().cpu()


def sensitivity_ratio(adversarial: Tensor, random: Tensor) -> Tensor:
    """Per-sample ``adversarial / random`` sensitivity; NaN where either is NaN or ``random`` is 0.

    Both sensitivities must be measured on the same features of the same samples (raw or
    normalised): a constant feature scale then cancels.

    Shape:
        adversarial, random: ``(N,)``. Returns ``(N,)`` float64 on the CPU.

    Raises:
        ValueError: On mismatched shapes.
    """
    if adversarial.ndim != 1 or adversarial.shape != random.shape:
        raise ValueError(
            f"adversarial and random must be 1-D of one shape, got {tuple(adversarial.shape)} "
            f"and {tuple(random.shape)}"
        )
    adv, rnd = adversarial.detach().double().cpu(), random.detach().double().cpu()
    return torch.where(rnd > 0, adv / rnd.where(rnd > 0, 1.0), float("nan"))


def _check_pair(f_clean: Tensor, f_pert: Tensor, delta_norms: Tensor) -> None:
    """Shape and finiteness checks shared by the sensitivities."""
    check_features(f_clean, "f_clean")
    check_features(f_pert, "f_pert")
    if f_clean.shape != f_pert.shape:
        raise ValueError(
            f"f_clean and f_pert must have the same shape, got {tuple(f_clean.shape)} and {tuple(f_pert.shape)}"
        )
    n = f_clean.shape[0]
    if delta_norms.shape != (n,):
        raise ValueError(f"delta_norms must have shape ({n},), got {tuple(delta_norms.shape)}")
    if not bool(torch.isfinite(delta_norms).all()):
        raise ValueError("delta_norms must be finite and > 0 (a zero perturbation has no ratio)")


def _as_float64(rows: Tensor) -> Tensor:
    return rows.double()


def _unit_rows(rows: Tensor) -> Tensor:
    return normalize_rows(rows, torch.float64)


def _moved(
    f_clean: Tensor, f_pert: Tensor, chunk_size: int, transform: Callable[[Tensor], Tensor]
) -> Tensor:
    """``||transform(f_pert[i]) - transform(f_clean[i])||_2`` per row, float64 on the CPU."""
    n = f_clean.shape[0]
    moved = torch.empty(n, dtype=torch.float64, device=f_clean.device)
    for rows in row_chunks(n, chunk_size):
        diff = transform(f_pert[rows]) - transform(f_clean[rows])
        moved[rows] = torch.linalg.vector_norm(diff, dim=1)
    return moved.cpu()


def summarize_sensitivity(sensitivity: Tensor) -> dict[str, float]:
    """Mean, median and quantiles of per-sample sensitivities (see :func:`summarize_values`)."""
    return summarize_values(sensitivity)


@dataclass(frozen=True)
class SensitivityInputs:
    """Features of the same samples clean, under an adversarial and under a random perturbation.

    Attributes:
        f_clean: ``(N, D)`` features ``f(x)``.
        f_adv: ``(N, D)`` features ``f(x + delta)`` for the adversarial ``delta`` (e.g. PGD).
        f_random: ``(N, D)`` features ``f(x + r)`` for the random perturbation ``r``.
        adv_norms: ``(N,)`` norms of the applied adversarial perturbations (0 allowed: NaN there).
        random_norms: ``(N,)`` norms of the applied random perturbations (0 allowed: NaN there).
        chunk_size: Rows per block.

    Raises:
        ValueError: On mismatched shapes, non-finite values, negative norms or a bad chunk size.
    """

    f_clean: Tensor
    f_adv: Tensor
    f_random: Tensor
    adv_norms: Tensor
    random_norms: Tensor
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        check_chunk_size(self.chunk_size)
        _check_pair(self.f_clean, self.f_adv, self.adv_norms)
        _check_pair(self.f_clean, self.f_random, self.random_norms)
        if bool((self.adv_norms < 0).any()) or bool((self.random_norms < 0).any()):
            raise ValueError("perturbation norms must be >= 0")


def _where_perturbed(
    fn: Callable[..., Tensor],
    f_clean: Tensor,
    f_pert: Tensor,
    norms: Tensor,
    chunk_size: int,
) -> Tensor:
    """``fn`` on the rows with a non-zero perturbation; NaN on the others."""
    keep = norms > 0
    out = torch.full((f_clean.shape[0],), float("nan"), dtype=torch.float64)
    if bool(keep.any()):
        out[keep.cpu()] = fn(f_clean[keep], f_pert[keep], norms[keep], chunk_size=chunk_size)
    return out


@dataclass(frozen=True)
class SensitivityMeasure:
    """A registered per-sample sensitivity measure.

    Attributes:
        fn: Maps :class:`SensitivityInputs` to ``(N,)`` float64 values (NaN where undefined).
        scale_free: Whether a constant rescaling of the features leaves it unchanged; reports
            label the others scale-dependent.
        description: One line for report captions.
    """

    fn: Callable[[SensitivityInputs], Tensor]
    scale_free: bool
    description: str


SENSITIVITY_MEASURES: Registry[SensitivityMeasure] = Registry("sensitivity measure")


def register_sensitivity(
    name: str, *, scale_free: bool, description: str
) -> Callable[[Callable[[SensitivityInputs], Tensor]], Callable[[SensitivityInputs], Tensor]]:
    """Decorator registering a measure in :data:`SENSITIVITY_MEASURES`; returns it unchanged."""

    def decorator(
        fn: Callable[[SensitivityInputs], Tensor],
    ) -> Callable[[SensitivityInputs], Tensor]:
        SENSITIVITY_MEASURES.register(name)(SensitivityMeasure(fn, scale_free, description))
        return fn

    return decorator


@register_sensitivity(
    "pgd",
    scale_free=False,
    description="||f(x+d) - f(x)|| / ||d||, raw features, adversarial d (scale-dependent)",
)
def _pgd_raw(inputs: SensitivityInputs) -> Tensor:
    return _where_perturbed(
        feature_sensitivity, inputs.f_clean, inputs.f_adv, inputs.adv_norms, inputs.chunk_size
    )


@register_sensitivity(
    "random",
    scale_free=False,
    description="||f(x+r) - f(x)|| / ||r||, raw features, random r (scale-dependent)",
)
def _random_raw(inputs: SensitivityInputs) -> Tensor:
    return _where_perturbed(
        feature_sensitivity, inputs.f_clean, inputs.f_random, inputs.random_norms, inputs.chunk_size
    )


@register_sensitivity(
    "pgd_normalized",
    scale_free=True,
    description="movement of L2-normalised features per unit input norm, adversarial d",
)
def _pgd_normalized(inputs: SensitivityInputs) -> Tensor:
    return _where_perturbed(
        normalized_feature_sensitivity,
        inputs.f_clean,
        inputs.f_adv,
        inputs.adv_norms,
        inputs.chunk_size,
    )


@register_sensitivity(
    "random_normalized",
    scale_free=True,
    description="movement of L2-normalised features per unit input norm, random r",
)
def _random_normalized(inputs: SensitivityInputs) -> Tensor:
    return _where_perturbed(
        normalized_feature_sensitivity,
        inputs.f_clean,
        inputs.f_random,
        inputs.random_norms,
        inputs.chunk_size,
    )


@register_sensitivity(
    "ratio",
    scale_free=True,
    description="adversarial / random sensitivity per sample (raw features; the scale cancels)",
)
def _ratio(inputs: SensitivityInputs) -> Tensor:
    return sensitivity_ratio(_pgd_raw(inputs), _random_raw(inputs))


def sensitivity_summaries(
    inputs: SensitivityInputs, names: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Summaries (:func:`summarize_sensitivity`) of registered measures, by measure name.

    Args:
        inputs: Clean, adversarial and random features with the applied perturbation norms.
        names: Registry names to run; None runs every registered measure.

    Returns:
        ``{name: {"mean", "median", "q10", ...}}``; NaN samples (zero perturbation) left out.

    Raises:
        ConfigError: On an unknown name.
        ValueError: If a measure has no defined sample at all.
    """
    selected = SENSITIVITY_MEASURES.names() if names is None else list(dict.fromkeys(names))
    return {
        name: summarize_sensitivity(SENSITIVITY_MEASURES.get(name).fn(inputs)) for name in selected
    }
