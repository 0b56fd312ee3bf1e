"""One training loop for every objective, with optimiser, schedules and checkpoints."""

from cslrobust.training.checkpoint import (
    Checkpoint,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    save_weights,
)
from cslrobust.training.loop import (
    LoopSettings,
    TrainResult,
    rank_batch_size,
    steps_per_epoch,
    train,
)
from cslrobust.training.metric_log import MetricLog
from cslrobust.training.optim import OPTIMIZERS, build_optimizer, build_sgd
from cslrobust.training.schedules import warmup_cosine

__all__ = [
    "Checkpoint",
    "LoopSettings",
    "MetricLog",
    "OPTIMIZERS",
    "TrainResult",
    "build_optimizer",
    "build_sgd",
    "find_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_weights",
    "rank_batch_size",
    "save_weights",
    "steps_per_epoch",
    "train",
    "warmup_cosine",
]
