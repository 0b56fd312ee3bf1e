"""The one training loop, shared by every objective and method.

The loop knows nothing about objective names: it trains a
:class:`~cslrobust.objectives.method.TrainingMethod`, asking it how many views it needs, handing it the
augmented views and a runner (precision, gathering across ranks) and backpropagating the loss it returns;
after each optimiser step it calls the method's hook (EMA targets, queues). A plain objective (supervised
cross-entropy, SimCLR, SupCon, false-negative removal) is a method whose network is the encoder; BYOL,
SimSiam and MoCo bring their own.

Reproducibility: the data order, the augmentation parameters and the objective's randomness of epoch ``e``
are drawn from streams seeded by ``(seed, stream, e)``, so training ``k`` epochs and resuming for the rest
gives the same weights as training straight through (with deterministic kernels, as on CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from cslrobust.distributed import (
    barrier,
    context,
    convert_global_batchnorm,
    gather_equal,
    gather_rows,
    gather_with_grad,
    rank_seed_keys,
)
from cslrobust.errors import CheckpointError, ConfigError, TrainingDivergedError
from cslrobust.objectives import objective_needs_bank, refresh_objective
from cslrobust.objectives.method import TrainingMethod, ViewPerturbation
from cslrobust.provenance import provenance
from cslrobust.run_files import field_error
from cslrobust.seeding import derive_seed, make_generator, rng_scope
from cslrobust.training.checkpoint import (
    WEIGHTS_HEADER,
    Checkpoint,
    check_optimizer_state,
    latest_checkpoint,
    load_state,
    load_weights,
    non_finite_in_checkpoint,
    save_checkpoint,
)
from cslrobust.training.metric_log import MetricLog
from cslrobust.training.optim import set_lr


class BatchLike(Protocol):
    """What the loop needs from a batch: ``(index, images in [0,1], labels)``."""

    index: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor


class TrainData(Protocol):
    """A data set that yields device-resident batches (see ``cslrobust.data.TensorImageDataset``)."""

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Any]:
        """Yield batches of one epoch."""
        ...

    def num_batches(self, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
        """Number of batches per epoch on each rank."""
        ...


ViewFn = Callable[[torch.Tensor, int], torch.Tensor]


Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class LoopSettings:
    """Plain settings of :func:`train` (built from ``TrainConfig`` by the caller).

    Attributes:
        batch_size: The global batch: with ``W`` ranks each rank draws ``batch_size / W`` images and
            the objective sees all ``batch_size`` (gathered), exactly as one process would.
        precision: ``"bf16"`` runs the encoder's forward pass under bf16 autocast; the objective
            always computes in float32.
        compile: ``torch.compile`` the model used for the training steps.
        sync_batchnorm: With several ranks, BatchNorm uses the statistics of the global batch
            (:class:`~cslrobust.distributed.GlobalBatchNorm2d`); no effect in one process.
    """

    epochs: int
    batch_size: int
    seed: int
    log_every: int = 20
    drop_last: bool = True
    keep_last: int = 2
    keep_every: int = 0
    channels_last: bool = False
    progress: bool = True
    precision: Precision = "fp32"
    compile: bool = False
    sync_batchnorm: bool = True


def rank_batch_size(batch_size: int) -> int:
    """Images per rank for the global ``batch_size``.

    Raises:
        ConfigError: If the number of ranks does not divide ``batch_size``.
    """
    world_size = context().world_size
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the {world_size} processes; "
            f"expected a multiple of {world_size}"
        )
    return batch_size // world_size


def steps_per_epoch(data: TrainData, batch_size: int, drop_last: bool) -> int:
    """Optimiser steps per epoch for the global ``batch_size`` over the current ranks."""
    world_size = context().world_size
    return data.num_batches(rank_batch_size(batch_size), drop_last, world_size)


@dataclass
class TrainResult:
    """Outcome of :func:`train`: per-epoch mean metrics and the last checkpoint."""

    epochs_completed: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    resumed_from: int = 0


@torch.no_grad()
def embed_dataset(model: nn.Module, data: TrainData, batch_size: int) -> torch.Tensor:
    """Head outputs of every training image, un-augmented, in eval mode; row i is dataset index i.

    Shape:
        returns (N, D) on the model's device.
    """
    was_training = model.training
    model.eval()
    ctx = context()
    try:
        index_chunks, out_chunks = [], []
        # Each rank embeds its share; the rows are gathered so every rank holds the whole bank.
        for batch in data.batches(
            batch_size,
            shuffle=False,
            generator=None,
            drop_last=False,
            rank=ctx.rank,
            world_size=ctx.world_size,
        ):
            index_chunks.append(batch.index)
            out_chunks.append(model(batch.images))
        index = gather_rows(torch.cat(index_chunks))
        out = gather_rows(torch.cat(out_chunks))
        bank = torch.empty_like(out)
        bank[index] = out
        return bank
    finally:
        model.train(was_training)


def _kept(checkpoint: Checkpoint | None) -> str:
    """Which checkpoint a diverged run keeps (every checkpoint written is finite)."""
    if checkpoint is None:
        return "no finite checkpoint was written"
    return f"last finite checkpoint kept: epoch {checkpoint.epoch} at {checkpoint.path}"


def _check_finite(
    loss_sum: torch.Tensor, epoch: int, step: int, checkpoint: Checkpoint | None
) -> None:
    value = float(loss_sum)
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"loss became {value} in epoch {epoch + 1} (by step {step}); stopped, "
            f"{_kept(checkpoint)}; lower train.lr or check the data"
        )


def _check_finite_weights(
    model: nn.Module, state: dict[str, Any], epoch: int, checkpoint: Checkpoint | None
) -> None:
    """Stop before writing the checkpoint of ``epoch`` (0-based) if a tensor holds NaN or inf.

    The loss can be finite at its last check while the weights are not (the last steps' updates).
    """
    bad = non_finite_in_checkpoint(model, state)
    if bad:
        raise TrainingDivergedError(
            f"weights became NaN or inf in epoch {epoch + 1} ({len(bad)} tensor(s), first "
            f"{bad[0]!r}); stopped without writing its checkpoint, {_kept(checkpoint)}; "
            "lower train.lr or check the data"
        )


def _resume(
    last: Checkpoint, method: TrainingMethod, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load a checkpoint's weights and training state into the encoder, optimiser and method.

    Raises:
        CheckpointError: If a file is damaged, unsafe, non-finite or does not fit (one line).
    """
    load_weights(method.encoder, last.model_file, require_finite=True, header=WEIGHTS_HEADER)
    state = load_state(last)
    path = last.state_file
    check_optimizer_state(state["optimizer"], optimizer, path)
    keys_before = [set(group) for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise field_error(
            "state file", path, "optimizer", "unusable", f"a loadable state ({first})"
        ) from None
    for i, (group, before) in enumerate(zip(optimizer.param_groups, keys_before, strict=True)):
        missing = sorted(before - set(group))
        if missing:
            raise field_error(
                "state file",
                path,
                f"optimizer.param_groups[{i}].{missing[0]}",
                "missing",
                "a value",
            )
    try:
        method.load_state_dict(state.get("objective", {}))
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise field_error(
            "state file", path, "objective", "unusable", f"this method's state ({first})"
        ) from None
    return state


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def train(
    method: TrainingMethod,
    make_views: ViewFn,
    data: TrainData,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.Tensor,
    checkpoint_dir: Path,
    settings: LoopSettings,
    *,
    weights_metadata: dict[str, str] | None = None,
    resume: bool = False,
    metric_log: MetricLog | None = None,
    epoch_hooks: Sequence[Callable[[int, dict[str, float]], None]] = (),
    perturbation: ViewPerturbation | None = None,
) -> TrainResult:
    """Train ``method`` for ``settings.epochs`` epochs, checkpointing every epoch.

    Args:
        method: What is trained (:func:`~cslrobust.objectives.method.build_method` of the objective
            and the encoder); ``method.encoder`` maps [0,1] images (N, 3, H, W) to head outputs and is
            the checkpoint's model, the method's other state goes to ``state.pt``.
        make_views: ``(images (B,3,H,W) in [0,1], n_views) -> (n_views*B, 3, H, W)`` view-major.
        data: Training data yielding device-resident batches.
        optimizer: Optimiser over ``method.network()``'s parameters (all of them).
        lr_schedule: Learning rate for each optimiser step, shape (epochs * steps_per_epoch,).
        checkpoint_dir: Folder for per-epoch checkpoints.
        settings: Loop settings.
        weights_metadata: Strings stored in every checkpoint's safetensors header (config, run id).
        resume: Continue from the latest checkpoint in ``checkpoint_dir`` if there is one.
        metric_log: Optional scalar log (JSON lines / TensorBoard).
        epoch_hooks: Called as ``hook(epoch, epoch_metrics)`` after each epoch's checkpoint.
        perturbation: The training-time attack on views that adversarial methods ask for through
            the view runner (built by the composition root; the loop does not import attacks).
            ``make_views`` may have ``set_epoch(epoch)`` (an epoch-dependent augmentation, e.g.
            DynACL's annealed strength); it is called before each epoch's views are drawn.

    Returns:
        The per-epoch metric history and the final checkpoint.

    Raises:
        TrainingDivergedError: If the loss or the weights become NaN/inf; no checkpoint of that
            epoch is written, and the message names the last (finite) checkpoint kept.
        CheckpointError: If resuming from an incompatible, damaged or non-finite checkpoint.
    """
    model = method.encoder
    objective = method.objective
    device = next(model.parameters()).device
    ctx = context()
    _check_optimised(method.network(), optimizer)
    local_batch = rank_batch_size(settings.batch_size)
    n_steps = steps_per_epoch(data, settings.batch_size, settings.drop_last)
    if n_steps == 0:
        raise CheckpointError(
            f"batch_size={settings.batch_size} exceeds the training set; expected a smaller batch"
        )
    total_steps = settings.epochs * n_steps
    if lr_schedule.numel() != total_steps:
        raise ValueError(f"lr_schedule has {lr_schedule.numel()} steps, expected {total_steps}")

    result = TrainResult(epochs_completed=0)
    start_epoch = 0
    last = latest_checkpoint(checkpoint_dir) if resume else None
    if last is not None:
        state = _resume(last, method, optimizer)
        start_epoch = int(state["epoch"])
        result.history = [dict(h) for h in state.get("history", [])]
        result.checkpoint = last
        result.resumed_from = start_epoch
        if start_epoch > settings.epochs:
            raise CheckpointError(
                f"checkpoint at epoch {start_epoch} is past train.epochs={settings.epochs}"
            )
    result.epochs_completed = start_epoch
    network = _step_model(method, settings, device)

    n_views = method.n_views
    for epoch in range(start_epoch, settings.epochs):
        bank_metrics: dict[str, float] = {}
        if objective_needs_bank(objective, epoch):
            # Detectors with a feature bank (e.g. k-means pseudo-labels) refresh it before the epoch.
            bank = embed_dataset(model, data, settings.batch_size)
            bank_metrics = refresh_objective(
                objective,
                bank,
                epoch=epoch,
                generator=make_generator(settings.seed, "bank", epoch, device=device),
            )
        for module in method.modules().values():
            module.train()
        set_epoch = getattr(make_views, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        data_gen = make_generator(settings.seed, "data", epoch)
        objective_gen = make_generator(settings.seed, "objective", epoch, device=device)
        sums: dict[str, torch.Tensor] = {}
        step_in_epoch = 0
        seen = 0
        tic = time.perf_counter()
        bar = tqdm(
            total=n_steps,
            desc=f"epoch {epoch + 1}/{settings.epochs}",
            disable=not settings.progress or not ctx.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        # Each rank augments its own images: per-rank augmentation streams (none added in one process).
        augment_seed = derive_seed(
            settings.seed, "augment", epoch, *rank_seed_keys(ctx.world_size, ctx.rank)
        )
        with rng_scope(augment_seed, device):
            batches = data.batches(
                local_batch,
                shuffle=True,
                generator=data_gen,
                drop_last=settings.drop_last,
                rank=ctx.rank,
                world_size=ctx.world_size,
            )
            for batch in batches:
                global_step = epoch * n_steps + step_in_epoch
                set_lr(optimizer, float(lr_schedule[global_step]))
                views = make_views(batch.images, n_views)  # (V*b, 3, H, W)
                if settings.channels_last:  # NHWC for images, NDHWC for clips
                    views = views.contiguous(memory_format=_CHANNELS_LAST[views.ndim])
                # Collectives need the backend's device (NCCL: CUDA): ids travel like the outputs.
                index = gather_equal(batch.index.to(device))
                labels = gather_equal(batch.labels.to(device))
                run = _ViewRunner(
                    n_views,
                    batch.images.shape[0],
                    settings.precision,
                    perturbation,
                    (settings.seed, global_step, ctx.world_size, ctx.rank),
                )
                # Every rank evaluates the loss on the same global batch (same generator).
                out = method.loss(
                    run, network, views, index, labels, generator=objective_gen, epoch=epoch
                )
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                method.after_step(global_step, total_steps)

                metrics = {"loss": out.loss.detach(), **out.metrics}
                for key, value in metrics.items():
                    value = torch.as_tensor(value, device=device, dtype=torch.float32).detach()
                    sums[key] = sums[key] + value if key in sums else value.clone()
                step_in_epoch += 1
                seen += index.shape[0]
                bar.update(1)
                # Fetching the loss syncs host and device: only every ``log_every`` steps.
                if step_in_epoch % settings.log_every == 0:
                    _check_finite(sums["loss"], epoch, step_in_epoch, result.checkpoint)
                    rate = seen * n_views / (time.perf_counter() - tic)
                    bar.set_postfix(loss=f"{float(out.loss.detach()):.4f}", img_s=f"{rate:.0f}")
        bar.close()
        _check_finite(sums["loss"], epoch, step_in_epoch, result.checkpoint)
        elapsed = time.perf_counter() - tic
        epoch_metrics = {k: float(v) / step_in_epoch for k, v in sums.items()}
        epoch_metrics["lr"] = float(lr_schedule[(epoch + 1) * n_steps - 1])
        epoch_metrics["images_per_s"] = seen * n_views / elapsed
        epoch_metrics["epoch_seconds"] = elapsed
        epoch_metrics.update({f"bank/{k}": float(v) for k, v in bank_metrics.items()})
        result.history.append({"epoch": epoch + 1, **epoch_metrics})
        if metric_log is not None:
            metric_log.log(epoch + 1, epoch_metrics, prefix="train/")

        state = {
            "epoch": epoch + 1,
            "global_step": (epoch + 1) * n_steps,
            "optimizer": optimizer.state_dict(),
            "history": result.history,
            "rng_cpu": torch.get_rng_state(),
            "objective": method.state_dict(),
        }
        # Every rank holds the same weights, so every rank stops here together.
        _check_finite_weights(model, state, epoch, result.checkpoint)
        if ctx.is_main:  # one rank writes; every rank resumes from it
            result.checkpoint = save_checkpoint(
                checkpoint_dir,
                epoch + 1,
                model,
                state,
                {"metrics": epoch_metrics, **provenance()},
                weights_metadata or {},
                keep_last=settings.keep_last,
                keep_every=settings.keep_every,
            )
        barrier()
        if not ctx.is_main:
            result.checkpoint = latest_checkpoint(checkpoint_dir)
        result.epochs_completed = epoch + 1
        for hook in epoch_hooks:
            hook(epoch + 1, epoch_metrics)
    return result


def _check_optimised(network: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The optimiser must hold every trainable parameter of the method's network.

    Raises:
        ConfigError: If a parameter is missing (e.g. an optimiser built over the encoder alone for a
            method with a predictor).
    """
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in network.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        raise ConfigError(
            f"the optimiser does not hold {len(missing)} trainable parameter(s) of the method "
            f"(first {missing[0]!r}); expected an optimiser over method.network()"
        )


def _step_model(method: TrainingMethod, settings: LoopSettings, device: torch.device) -> nn.Module:
    """The module the steps call: the method's network with DDP across ranks, maybe compiled.

    Across ranks every BatchNorm of every module of the method (target networks included) uses the
    global batch's statistics; only the network is wrapped in DDP (its gradients are averaged).
    The network itself stays the one whose weights are checkpointed (DDP and ``torch.compile`` wrap
    it, sharing its parameters); global BN swaps layers in place with the same parameter names.
    """
    step_model = method.network()
    if context().world_size > 1:
        if settings.sync_batchnorm:
            for module in method.modules().values():
                convert_global_batchnorm(module)
        step_model = DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if settings.compile:
        step_model = torch.compile(step_model)
    return step_model


class _ViewRunner:
    """The loop's :class:`~cslrobust.objectives.method.ViewRunner` for one step.

    ``attack_keys`` = ``(seed, global step, world size, rank)``: the step's attack stream is
    ``(seed, "attack", step)`` plus the rank in a multi-process run (none added in one process).
    """

    def __init__(
        self,
        n_views: int,
        local_batch: int,
        precision: Precision,
        perturbation: ViewPerturbation | None = None,
        attack_keys: tuple[int, int, int, int] = (0, 0, 1, 0),
    ) -> None:
        self.n_views = n_views
        self.local_batch = local_batch
        self.precision = precision
        self.perturbation = perturbation
        self.attack_keys = attack_keys

    def perturb(
        self, loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """Adversarial ``x`` for ``loss_fn`` with this step's attack stream (see the protocol)."""
        if self.perturbation is None:
            raise ConfigError(
                "this method attacks its views but the loop was given no perturbation; "
                "expected train(..., perturbation=ViewAttack(...)) from the train stage"
            )
        seed, step, world_size, rank = self.attack_keys
        generator = make_generator(
            seed, "attack", step, *rank_seed_keys(world_size, rank), device=x.device
        )
        return self.perturbation(loss_fn, x, generator=generator)

    def __call__(
        self, module: nn.Module, views: torch.Tensor, *, grad: bool = True
    ) -> torch.Tensor:
        """Float32 outputs ``(V, B, D)`` of the global batch (gradients to this rank's rows)."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            with torch.autocast(
                views.device.type, torch.bfloat16, enabled=self.precision == "bf16"
            ):
                outputs = module(views)  # (V*b, D)
            # (V, b, D): V = the views given (n_views for the loop's views; fewer or more for
            # an adversarial method's own batches of views)
            outputs = outputs.float().view(-1, self.local_batch, outputs.shape[-1])
            return gather_with_grad(outputs, dim=1)  # (V, B, D)
