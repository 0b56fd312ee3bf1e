"""Typed, frozen run configuration, validated at the edge.

A run is described by one :class:`RunConfig` (data, augmentation, model, objective, training, probe, attack).
It is loaded from YAML plus ``key.sub=value`` overrides; unknown keys and out-of-range values are rejected
with a one-line :class:`~cslrobust.errors.ConfigError` naming the key. The resolved config is saved as JSON
next to every artifact and its canonical hash is the run id.

The ``objective``, ``objective.fn`` and ``augment`` sections belong to the chosen component: each
registered objective, false-negative detector and view preset declares its own frozen section
(:class:`~cslrobust.sections.Section`), and the sub-mapping is validated against the section of the
name it selects (``name``, ``detector``, ``kind``) through the component's registry, so a key the
component does not take is an error. Each package's ``build_*`` function receives its section and
unpacks it into plain typed constructor arguments; core functions never see a config object.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from cslrobust.errors import CheckpointError, ConfigError
from cslrobust.records import read_json_record, write_json_atomic
from cslrobust.run_files import Int, Record, Str

# Radii are parsed in the foundation (component sections use them too); config re-exports them.
from cslrobust.sections import BARE_LINF_MAX as BARE_LINF_MAX
from cslrobust.sections import (
    AugmentSection,
    Layout,
    LinfRadius,
    ObjectiveSection,
    OptimizerSection,
    Section,
    describe_errors,
    section_errors,
)
from cslrobust.sections import format_linf_radius as format_linf_radius
from cslrobust.sections import parse_linf_radius as parse_linf_radius

if TYPE_CHECKING:  # config imports the registries lazily (layering); this is for annotations only
    from cslrobust.registry import ComponentRegistry


class DataConfig(Section):
    """Which data set to use and how to subset it.

    ``source`` points at an ImageFolder directory or ``.tar(.gz)`` (``split/class/image``); with
    ``name: cifar10`` it replaces the official download (this is how the offline JPEG copy is read).
    """

    name: Literal["cifar10", "cifar100", "image_folder", "synthetic_clips", "ucf101", "hmdb51"] = (
        "cifar10"
    )
    root: Path | None = Field(
        default=None, description="cache folder; default $CSLROBUST_DATA or ~/.cache/cslrobust"
    )
    source: Path | None = None
    download: bool = True
    train_per_class: int | None = Field(default=None, gt=0)
    val_per_class: int = Field(default=50, ge=0)
    # Clip data sets only (synthetic_clips, ucf101, hmdb51); each key stays out of the run id at its
    # default, and an image data set refuses any of them set.
    variant: Literal["camera", "motion_only"] = Field(
        default="camera",
        description="synthetic_clips: class kept under camera motion, or = the motion",
    )
    frames: int | None = Field(
        default=None, gt=0, description="frames per clip (default 8 synthetic, 16 videos)"
    )
    stride: int = Field(default=1, gt=0, description="videos: frame step inside a clip")
    size: int | None = Field(default=None, gt=0, description="videos: frame side (default 112)")
    split_dir: Path | None = Field(default=None, description="videos: the official split files")
    fold: int = Field(default=1, ge=1, le=3, description="videos: official split 1, 2 or 3")
    eval_clips: int = Field(
        default=1, gt=0, description="clips per evaluation sample, uniformly placed, averaged"
    )
    skip_bad: bool = Field(default=False, description="videos: skip undecodable files, listed")
    streaming: bool = Field(
        default=False,
        description="videos: read training frames from the frame cache when used (memory maps)",
    )

    later_defaults: ClassVar[dict[str, object]] = {
        "variant": "camera",
        "frames": None,
        "stride": 1,
        "size": None,
        "split_dir": None,
        "fold": 1,
        "eval_clips": 1,
        "skip_bad": False,
        "streaming": False,
    }

    @property
    def layout(self) -> Layout:
        """The sample layout of this data set (``"clip"`` for the clip data sets)."""
        return "clip" if self.name in CLIP_DATASETS else "image"

    @property
    def clip_frames(self) -> int:
        """Frames per clip the data hands out (``frames`` or the data set's default)."""
        if self.frames is not None:
            return self.frames
        return 8 if self.name == "synthetic_clips" else 16

    @model_validator(mode="after")
    def _clip_keys_need_clip_data(self) -> DataConfig:
        misplaced = [
            k
            for k, default in self.later_defaults.items()
            if getattr(self, k) != default and self.name not in _CLIP_KEY_SCOPE[k]
        ]
        if misplaced:
            key = misplaced[0]
            raise ValueError(
                f"{key} applies to {' / '.join(_CLIP_KEY_SCOPE[key])} only, not to data set "
                f"{self.name!r}"
            )
        if self.name in ("ucf101", "hmdb51") and (self.source is None or self.split_dir is None):
            raise ValueError(
                f"data set {self.name!r} needs source (the video folder) and split_dir (the "
                "folder of the official split files)"
            )
        return self


#: Data sets whose samples are clips ``(C, T, H, W)``.
CLIP_DATASETS = ("synthetic_clips", "ucf101", "hmdb51")
_VIDEO_DATASETS = ("ucf101", "hmdb51")
_CLIP_KEY_SCOPE: dict[str, tuple[str, ...]] = {
    "variant": ("synthetic_clips",),
    "frames": CLIP_DATASETS,
    "eval_clips": CLIP_DATASETS,
    **{
        k: _VIDEO_DATASETS for k in ("stride", "size", "split_dir", "fold", "skip_bad", "streaming")
    },
}


class ModelConfig(Section):
    """Backbone and heads."""

    arch: str = "resnet18"
    width: int = Field(default=16, gt=0)
    proj_hidden_dim: int = Field(default=512, gt=0)
    proj_dim: int = Field(default=128, gt=0)
    channels_last: bool = True  # faster convolutions on CPU (~1.5x here) and on GPU
    # "imagenet": torchvision's 7x7/stride-2 stem + max-pool, for encoders audited from elsewhere.
    stem: str = "cifar"

    later_defaults: ClassVar[dict[str, object]] = {"stem": "cifar"}

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        from cslrobust.models import MODELS

        if value not in MODELS:
            raise ValueError(f"unknown arch {value!r}; expected one of {MODELS.names()}")
        return value

    @model_validator(mode="after")
    def _known_stem(self) -> ModelConfig:
        from cslrobust.models import STEMS, VIDEO_STEMS, backbone_layouts

        stems = VIDEO_STEMS if "clip" in backbone_layouts(self.arch) else STEMS
        if self.stem not in stems:
            raise ValueError(
                f"unknown stem {self.stem!r} for arch {self.arch!r}; expected one of {list(stems)}"
            )
        return self


class TrainConfig(Section):
    """Optimisation (cosine schedule with linear warm-up) and checkpointing.

    ``optimizer`` is the chosen optimiser's section (``sgd`` by default; ``lars``, ``adamw``): its
    ``name`` plus the parameters only it takes. ``lr``, ``weight_decay`` and the schedule apply to
    every optimiser; ``momentum`` and ``nesterov`` to those that name them in their section's
    ``train_keys`` (any other optimiser requires their defaults).
    """

    epochs: int = Field(default=20, gt=0)
    batch_size: int = Field(default=256, ge=2)
    lr: float = Field(default=0.3, gt=0.0, description="peak learning rate")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0.0)
    warmup_epochs: float = Field(default=1.0, ge=0.0)
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    drop_last: bool = True
    keep_last: int = Field(default=2, ge=1, description="most recent epoch checkpoints kept")
    keep_every: int = Field(default=0, ge=0, description="also keep every k-th epoch (0: none)")
    log_every: int = Field(default=20, gt=0, description="steps between loss fetches/finite checks")
    tensorboard: bool = True
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description="bf16: encoder forward under bf16 autocast (GPUs; CPUs with AVX512-BF16/AMX)",
    )
    compile: bool = Field(default=False, description="torch.compile the model for training")
    sync_batchnorm: bool = Field(
        default=True, description="with several processes, BatchNorm over the global batch"
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        default="none",
        description="peak lr = lr * (batch_size / lr_reference_batch) [linear] or its sqrt",
    )
    lr_reference_batch: int = Field(default=256, gt=0)
    # The chosen optimiser's section; model_dump writes the concrete section.
    optimizer: SerializeAsAny[OptimizerSection] = Field(default_factory=dict, validate_default=True)

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_section(cls, value: object) -> OptimizerSection:
        from cslrobust.training.optim import DEFAULT_OPTIMIZER, OPTIMIZERS

        return OPTIMIZERS.parse(value, default=DEFAULT_OPTIMIZER)

    @model_validator(mode="after")
    def _optimizer_takes_its_train_keys(self) -> TrainConfig:
        optimizer = self.optimizer
        unused = [
            (
                key,
                getattr(self, key),
                "not_a_parameter",
                f"is not a parameter of optimizer {optimizer.name!r}",
            )
            for key in ("momentum", "nesterov")
            if key not in optimizer.train_keys
            and getattr(self, key) != type(self).model_fields[key].default
        ]
        if unused:
            raise section_errors(type(self).__name__, unused)
        return self

    def peak_lr(self) -> float:
        """The peak learning rate after batch-size scaling (``lr`` itself with ``lr_scaling: none``)."""
        ratio = self.batch_size / self.lr_reference_batch
        factor: float = {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]
        return self.lr * factor

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} exceeds epochs={self.epochs}; expected <= epochs"
            )
        return self


