"""The training-method seam: what the one training loop trains, besides the loss.

A *method* owns everything a self-supervised recipe adds around the encoder: its modules (what is
optimised and wrapped for data parallelism: :meth:`TrainingMethod.network`; what else is checkpointed:
target encoders, queues, predictors through :meth:`state_dict`), its forward pass over the views and
its loss (:meth:`TrainingMethod.loss`), a hook after each optimiser step (EMA momentum schedule, queue
update: :meth:`TrainingMethod.after_step`) and its state for an exact resume.

Every plain :class:`~cslrobust.objectives.objective.Objective` (supervised, SimCLR, SupCon, false-negative
removal, ...) becomes a method through :class:`ObjectiveMethod`: the network is the encoder, the loss is
the objective on the head outputs of all views, there is nothing to do after a step. Its sequence of
operations is the loop's former one, so those objectives train bitwise as before. An objective that
needs more (BYOL's target network, MoCo's queue) implements :class:`MethodObjective`: its
``make_method(encoder)`` builds the method around the run's encoder.

The loop drives a method like this (one process; with several, ``run`` gathers the global batch):

.. code-block:: python

    method = build_method(objective, encoder)        # before the optimiser: it may add modules
    optimizer = build_optimizer(method.network(), ...)
    for step, batch in ...:
        views = make_views(batch.images, method.n_views)          # (V*b, 3, H, W)
        out = method.loss(run, views, index, labels, generator=g, epoch=e)
        out.loss.backward(); optimizer.step()
        method.after_step(global_step, total_steps)
    state["objective"] = method.state_dict()         # checkpointed beside the encoder's weights

``run(module, views, grad=...)`` is the loop's :class:`ViewRunner`: it runs ``module`` on the views
under the run's precision (bf16 autocast or not), returns float32 outputs of shape ``(V, B, D)`` over the
global batch, with gradients flowing back to this rank's rows when ``grad`` is true.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from cslrobust.objectives.objective import (
    HeadKind,
    LossOutput,
    Objective,
    load_objective_state,
    objective_state,
)

__all__ = [
    "MethodObjective",
    "ObjectiveMethod",
    "TrainingMethod",
    "ViewPerturbation",
    "ViewRunner",
    "build_method",
    "cosine_momentum",
    "ema_update",
    "frozen_copy",
    "load_module_state",
    "module_state",
]


class ViewPerturbation(Protocol):
    """A training-time attack on views, built by the composition root and given to the loop.

    The loop never imports the attack layer: the train stage builds the attack from the method's
    settings (:class:`~cslrobust.attacks.ascent.ViewAttack`) and passes it to ``train``, which
    offers it to the method through :meth:`ViewRunner.perturb`.
    """

    def __call__(
        self,
        loss_fn: Callable[[Tensor], Tensor],
        x: Tensor,
        *,
        generator: torch.Generator | None,
    ) -> Tensor:
        """``x`` moved within the threat model to raise the scalar ``loss_fn(x)``; detached."""
        ...


class ViewRunner(Protocol):
    """The loop's forward over the views (precision, memory layout, gathering across ranks)."""

    def perturb(self, loss_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """Adversarial ``x`` for the scalar ``loss_fn`` (the loop's :class:`ViewPerturbation`).

        The random start comes from a stream of this step's own (``(seed, "attack", step)``, per
        rank), so a resumed run draws exactly the same perturbations. The caller puts its modules
        in eval mode first when BatchNorm statistics must not change (ACL, RoCL and DynACL do).

        Raises:
            ConfigError: If the loop was given no perturbation (the train stage builds it for a
                method with ``attack`` settings).
        """
        ...

    def __call__(self, module: nn.Module, views: Tensor, *, grad: bool = True) -> Tensor:
        """Run ``module`` on every view of this rank's images.

        Args:
            module: Maps images ``(N, 3, H, W)`` in [0,1] to outputs ``(N, D)``.
            views: View-major views of this rank's ``b`` images.
            grad: Record the graph (the online network) or not (a target network, under no_grad).

        Returns:
            Float32 outputs of every view of the global batch, view-major.

        Shape:
            - views: ``(V*b, 3, H, W)``
            - returns: ``(V, B, D)`` with ``B`` the global batch (``b`` in one process)
        """
        ...


class TrainingMethod(Protocol):
    """What the loop trains: modules, forward + loss over the views, a hook after each step, state.

    Attributes:
        n_views: Views per sample the loop must produce.
        head_kind: The head on the encoder (recorded in the weights header for loading).
        encoder: The run's encoder (normalise -> backbone -> head): its weights are the checkpoint's
            ``model.safetensors``, the model every later stage probes and attacks.
        objective: The configured objective (the loop asks it about feature banks).
    """

    n_views: int
    head_kind: HeadKind
    encoder: nn.Module
    objective: Objective

    def network(self) -> nn.Module:
        """The module that is optimised and wrapped for data parallelism (contains the encoder)."""
        ...

    def modules(self) -> dict[str, nn.Module]:
        """Every module of the method by name (network first); the loop sets global BatchNorm on all."""
        ...

    def loss(
        self,
        run: ViewRunner,
        network: nn.Module,
        views: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None,
        epoch: int,
    ) -> LossOutput:
        """Forward the views through ``network`` (the loop's wrapped :meth:`network`) and the loss.

        Shape:
            - views: ``(V*b, 3, H, W)`` this rank's views, view-major
            - index, labels: ``(B,)`` of the global batch
        """
        ...

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimiser step ``step`` (0-based) of ``total_steps`` (EMA, queue update)."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """Everything besides the encoder's weights an exact resume needs (``{}`` if nothing)."""
        ...

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict` (``{}`` from a checkpoint without method state)."""
        ...


@runtime_checkable
class MethodObjective(Protocol):
    """An objective that brings its own method (target networks, predictors, queues)."""

    def make_method(self, encoder: nn.Module) -> TrainingMethod:
        """The method training ``encoder`` with this objective (builds its extra modules)."""
        ...


class ObjectiveMethod:
    """A plain objective as a method: the network is the encoder, the loss the objective's.

    Args:
        objective: Any objective (``n_views``, ``head_kind``, ``__call__``).
        encoder: The run's encoder.
    """

    def __init__(self, objective: Objective, encoder: nn.Module) -> None:
        self.objective = objective
        self.encoder = encoder
        self.n_views = objective.n_views
        self.head_kind = objective.head_kind

    def network(self) -> nn.Module:
        """The encoder."""
        return self.encoder

    def modules(self) -> dict[str, nn.Module]:
        """Only the encoder."""
        return {"encoder": self.encoder}

    def loss(
        self,
        run: ViewRunner,
        network: nn.Module,
        views: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None,
        epoch: int,
    ) -> LossOutput:
        """The objective on the head outputs ``(V, B, D)`` of every view."""
        outputs = run(network, views)
        return self.objective(outputs, index, labels, generator=generator, epoch=epoch)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to do."""

    def state_dict(self) -> dict[str, Tensor]:
        """The objective's own state (e.g. a k-means bank), if any."""
        return objective_state(self.objective)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the objective's state."""
        load_objective_state(self.objective, state)


def build_method(objective: Objective, encoder: nn.Module) -> TrainingMethod:
    """The method that trains ``encoder`` with ``objective``.

    Build it before the optimiser (``optimizer`` over ``method.network()``): a method may add
    trainable modules (a predictor). Modules it creates draw their initial weights from the global
    RNG: the caller scopes it (the train stage seeds it from ``(seed, "method")``).
    """
    if isinstance(objective, MethodObjective):
        return objective.make_method(encoder)
    return ObjectiveMethod(objective, encoder)


# -- helpers shared by methods with target networks ------------------------------------------------


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad=False`` everywhere (a target network)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``, parameter by parameter.

    Buffers (BatchNorm running statistics) are not averaged: the target keeps its own, computed
    from the batches it sees in train mode (BYOL and MoCo run their targets in train mode, where
    the running statistics are never read).
    """
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's momentum schedule: ``1 - (1 - base) * (cos(pi * step / total) + 1) / 2``.

    Equal to ``base`` at step 0 and rising to 1 at the last step (Grill et al. 2020, section 3.2).
    """
    if total_steps <= 0:
        return base
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


def module_state(prefix: str, module: nn.Module) -> dict[str, Tensor]:
    """``module``'s state dict with keys ``<prefix>.<name>`` (tensors only, for ``state.pt``)."""
    return {f"{prefix}.{k}": v.detach().clone() for k, v in module.state_dict().items()}


def load_module_state(prefix: str, module: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load what :func:`module_state` saved under ``prefix`` into ``module``, strictly.

    Raises:
        KeyError: If keys are missing or unexpected (the loop turns it into one line).
    """
    own = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(own)), sorted(set(own) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{prefix}: missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} "
            f"({len(unexpected)})"
        )
    module.load_state_dict(own)
