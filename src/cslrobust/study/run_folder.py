"""The run folder: its file names, loading a trained or probed run back, and writing stage records.

Every stage reads and writes a run through this module::

    <output_dir>/<name>/config.json         resolved config (its hash is the run id)
    <output_dir>/<name>/checkpoints/...     per-epoch checkpoints (see training.checkpoint)
    <output_dir>/<name>/train.json          per-epoch metrics, wall time, provenance
    <output_dir>/<name>/probe.safetensors   linear probe head on raw backbone features
    <output_dir>/<name>/probe.json          probe accuracies (val-selected epoch, test)
    <output_dir>/<name>/attack.json         clean and robust accuracy per attack and eps
    <output_dir>/<name>/analysis.json       representation geometry and feature sensitivity
    <output_dir>/<name>/evaluation.json     the evaluation suite with its sanity gates
    <output_dir>/<name>/gates.json          sanity gates of the attack stage's numbers

Artifacts of a non-final checkpoint carry a tag (``probe-epoch0003.json``, see :func:`tagged`).
Stages after training read the saved config for what defines the model and take the evaluation
settings (each stage's ``settings`` sections, see :func:`~cslrobust.study.stages.evaluation_sections`) from the caller, so no command rewrites ``config.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from cslrobust.config import RunConfig, apply_overrides, build_run_config, load_saved_config
from cslrobust.data import ClipSettings, DataSplits, build_datasets, default_data_root
from cslrobust.distributed import init_distributed, main_first, on_main
from cslrobust.errors import CheckpointError, ConfigError
from cslrobust.models import Classifier, Encoder, build_encoder
from cslrobust.objectives import HeadKind
from cslrobust.records import write_json_atomic
from cslrobust.seeding import make_generator
from cslrobust.study.stages import evaluation_sections
from cslrobust.training import Checkpoint, find_checkpoint, latest_checkpoint, load_weights
from cslrobust.training.checkpoint import PROBE_HEADER, WEIGHTS_HEADER, read_metadata

CONFIG_FILE = "config.json"
TRAIN_FILE = "train.json"
SKIPPED_VIDEOS_FILE = "skipped_videos.json"  # videos left out with data.skip_bad
PROBE_FILE = "probe.json"
PROBE_WEIGHTS = "probe.safetensors"
ATTACK_FILE = "attack.json"
ANALYSIS_FILE = "analysis.json"
EVALUATION_FILE = "evaluation.json"
GATES_FILE = "gates.json"
CHECKPOINT_DIR = "checkpoints"


def tagged(name: str, tag: str) -> str:
    """``probe.json`` -> ``probe<tag>.json`` (artifacts of a non-final checkpoint carry a tag)."""
    stem, dot, suffix = name.partition(".")
    return f"{stem}{tag}{dot}{suffix}"


def publish(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write a stage's JSON ``record`` on rank 0 only; every rank returns rank 0's record.

    When this returns, the file exists for every rank (the broadcast orders them like a barrier).
    """

    def write() -> dict[str, Any]:
        write_json_atomic(path, record)
        return record

    return on_main(write)


def on_this_process(cfg: RunConfig) -> RunConfig:
    """``cfg`` on this process's device; under torchrun this starts the process group first.

    With CUDA each torchrun process takes ``cuda:LOCAL_RANK``; the run id does not depend on it.
    """
    _, device = init_distributed(cfg.device)
    return cfg if device == cfg.device else cfg.model_copy(update={"device": device})


def load_data(cfg: RunConfig, *, progress: bool = True) -> DataSplits:
    """Build the train/val/test splits of a run on its device (``progress``: show data bars)."""
    data = cfg.data
    clips = None
    if data.layout == "clip":
        clips = ClipSettings(
            variant=data.variant,
            frames=data.clip_frames,
            view_frames=cfg.clip_frames() or data.clip_frames,
            eval_clips=data.eval_clips,
            stride=data.stride,
            size=data.size,
            split_dir=data.split_dir,
            fold=data.fold,
            skip_bad=data.skip_bad,
            streaming=data.streaming,
        )
    with main_first():  # rank 0 downloads and decodes into the cache; the others then read it
        return build_datasets(
            data.name,
            root=data.root or default_data_root(),
            source=data.source,
            train_per_class=data.train_per_class,
            val_per_class=data.val_per_class,
            seed=cfg.seed,
            device=cfg.device,
            download=data.download,
            progress=progress,
            clips=clips,
        )


