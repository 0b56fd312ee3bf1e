"""Key maps from the state dicts of other libraries onto our ResNet backbone (``cslrobust audit``).

Pure functions on ``{name: tensor}`` mappings; reading the file is the caller's job (it uses the safe
loaders of :mod:`cslrobust.run_files`, never an unpickler). Every format is one :class:`KeyMap` row of
:data:`KEY_MAPS`:

============  =================  ==========================================  ===========================
format        backbone prefix    renamed path components (theirs -> ours)    dropped (heads, reported)
============  =================  ==========================================  ===========================
cslrobust     ``backbone.``      none                                        ``head.``, ``normalize.``
solo-learn    ``backbone.``      ``downsample`` -> ``shortcut``              ``projector.``,
                                                                             ``predictor.``,
                                                                             ``classifier.``,
                                                                             ``momentum_*``, ...
lightly       ``backbone.``      first component: ``0`` -> ``conv1``,        ``projection_head.``,
                                 ``1`` -> ``bn1``, ``4``-``7`` ->            ``prediction_head.``, ...
                                 ``layer1``-``layer4`` (torchvision's
                                 children order); ``downsample`` ->
                                 ``shortcut``
timm          none               ``downsample`` -> ``shortcut``              ``fc.``
torchvision   none               ``downsample`` -> ``shortcut``              ``fc.``
============  =================  ==========================================  ===========================

Every other name (``conv1``, ``bn1``, ``layerN.M.convK``, ``bnK``, BatchNorm running statistics) is
the same in all five: our :class:`~cslrobust.models.ResNet` uses torchvision's module names except for
the projection shortcut. A key outside the backbone prefix that is not a known head is unexpected, so
loading stays strict. ``num_batches_tracked`` counters a file lacks are filled from our model (they
do not change an eval-mode forward).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from cslrobust.errors import CheckpointError

__all__ = [
    "FORMATS",
    "KEY_MAPS",
    "KeyMap",
    "MappedWeights",
    "check_backbone_weights",
    "map_state_dict",
]

_SHORTCUT = {"downsample": "shortcut"}
_LIGHTLY_CHILDREN = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}
_SOLO_HEADS = (
    "projector.",
    "predictor.",
    "classifier.",
    "prototypes.",
    "momentum_backbone.",
    "momentum_projector.",
    "momentum_classifier.",
    "queue",
    "backbone.fc.",
)
_LIGHTLY_HEADS = (
    "projection_head.",
    "prediction_head.",
    "prototypes.",
    "backbone_momentum.",
    "projection_head_momentum.",
    "classifier.",
)


@dataclass(frozen=True)
class KeyMap:
    """How one format names our backbone's tensors.

    Args:
        prefix: Prefix of every backbone key in the file (``""`` for none).
        first: Renames of the first path component after the prefix (theirs -> ours).
        anywhere: Renames of any path component (theirs -> ours).
        heads: Key prefixes of heads and other non-backbone tensors: dropped and reported.
    """

    prefix: str
    first: Mapping[str, str] = field(default_factory=dict)
    anywhere: Mapping[str, str] = field(default_factory=dict)
    heads: tuple[str, ...] = ()

    def to_ours(self, key: str) -> str | None:
        """Our backbone name of the file's ``key``; None when it lies outside the backbone prefix."""
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix) :].split(".")
        parts[0] = self.first.get(parts[0], parts[0])
        return ".".join(self.anywhere.get(p, p) for p in parts)

    def to_theirs(self, key: str) -> str:
        """The file's name of our backbone tensor ``key`` (the inverse of :meth:`to_ours`)."""
        first = {ours: theirs for theirs, ours in self.first.items()}
        anywhere = {ours: theirs for theirs, ours in self.anywhere.items()}
        parts = key.split(".")
        parts[0] = first.get(parts[0], parts[0])
        return self.prefix + ".".join(anywhere.get(p, p) for p in parts)

    def is_head(self, key: str) -> bool:
        """Whether ``key`` belongs to a head (or other non-backbone part) that is dropped."""
        return key.startswith(self.heads)


KEY_MAPS: dict[str, KeyMap] = {
    "cslrobust": KeyMap("backbone.", heads=("head.", "normalize.")),
    "solo-learn": KeyMap("backbone.", anywhere=_SHORTCUT, heads=_SOLO_HEADS),
    "lightly": KeyMap(
        "backbone.", first=_LIGHTLY_CHILDREN, anywhere=_SHORTCUT, heads=_LIGHTLY_HEADS
    ),
    "timm": KeyMap("", anywhere=_SHORTCUT, heads=("fc.",)),
    "torchvision": KeyMap("", anywhere=_SHORTCUT, heads=("fc.",)),
}
"""The key map of each checkpoint format ``cslrobust audit --format`` accepts."""

FORMATS = tuple(KEY_MAPS)


@dataclass(frozen=True)
class MappedWeights:
    """A file's tensors sorted onto our backbone.

    Attributes:
        backbone: Our backbone name -> tensor.
        dropped: The file's keys of heads (and other known non-backbone parts), dropped.
        unexpected: The file's keys that are neither backbone nor a known head.
    """

    backbone: dict[str, torch.Tensor]
    dropped: list[str]
    unexpected: list[str]


def map_state_dict(tensors: Mapping[str, torch.Tensor], fmt: str) -> MappedWeights:
    """Rename the backbone tensors of a ``fmt`` state dict to ours; sort out heads and the rest.

    Raises:
        CheckpointError: If ``fmt`` is not one of :data:`FORMATS`.
    """
    if fmt not in KEY_MAPS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; expected one of {list(FORMATS)}")
    key_map = KEY_MAPS[fmt]
    backbone: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unexpected: list[str] = []
    for key, tensor in tensors.items():
        if key_map.is_head(key):
            dropped.append(key)
            continue
        ours = key_map.to_ours(key)
        if ours is None:
            unexpected.append(key)
        else:
            backbone[ours] = tensor
    return MappedWeights(backbone, dropped, unexpected)


def _first(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (", ..." if len(names) > n else "")


def check_backbone_weights(
    expected: Mapping[str, torch.Tensor], mapped: MappedWeights, what: str
) -> dict[str, torch.Tensor]:
    """Strictly fit mapped weights to our backbone's state; the state dict to load.

    ``num_batches_tracked`` counters missing from the file are taken from ``expected``.

    Args:
        expected: Our backbone's ``state_dict()``.
        mapped: The file's tensors after :func:`map_state_dict`.
        what: Names the file and the model in the error (``"checkpoint 'x' as resnet18"``).

    Raises:
        CheckpointError: One line listing the first missing, unexpected and mis-shaped tensors with
            their counts (names of missing tensors are ours, unexpected ones the file's).
    """
    found = dict(mapped.backbone)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in found:
            found[key] = value.clone()
    missing = [k for k in expected if k not in found]
    unexpected = mapped.unexpected + [k for k in found if k not in expected]
    shapes = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape (file vs model: {_first(shapes, 2)})")
    if problems:
        raise CheckpointError(f"{what} does not fit: " + "; ".join(problems))
    return {k: found[k] for k in expected}