class ProbeConfig(Section):
    """Linear probe on frozen features (no augmentation); best epoch chosen on validation."""

    epochs: int = Field(default=100, gt=0)
    batch_size: int = Field(default=256, gt=0)
    lr: float = Field(default=0.1, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)


class AttackConfig(Section):
    """Attacks on the whole model (normalise -> backbone -> probe head), eval mode, [0,1] inputs.

    ``eps_linf`` radii are fractions of the [0,1] range, written ``"8/255"`` or ``0.0314``; ``eps_l2``
    is an absolute L2 radius in [0,1] pixel space. ``attacks`` are names in the attack registry.
    ``precision: bf16`` runs the attacked model's forward (normalise -> backbone -> head) under bf16
    autocast in the attack, gates, trajectory and evaluate stages; inputs, perturbations, input
    gradients, logits and losses stay float32, and clean accuracy is computed in the same precision.
    """

    #: ``precision`` came after results were stored: at fp32 it stays out of the stage keys.
    later_defaults: ClassVar[dict[str, object]] = {"precision": "fp32"}

    attacks: tuple[str, ...] = ("fgsm", "pgd")
    eps_linf: tuple[LinfRadius, ...] = (0.5 / 255, 1 / 255, 2 / 255, 4 / 255)
    eps_l2: tuple[float, ...] = ()
    steps: int = Field(default=10, ge=0)
    step_size: float | None = Field(
        default=None, gt=0.0, description="as a multiple of eps; default 2.5/steps (Madry et al.)"
    )
    random_start: bool = True
    restarts: int = Field(default=1, ge=1)
    n_images: int | None = Field(
        default=1000, gt=0, description="test images attacked; all if null"
    )
    batch_size: int = Field(default=256, gt=0)
    head: Literal["probe", "own"] = "probe"
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description="bf16: attacked model's forward under bf16 autocast (CPUs with AVX512-BF16/AMX, GPUs)",
    )

    @model_validator(mode="after")
    def _restarts_need_random_start(self) -> AttackConfig:
        if self.restarts > 1 and not self.random_start:
            raise ValueError(
                f"restarts={self.restarts} without random_start repeats the same attack; "
                "expected random_start: true or restarts: 1"
            )
        if not self.eps_linf and not self.eps_l2:
            raise ValueError("eps_linf and eps_l2 are both empty; expected at least one radius")
        return self

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from cslrobust.attacks import ATTACKS

        for name in value:
            if name not in ATTACKS:
                raise ValueError(f"unknown attack {name!r}; expected one of {ATTACKS.names()}")
        return value

    @field_validator("eps_l2")
    @classmethod
    def _l2_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for eps in value:
            if eps < 0.0:
                raise ValueError(f"eps {eps} is negative; expected >= 0")
        return value