def build_run_encoder(cfg: RunConfig, splits: DataSplits, head_kind: HeadKind) -> Encoder:
    """The encoder of a run (normalisation buffers from the training split) on its device."""
    model = cfg.model
    encoder = build_encoder(
        model.arch,
        width=model.width,
        head_kind=head_kind,
        num_classes=splits.num_classes,
        proj_hidden_dim=model.proj_hidden_dim,
        proj_dim=model.proj_dim,
        mean=splits.mean,
        std=splits.std,
        channels_last=model.channels_last,
        stem=model.stem,
        layout=cfg.data.layout,
        clip_frames=cfg.clip_frames(),
    )
    return encoder.to(cfg.device)


def init_run_encoder(cfg: RunConfig, splits: DataSplits, head_kind: HeadKind) -> Encoder:
    """A freshly initialised encoder; initialisation draws from its own stream (seed, "init")."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(make_generator(cfg.seed, "init").initial_seed())
        return build_run_encoder(cfg, splits, head_kind)


def run_settings(run_dir: Path, overrides: Iterable[str] = ()) -> RunConfig:
    """A run's saved config with ``key.sub=value`` overrides of its evaluation sections.

    Raises:
        ConfigError: If an override touches a section that defines the trained model.
    """
    saved = load_saved_config(run_dir / CONFIG_FILE)
    overrides = list(overrides)
    allowed = evaluation_sections()
    for text in overrides:
        section = text.partition("=")[0].strip().split(".")[0]
        if section not in allowed:
            raise ConfigError(
                f"override {text!r} changes the trained model's section {section!r}; "
                f"a trained run takes overrides of {', '.join(allowed)} only"
            )
    if not overrides:
        return saved
    return build_run_config(apply_overrides(saved.model_dump(mode="json"), overrides))


def _settings(run_dir: Path, config: RunConfig | None) -> RunConfig:
    """``config`` (checked to describe the model trained in ``run_dir``), else the saved config."""
    saved = load_saved_config(run_dir / CONFIG_FILE)
    if config is None:
        return saved
    if config.run_id() != saved.run_id():
        raise ConfigError(
            f"run folder {str(run_dir)!r} holds run {saved.run_id()}, not {config.run_id()}; "
            "the settings passed describe another model"
        )
    # The folder's own location wins: a study may reach the same run through another path.
    return config.model_copy(update={"output_dir": saved.output_dir, "name": saved.name})


def head_kind_of(cfg: RunConfig, metadata: dict[str, str]) -> HeadKind:
    """The trained head's kind: from the weights' header, else (older runs) the objective's section.

    The recorded value is checked by :data:`WEIGHTS_HEADER` when the header is read.
    """
    if "head_kind" in metadata:
        return cast(HeadKind, metadata["head_kind"])
    return cfg.objective.head_kind


@dataclass(frozen=True)
class LoadedRun:
    """A trained run loaded back from its folder (encoder in eval mode)."""

    config: RunConfig
    encoder: Encoder
    checkpoint: Checkpoint
    splits: DataSplits
    head_kind: HeadKind


def load_run(
    run_dir: Path,
    *,
    epoch: int | None = None,
    config: RunConfig | None = None,
    progress: bool = True,
) -> LoadedRun:
    """Load a run's config, data splits and encoder weights (latest checkpoint or ``epoch``).

    Args:
        run_dir: A run folder made by the train stage.
        epoch: Load this epoch's checkpoint instead of the latest.
        config: Evaluation settings for the run (default: its saved config); must have its run id.
        progress: Show progress bars while loading the data.

    Raises:
        ConfigError: If ``run_dir`` holds no saved config, or ``config`` is another run's.
        CheckpointError: If it holds no (matching) checkpoint, its header is damaged, or its
            weights hold NaN or inf (a diverged run is never evaluated).
    """
    cfg = on_this_process(_settings(run_dir, config))
    root = run_dir / CHECKPOINT_DIR
    checkpoint = find_checkpoint(root, epoch) if epoch is not None else latest_checkpoint(root)
    if checkpoint is None:
        raise CheckpointError(f"run folder {str(run_dir)!r} has no checkpoint; run 'train' first")
    splits = load_data(cfg, progress=progress)
    metadata = read_metadata(checkpoint.model_file, WEIGHTS_HEADER)
    head_kind = head_kind_of(cfg, metadata)
    encoder = build_run_encoder(cfg, splits, head_kind)
    recorded_dim = metadata.get("feature_dim")  # absent in checkpoints of older runs
    if recorded_dim is not None and int(recorded_dim) != encoder.feature_dim:
        raise CheckpointError(
            f"checkpoint {str(checkpoint.model_file)!r} has feature_dim={recorded_dim}, "
            f"the config builds {encoder.feature_dim}; expected the run's own config"
        )
    load_weights(encoder, checkpoint.model_file, require_finite=True, header=WEIGHTS_HEADER)
    encoder.eval()
    return LoadedRun(cfg, encoder, checkpoint, splits, head_kind)


@dataclass(frozen=True)
class ProbedRun(LoadedRun):
    """A probed run: its encoder, the probe head on the probed checkpoint, and the whole model."""

    head: nn.Module
    model: Classifier


def load_probed_run(
    run_dir: Path,
    *,
    tag: str = "",
    config: RunConfig | None = None,
    head: Literal["probe", "own"] | None = None,
    progress: bool = True,
) -> ProbedRun:
    """Load the checkpoint a probe was fitted on, with that probe: normalise -> backbone -> head.

    ``head="own"`` (default: the settings' ``attack.head``) takes a supervised run's own classifier
    instead of the probe.

    Raises:
        CheckpointError: If the run has no probe ``probe<tag>.safetensors``.
        ConfigError: If the own head is asked of a run that has none.
    """
    probe_path = run_dir / tagged(PROBE_WEIGHTS, tag)
    if not probe_path.is_file():
        raise CheckpointError(f"run folder {str(run_dir)!r} has no probe; run 'probe' first")
    epoch = int(read_metadata(probe_path, PROBE_HEADER).get("checkpoint_epoch", "0")) or None
    run = load_run(run_dir, epoch=epoch, config=config, progress=progress)
    cfg, encoder = run.config, run.encoder
    if (head or cfg.attack.head) == "own":
        if run.head_kind != "classifier":
            raise ConfigError(
                f"attack.head='own' needs a supervised run; {cfg.name!r} is {cfg.objective.name!r}"
            )
        module: nn.Module = encoder.head
    else:
        module = nn.Linear(encoder.feature_dim, run.splits.num_classes)
        load_weights(module, probe_path, require_finite=True, header=PROBE_HEADER)
    module = module.to(cfg.device)
    model = Classifier(encoder, module).to(cfg.device).eval()
    return ProbedRun(cfg, encoder, run.checkpoint, run.splits, run.head_kind, module, model)


def checked_count(
    cfg: RunConfig, key: str, available: int, what: str = "test images"
) -> int | None:
    """The image count ``key`` (e.g. ``"attack.n_images"``) of ``cfg``, refused above ``available``.

    A value the user chose that exceeds the images there are is an error, not a silent clamp; the
    field's default (e.g. 1000) means "up to", so it still takes every image of a smaller test set.

    Raises:
        ConfigError: If the value differs from the default and exceeds ``available``.
    """
    section_name, field = key.split(".")
    section = getattr(cfg, section_name)
    value: int | None = getattr(section, field)
    default = type(section).model_fields[field].default
    if value is not None and value > available and value != default:
        raise ConfigError(
            f"{key}={value} exceeds the {available} {what}; expected at most {available} "
            "(or null for all)"
        )
    return value


def eval_subset(labels: torch.Tensor, n_images: int | None) -> torch.Tensor:
    """Indices of the test images to evaluate: a fixed random subset, identical for every run.

    The subset is drawn from stream ``(0, "eval_subset")`` regardless of the run seed, so every method
    and seed of a comparison is attacked on the same images.
    """
    n = labels.shape[0]
    if n_images is None or n_images >= n:
        return torch.arange(n)
    order = torch.randperm(n, generator=make_generator(0, "eval_subset"))
    return order[:n_images].sort().values


def test_subset(
    splits: DataSplits, n_images: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed test subset of :func:`eval_subset`: indices, uint8 images, labels (data device)."""
    subset = eval_subset(splits.test.labels.cpu(), n_images)
    images = splits.test.images[subset.to(splits.test.images.device)]
    labels = splits.test.labels[subset.to(splits.test.labels.device)]
    return subset, images, labels
