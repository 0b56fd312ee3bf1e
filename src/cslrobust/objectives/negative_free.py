"""Negative-free self-supervised methods with a predictor: BYOL and SimSiam.

Both train an online network ``encoder -> predictor`` to predict, from one view, the projection of the
other view made by a network that receives no gradient: BYOL's target is an exponential moving average of
the online encoder (Grill et al., 2020), SimSiam's is the online encoder itself behind a stop-gradient
(Chen & He, 2021). Neither has negative pairs, so neither can have false negatives: in this tool they are
the control of the false-negative explanation (they should sit with the supervised model).

The online network is :class:`PredictorNetwork` (its forward returns ``[z, p]`` side by side, so one
module call serves DDP); the predictor is an MLP ``Linear -> BN -> ReLU -> Linear``
(:class:`~cslrobust.models.heads.ProjectionHead` with two layers). Its width is the section's
``predictor_hidden_dim`` (BYOL: 4096 for a 256-d projection in the paper; SimSiam: a bottleneck of a
quarter of the projection, 512 for 2048). The loss is computed in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from cslrobust.models.heads import ProjectionHead
from cslrobust.objectives.method import (
    TrainingMethod,
    ViewRunner,
    cosine_momentum,
    ema_update,
    frozen_copy,
    load_module_state,
    module_state,
)
from cslrobust.objectives.objective import OBJECTIVES, HeadKind, LossOutput, ObjectiveSection

__all__ = [
    "BYOLObjective",
    "BYOLSection",
    "PredictorMethod",
    "PredictorNetwork",
    "SimSiamObjective",
    "SimSiamSection",
    "negative_cosine",
]


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """Mean over rows of ``-cos(p_i, z_i)``; ``z`` is detached by the caller when it is a target.

    Shape:
        - p, z: ``(B, D)``
        - returns: scalar
    """
    return -F.cosine_similarity(p, z, dim=-1).mean()


class PredictorNetwork(nn.Module):
    """The online network: ``x -> [encoder(x), predictor(encoder(x))]`` concatenated on the last dim.

    Args:
        encoder: The run's encoder (normalise -> backbone -> projector), output dim ``D``.
        predictor: Maps ``(N, D)`` to ``(N, D)``.
    """

    def __init__(self, encoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` -> ``(N, 2D)``: projection then prediction."""
        z = self.encoder(x)
        return torch.cat([z, self.predictor(z)], dim=-1)


