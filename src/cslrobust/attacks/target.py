"""The attack target: a frozen, eval-mode model from [0,1] images to logits.

Every attack and the clean evaluation receive an :class:`AttackTarget`, so clean and robust accuracy
share one code path (STYLE habit 6). Normalisation belongs inside the wrapped model; attacks never
normalise. The target is in ``eval()`` so that BatchNorm uses (and never updates) its running
statistics, and its parameters do not require gradients, so attacks differentiate with respect to
the input only and no ``.grad`` accumulates on weights.

Precision: with ``precision="bf16"`` the wrapped model's forward runs under bf16 autocast (its
convolutions and matrix products compute in bf16) and the logits are cast back to float32. Inputs,
perturbations, input gradients (autograd returns them in the input's dtype), projections and losses
stay float32, so attacks and the checks on their outputs are unchanged; only the model's internal
arithmetic is coarser. Clean and robust predictions go through the same target, hence the same
precision: at eps = 0 the attacked input equals the clean one bit for bit and so do the predictions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, Self, TypeVar, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cslrobust.attacks.ascent import loss_gradient

M = TypeVar("M", bound=nn.Module)

Precision = Literal["fp32", "bf16"]
"""Arithmetic of the attacked model's forward: float32, or bf16 autocast with float32 logits."""


def _freeze(model: nn.Module) -> None:
    """Put every submodule in eval mode and stop gradients on every parameter."""
    model.eval()
    model.requires_grad_(False)


@contextlib.contextmanager
def frozen_eval(model: M) -> Iterator[M]:
    """Temporarily put ``model`` in eval mode with all parameters frozen; restore both on exit.

    The training flag of every submodule and the ``requires_grad`` flag of every parameter are
    recorded and restored individually, even if the block raises, so a model that arrived with (say)
    a frozen backbone and a trainable head leaves exactly as it came.

    Example:
        >>> with frozen_eval(model):
        ...     result = robust_accuracy(AttackTarget(model), images, labels, ...)

    Args:
        model: Any module.

    Yields:
        ``model`` itself, frozen.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    _freeze(model)
    try:
        yield model
    finally:
        # Set the flags directly rather than calling ``train()``, which a subclass may override.
        for module, mode in modes:
            module.training = mode
        for param, flag in flags:
            param.requires_grad_(flag)


class AttackTarget(nn.Module):
    """A model from [0,1] inputs to logits, frozen for evaluation and attack.

    Construction puts ``model`` in ``eval()`` and calls ``requires_grad_(False)`` on its parameters,
    permanently: build the target from a copy, or inside :func:`frozen_eval`, when the model must
    train afterwards. Each ``forward`` re-checks that nobody has switched the model back to training
    mode or unfrozen a parameter, because either would let an attack update BatchNorm statistics or
    accumulate weight gradients.

    Args:
        model: Maps ``(B, C, ...)`` inputs in [0,1] to logits ``(B, K)``, normalising internally.
        check_range: Validate on every forward that inputs lie in [0,1]. Costs one reduction (and a
            device sync on GPU) per call.
        precision: ``"bf16"`` runs ``model`` under bf16 autocast on the input's device and returns
            float32 logits (see the module docstring); ``"fp32"`` runs it as it is.

    Shape:
        forward: ``(B, C, ...)`` in [0,1] -> ``(B, K)`` float32 logits (with ``bf16``).

    Raises:
        ValueError: On an unknown ``precision``.
    """

    def __init__(
        self, model: nn.Module, *, check_range: bool = True, precision: Precision = "fp32"
    ) -> None:
        super().__init__()
        if precision not in get_args(Precision):
            raise ValueError(f"precision must be one of {get_args(Precision)}, got {precision!r}")
        self.model = model
        self.check_range = check_range
        self.precision = precision
        _freeze(self)

    def train(self, mode: bool = True) -> Self:
        """Only ``train(False)`` is allowed: a target is evaluation-only.

        Raises:
            RuntimeError: If ``mode`` is true.
        """
        if mode:
            raise RuntimeError("AttackTarget is evaluation-only; it cannot be put in training mode")
        return super().train(False)

    def assert_frozen(self) -> None:
        """Raise if any submodule is in training mode or any parameter requires gradients.

        Raises:
            RuntimeError: Naming the offending module or parameter.
        """
        for name, module in self.model.named_modules():
            if module.training:
                raise RuntimeError(f"attack target module {name or '<root>'!r} is in training mode")
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                raise RuntimeError(f"attack target parameter {name!r} requires grad")

    def forward(self, x: Tensor) -> Tensor:
        """Logits of ``x``.

        Raises:
            ValueError: If ``check_range`` is set and ``x`` leaves [0,1] or is not floating point.
            RuntimeError: If the wrapped model was unfrozen after construction.
        """
        self.assert_frozen()
        if self.check_range:
            if not x.is_floating_point():
                raise ValueError(f"attack target expects floating-point inputs, got {x.dtype}")
            low, high = torch.aminmax(x)
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"attack target expects inputs in [0,1], got min {low.item():.6g}, "
                    f"max {high.item():.6g} (normalisation belongs inside the model)"
                )
        if self.precision == "bf16":
            with torch.autocast(x.device.type, torch.bfloat16):
                logits: Tensor = self.model(x)
            return logits.float()  # losses and argmax on float32 logits
        logits = self.model(x)
        return logits


def validate_attack_inputs(target: AttackTarget, x: Tensor, y: Tensor, eps: float) -> None:
    """Check the arguments every attack shares.

    Raises:
        TypeError: If ``target`` is not an :class:`AttackTarget`.
        ValueError: On mismatched shapes, non-integer labels or a negative or non-finite ``eps``.
    """
    if not isinstance(target, AttackTarget):
        raise TypeError(f"attacks need an AttackTarget (eval, frozen), got {type(target).__name__}")
    if x.dim() < 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"expected x (B, ...) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integer class indices, got {y.dtype}")
    if not (0.0 <= eps < float("inf")):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")


def input_gradient(target: AttackTarget, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, per-sample cross-entropy and its gradient with respect to the input only.

    Works under ``torch.no_grad()`` (gradients are enabled locally). The loss is summed over the
    batch before differentiation, so each sample's gradient is its own (eval mode makes samples
    independent) and is not scaled by the batch size.

    Shape:
        x: ``(B, ...)`` in [0,1]; y: ``(B,)``. Returns logits ``(B, K)``, loss ``(B,)`` (both
        detached) and the gradient with the shape of ``x``.

    Raises:
        RuntimeError: Under ``torch.inference_mode()``, where no gradient can be computed.
    """
    seen: list[Tensor] = []

    def cross_entropy(x_var: Tensor, index: Tensor) -> tuple[Tensor, None]:
        logits = target(x_var)
        seen.append(logits)
        return F.cross_entropy(logits, y, reduction="none"), None

    loss, _, grad = loss_gradient(cross_entropy, x, torch.arange(x.shape[0], device=x.device))
    return seen[0].detach(), loss, grad
