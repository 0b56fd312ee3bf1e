"""Pipeline stages of one run: train -> probe -> attack.

Each stage takes a resolved :class:`~cslrobust.config.RunConfig`, builds the pieces it needs through the
packages' ``build_*`` functions, and writes its artifacts into the run folder::

    <output_dir>/<name>/config.json        resolved config (its hash is the run id)
    <output_dir>/<name>/checkpoints/...    per-epoch checkpoints (see training.checkpoint)
    <output_dir>/<name>/train.json         per-epoch metrics, wall time, provenance
    <output_dir>/<name>/probe.safetensors  linear probe head on raw backbone features
    <output_dir>/<name>/probe.json         probe accuracies (val-selected epoch, test)
    <output_dir>/<name>/attack.json        clean and robust accuracy per attack and eps

The CLI, the demo and tests call these same functions.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from cslrobust.attacks import default_step_size, robust_accuracy
from cslrobust.augment import build_augment
from cslrobust.config import RunConfig, load_saved_config, save_config
from cslrobust.data import DataSplits, build_datasets, default_data_root
from cslrobust.distributed import barrier, context, init_distributed, is_main, main_first, on_main
from cslrobust.errors import CheckpointError, ConfigError
from cslrobust.models import Classifier, Encoder, build_encoder
from cslrobust.objectives import HeadKind, Objective, build_objective
from cslrobust.probe import (
    accuracy,
    assert_frozen,
    extract_features,
    state_snapshot,
    train_linear_probe,
)
from cslrobust.provenance import provenance
from cslrobust.seeding import make_generator
from cslrobust.study.store import pack_bits
from cslrobust.training import (
    Checkpoint,
    LoopSettings,
    MetricLog,
    build_sgd,
    find_checkpoint,
    latest_checkpoint,
    load_weights,
    save_weights,
    steps_per_epoch,
    train,
    warmup_cosine,
)
from cslrobust.training.checkpoint import read_metadata, write_json_atomic

CONFIG_FILE = "config.json"
TRAIN_FILE = "train.json"
PROBE_FILE = "probe.json"
PROBE_WEIGHTS = "probe.safetensors"
ATTACK_FILE = "attack.json"
CHECKPOINT_DIR = "checkpoints"


def load_data(cfg: RunConfig) -> DataSplits:
    """Build the train/val/test splits of a run on its device."""
    data = cfg.data
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
        )


def build_run_objective(cfg: RunConfig) -> Objective:
    """The objective of a run, built from its ``objective`` section."""
    return build_objective(cfg.objective)


def model_metadata(objective: Objective, encoder: Encoder) -> dict[str, str]:
    """What loading the trained encoder needs, for the weights' header: head kind and dimensions.

    ``load_run`` reads it instead of building the objective; ``n_views`` (views per sample in
    training) is recorded for readers of the run.
    """
    return {
        "head_kind": objective.head_kind,
        "feature_dim": str(encoder.feature_dim),
        "n_views": str(objective.n_views),
    }


def _head_kind(cfg: RunConfig, metadata: dict[str, str]) -> HeadKind:
    """The trained head's kind: from the weights' header, else (older runs) the objective's section.

    A recorded value that is no head kind is reported by ``build_encoder``.
    """
    if "head_kind" in metadata:
        return cast(HeadKind, metadata["head_kind"])
    return cfg.objective.head_kind


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
    )
    return encoder.to(cfg.device)


def _init_model(cfg: RunConfig, splits: DataSplits, head_kind: HeadKind) -> Encoder:
    # Model initialisation draws from its own stream, independent of data order and augmentation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(make_generator(cfg.seed, "init").initial_seed())
        return build_run_encoder(cfg, splits, head_kind)


@dataclass(frozen=True)
class LoadedRun:
    """A trained run loaded back from its folder."""

    config: RunConfig
    encoder: Encoder
    checkpoint: Checkpoint
    splits: DataSplits


def on_this_process(cfg: RunConfig) -> RunConfig:
    """``cfg`` on this process's device; under torchrun this starts the process group first.

    With CUDA each torchrun process takes ``cuda:LOCAL_RANK``; the run id does not depend on it.
    """
    _, device = init_distributed(cfg.device)
    return cfg if device == cfg.device else cfg.model_copy(update={"device": device})


def load_run(run_dir: Path, *, epoch: int | None = None, device: str | None = None) -> LoadedRun:
    """Load a run's config, data splits and encoder weights (latest checkpoint or ``epoch``).

    Raises:
        ConfigError: If ``run_dir`` holds no saved config.
        CheckpointError: If it holds no (matching) checkpoint.
    """
    cfg = load_saved_config(run_dir / CONFIG_FILE)
    if device is not None:
        cfg = cfg.model_copy(update={"device": device})
    cfg = on_this_process(cfg)
    root = run_dir / CHECKPOINT_DIR
    checkpoint = find_checkpoint(root, epoch) if epoch is not None else latest_checkpoint(root)
    if checkpoint is None:
        raise CheckpointError(f"run folder {str(run_dir)!r} has no checkpoint; run 'train' first")
    splits = load_data(cfg)
    metadata = read_metadata(checkpoint.model_file)
    encoder = build_run_encoder(cfg, splits, _head_kind(cfg, metadata))
    recorded_dim = metadata.get("feature_dim")  # absent in checkpoints of older runs
    if recorded_dim is not None and recorded_dim != str(encoder.feature_dim):
        raise CheckpointError(
            f"checkpoint {str(checkpoint.model_file)!r} has feature_dim={recorded_dim}, "
            f"the config builds {encoder.feature_dim}; expected the run's own config"
        )
    load_weights(encoder, checkpoint.model_file)
    encoder.eval()
    return LoadedRun(cfg, encoder, checkpoint, splits)


def run_train(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train one model and write its checkpoints and ``train.json``.

    Raises:
        ConfigError: If the run folder already holds checkpoints of this config and ``resume`` is off,
            or holds a different config (never overwritten).
    """
    cfg = on_this_process(cfg)
    run_dir = cfg.run_dir
    config_path = run_dir / CONFIG_FILE
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    if config_path.is_file():
        previous = load_saved_config(config_path)
        if previous.run_id() != cfg.run_id():
            raise ConfigError(
                f"run folder {str(run_dir)!r} holds a different config (run id {previous.run_id()}, "
                f"this one {cfg.run_id()}); choose another name or output_dir"
            )
        if latest_checkpoint(checkpoint_dir) is not None and not resume:
            raise ConfigError(
                f"run folder {str(run_dir)!r} already has checkpoints; pass --resume to continue"
            )
    barrier()  # every rank has checked the folder before rank 0 writes into it
    on_main(lambda: save_config(cfg, config_path))
    main = is_main()

    tic = time.perf_counter()
    splits = load_data(cfg)
    objective = build_run_objective(cfg)
    encoder = _init_model(cfg, splits, objective.head_kind)
    make_views = build_augment(cfg.augment).to(cfg.device)
    tr = cfg.train
    optimizer = build_sgd(
        encoder,
        lr=tr.peak_lr(),
        momentum=tr.momentum,
        weight_decay=tr.weight_decay,
        nesterov=tr.nesterov,
    )
    n_steps = steps_per_epoch(splits.train, tr.batch_size, tr.drop_last)
    if n_steps == 0:
        raise ConfigError(
            f"train.batch_size={tr.batch_size} exceeds the {len(splits.train)} training images"
        )
    schedule = warmup_cosine(
        tr.peak_lr(),
        tr.epochs * n_steps,
        warmup_steps=round(tr.warmup_epochs * n_steps),
        min_ratio=tr.min_lr_ratio,
    )
    settings = LoopSettings(
        epochs=tr.epochs,
        batch_size=tr.batch_size,
        seed=cfg.seed,
        log_every=tr.log_every,
        drop_last=tr.drop_last,
        keep_last=tr.keep_last,
        keep_every=tr.keep_every,
        channels_last=cfg.model.channels_last,
        progress=progress,
        precision=tr.precision,
        compile=tr.compile,
        sync_batchnorm=tr.sync_batchnorm,
    )
    metadata = {
        "config": json.dumps(cfg.model_dump(mode="json")),
        "run_id": cfg.run_id(),
        **model_metadata(objective, encoder),
    }
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(MetricLog(run_dir, tensorboard=tr.tensorboard)) if main else None
        result = train(
            encoder,
            objective,
            make_views,
            splits.train,
            optimizer,
            schedule,
            checkpoint_dir,
            settings,
            weights_metadata=metadata,
            resume=resume,
            metric_log=log,
        )
    summary = {
        "run_id": cfg.run_id(),
        "name": cfg.name,
        "objective": cfg.objective.name,
        "epochs": result.epochs_completed,
        "resumed_from": result.resumed_from,
        "train_images": len(splits.train),
        "processes": context().world_size,
        "peak_lr": tr.peak_lr(),
        "history": result.history,
        "checkpoint": str(result.checkpoint.path) if result.checkpoint else None,
        "wall_seconds": time.perf_counter() - tic,
        **provenance(),
    }
    return publish(run_dir / TRAIN_FILE, summary)