class PredictorMethod:
    """BYOL (``momentum`` set: an EMA target) or SimSiam (no momentum: a stop-gradient target).

    The loss is symmetric over the two views, each paper's own form: SimSiam
    ``(D(p1, t2) + D(p2, t1)) / 2`` with ``D = -cos`` (in [-1, 1]); BYOL
    ``(2 - 2 cos(p1, t2)) + (2 - 2 cos(p2, t1))`` (in [0, 8]), four times SimSiam's gradient scale.

    Args:
        encoder: The run's encoder (with its projector head).
        predictor_hidden_dim: Hidden width of the predictor MLP.
        momentum: BYOL's base EMA momentum (rising to 1 on a cosine over training); ``None`` is
            SimSiam.
        objective: The objective that built this method.
    """

    n_views = 2
    head_kind: HeadKind = "projector"

    def __init__(
        self,
        encoder: nn.Module,
        predictor_hidden_dim: int,
        momentum: float | None,
        objective: BYOLObjective | SimSiamObjective,
    ) -> None:
        self.encoder = encoder
        self.objective = objective
        dim = int(encoder.head.out_dim)  # type: ignore[union-attr]
        device = next(encoder.parameters()).device
        predictor = ProjectionHead(dim, predictor_hidden_dim, dim, num_layers=2).to(device)
        self.online = PredictorNetwork(encoder, predictor)
        self.base_momentum = momentum
        self.momentum = momentum
        self.target = frozen_copy(encoder) if momentum is not None else None

    def network(self) -> nn.Module:
        """Encoder + predictor (optimised)."""
        return self.online

    def modules(self) -> dict[str, nn.Module]:
        """The online network and, for BYOL, the target encoder."""
        found: dict[str, nn.Module] = {"online": self.online}
        if self.target is not None:
            found["target"] = self.target
        return found

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
        """Symmetric negative cosine between each view's prediction and the other view's target."""
        out = run(network, views)  # (2, B, 2D)
        z, p = out.chunk(2, dim=-1)
        if self.target is not None:
            with torch.no_grad():
                t = run(self.target, views, grad=False)  # (2, B, D)
        else:
            t = z.detach()
        d12, d21 = negative_cosine(p[0], t[1]), negative_cosine(p[1], t[0])
        loss = (4 + 2 * (d12 + d21)) if self.target is not None else (d12 + d21) / 2
        with torch.no_grad():
            metrics = {
                "loss": loss.detach(),
                # collapse monitor: per-dimension std of the normalised projections (1/sqrt(D) ideal)
                "z_std": F.normalize(z[0], dim=-1).std(dim=0).mean(),
            }
            if self.momentum is not None:
                metrics["momentum"] = torch.tensor(self.momentum, device=loss.device)
        return LossOutput(loss, metrics)

    def after_step(self, step: int, total_steps: int) -> None:
        """BYOL: ``target <- m target + (1 - m) online`` with ``m`` of this step, then the next ``m``."""
        if self.target is None or self.base_momentum is None:
            return
        ema_update(self.target, self.encoder, float(self.momentum or 0.0))
        self.momentum = cosine_momentum(self.base_momentum, step + 1, total_steps)

    def state_dict(self) -> dict[str, Tensor]:
        """Predictor weights, target weights and the current momentum."""
        state = module_state("predictor", self.online.predictor)
        if self.target is not None:
            state |= module_state("target", self.target)
            state["momentum"] = torch.tensor(float(self.momentum or 0.0), dtype=torch.float64)
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict` (strict: a checkpoint of another method is refused)."""
        load_module_state("predictor", self.online.predictor, state)
        if self.target is not None:
            load_module_state("target", self.target, state)
            self.momentum = float(state["momentum"])


@dataclass(frozen=True)
class BYOLObjective:
    """BYOL (Grill et al., 2020): predict an EMA target's projection of the other view.

    Args:
        base_momentum: EMA momentum at step 0, rising to 1 on a cosine (paper: 0.996 on ImageNet;
            0.99 is the common CIFAR choice, e.g. solo-learn's CIFAR configs).
        predictor_hidden_dim: Hidden width of the predictor (paper: 4096 for a 256-d projection).
    """

    base_momentum: float = 0.99
    predictor_hidden_dim: int = 512
    n_views: int = field(default=2, init=False)
    head_kind: HeadKind = field(default="projector", init=False)

    def make_method(self, encoder: nn.Module) -> TrainingMethod:
        """The BYOL method around ``encoder``."""
        return PredictorMethod(encoder, self.predictor_hidden_dim, self.base_momentum, self)


@dataclass(frozen=True)
class SimSiamObjective:
    """SimSiam (Chen & He, 2021): predict the stop-gradient projection of the other view.

    Args:
        predictor_hidden_dim: Bottleneck width of the predictor (paper: 512 for a 2048-d projection).
    """

    predictor_hidden_dim: int = 32
    n_views: int = field(default=2, init=False)
    head_kind: HeadKind = field(default="projector", init=False)

    def make_method(self, encoder: nn.Module) -> TrainingMethod:
        """The SimSiam method around ``encoder``."""
        return PredictorMethod(encoder, self.predictor_hidden_dim, None, self)


class BYOLSection(ObjectiveSection):
    """``objective: {name: byol, base_momentum: 0.99, predictor_hidden_dim: 512}``."""

    name: Literal["byol"] = "byol"
    head_kind: ClassVar[HeadKind] = "projector"
    family: ClassVar[str] = "negative_free"
    base_momentum: float = Field(default=0.99, ge=0.0, lt=1.0)
    predictor_hidden_dim: int = Field(default=512, gt=0)


class SimSiamSection(ObjectiveSection):
    """``objective: {name: simsiam, predictor_hidden_dim: 32}`` (a quarter of the 128-d projection)."""

    name: Literal["simsiam"] = "simsiam"
    head_kind: ClassVar[HeadKind] = "projector"
    family: ClassVar[str] = "negative_free"
    predictor_hidden_dim: int = Field(default=32, gt=0)


@OBJECTIVES.register("byol", BYOLSection)
def build_byol(section: BYOLSection) -> BYOLObjective:
    """The ``byol`` objective of a config section."""
    return BYOLObjective(section.base_momentum, section.predictor_hidden_dim)


@OBJECTIVES.register("simsiam", SimSiamSection)
def build_simsiam(section: SimSiamSection) -> SimSiamObjective:
    """The ``simsiam`` objective of a config section."""
    return SimSiamObjective(section.predictor_hidden_dim)