def _severity_range(value: tuple[int, ...]) -> tuple[int, ...]:
    for s in value:
        if not 1 <= s <= 5:
            raise ValueError(f"severity {s} outside 1..5")
    return value


#: Corruption severities, each in 1..5 (the evaluation suite's and the protocols').
Severities = Annotated[tuple[int, ...], AfterValidator(_severity_range)]


class EvaluationConfig(Section):
    """The trustworthy evaluation suite of ``cslrobust evaluate`` (issue 3).

    ``quick``: clean + FGSM/PGD L-inf sweeps + sanity gates. ``standard``: also L2 sweeps, AutoAttack
    (reference implementation), FAB minimal perturbations and the 75 common corruptions. L-inf radii are
    fractions (``"8/255"``), L2 radii absolute.
    """

    suite: Literal["quick", "standard"] = "standard"
    n_images: int | None = Field(default=1000, gt=0, description="fixed test subset; all if null")
    batch_size: int = Field(default=256, gt=0)
    eps_linf: tuple[LinfRadius, ...] = (0.25 / 255, 0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
    eps_l2: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5)
    large_eps_linf: LinfRadius = Field(default=16 / 255, description="gradient-masking gate radius")
    steps: int = Field(default=10, ge=1)
    relative_step_size: float | None = Field(default=None, gt=0.0)
    restarts: int = Field(default=1, ge=1)
    convergence_eps_linf: LinfRadius = 1 / 255
    convergence_restarts: int = Field(default=5, ge=1)
    autoattack_version: Literal["standard", "plus", "custom"] = "standard"
    autoattack_attacks: tuple[str, ...] | None = None
    autoattack_eps_linf: tuple[LinfRadius, ...] = (1 / 255,)
    autoattack_eps_l2: tuple[float, ...] = ()
    fab_images: int = Field(default=200, ge=0)
    fab_n_iter: int = Field(default=100, ge=1)
    corruptions: tuple[str, ...] | None = None  # all 15 when null, none when []
    severities: Severities = (1, 2, 3, 4, 5)
    corruption_images: int | None = Field(default=1000, gt=0)

    @model_validator(mode="after")
    def _positive_radii(self) -> EvaluationConfig:
        for key in ("large_eps_linf", "convergence_eps_linf"):
            if getattr(self, key) <= 0.0:
                raise ValueError(f"{key} must be a positive radius, e.g. '16/255'")
        return self

    @model_validator(mode="after")
    def _custom_needs_attacks(self) -> EvaluationConfig:
        if self.autoattack_version == "custom" and not self.autoattack_attacks:
            raise ValueError("autoattack_version 'custom' needs autoattack_attacks, e.g. [apgd-ce]")
        if self.autoattack_version != "custom" and self.autoattack_attacks:
            raise ValueError("autoattack_attacks is only used with autoattack_version 'custom'")
        return self


