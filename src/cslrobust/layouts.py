"""Sample layouts: whether a data set's samples are images ``(C, H, W)`` or clips ``(C, T, H, W)``.

The data layer declares the layout of its samples; normalisation broadcasts by layout; every view
augmentation section and every backbone declares the layouts it supports (a ``layouts`` class
attribute). :func:`require_layout` turns a mismatch into one :class:`~cslrobust.errors.ConfigError`
line at config time, before any data is read or any model is built.

A foundation module (the ``Layout`` type itself lives in :mod:`cslrobust.sections`, beside
``HeadKind``): data, augment and models all use it without importing each other. Batches are
channels first, then time, as ``nn.Conv3d`` expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

from cslrobust.errors import ConfigError
from cslrobust.sections import Layout

__all__ = ["LAYOUTS", "Layout", "batch_ndim", "require_layout"]

LAYOUTS: tuple[Layout, ...] = get_args(Layout)

_BATCH_NDIM: dict[str, int] = {"image": 4, "clip": 5}


def batch_ndim(layout: Layout) -> int:
    """Number of dimensions of a batch of samples of ``layout`` (4 for images, 5 for clips).

    Raises:
        ConfigError: If ``layout`` is not one of :data:`LAYOUTS`.
    """
    if layout not in _BATCH_NDIM:
        raise ConfigError(f"unknown sample layout {layout!r}; expected one of {list(LAYOUTS)}")
    return _BATCH_NDIM[layout]


def require_layout(
    key: str,
    name: str,
    supported: Sequence[Layout],
    *,
    data: str,
    layout: Layout,
    alternatives: Sequence[str] = (),
) -> None:
    """Raise one config-error line when a component does not support the data's sample layout.

    Args:
        key: The config key that chose the component (``"augment.kind"``, ``"model.arch"``).
        name: The chosen component (``"simclr"``).
        supported: The layouts the component declares.
        data: The data set's name, for the message (``"synthetic_clips"``).
        layout: The layout the data set gives.
        alternatives: Components of the same kind, for the message; those supporting ``layout``
            are listed as what was expected.

    Raises:
        ConfigError: ``augment.kind 'simclr' supports image samples, data 'synthetic_clips' gives
            clip samples; expected one of augment.kind: ['simclr_clip']``.
    """
    batch_ndim(layout)  # an unknown layout is its own error
    if layout in supported:
        return
    kinds = " and ".join(f"{s} samples" for s in supported) or "no samples"
    message = f"{key} {name!r} supports {kinds}, data {data!r} gives {layout} samples"
    if alternatives:
        message += f"; expected one of {key}: {sorted(alternatives)}"
    raise ConfigError(message)