def tagged(name: str, tag: str) -> str:
    """``probe.json`` -> ``probe<tag>.json`` (artifacts of a non-final checkpoint carry a tag)."""
    stem, dot, suffix = name.partition(".")
    return f"{stem}{tag}{dot}{suffix}"


def run_probe(
    run_dir: Path,
    *,
    epoch: int | None = None,
    device: str | None = None,
    progress: bool = True,
    tag: str = "",
) -> dict[str, Any]:
    """Fit the linear probe on frozen features of a trained run; write ``probe<tag>.json`` and weights.

    With several processes, feature extraction is sharded across ranks; rank 0 alone fits the head
    (seconds on cached features) and writes the files, and every rank returns its record.
    """
    del progress  # the probe trains on cached features in seconds
    tic = time.perf_counter()
    run = load_run(run_dir, epoch=epoch, device=device)
    cfg, encoder, splits = run.config, run.encoder, run.splits
    reference = state_snapshot(encoder)
    batch = cfg.probe.batch_size

    def features(images: torch.Tensor) -> torch.Tensor:
        return extract_features(
            encoder.features, encoder, images, batch_size=batch, device=cfg.device
        )

    f_train, f_val, f_test = (features(s.images) for s in (splits.train, splits.val, splits.test))
    assert_frozen(encoder, reference)

    def fit_and_write() -> dict[str, Any]:
        result = train_linear_probe(
            f_train,
            splits.train.labels,
            f_val,
            splits.val.labels,
            num_classes=splits.num_classes,
            epochs=cfg.probe.epochs,
            lr=cfg.probe.lr,
            weight_decay=cfg.probe.weight_decay,
            batch_size=batch,
            seed=cfg.seed,
        )
        head = result.head
        record: dict[str, Any] = {
            "run_id": cfg.run_id(),
            "name": cfg.name,
            "objective": cfg.objective.name,
            "checkpoint_epoch": run.checkpoint.epoch,
            "best_epoch": result.best_epoch,
            "val_accuracy": result.best_val_accuracy,
            "train_accuracy": accuracy(head, f_train, splits.train.labels),
            "test_accuracy": accuracy(head, f_test, splits.test.labels),
            "n_test": len(splits.test),
            "history": result.history,
        }
        if run.config.objective.name == "supervised":
            # The supervised model's own classifier, evaluated through the same frozen features.
            record["own_head_test_accuracy"] = accuracy(encoder.head, f_test, splits.test.labels)
            record["own_head_val_accuracy"] = accuracy(encoder.head, f_val, splits.val.labels)
        record["wall_seconds"] = time.perf_counter() - tic
        record.update(provenance())
        save_weights(
            head,
            run_dir / tagged(PROBE_WEIGHTS, tag),
            {"checkpoint_epoch": str(run.checkpoint.epoch)},
        )
        write_json_atomic(run_dir / tagged(PROBE_FILE, tag), record)
        return record

    return on_main(fit_and_write)