class GatesConfig(Section):
    """Sanity gates on every reported robust accuracy (the study's ``gates`` stage).

    They re-run the attack stage's own settings (``attack``) on the first ``n_images`` of its fixed
    test subset: the whole attack path at eps = 0, the attack at ``large_eps_linf`` (accuracy must fall
    to <= 2%), input gradients, and PGD convergence at the largest reported L-inf eps (twice the
    steps, and ``convergence_restarts`` restarts). The monotonicity and ordering gates read the attack
    stage's rows. See :mod:`cslrobust.attacks.gates` for how each can fail.
    """

    n_images: int | None = Field(default=200, gt=0, description="images re-attacked; all if null")
    large_eps_linf: LinfRadius = Field(
        default=16 / 255, description="gradient-masking gate radius, above every reported eps"
    )
    convergence_restarts: int = Field(default=3, ge=2)
    batch_size: int = Field(default=256, gt=0)

    @model_validator(mode="after")
    def _positive_radius(self) -> GatesConfig:
        if self.large_eps_linf <= 0.0:
            raise ValueError("large_eps_linf must be a positive radius, e.g. '16/255'")
        return self


class GeometryConfig(Section):
    """Representation geometry of the test set (``cslrobust analyze`` and the study's analyze stage)."""

    n_images: int | None = Field(
        default=2000, gt=0, description="test images for the metrics; all if null"
    )
    sensitivity_images: int = Field(default=200, gt=0)
    sensitivity_eps: tuple[LinfRadius, ...] = (1 / 255, 4 / 255)  # L-inf
    tsne_points: int = Field(default=1000, ge=4)
    chunk_size: int = Field(default=2048, gt=0)


class ProtocolTrainConfig(Section):
    """Training settings of one adversarial protocol (``protocols.alf`` / ``protocols.aff``).

    SGD (momentum 0.9) with a cosine schedule per step; ``augment``: random crop (pad 4) and
    horizontal flip of the training images, drawn from the protocol's seeded streams.
    """

    epochs: int = Field(default=25, gt=0)
    lr: float = Field(default=0.01, gt=0.0)
    batch_size: int = Field(default=128, gt=0)
    weight_decay: float = Field(default=2e-4, ge=0.0)
    augment: bool = True


class AFFConfig(ProtocolTrainConfig):
    """Adversarial full finetuning with TRADES (``protocols.aff``): ``beta`` weighs the KL term."""

    lr: float = Field(default=0.1, gt=0.0)
    beta: float = Field(default=6.0, ge=0.0)


ProtocolName = Literal["slf", "alf", "aff"]
"""The evaluation protocols of adversarially pre-trained encoders (RobustSSL, Xu et al.)."""

AUTOATTACK_VERSION_NAMES = ("standard", "plus")


