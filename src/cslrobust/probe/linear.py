"""Linear probe on frozen features, model selection on the validation split.

Features are standardised (per-dimension mean/std of the training features) while the probe is trained,
which makes one learning rate work across methods whose feature scales differ by orders of magnitude; the
standardisation is then folded exactly into the linear layer, so the returned head maps raw encoder
features to logits and the composite model is ``normalise -> backbone -> nn.Linear`` with nothing hidden.

Dead features. A feature whose training std is at most
``max(DEAD_STD_RELATIVE * largest feature std, DEAD_STD_FLOOR)`` carries no usable signal on the training
split (a ReLU channel that never fires, a constant). Dividing it by its (clamped) std would turn float
rounding into large standardised values during training and, after the fold, leave its weight multiplied
by up to ``1 / DEAD_STD_FLOOR``: a tiny activation of that feature at test time would then swing the
logits. Such features are instead standardised to 0 and get weight exactly 0 in the folded head, so the
head ignores them; :attr:`ProbeResult.dead_features` counts them. The relative threshold (1e-3: a feature
varying a thousand times less than the most varying one) makes the rule independent of a method's
feature scale; the absolute floor (the former clamp, 1e-6) catches an encoder whose features are all
constant. Features that are not dead are computed exactly as without the rule (same operations, same
order), so probes with no dead feature are bitwise unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from cslrobust.seeding import make_generator
from cslrobust.training.schedules import warmup_cosine

DEAD_STD_RELATIVE = 1e-3
"""Dead-feature threshold, as a fraction of the largest training feature std."""

DEAD_STD_FLOOR = 1e-6
"""Absolute dead-feature threshold; also the clamp that keeps every division finite."""


@dataclass
class ProbeResult:
    """A trained probe head and its selection record.

    Attributes:
        head: Linear layer on raw encoder features (standardisation folded in).
        best_epoch: Selected epoch (1-based).
        best_val_accuracy: Validation accuracy of the selected epoch (NaN without validation).
        history: Per-epoch loss and accuracies.
        dead_features: Number of features with zero weight because their training std is below
            the dead-feature threshold (see the module docstring).
    """

    head: nn.Linear
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    dead_features: int = 0


def dead_feature_mask(
    std: torch.Tensor, *, relative: float = DEAD_STD_RELATIVE, floor: float = DEAD_STD_FLOOR
) -> torch.Tensor:
    """Features whose std is at most ``max(relative * std.max(), floor)``.

    Shape:
        std: (F,) per-feature standard deviations. Returns (F,) bool.
    """
    threshold = max(relative * float(std.max()), floor)
    return std <= threshold


def fold_standardisation(
    head: nn.Linear,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    dead: torch.Tensor | None = None,
) -> nn.Linear:
    """Return a linear layer ``g`` with ``g(h) == head(z)`` exactly (up to rounding).

    ``z = (h - mean) / std``, with ``z`` set to 0 on ``dead`` features: they get weight exactly 0
    and do not enter the bias. Without dead features the operations are those of the plain fold.

    Shape:
        mean, std: (F,); dead: (F,) bool or None; head: F -> C.
    """
    weight = head.weight if dead is None else head.weight.masked_fill(dead, 0.0)
    folded = nn.Linear(head.in_features, head.out_features).to(head.weight.device)
    with torch.no_grad():
        folded.weight.copy_(weight / std)
        folded.bias.copy_(head.bias - (weight * (mean / std)).sum(dim=1))
    return folded


@torch.no_grad()
def accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``head`` on precomputed features."""
    if features.shape[0] == 0:
        return float("nan")
    return float((head(features).argmax(dim=1) == labels).float().mean())


def train_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    num_classes: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    dead_std_relative: float = DEAD_STD_RELATIVE,
    dead_std_floor: float = DEAD_STD_FLOOR,
) -> ProbeResult:
    """Train a linear classifier on frozen features; keep the epoch with the best validation accuracy.

    SGD with momentum 0.9 and a cosine schedule on standardised features. With an empty validation set
    the last epoch is kept. Dead features (see the module docstring) are standardised to 0 and get
    weight 0 in the returned head.

    Args:
        train_features: (N, F) float features of the training split.
        train_labels: (N,) int64 labels.
        val_features: (M, F) validation features (M may be 0).
        val_labels: (M,) labels.
        num_classes: Number of classes C.
        epochs: Passes over the training features.
        lr: Peak learning rate.
        weight_decay: L2 penalty on the weights.
        batch_size: Mini-batch size.
        seed: Seeds initialisation and shuffling.
        dead_std_relative: Dead-feature threshold relative to the largest feature std.
        dead_std_floor: Absolute dead-feature threshold; also the clamp of the std.

    Returns:
        The best head (on raw features), the per-epoch history and the dead-feature count.
    """
    device = train_features.device
    mean = train_features.mean(dim=0)
    raw_std = train_features.std(dim=0)
    dead = dead_feature_mask(raw_std, relative=dead_std_relative, floor=dead_std_floor)
    std = raw_std.clamp_min(dead_std_floor)
    # masked_fill leaves every live feature's value untouched (bitwise), and zeroes dead ones.
    x_train = ((train_features - mean) / std).masked_fill(dead, 0.0)
    x_val = ((val_features - mean) / std).masked_fill(dead, 0.0)

    init_gen = make_generator(seed, "probe_init")
    head = nn.Linear(train_features.shape[1], num_classes)
    with torch.no_grad():
        bound = 1.0 / train_features.shape[1] ** 0.5
        head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=init_gen))
        head.bias.zero_()
    head = head.to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-x_train.shape[0] // batch_size))
    schedule = warmup_cosine(lr, epochs * steps_per_epoch, warmup_steps=0)

    best_state = copy.deepcopy(head.state_dict())
    best_epoch, best_val = 0, -1.0
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        order = torch.randperm(
            x_train.shape[0], generator=make_generator(seed, "probe_data", epoch)
        ).to(device)
        total = torch.zeros((), device=device)
        for i, start in enumerate(range(0, x_train.shape[0], batch_size)):
            for group in optimizer.param_groups:
                group["lr"] = float(schedule[epoch * steps_per_epoch + i])
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(head(x_train[idx]), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * idx.numel()
        val_acc = accuracy(head, x_val, val_labels) if x_val.shape[0] else float("nan")
        train_acc = accuracy(head, x_train, train_labels)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(total) / x_train.shape[0],
                "train_accuracy": train_acc,
                "val_accuracy": val_acc,
            }
        )
        # Strictly better only: ties keep the earlier (less fitted) epoch; no val -> keep the last.
        if x_val.shape[0] == 0 or val_acc > best_val:
            best_val, best_epoch = val_acc, epoch + 1
            best_state = copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    return ProbeResult(
        head=fold_standardisation(head, mean, std, dead=dead),
        best_epoch=best_epoch,
        best_val_accuracy=best_val,
        history=history,
        dead_features=int(dead.sum()),
    )