def publish(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write a stage's JSON ``record`` on rank 0 only; every rank returns rank 0's record.

    When this returns, the file exists for every rank (the broadcast orders them like a barrier).
    """

    def write() -> dict[str, Any]:
        write_json_atomic(path, record)
        return record

    return on_main(write)


def eval_subset(labels: torch.Tensor, n_images: int | None) -> torch.Tensor:
    """Indices of the test images to attack: a fixed random subset, identical for every run.

    The subset is drawn from stream ``(0, "eval_subset")`` regardless of the run seed, so every method
    and seed of a comparison is attacked on the same images.
    """
    n = labels.shape[0]
    if n_images is None or n_images >= n:
        return torch.arange(n)
    order = torch.randperm(n, generator=make_generator(0, "eval_subset"))
    return order[:n_images].sort().values


def run_attack(
    run_dir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    progress: bool = True,
    tag: str = "",
) -> dict[str, Any]:
    """Attack the composite model (normalise -> backbone -> probe head) of a probed run.

    With ``tag``, the probe ``probe<tag>.safetensors`` (and its checkpoint) is attacked and the record
    goes to ``attack<tag>.json``.

    Args:
        run_dir: A run folder with ``probe.safetensors``.
        overrides: Replacement values for the run's ``attack`` section (validated).
        device: Run on this device instead of the configured one.
        progress: Show progress bars.
        tag: Attack the probe of a tagged (non-final) checkpoint, see :func:`tagged`.

    Returns:
        The record written to ``attack.json``: one row per (attack, norm, eps).
    """
    tic = time.perf_counter()
    cfg = load_saved_config(run_dir / CONFIG_FILE)
    if overrides:
        from cslrobust.config import build_run_config

        data = cfg.model_dump(mode="json")
        data["attack"] = {**data["attack"], **overrides}
        cfg = build_run_config(data)
    probe_path = run_dir / tagged(PROBE_WEIGHTS, tag)
    if not probe_path.is_file():
        raise CheckpointError(f"run folder {str(run_dir)!r} has no probe; run 'probe' first")
    probe_epoch = int(read_metadata(probe_path).get("checkpoint_epoch", "0")) or None
    run = load_run(run_dir, epoch=probe_epoch, device=device)
    encoder, splits, dev = run.encoder, run.splits, run.config.device
    att = cfg.attack
    if att.head == "own":
        if cfg.objective.name != "supervised":
            raise ConfigError(
                f"attack.head='own' needs a supervised run; {cfg.name!r} is {cfg.objective.name!r}"
            )
        head: nn.Module = encoder.head
    else:
        head = nn.Linear(encoder.feature_dim, splits.num_classes)
        load_weights(head, probe_path)
    model = Classifier(encoder, head).to(dev)

    subset = eval_subset(splits.test.labels.cpu(), att.n_images)
    # Attacks take [0,1] float images; the data set stores uint8.
    images = splits.test.images[subset.to(splits.test.images.device)].float().div_(255)
    labels = splits.test.labels[subset.to(splits.test.labels.device)]
    rows = []
    budgets = [("linf", e / 255.0, e) for e in att.eps_linf] + [("l2", e, e) for e in att.eps_l2]
    for attack in att.attacks:
        for norm, eps, eps_display in budgets:
            steps = 1 if attack == "fgsm" else att.steps
            step_size = (
                att.step_size * eps if att.step_size is not None else default_step_size(eps, steps)
            )
            res = robust_accuracy(
                model,
                images,
                labels,
                attack=attack,
                eps=eps,
                norm=norm,
                steps=steps,
                step_size=step_size,
                random_start=att.random_start,
                restarts=att.restarts,
                seed=cfg.seed,
                batch_size=att.batch_size,
                device=dev,
                progress=progress,
            )
            rows.append(
                {
                    "attack": attack,
                    "norm": norm,
                    "eps": eps,
                    "eps_display": f"{eps_display:g}/255" if norm == "linf" else f"{eps_display:g}",
                    "steps": steps,
                    "step_size": step_size,
                    "restarts": att.restarts if attack == "pgd" else 1,
                    "random_start": att.random_start if attack == "pgd" else False,
                    "clean_accuracy": res.clean_accuracy,
                    "robust_accuracy": res.robust_accuracy,
                    "attack_success_rate": res.attack_success_rate,
                    "max_perturbation": res.max_perturbation,
                    "n": res.n,
                    "clean_correct_bits": pack_bits(res.clean_correct.cpu()),
                    "robust_correct_bits": pack_bits(res.robust_correct.cpu()),
                }
            )
    record = {
        "run_id": cfg.run_id(),
        "name": cfg.name,
        "objective": cfg.objective.name,
        "checkpoint_epoch": run.checkpoint.epoch,
        "head": att.head,
        "n_images": int(subset.numel()),
        "attack_config": att.model_dump(mode="json"),
        "results": rows,
        "wall_seconds": time.perf_counter() - tic,
        **provenance(),
    }
    return publish(run_dir / tagged(ATTACK_FILE, tag), record)