class ProtocolsConfig(Section):
    """Evaluation protocols of an encoder: SLF, ALF and AFF (the study's ``protocols`` stage).

    ``slf`` is the probe stage's head (clean linear finetuning, frozen encoder); ``alf`` trains a
    linear head on PGD examples through the frozen model; ``aff`` finetunes backbone and a fresh head
    with TRADES. ALF and AFF keep the epoch with the best validation robust accuracy (PGD with the
    training settings on the first ``val_images`` of a fixed validation subset). Each protocol's
    classifier is evaluated on the fixed test subset (``n_images``): clean, PGD (``eval_steps``,
    ``eval_step_size``, random start), AutoAttack (``autoattack``: ``standard``, ``plus``, a list of
    attacks run as AutoAttack's ``custom`` version, or null to skip), the corruptions
    (``corruptions``: null = all 15, [] = none) and the sanity gates. Radii are L-inf fractions
    (``"8/255"``).
    """

    protocols: tuple[ProtocolName, ...] = ("slf", "alf", "aff")
    eps: LinfRadius = 8 / 255
    train_steps: int = Field(default=10, ge=1)
    train_step_size: LinfRadius = 2 / 255
    eval_steps: int = Field(default=20, ge=1)
    eval_step_size: LinfRadius = 2 / 255
    autoattack: str | tuple[str, ...] | None = "standard"
    alf: ProtocolTrainConfig = ProtocolTrainConfig()
    aff: AFFConfig = AFFConfig()
    val_images: int | None = Field(
        default=1000, gt=0, description="validation images for model selection; all if null"
    )
    n_images: int | None = Field(default=1000, gt=0, description="fixed test subset; all if null")
    batch_size: int = Field(default=256, gt=0, description="evaluation batch size")
    corruptions: tuple[str, ...] | None = None  # all 15 when null, none when []
    severities: Severities = (1, 2, 3, 4, 5)
    corruption_images: int | None = Field(default=1000, gt=0)
    gate_images: int | None = Field(
        default=200, gt=0, description="first images of the test subset re-attacked by the gates"
    )
    large_eps_linf: LinfRadius = Field(
        default=32 / 255,
        description="gradient-masking gate radius (robust models keep some at 16/255)",
    )
    convergence_restarts: int = Field(default=3, ge=2)

    @field_validator("protocols")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"protocols {list(value)} repeat a name; expected each at most once")
        return value

    @field_validator("autoattack")
    @classmethod
    def _autoattack(cls, value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        from cslrobust.attacks import AUTOATTACK_ATTACKS

        if isinstance(value, str):
            if value not in AUTOATTACK_VERSION_NAMES:
                raise ValueError(
                    f"autoattack {value!r} is not a version; expected one of "
                    f"{list(AUTOATTACK_VERSION_NAMES)}, a list of attacks or null"
                )
        elif value is not None:
            if not value:
                raise ValueError("autoattack is an empty list; expected attacks or null to skip")
            for name in value:
                if name not in AUTOATTACK_ATTACKS:
                    raise ValueError(
                        f"unknown AutoAttack attack {name!r}; expected one of {list(AUTOATTACK_ATTACKS)}"
                    )
        return value

    @model_validator(mode="after")
    def _positive_radii(self) -> ProtocolsConfig:
        for key in ("eps", "train_step_size", "eval_step_size", "large_eps_linf"):
            if getattr(self, key) <= 0.0:
                raise ValueError(f"{key} must be a positive radius, e.g. '8/255'")
        if self.large_eps_linf <= self.eps:
            raise ValueError(
                f"large_eps_linf must exceed eps ({self.large_eps_linf:.4g} <= {self.eps:.4g})"
            )
        return self


#: Version of the saved config layout. 1 (no ``config_version`` key): L-inf radii in units of 1/255.
CONFIG_VERSION = 2


class RunConfig(Section):
    """Everything that defines one trained model and its evaluation."""

    config_version: Literal[2] = CONFIG_VERSION
    name: str = "run"
    output_dir: Path = Path("runs")
    seed: int = Field(default=0, ge=0)
    device: str = "cpu"
    data: DataConfig = DataConfig()
    # The sections of the chosen view preset and objective; model_dump writes the concrete section.
    augment: SerializeAsAny[AugmentSection] = Field(default_factory=dict, validate_default=True)
    model: ModelConfig = ModelConfig()
    objective: SerializeAsAny[ObjectiveSection] = Field(default_factory=dict, validate_default=True)
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    attack: AttackConfig = AttackConfig()
    geometry: GeometryConfig = GeometryConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    gates: GatesConfig = GatesConfig()
    # Evaluation only (the protocols stage): never part of the run id or of other stages' keys.
    protocols: ProtocolsConfig = ProtocolsConfig()

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_section(cls, value: object) -> AugmentSection:
        from cslrobust.augment import AUGMENTATIONS

        return AUGMENTATIONS.parse(value, default=DEFAULT_AUGMENT)

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_section(cls, value: object) -> ObjectiveSection:
        from cslrobust.objectives import OBJECTIVES

        return OBJECTIVES.parse(value, default=DEFAULT_OBJECTIVE)

    @field_validator("device")
    @classmethod
    def _device_string(cls, value: str) -> str:
        import torch

        try:
            torch.device(value)
        except RuntimeError:
            raise ValueError(f"not a torch device: {value!r}") from None
        return value

    @model_validator(mode="after")
    def _components_take_the_data_layout(self) -> RunConfig:
        from cslrobust.augment import check_augment_layout
        from cslrobust.models import check_backbone_layout

        data, layout = self.data.name, self.data.layout
        check_backbone_layout(self.model.arch, data=data, layout=layout)
        check_augment_layout(self.augment, data=data, layout=layout)
        return self

    def clip_frames(self) -> int | None:
        """Frames of one clip as the model sees it (None for images).

        The view length of a temporally jittered view preset (``augment.frames``), else the data's
        clip length. Evaluation samples hold ``data.eval_clips`` clips of this length, averaged.
        """
        if self.data.layout != "clip":
            return None
        frames = getattr(self.augment, "frames", None)
        return frames if frames is not None else self.data.clip_frames

    @property
    def run_dir(self) -> Path:
        """Folder of this run's artifacts: ``output_dir/name``."""
        return self.output_dir / self.name

    def training_identity(self) -> dict[str, Any]:
        """The parts of the config that determine the trained weights (for resume checks and run ids).

        ``augment`` and ``objective`` appear in the flat shape they had before typed sections (every
        key of every component, unused ones at their defaults), so run ids stay as they were.
        """
        dumped = self.model_dump(mode="json")
        identity = {k: dumped[k] for k in ("seed", "data", "model", "train")}
        identity["augment"] = _legacy_flat(LEGACY_AUGMENT, dumped["augment"])
        identity["objective"] = _legacy_flat(LEGACY_OBJECTIVE, dumped["objective"])
        return identity

    def run_id(self) -> str:
        """Short canonical hash of :meth:`training_identity` (paths excluded)."""
        identity = dict(self.training_identity())
        data_later = type(self.data).later_defaults
        identity["data"] = {
            k: v
            for k, v in identity["data"].items()
            # streaming reads the same frames from disk instead of memory: not part of the id
            if k not in ("root", "download", "streaming") and data_later.get(k, _MISSING) != v
        }
        # torch.compile is an execution detail; train options added after the first release count
        # only when changed, so the ids of earlier runs stay valid.
        train = dict(identity["train"])
        optimizer_later = type(self.train.optimizer).later_defaults
        train["optimizer"] = {
            k: v for k, v in train["optimizer"].items() if optimizer_later.get(k, _MISSING) != v
        }
        identity["train"] = {
            k: v
            for k, v in train.items()
            if k != "compile" and _LATER_TRAIN_DEFAULTS.get(k, _MISSING) != v
        }
        model_later = type(self.model).later_defaults
        identity["model"] = {
            k: v for k, v in identity["model"].items() if model_later.get(k, _MISSING) != v
        }
        later = type(self.objective).later_defaults
        identity["objective"] = {
            k: v for k, v in identity["objective"].items() if later.get(k, _MISSING) != v
        }
        return canonical_hash(identity)


DEFAULT_AUGMENT = "simclr"
"""The view preset of a config without ``augment.kind``."""
DEFAULT_OBJECTIVE = "simclr"
"""The objective of a config without ``objective.name``."""

# The flat sections of configs saved before each component had its own section: every key of every
# objective, detector and view preset, with its default then (JSON values). Frozen history: run ids
# hash these shapes, and components registered later add only their own keys.
LEGACY_FN: dict[str, Any] = {
    "detector": "oracle",
    "mode": "eliminate",
    "warmup_epochs": 0,
    "removal_rate": 1.0,
    "threshold": None,
    "k": None,
    "support_views": 0,
    "n_clusters": None,
    "refresh_every": 1,
    "iters": 20,
}
LEGACY_OBJECTIVE: dict[str, Any] = {
    "name": DEFAULT_OBJECTIVE,
    "temperature": 0.5,
    "label_smoothing": 0.0,
    "tau_plus": 0.1,
    "fn": LEGACY_FN,
}
LEGACY_AUGMENT: dict[str, Any] = {
    "kind": DEFAULT_AUGMENT,
    "crop_scale": [0.2, 1.0],
    "flip_p": 0.5,
    "jitter": [0.4, 0.4, 0.4, 0.1],
    "jitter_p": 0.8,
    "grayscale_p": 0.2,
    "crop_padding": 4,
}


def _legacy_flat(defaults: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``values``, nested mappings merged the same way (JSON values)."""
    flat = dict(defaults)
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            value = _legacy_flat(default, value)
        flat[key] = value
    return flat


def _drop_unused_legacy_defaults(
    defaults: Mapping[str, Any], values: Mapping[str, Any], taken: set[str]
) -> dict[str, Any]:
    """``values`` without the legacy keys outside ``taken`` that hold their legacy default."""
    return {
        key: value
        for key, value in values.items()
        if key in taken or key not in defaults or not _holds_default(defaults[key], value)
    }


def _holds_default(default: Any, value: Any) -> bool:
    """Whether ``value`` is ``default``; a mapping is when each of its keys holds its default."""
    if isinstance(default, Mapping) and isinstance(value, Mapping):
        return _legacy_flat(default, value) == default
    return bool(value == default)


def upgrade_legacy_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config with flat ``objective``/``augment`` sections in the typed shape.

    Configs saved before each component had its own section hold every key of every component.
    A key the chosen component does not take is dropped when it holds its legacy default (a
    mapping, such as ``objective.fn`` of a non-FNR objective, when each of its keys does); any
    other value stays and is reported by validation. Unknown names are left to validation too.

    Args:
        data: A saved config (JSON values).

    Returns:
        A copy of ``data`` with the unused legacy defaults removed.
    """
    from cslrobust.augment import AUGMENTATIONS
    from cslrobust.objectives import FN_DETECTORS, OBJECTIVES

    result = dict(data)
    augment = result.get("augment")
    if isinstance(augment, Mapping):
        taken = _taken_keys(AUGMENTATIONS, augment, DEFAULT_AUGMENT)
        result["augment"] = _drop_unused_legacy_defaults(LEGACY_AUGMENT, augment, taken)
    objective = result.get("objective")
    if isinstance(objective, Mapping):
        taken = _taken_keys(OBJECTIVES, objective, DEFAULT_OBJECTIVE)
        objective = _drop_unused_legacy_defaults(LEGACY_OBJECTIVE, objective, taken)
        fn = objective.get("fn")
        if isinstance(fn, Mapping):
            taken = _taken_keys(FN_DETECTORS, fn, LEGACY_FN["detector"])
            objective["fn"] = _drop_unused_legacy_defaults(LEGACY_FN, fn, taken)
        result["objective"] = objective
    return result


def _taken_keys(
    registry: ComponentRegistry[Any, Any], values: Mapping[str, Any], default: str
) -> set[str]:
    """The keys of the section that ``values`` selects; all of ``values`` for an unknown name."""
    name = values.get(registry.key, default)
    if name not in registry:
        return set(values)  # nothing dropped: validation reports the name
    return set(registry.get(name).section.model_fields)


_MISSING = object()
_LATER_TRAIN_DEFAULTS: dict[str, Any] = {
    "precision": "fp32",
    "sync_batchnorm": True,
    "lr_scaling": "none",
    "lr_reference_batch": 256,
    "optimizer": {"name": "sgd"},  # SGD was the only optimiser before the registry
}


def canonical_hash(payload: Mapping[str, Any]) -> str:
    """12-hex-digit sha256 of a JSON-serialisable mapping with sorted keys."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def format_validation_error(error: ValidationError) -> str:
    """One line naming every offending key, its value and what was expected."""
    return "invalid config: " + describe_errors(error)


class DuplicateKeyError(yaml.YAMLError):  # type: ignore[misc]  # (no PyYAML stubs)
    """A YAML mapping names the same key twice (the later one would silently win)."""

    def __init__(self, key: object, line: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r}")
        self.key = key
        self.line = line


class UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # (no PyYAML stubs)
    """``yaml.SafeLoader`` that refuses a key repeated in any mapping.

    Keys brought in by a merge key (``<<``) may still be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        """The mapping of ``node``.

        Raises:
            DuplicateKeyError: If it names a key twice (the error carries the key and its line).
        """
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, key_node.start_mark.line + 1)
                    seen.add(key)
                except TypeError:  # unhashable key: reported by the base class
                    continue
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def load_yaml_text(text: str) -> Any:
    """Parse YAML text with :class:`UniqueKeyLoader` (safe: plain data types only).

    Raises:
        DuplicateKeyError: If a mapping repeats a key.
        yaml.YAMLError: If the text is not YAML.
    """
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into a key path and a YAML-typed value.

    A value that is not YAML is taken as a plain string.

    Raises:
        ConfigError: If ``text`` has no ``=`` or an empty key, or its value is a mapping that repeats
            a key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except DuplicateKeyError as err:
        raise ConfigError(f"override {text!r}: duplicate key {err.key!r}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.sub=value`` override set (nested dicts created)."""
    result = json.loads(json.dumps(data, default=str))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping from a UTF-8 file.

    Args:
        path: The file.
        what: How messages name it (``"config file"``, ``"study file"``).

    Raises:
        ConfigError: If the file is missing or unreadable, not UTF-8, not YAML, repeats a key in
            any mapping, or does not hold a mapping (one line naming the file, and the line or
            byte offset where known).
    """
    name = f"{what} {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{name} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{name} cannot be read: {(err.strerror or str(err)).lower()}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{name} is not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {err.start}"
        ) from None
    try:
        data = load_yaml_text(text)
    except DuplicateKeyError as err:
        raise ConfigError(f"{name} {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{name} is not valid YAML: {_yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold a mapping, got {type(data).__name__}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """``line N: <problem>`` of a parse error (its first line when it carries no position)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}: {problem}"
    return str(err).splitlines()[0] if str(err) else "parse error"


def build_run_config(data: Mapping[str, Any]) -> RunConfig:
    """Validate a plain mapping into a :class:`RunConfig`.

    Raises:
        ConfigError: On unknown keys or invalid values; the message names each offending key.
    """
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_run_config(path: Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Load a run config from an optional YAML file plus ``key.sub=value`` overrides (applied last)."""
    data = read_yaml(path) if path is not None else {}
    return build_run_config(apply_overrides(data, overrides))


def save_config(config: BaseModel, path: Path) -> None:
    """Write the resolved config as pretty JSON (atomically)."""
    write_json_atomic(path, config.model_dump(mode="json"))


#: The L-inf radii of version-1 configs, which were numbers in units of 1/255.
_V1_LINF_FIELDS = {
    "attack": ("eps_linf",),
    "evaluation": (
        "eps_linf",
        "large_eps_linf",
        "convergence_eps_linf",
        "autoattack_eps_linf",
    ),
    "geometry": ("sensitivity_eps",),
    "gates": ("large_eps_linf",),
}


def section_identity(cfg: RunConfig, section: str) -> dict[str, Any]:
    """A config section as stage keys hash it: L-inf radii in units of 1/255, as in layout 1.

    Hashing the earlier layout keeps the stage keys of studies run before the radii became fractions,
    so their attack, analyze and evaluate results stay valid. Keys the section added later
    (:attr:`~cslrobust.sections.Section.later_defaults`) are left out while at their default.
    """
    values: Section = getattr(cfg, section)
    later = type(values).later_defaults
    data: dict[str, Any] = {
        k: v for k, v in values.model_dump(mode="python").items() if later.get(k, _MISSING) != v
    }
    for key in _V1_LINF_FIELDS.get(section, ()):
        value = data[key]
        if isinstance(value, tuple | list):
            data[key] = [round(v * 255, 9) for v in value]
        else:
            data[key] = round(value * 255, 9)
    return json.loads(json.dumps(data, default=str))


def upgrade_saved_config(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config in the current layout: version-1 radii (units of 1/255) become ``"k/255"``."""
    if "config_version" in data:
        return data
    data = json.loads(json.dumps(data))

    def to_radius(value: Any) -> Any:
        return f"{float(value)!r}/255" if isinstance(value, int | float) else value

    for section, keys in _V1_LINF_FIELDS.items():
        for key in keys:
            value = data.get(section, {}).get(key)
            if isinstance(value, list):
                data[section][key] = [to_radius(v) for v in value]
            elif value is not None:
                data[section][key] = to_radius(value)
    data["config_version"] = CONFIG_VERSION
    return data


#: What every saved config holds, in every layout (the sections are validated by ``RunConfig``).
SAVED_CONFIG = Record(
    required={
        "name": Str(),
        "output_dir": Str(),
        "seed": Int(),
        **{section: Record() for section in ("data", "model", "objective", "train")},
    },
    optional={
        "device": Str(),
        "config_version": Int(),
        **{
            section: Record()
            for section in (
                "augment",
                "probe",
                "attack",
                "evaluation",
                "geometry",
                "gates",
                "protocols",
            )
        },
    },
)


def load_saved_config(path: Path) -> RunConfig:
    """Load a config saved by :func:`save_config` (any earlier layout is upgraded first).

    Raises:
        ConfigError: If the file is missing, not JSON, lacks a field every saved config has, or the
            config is invalid (one line naming the file and the key; see
            :func:`upgrade_legacy_config` for the keys of legacy configs that are dropped).
    """
    if not path.is_file():
        raise ConfigError(
            f"no saved config at {str(path)!r}; expected a run folder made by 'train'"
        )
    try:
        data = read_json_record(path, what="saved config", spec=SAVED_CONFIG)
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    try:
        return build_run_config(upgrade_legacy_config(upgrade_saved_config(data)))
    except ConfigError as err:
        raise ConfigError(f"saved config {str(path)!r}: {err}") from None
