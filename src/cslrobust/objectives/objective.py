"""The ``Objective`` plug-in protocol used by the one training loop, its registry and factory.

An objective is a small, stateless object built from typed constructor parameters. The loop asks
it how many views to generate (``n_views``) and which head to attach (``head_kind``), runs the model
on the views, and calls it with the stacked head outputs; it returns the loss and cheap detached
metrics. Objectives never hold state between calls: anything that changes over training (the
epoch, the random generator) is an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from cslrobust.errors import ConfigError
from cslrobust.objectives._params import check_params
from cslrobust.objectives.fn_detectors import build_fn_detector
from cslrobust.registry import Registry

__all__ = [
    "OBJECTIVES",
    "HeadKind",
    "LossOutput",
    "Objective",
    "build_objective",
    "check_batch",
]

HeadKind = Literal["projector", "classifier"]


@dataclass(frozen=True)
class LossOutput:
    """What an objective returns for one batch.

    Attributes:
        loss: Scalar loss to backpropagate.
        metrics: Detached 0-dim tensors for logging (always including ``"loss"``). They stay on the
            device so the training step never waits for the host; the loop reads them when it logs.
    """

    loss: Tensor
    metrics: dict[str, Tensor]


class Objective(Protocol):
    """A training objective: head outputs of all views of a batch -> loss and metrics.

    Attributes:
        n_views: Number of augmented views per sample the loop must produce (1 for supervised
            cross-entropy, 2 for SimCLR-style objectives).
        head_kind: ``"projector"`` (contrastive: MLP projection head whose outputs are
            embeddings) or ``"classifier"`` (supervised: linear layer over the classes, outputs
            are logits).
    """

    @property
    def n_views(self) -> int:
        """Views per sample."""
        ...

    @property
    def head_kind(self) -> HeadKind:
        """Head the encoder needs."""
        ...

    def __call__(
        self,
        outputs: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None = None,
        epoch: int = 0,
    ) -> LossOutput:
        """Compute the loss of one batch.

        Args:
            outputs: Head outputs of every view, view-major (``outputs[v, b]`` is view ``v`` of
                sample ``b``). Contrastive objectives L2-normalise them themselves.
            index: Dataset instance id of every sample.
            labels: Class label of every sample. Self-supervised objectives use it only for
                measurement (or for the oracle false-negative detector).
            generator: Randomness for stochastic objectives, on the device of ``outputs``.
            epoch: Current epoch (0-based), for objectives with a schedule such as a warm-up.

        Returns:
            The loss and detached metrics.

        Shape:
            - outputs: ``(V, B, D)`` with ``V == n_views``
            - index, labels: ``(B,)`` int64
        """
        ...


OBJECTIVES: Registry[Callable[..., Objective]] = Registry("objective")


def check_batch(outputs: Tensor, index: Tensor, labels: Tensor, n_views: int) -> None:
    """Validate the shapes passed to an objective (metadata only, no host sync).

    Args:
        outputs: Head outputs of every view.
        index: Dataset instance id of every sample.
        labels: Class label of every sample.
        n_views: Views the objective expects.

    Shape:
        - outputs: ``(V, B, D)`` with ``V == n_views``
        - index, labels: ``(B,)``

    Raises:
        ValueError: If a shape does not match.
    """
    if outputs.dim() != 3 or outputs.shape[0] != n_views:
        raise ValueError(f"outputs must have shape (V={n_views}, B, D), got {tuple(outputs.shape)}")
    batch_size = outputs.shape[1]
    for name, tensor in (("index", index), ("labels", labels)):
        if tuple(tensor.shape) != (batch_size,):
            raise ValueError(f"{name} must have shape ({batch_size},), got {tuple(tensor.shape)}")


def build_objective(name: str, /, **params: object) -> Objective:
    """Build the objective registered as ``name`` from its constructor parameters.

    A string ``detector`` parameter is resolved through the false-negative detector registry:
    ``build_objective("simclr_fnr", detector="oracle", detector_params={"removal_rate": 0.5})`` is
    ``SimCLRFNRObjective(detector=OracleDetector(removal_rate=0.5))``. A detector object may also be
    passed directly.

    Args:
        name: A key of :data:`OBJECTIVES` (e.g. ``"simclr"``).
        **params: Keyword arguments of that objective's constructor, plus ``detector_params`` when
            ``detector`` is a registry name.

    Returns:
        The objective.

    Raises:
        ConfigError: If ``name`` or the detector name is unknown, a parameter is unknown or missing,
            or a value is invalid.
    """
    factory = OBJECTIVES.get(name)
    params = dict(params)
    detector_params = params.pop("detector_params", None)
    detector = params.get("detector")
    if isinstance(detector, str):
        if detector_params is None:
            detector_params = {}
        if not isinstance(detector_params, dict):
            raise ConfigError(f"detector_params must be a mapping, got {detector_params!r}")
        params["detector"] = build_fn_detector(detector, **detector_params)
    elif detector_params is not None:
        raise ConfigError("detector_params is only accepted together with a detector name")
    check_params(factory, params, what=f"objective {name!r}")
    return factory(**params)
