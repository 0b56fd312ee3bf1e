"""Adversarial contrastive pre-training: ACL, RoCL and DynACL, each with or without false-negative removal.

All three attack the views with projected ascent on an instance-wise contrastive loss and train on the
adversarial views; they differ in which views are attacked and how the losses combine:

- ``acl`` (Jiang et al., 2020): variants ``a2a`` (both views adversarial: loss on the adversarial pair),
  ``a2s`` (the first view adversarial, paired with the clean second view) and ``ds`` (dual stream, the
  published default: ``(L(clean pair) + L(adversarial pair)) / 2``); dual BatchNorm by default (clean and
  adversarial inputs normalised by separate layers; the adversarial branch is the one evaluated).
- ``rocl`` (Kim et al., 2020): the first view is attacked against its own clean copy; the loss is the
  contrastive loss over three views per instance (two clean, one adversarial: each a positive of the
  others) plus ``regularizer_weight`` times the contrastive loss of (adversarial, first clean view);
  one BatchNorm.
- ``dynacl`` (Luo et al., 2023): ACL's dual stream with the augmentation strength annealed in stages of
  ``stage_epochs`` (``s = 1 - floor((e - 1) / K) * K / E`` for 1-based epoch ``e`` of ``E``) and the
  weight of the adversarial loss rising with it (``w = min(1 + floor(e / K) * K / E * swap_param, 2)``,
  loss ``((2 - w) L_clean + w L_adv) / 2``): the formulas of the official code (PKU-ML/DYNACL,
  ``train_DynACL.py``). Its post-processing (DynACL++) is not built.

**The attack** maximises the plain instance-wise NT-Xent of the attacked views (as all three papers):
false-negative removal acts on the training loss, not on the attack. Attack generation runs the modules
in eval mode (BatchNorm uses and keeps its running statistics: ACL's, RoCL's and DynACL's policy), with
the adversarial branch for dual BN, and differentiates with respect to the views only (no parameter
gradient). Its random start comes from the loop's per-step attack stream.

**False-negative removal**: ``fn`` (a detector section as in ``simclr_fnr``; ``null`` = none) makes every
pair loss of the method the ``simclr_fnr`` loss with that detector (eliminate or attract), detected on the
embeddings of that pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from cslrobust.models.dual_bn import DualBatchNorm, DualBNNetwork
from cslrobust.objectives.contrastive_objective import ContrastiveSection
from cslrobust.objectives.fn_detectors import (
    OptionalRemoval,
    build_fn_detector,
)
from cslrobust.objectives.method import (
    TrainingMethod,
    ViewRunner,
    load_module_state,
    module_state,
)
from cslrobust.objectives.objective import (
    OBJECTIVES,
    HeadKind,
    LossOutput,
    Objective,
    load_objective_state,
    objective_state,
)
from cslrobust.objectives.simclr import SimCLRObjective
from cslrobust.objectives.simclr_fnr import SimCLRFNRObjective
from cslrobust.sections import LinfRadius, Section

__all__ = [
    "ACLSection",
    "AdversarialContrastiveMethod",
    "AdversarialObjective",
    "AdversarialSection",
    "DynACLSection",
    "RoCLSection",
    "ViewAttackSection",
    "dynacl_adversarial_weight",
    "dynacl_strength",
]


def dynacl_strength(epoch: int, total_epochs: int, stage_epochs: int) -> float:
    """DynACL's augmentation strength in 0-based ``epoch``: ``1 - floor(epoch / K) * K / E``.

    Constant within each stage of ``K = stage_epochs`` epochs, 1 in the first stage, falling towards
    0 (the official code reloads the data with ``1 - (e - 1) / E`` at 1-based epochs ``e = 1, K + 1,
    2K + 1, ...``; this is that value).
    """
    return 1.0 - (epoch // stage_epochs) * stage_epochs / total_epochs


def dynacl_adversarial_weight(
    epoch: int, total_epochs: int, stage_epochs: int, swap_param: float
) -> float:
    """DynACL's weight of the adversarial loss in 0-based ``epoch``.

    ``w = min(1 + floor(e / K) * (K / E) * swap_param, 2)`` with the 1-based epoch ``e = epoch + 1``
    (the official code's formula; it steps up one epoch before the strength does).
    """
    e = epoch + 1
    return min(1.0 + (e // stage_epochs) * (stage_epochs / total_epochs) * swap_param, 2.0)


class ViewAttackSection(Section):
    """The training-time attack on views: L-inf PGD from a uniform random start, last iterate."""

    eps: LinfRadius = 8 / 255
    step_size: LinfRadius = 2 / 255
    steps: int = Field(default=5, ge=0)
    random_start: bool = True


class AdversarialSection(ContrastiveSection):
    """Common settings of the adversarial contrastive objectives.

    Attributes:
        attack: The attack on the views (ACL/DynACL: 5 steps of 2/255 within 8/255).
        fn: False-negative removal in every pair loss (a detector section as ``simclr_fnr``'s
            ``fn``), or ``null`` for none.
    """

    family: ClassVar[str] = "adversarial"
    attack: ViewAttackSection = Field(default_factory=ViewAttackSection)
    fn: OptionalRemoval = None


class ACLSection(AdversarialSection):
    """``acl``: ``variant`` a2a | a2s | ds (default), ``dual_bn`` (default on), ``evaluate_bn``."""

    name: Literal["acl"] = "acl"
    variant: Literal["a2a", "a2s", "ds"] = "ds"
    dual_bn: bool = True
    evaluate_bn: Literal["adversarial", "clean"] = "adversarial"


class RoCLSection(AdversarialSection):
    """``rocl``: 7 attack steps of 0.007 within 8/255 (RoCL's code) and the regulariser weight 1/256."""

    name: Literal["rocl"] = "rocl"
    attack: ViewAttackSection = Field(
        default_factory=lambda: ViewAttackSection(steps=7, step_size=0.007)
    )
    regularizer_weight: float = Field(default=1 / 256, ge=0.0)


class DynACLSection(AdversarialSection):
    """``dynacl``: ACL's dual stream with annealed augmentation and adversarial weight."""

    name: Literal["dynacl"] = "dynacl"
    stage_epochs: int = Field(default=50, gt=0)
    swap_param: float = Field(default=2 / 3, ge=0.0)
    dual_bn: bool = True
    evaluate_bn: Literal["adversarial", "clean"] = "adversarial"


class AdversarialObjective:
    """The built objective: the settings a :class:`AdversarialContrastiveMethod` is made from.

    Args:
        section: The configured ``acl`` / ``rocl`` / ``dynacl`` section.
    """

    head_kind: HeadKind = "projector"

    def __init__(self, section: AdversarialSection) -> None:
        self.section = section
        self.kind = section.name
        self.n_views = 2
        self.pair_loss = _pair_objective(section, 3 if section.name == "rocl" else 2)
        self.reg_loss = _pair_objective(section, 2) if section.name == "rocl" else None

    def __call__(self, *args: object, **kwargs: object) -> LossOutput:
        """Adversarial objectives train through their method only."""
        raise TypeError(f"{self.kind} trains through make_method(encoder), not as a plain loss")

    def make_method(self, encoder: nn.Module) -> TrainingMethod:
        """The training method around the run's encoder."""
        return AdversarialContrastiveMethod(encoder, self)


def _pair_objective(section: AdversarialSection, views: int) -> Objective:
    """The contrastive loss of ``views`` views per instance, with the section's FN removal if any."""
    if section.fn is None:
        return SimCLRObjective(temperature=section.temperature, n_views=views)
    return SimCLRFNRObjective(
        detector=build_fn_detector(section.fn),
        mode=section.fn.mode,
        temperature=section.temperature,
        warmup_epochs=section.fn.warmup_epochs,
        loss_views=views,
    )


class AdversarialContrastiveMethod:
    """ACL / RoCL / DynACL as a training method (see the module docstring).

    Args:
        encoder: The run's encoder (normalise -> backbone -> projector); with dual BN its BatchNorm
            layers are the evaluated branch (adversarial by default).
        built: The built objective.
    """

    n_views = 2
    head_kind: HeadKind = "projector"

    def __init__(self, encoder: nn.Module, built: AdversarialObjective) -> None:
        section = built.section
        self.encoder = encoder
        self.built = built
        self.section = section
        self.objective: Objective = built.pair_loss  # the loop refreshes its bank, if any
        self.total_epochs: int | None = None
        # Only DynACL anneals the augmentation; the train stage schedules the views when set.
        self.augment_strength: Callable[[int], float] | None = (
            self._dynacl_strength if isinstance(section, DynACLSection) else None
        )
        self.dual: DualBatchNorm | None = None
        self._network: nn.Module = encoder
        if getattr(section, "dual_bn", False):
            self.dual = DualBatchNorm(encoder)
            self._network = DualBNNetwork(encoder, self.dual.other)

    # -- what the loop and the composition root ask --------------------------------------------
    def network(self) -> nn.Module:
        """The encoder (plus the other BatchNorm branch with dual BN)."""
        return self._network

    def modules(self) -> dict[str, nn.Module]:
        """The network only."""
        return {"network": self._network}

    def set_total_epochs(self, epochs: int) -> None:
        """The run's length (DynACL's schedules depend on it); called by the train stage."""
        self.total_epochs = epochs

    def _dynacl_strength(self, epoch: int) -> float:
        """DynACL's augmentation strength of 0-based ``epoch``."""
        assert isinstance(self.section, DynACLSection)
        return dynacl_strength(epoch, self._epochs(), self.section.stage_epochs)

    def attack_settings(self) -> ViewAttackSection:
        """What the train stage builds the loop's view perturbation from."""
        return self.section.attack

    def _epochs(self) -> int:
        if self.total_epochs is None:
            raise RuntimeError(f"{self.section.name}: set_total_epochs(E) was not called")
        return self.total_epochs

    # -- branches ------------------------------------------------------------------------------
    def _branch(self, which: Literal["adversarial", "clean"]) -> AbstractContextManager[None]:
        """Run the network with the BatchNorm branch of ``which`` inputs (no-op with one BN)."""
        if self.dual is None:
            return nullcontext()
        evaluated = getattr(self.section, "evaluate_bn", "adversarial")
        return nullcontext() if which == evaluated else self.dual.use_other()

    def _attack(self, run: ViewRunner, x: Tensor, partner: Tensor | None, index: Tensor) -> Tensor:
        """Adversarial ``x``: ascent on the NT-Xent of ``x``'s views (and ``partner``'s, fixed).

        Eval mode (running statistics used, not updated) with the adversarial BatchNorm branch;
        ``partner`` (clean views paired with ``x``) is embedded once, without a graph.
        """
        was_training = self._network.training
        self._network.eval()
        try:
            with self._branch("adversarial"):
                fixed = None if partner is None else run(self._network, partner, grad=False)

                def instance_loss(x_k: Tensor) -> Tensor:
                    outputs = run(self._network, x_k)  # (V, B, D)
                    if fixed is not None:
                        outputs = torch.cat([outputs, fixed])
                    objective = SimCLRObjective(
                        temperature=self.section.temperature, n_views=outputs.shape[0]
                    )
                    return objective(outputs, index, index).loss

                return run.perturb(instance_loss, x)
        finally:
            self._network.train(was_training)

    def _outputs(
        self, run: ViewRunner, network: nn.Module, x: Tensor, which: Literal["adversarial", "clean"]
    ) -> Tensor:
        """Training-mode outputs ``(V, B, D)`` of ``x`` through the BatchNorm branch of ``which``."""
        with self._branch(which):
            return run(network, x)

    # -- the step --------------------------------------------------------------------------------
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
        """Attack the views, then the method's loss (see the module docstring).

        Returns:
            The loss; metrics of the adversarial pair loss (``pos_sim``, ``neg_sim``, ``fn_*``
            with removal) plus ``loss_clean`` / ``loss_adv`` / ``adv_weight`` (dual stream),
            ``loss_reg`` (RoCL) and ``augment_strength`` (DynACL).

        Shape:
            - views: ``(2*b, 3, H, W)`` this rank's two views, view-major
            - index, labels: ``(B,)`` of the global batch
        """
        b = views.shape[0] // 2
        first, second = views[:b], views[b:]
        section = self.section
        pair = self.built.pair_loss

        def pair_loss(objective: Objective, outputs: Tensor) -> LossOutput:
            return objective(outputs, index, labels, generator=generator, epoch=epoch)

        extra: dict[str, Tensor] = {}
        if isinstance(section, RoCLSection):
            adv = self._attack(run, first, first, index)
            outputs = self._outputs(run, network, torch.cat([first, second, adv]), "adversarial")
            out = pair_loss(pair, outputs)  # three views per instance
            assert self.built.reg_loss is not None
            reg = pair_loss(self.built.reg_loss, outputs[[2, 0]])  # (adversarial, first clean)
            loss = out.loss + section.regularizer_weight * reg.loss
            extra = {"loss_contrastive": out.loss.detach(), "loss_reg": reg.loss.detach()}
        elif getattr(section, "variant", "ds") == "a2a":
            adv = self._attack(run, views, None, index)
            out = pair_loss(pair, self._outputs(run, network, adv, "adversarial"))
            loss = out.loss
        elif getattr(section, "variant", "ds") == "a2s":
            adv = self._attack(run, first, second, index)
            outputs = torch.cat(
                [
                    self._outputs(run, network, adv, "adversarial"),
                    self._outputs(run, network, second, "clean"),
                ]
            )
            out = pair_loss(pair, outputs)
            loss = out.loss
        else:  # dual stream: ACL's ds and DynACL
            weight = 1.0
            if isinstance(section, DynACLSection):
                total = self._epochs()
                weight = dynacl_adversarial_weight(
                    epoch, total, section.stage_epochs, section.swap_param
                )
                extra["augment_strength"] = torch.tensor(self._dynacl_strength(epoch))
            adv = self._attack(run, views, None, index)
            clean = pair_loss(pair, self._outputs(run, network, views, "clean"))
            out = pair_loss(pair, self._outputs(run, network, adv, "adversarial"))
            loss = ((2.0 - weight) * clean.loss + weight * out.loss) / 2.0
            extra.update(
                {
                    "loss_clean": clean.loss.detach(),
                    "loss_adv": out.loss.detach(),
                    "adv_weight": torch.tensor(weight),
                }
            )
        metrics = {**out.metrics, **extra, "loss": loss.detach()}
        return LossOutput(loss=loss, metrics=metrics)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to do."""

    def state_dict(self) -> dict[str, Tensor]:
        """The other BatchNorm branch and the pair loss's state (a detector's bank)."""
        state = {f"pair.{k}": v for k, v in objective_state(self.built.pair_loss).items()}
        if self.dual is not None:
            state.update(module_state("other_bn", self.dual.other))
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict` (strict)."""
        pair = {k.removeprefix("pair."): v for k, v in state.items() if k.startswith("pair.")}
        load_objective_state(self.built.pair_loss, pair)
        rest = {k: v for k, v in state.items() if not k.startswith("pair.")}
        if self.dual is not None:
            load_module_state("other_bn", self.dual.other, rest)
        elif rest:
            raise KeyError(f"unexpected state keys {sorted(rest)[:3]}")


@OBJECTIVES.register("acl", ACLSection)
def build_acl(section: ACLSection) -> AdversarialObjective:
    """The ``acl`` objective of a config section."""
    return AdversarialObjective(section)


@OBJECTIVES.register("rocl", RoCLSection)
def build_rocl(section: RoCLSection) -> AdversarialObjective:
    """The ``rocl`` objective of a config section."""
    return AdversarialObjective(section)


@OBJECTIVES.register("dynacl", DynACLSection)
def build_dynacl(section: DynACLSection) -> AdversarialObjective:
    """The ``dynacl`` objective of a config section."""
    return AdversarialObjective(section)
