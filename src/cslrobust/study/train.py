"""Train stage: train one model and write its checkpoints and ``train.json``."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cslrobust.attacks.ascent import ViewAttack
from cslrobust.augment import ScheduledViews, build_augment
from cslrobust.config import RunConfig, load_saved_config, save_config
from cslrobust.distributed import barrier, context, is_main, on_main
from cslrobust.errors import ConfigError
from cslrobust.models import Encoder
from cslrobust.objectives import Objective, build_objective
from cslrobust.objectives.method import build_method
from cslrobust.provenance import provenance
from cslrobust.records import ensure_writable_dir, write_json_atomic
from cslrobust.seeding import derive_seed
from cslrobust.study.run_folder import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    SKIPPED_VIDEOS_FILE,
    TRAIN_FILE,
    init_run_encoder,
    load_data,
    on_this_process,
    publish,
)
from cslrobust.study.stages import Rows, Stage, register_stage
from cslrobust.training import (
    LoopSettings,
    MetricLog,
    build_optimizer,
    latest_checkpoint,
    steps_per_epoch,
    train,
    warmup_cosine,
)
from cslrobust.training.loop import ViewFn


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
    on_main(lambda: ensure_writable_dir(run_dir))  # before any work: fail now, not after training
    fresh = not config_path.is_file()
    if not fresh:
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
    main = is_main()

    tic = time.perf_counter()
    splits = load_data(cfg, progress=progress)
    if splits.skipped:  # data.skip_bad: which videos the run did without, and why
        skipped = [{"path": path, "reason": reason} for path, reason in splits.skipped]
        on_main(lambda: write_json_atomic(run_dir / SKIPPED_VIDEOS_FILE, skipped))
    objective = build_objective(cfg.objective)
    encoder = init_run_encoder(cfg, splits, objective.head_kind)
    make_views = build_augment(cfg.augment).to(cfg.device)
    # A method's own modules (predictor, target network) draw their initial weights from a stream
    # of their own: the encoder's initialisation and every later draw are as without them.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "method"))
        method = build_method(objective, encoder)
    tr = cfg.train
    make_views, perturbation = _adversarial_wiring(method, cfg, make_views)
    optimizer = build_optimizer(method.network(), tr)
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
    # config.json is written only once the data loaded and the setup checks passed, and removed
    # again if this call wrote it and training ends without a checkpoint: a failed start never
    # blocks the run's name. A resumed run keeps the config.json it has (same run id, checked
    # above): nothing already written is rewritten.
    if fresh:
        on_main(lambda: save_config(cfg, config_path))
    with _forget_config_on_failure(config_path, checkpoint_dir, fresh=fresh and main):
        with contextlib.ExitStack() as stack:
            log = (
                stack.enter_context(MetricLog(run_dir, tensorboard=tr.tensorboard))
                if main
                else None
            )
            result = train(
                method,
                make_views,
                splits.train,
                optimizer,
                schedule,
                checkpoint_dir,
                settings,
                weights_metadata=metadata,
                resume=resume,
                metric_log=log,
                perturbation=perturbation,
            )
    summary = {
        "run_id": cfg.run_id(),
        "name": cfg.name,
        "objective": cfg.objective.name,
        "epochs": result.epochs_completed,
        "resumed_from": result.resumed_from,
        "train_images": len(splits.train),
        "skipped_videos": len(splits.skipped),
        "processes": context().world_size,
        "peak_lr": tr.peak_lr(),
        "views_per_image": objective.n_views,
        "history": result.history,
        "checkpoint": str(result.checkpoint.path) if result.checkpoint else None,
        "wall_seconds": time.perf_counter() - tic,
        **provenance(),
    }
    return publish(run_dir / TRAIN_FILE, summary)


def _adversarial_wiring(
    method: object, cfg: RunConfig, make_views: ViewFn
) -> tuple[ViewFn, ViewAttack | None]:
    """What an adversarial method needs from the composition root.

    Its view attack (built here from the method's ``attack_settings()``: the loop never imports
    the attack layer), the run's length (``set_total_epochs``) and, for an annealed augmentation
    (``augment_strength``), views whose strength follows the epoch. Other methods: unchanged.
    """
    settings = getattr(method, "attack_settings", None)
    if settings is None:
        return make_views, None
    attack = settings()
    perturbation = ViewAttack(
        eps=attack.eps,
        step_size=attack.step_size,
        steps=attack.steps,
        random_start=attack.random_start,
    )
    method.set_total_epochs(cfg.train.epochs)  # type: ignore[attr-defined]
    strength = getattr(method, "augment_strength", None)
    if strength is not None:
        make_views = ScheduledViews(cfg.augment, strength, cfg.device)
    return make_views, perturbation


@contextlib.contextmanager
def _forget_config_on_failure(
    config_path: Path, checkpoint_dir: Path, *, fresh: bool
) -> Iterator[None]:
    """On any failure, remove ``config_path`` if this call wrote it (``fresh``) and no checkpoint exists."""
    try:
        yield
    except BaseException:
        if fresh and latest_checkpoint(checkpoint_dir) is None:
            config_path.unlink(missing_ok=True)
        raise


def train_rows(summary: dict[str, Any]) -> Rows:
    """Rows of the train stage: per-epoch means of every logged metric, and the wall time."""
    rows: Rows = [{"metric": "train_seconds", "value": summary["wall_seconds"]}]
    if "views_per_image" in summary:  # views per image per step (protocol transparency)
        rows.append({"metric": "train/views_per_image", "value": summary["views_per_image"]})
    for record in summary["history"]:
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch":
                rows.append({"metric": f"train/{key}", "epoch": epoch, "value": value})
    return rows


register_stage(
    Stage(
        name="train",
        order=10,
        run=lambda cfg, progress: train_rows(run_train(cfg, resume=True, progress=progress)),
        digest=lambda cfg: cfg.run_id(),
        sections=("detector",),
    )
)
