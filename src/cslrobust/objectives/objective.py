"""The ``Objective`` plug-in protocol used by the one training loop, its registry and factory.

An objective is a small object built from typed constructor parameters. Each registered objective
declares its config section (an :class:`~cslrobust.sections.ObjectiveSection` subclass whose ``name``
defaults to its registry key) and a builder from that section (``@OBJECTIVES.register(name,
Section)``); :func:`build_objective` dispatches a section to its builder. The loop asks it how many
views to generate (``n_views``) and which head to attach (``head_kind``), runs the model on the
views, and calls it with the stacked head outputs; it returns the loss and cheap detached metrics.
Anything that changes over training (the epoch, the random generator) is an argument.

Two optional protocols cover objectives that learn something from the whole training set (the
``cluster`` false-negative detector's k-means pseudo-labels). The loop drives them through four
helpers that are no-ops for every other objective, so it calls them unconditionally:

.. code-block:: python

    # at resume, after loading the checkpoint's state.pt
    load_objective_state(objective, state.get("objective", {}))
    for epoch in range(start_epoch, epochs):
        if objective_needs_bank(objective, epoch):
            bank = ...  # (N, D) head outputs of every training image, row i = dataset index i,
                        # un-augmented, model.eval(), torch.no_grad(); then model.train() again
            gen = make_generator(seed, "bank", epoch, device=device)
            refresh_metrics = refresh_objective(objective, bank, epoch=epoch, generator=gen)
        ...  # the epoch's steps
        state["objective"] = objective_state(objective)  # saved in the epoch checkpoint

This state (:class:`StatefulObjective`) is the only state an objective holds; it changes only in
``refresh`` and ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from cslrobust.registry import ComponentRegistry
from cslrobust.sections import HeadKind, ObjectiveSection

__all__ = [
    "FAMILIES",
    "OBJECTIVES",
    "BankObjective",
    "HeadKind",
    "LossOutput",
    "Objective",
    "ObjectiveBuilder",
    "ObjectiveSection",
    "StatefulObjective",
    "build_objective",
    "check_batch",
    "family_of",
    "load_objective_state",
    "objective_needs_bank",
    "objective_state",
    "refresh_objective",
]


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


@runtime_checkable
class BankObjective(Protocol):
    """An objective refitted at some epoch starts on a feature bank of the whole training set."""

    def needs_bank(self, epoch: int) -> bool:
        """Whether the loop must call :meth:`refresh` at the start of ``epoch`` (0-based).

        True on the objective's refresh schedule and whenever its state is empty (e.g. after a
        resume without saved state) while the state is in use.
        """
        ...

    def refresh(self, bank: Tensor, *, epoch: int, generator: torch.Generator) -> dict[str, float]:
        """Refit on the bank.

        Args:
            bank: Head outputs of every training image (un-augmented, eval mode, no grad); row
                ``i`` is dataset index ``i`` (the ``index`` of the batches). Not necessarily
                normalised: the objective normalises it.
            epoch: The epoch about to start (0-based).
            generator: Randomness of the fit (any device), e.g. seeded from ``(seed, "bank",
                epoch)``.

        Returns:
            Diagnostics of the fit as Python floats, for logging.

        Shape:
            - bank: ``(N, D)``
        """
        ...


@runtime_checkable
class StatefulObjective(Protocol):
    """An objective with state the loop must checkpoint for an exact resume."""

    def state_dict(self) -> dict[str, Tensor]:
        """The state as named tensors (``{}`` when there is none yet)."""
        ...

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore a state saved by :meth:`state_dict` (``{}`` clears it)."""
        ...


def objective_needs_bank(objective: Objective, epoch: int) -> bool:
    """``objective.needs_bank(epoch)``, or False for an objective without a bank.

    Args:
        objective: Any objective.
        epoch: The epoch about to start (0-based).

    Returns:
        Whether the loop must compute a feature bank and call :func:`refresh_objective`.
    """
    return isinstance(objective, BankObjective) and objective.needs_bank(epoch)


def refresh_objective(
    objective: Objective, bank: Tensor, *, epoch: int, generator: torch.Generator
) -> dict[str, float]:
    """``objective.refresh(...)``, or ``{}`` for an objective without a bank.

    Args:
        objective: Any objective.
        bank: Head outputs of every training image, row ``i`` = dataset index ``i``.
        epoch: The epoch about to start (0-based).
        generator: Randomness of the fit.

    Returns:
        The objective's refresh diagnostics.

    Shape:
        - bank: ``(N, D)``
    """
    if not isinstance(objective, BankObjective):
        return {}
    return objective.refresh(bank, epoch=epoch, generator=generator)


def objective_state(objective: Objective) -> dict[str, Tensor]:
    """The objective's state to checkpoint; ``{}`` for a stateless objective.

    Args:
        objective: Any objective.

    Returns:
        Named tensors (loadable with ``torch.load(..., weights_only=True)``).
    """
    if not isinstance(objective, StatefulObjective):
        return {}
    return objective.state_dict()


def load_objective_state(objective: Objective, state: Mapping[str, Tensor]) -> None:
    """Restore a state saved by :func:`objective_state`; a no-op for ``{}`` on a stateless one.

    Args:
        objective: Any objective.
        state: What :func:`objective_state` returned (``{}`` for a checkpoint without one).

    Raises:
        ValueError: If a non-empty state is given to an objective without state.
    """
    if isinstance(objective, StatefulObjective):
        objective.load_state_dict(state)
    elif state:
        raise ValueError(
            f"{type(objective).__name__} holds no state but was given keys {sorted(state)}"
        )


ObjectiveBuilder = Callable[[Any], Objective]
"""A registered builder: the objective from an instance of its section."""

OBJECTIVES: ComponentRegistry[ObjectiveSection, ObjectiveBuilder] = ComponentRegistry(
    "objective", key="name", base=ObjectiveSection
)
"""Objectives keyed by ``objective.name``: each entry holds its section class and builder."""


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


def build_objective(section: ObjectiveSection) -> Objective:
    """Build the objective that ``section`` configures.

    ``build_objective(OBJECTIVES.section("simclr_fnr", fn={"detector": "topk", "k": 5}))`` is the
    objective of a config with ``objective: {name: simclr_fnr, fn: {detector: topk, k: 5}}``.

    Args:
        section: A registered objective's section (from a config, :meth:`OBJECTIVES.section
            <cslrobust.registry.ComponentRegistry.section>` or the section class itself).

    Returns:
        The objective.

    Raises:
        ConfigError: If ``section`` is not a registered objective's section or a value is invalid.
    """
    return OBJECTIVES.entry_for(section).build(section)


FAMILIES: dict[str, str] = {
    "supervised": "supervised",
    "contrastive": "contrastive with negatives",
    "fn_removal": "contrastive with false-negative removal",
    "negative_free": "negative-free",
    "adversarial": "adversarial contrastive",
    "adversarial_fn_removal": "adversarial contrastive with false-negative removal",
}
"""Method families of the report, in its order: key -> title."""


def family_of(section: ObjectiveSection) -> str:
    """The family key of a configured objective.

    The section class declares it (``family``); a contrastive objective configured with a
    false-negative detector (an ``fn`` sub-section) belongs to ``fn_removal``, an adversarial one
    (ACL, RoCL, DynACL) with a detector to ``adversarial_fn_removal``.
    """
    if getattr(section, "fn", None) is not None:
        if section.family == "contrastive":
            return "fn_removal"
        if section.family == "adversarial":
            return "adversarial_fn_removal"
    return section.family
