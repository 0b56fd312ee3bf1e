"""Frozen-feature extraction: encoder in eval mode, no gradients, no augmentation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cslrobust.distributed import sharded_batches


def state_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter and buffer (BatchNorm statistics included)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def assert_frozen(module: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """Check that no parameter or buffer of ``module`` changed since ``reference`` was taken.

    This is the probe-protocol sanity check of MoCo v3 (``sanity_check`` in ``main_lincls.py``), extended to
    BatchNorm buffers: a probe that silently updated running statistics would not be a linear probe.

    Raises:
        AssertionError: Naming the first tensor that changed.
    """
    current = module.state_dict()
    if current.keys() != reference.keys():
        raise AssertionError("the set of parameters/buffers changed during probing")
    for key, value in reference.items():
        if not torch.equal(current[key].detach().cpu(), value):
            raise AssertionError(f"{key} changed during probing: the encoder was not frozen")


@torch.inference_mode()
def extract_features(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    module: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device | str,
) -> torch.Tensor:
    """Compute features of ``images`` in eval mode without gradients.

    Args:
        features_fn: Maps [0,1] images to features, e.g. ``encoder.features``.
        module: The module owning ``features_fn``; put in eval mode (its mode is restored afterwards).
        images: uint8 (N, 3, H, W) or float [0,1] images, on any device.
        batch_size: Images per forward pass.
        device: Where to run.

    Returns:
        Float32 features (N, F) on ``device``. With several processes the batches are sharded across
        ranks and every rank gets all N rows (in order).

    Shape:
        images: (N, 3, H, W); returns (N, F).
    """
    was_training = module.training
    module.eval()

    def batch_features(position: int, rows: slice) -> torch.Tensor:
        del position
        x = images[rows].to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return features_fn(x).float()

    try:
        return sharded_batches(images.shape[0], batch_size, batch_features)
    finally:
        module.train(was_training)
