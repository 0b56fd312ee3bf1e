"""Worker functions of the multi-process training tests (imported by name in spawned processes).

Each function runs identically in one process (no process group: every collective is the identity)
and in each rank of a gloo group, so the parent compares the same code in both settings.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cslrobust.attacks.ascent import ViewAttack
from cslrobust.data import TensorImageDataset
from cslrobust.distributed import context, convert_global_batchnorm, gather_equal
from cslrobust.models import build_encoder
from cslrobust.objectives import (
    ACLSection,
    BarlowTwinsSection,
    BYOLSection,
    MoCoMethod,
    MoCoSection,
    ObjectiveSection,
    OracleSection,
    SimCLRFNRSection,
    SimCLRSection,
    SimSiamSection,
    SupConSection,
    ViewAttackSection,
    build_objective,
)
from cslrobust.objectives.method import build_method
from cslrobust.training import LoopSettings, build_sgd, train, warmup_cosine
from cslrobust.training.loop import _step_model, _ViewRunner

GLOBAL_BATCH = 8
N_CLASSES = 3
OBJECTIVES: dict[str, ObjectiveSection] = {
    "simclr": SimCLRSection(),
    "supcon": SupConSection(),
    "simclr_fnr": SimCLRFNRSection(fn=OracleSection(mode="eliminate")),
    "byol": BYOLSection(predictor_hidden_dim=16),
    "simsiam": SimSiamSection(predictor_hidden_dim=8),
    "barlow": BarlowTwinsSection(),
    # 24 keys: two steps' 16 keys each, so training wraps the queue around. Temperature 0.5 (SimCLR's)
    # rather than MoCo's 0.2: at 0.2 the summation-order differences of 2 vs 1 process grow to ~6e-3
    # in four steps (measured; 4e-6 at 0.5), beyond the trajectory test's tolerance.
    "moco": MoCoSection(queue_size=24, temperature=0.5),
    # ACL's dual stream with dual BN and oracle removal; no random start, so the attack is the same
    # in 1 and 2 processes (the random starts are drawn per rank, as the augmentations).
    "acl_oracle": ACLSection(
        fn=OracleSection(mode="eliminate"),
        attack=ViewAttackSection(steps=2, random_start=False),
    ),
}


def _perturbation(method: object) -> ViewAttack | None:
    """The view attack an adversarial method asks for (as the train stage builds it)."""
    settings = getattr(method, "attack_settings", None)
    if settings is None:
        return None
    a = settings()
    method.set_total_epochs(2)  # type: ignore[attr-defined]
    return ViewAttack(eps=a.eps, step_size=a.step_size, steps=a.steps, random_start=a.random_start)


def fixed_views(images: torch.Tensor, n_views: int) -> torch.Tensor:
    """Deterministic "augmentation": view k is the image flipped k times and shifted in brightness."""
    views = [images.flip(-1) if v % 2 else images for v in range(n_views)]
    return torch.cat([(view * (1 - 0.1 * v)).clamp(0, 1) for v, view in enumerate(views)])


def encoder(head_kind: str = "projector", seed: int = 0, arch: str = "resnet18") -> torch.nn.Module:
    """A small CIFAR ResNet-18 (or clip backbone) with BatchNorm everywhere (width 8, no channels_last)."""
    torch.manual_seed(seed)
    return build_encoder(
        arch,
        width=8,
        head_kind=head_kind,
        num_classes=N_CLASSES,
        proj_hidden_dim=32,
        proj_dim=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        channels_last=False,
    )


def global_batch(clips: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (or 4-frame clips) in [0,1], labels (with repeats, so supcon and the oracle have work)
    and instance ids."""
    g = torch.Generator().manual_seed(1)
    sample = (3, 4, 16, 16) if clips else (3, 16, 16)
    images = torch.rand(GLOBAL_BATCH, *sample, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])
    index = torch.arange(GLOBAL_BATCH) + 100
    return images, labels, index


class _Batch:
    def __init__(self, index: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.index, self.images, self.labels = index, images, labels


def _method(objective_name: str, arch: str = "resnet18"):
    """The method of ``objective_name`` around a fresh encoder (predictor seeded on its own)."""
    objective = build_objective(OBJECTIVES[objective_name])
    model = encoder(objective.head_kind, arch=arch)
    torch.manual_seed(7)
    return build_method(objective, model)


def loss_and_grads(
    rank: int, world_size: int, objective_name: str, arch: str = "resnet18"
) -> dict[str, torch.Tensor]:
    """One training step's loss and parameter gradients on the fixed global batch.

    Rank ``r`` of ``W`` takes the ``r``-th contiguous slice; the loop's runner gathers the global
    batch, DDP averages the gradients and global BatchNorm uses the statistics of all ranks (target
    networks included).
    """
    method = _method(objective_name, arch)
    settings = LoopSettings(epochs=1, batch_size=GLOBAL_BATCH, seed=0, progress=False)
    network = _step_model(method, settings, torch.device("cpu"))
    images, labels, index = global_batch(clips=arch != "resnet18")
    per_rank = GLOBAL_BATCH // world_size
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    for module in method.modules().values():
        module.train()
    views = fixed_views(images[mine], method.n_views)
    run = _ViewRunner(
        method.n_views, per_rank, "fp32", _perturbation(method), (0, 0, world_size, rank)
    )
    generator = torch.Generator().manual_seed(5)
    if isinstance(method, MoCoMethod):
        # A queue starts empty (loss 0): fill it with the keys of another global batch first.
        prime = torch.rand(GLOBAL_BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            method.loss(
                run,
                network,
                fixed_views(prime[mine], method.n_views),
                gather_equal(index[mine] + 50),
                gather_equal(labels[mine]),
                generator=generator,
                epoch=0,
            )
        method.after_step(0, 10)
    out = method.loss(
        run,
        network,
        views,
        gather_equal(index[mine]),
        gather_equal(labels[mine]),
        generator=generator,
        epoch=0,
    )
    out.loss.backward()
    named = method.network().named_parameters()
    grads = {name: p.grad.detach().clone() for name, p in named if p.grad is not None}
    buffers = {
        f"buffer/{key}/{name}": b.detach().clone()
        for key, module in method.modules().items()
        for name, b in module.named_buffers()
    }
    return {"loss": out.loss.detach(), **grads, **buffers}


def batchnorm_step(rank: int, world_size: int, clips: bool = False) -> dict[str, torch.Tensor]:
    """Global BatchNorm on this rank's slice of a fixed (8, 4, 5, 5) batch (clips: (8, 4, 3, 5, 5)):
    output slice and grads."""
    g = torch.Generator().manual_seed(2)
    shape = (8, 4, 3, 5, 5) if clips else (8, 4, 5, 5)
    x = torch.randn(*shape, generator=g) * 3 + 1
    weights = torch.randn(*shape, generator=g)
    bn = torch.nn.BatchNorm3d(4) if clips else torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 4))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, 4))
    bn = convert_global_batchnorm(bn).train()
    per_rank = 8 // world_size
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    x_mine = x[mine].clone().requires_grad_(True)
    out = bn(x_mine)
    # The rank's share of a global loss (the sum of the ranks' losses is the 1-process loss).
    (out * weights[mine]).sum().backward()
    return {
        "out": out.detach(),
        "x_grad": x_mine.grad.detach(),
        "weight_grad": bn.weight.grad.detach(),
        "bias_grad": bn.bias.grad.detach(),
        "running_mean": bn.running_mean.clone(),
        "running_var": bn.running_var.clone(),
    }


class _Stopped(Exception):
    """Raised by the hook of :func:`_stop_at` to interrupt training after an epoch."""


def _stop_at(epoch: int):
    def hook(done: int, metrics: dict[str, float]) -> None:
        if done == epoch:
            raise _Stopped

    return hook


def train_run(
    rank: int,
    world_size: int,
    folder: str,
    epochs: int,
    resume: bool,
    objective_name: str = "simclr_fnr",
    stop_after: int = 0,
) -> dict[str, torch.Tensor]:
    """``train()`` on a tiny data set with deterministic views; returns the final weights and state."""
    del rank
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.arange(16) % N_CLASSES
    data = TensorImageDataset(images, labels)
    method = _method(objective_name) if objective_name != "simclr_fnr" else None
    if method is None:  # the default oracle section, as before
        model = encoder("projector")
        method = build_method(build_objective(SimCLRFNRSection()), model)
    model = method.encoder
    optimizer = build_sgd(method.network(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    settings = LoopSettings(
        epochs=epochs, batch_size=GLOBAL_BATCH, seed=3, log_every=1, progress=False
    )
    steps = data.num_batches(GLOBAL_BATCH // world_size, True, world_size) * epochs
    try:
        result = train(
            method,
            fixed_views,
            data,
            optimizer,
            warmup_cosine(0.05, steps, warmup_steps=1),
            Path(folder),
            settings,
            resume=resume,
            epoch_hooks=[_stop_at(stop_after)] if stop_after else (),
            perturbation=_perturbation(method),
        )
    except (
        _Stopped
    ):  # interrupted as a killed run would be: the checkpoint of epoch stop_after stays
        return {"epochs": torch.tensor(stop_after)}
    assert context().world_size == world_size
    return {
        "epochs": torch.tensor(result.epochs_completed),
        "loss": torch.tensor([h["loss"] for h in result.history]),
        **{k: v.detach().clone() for k, v in model.state_dict().items()},
        **{f"method/{k}": v.detach().clone() for k, v in _canonical(method.state_dict()).items()},
    }


def _canonical(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A method state with its queue's entries in a layout-independent order (by id, then key).

    Ranks take interleaved positions of the epoch's order, so the gathered global batch holds the
    images of one process's batch in another row order, and a queue's slots hold its keys permuted
    within each step (the loss does not depend on the order).
    """
    if "queue.ids" not in state:
        return state
    keys, ids = state["queue.keys"], state["queue.ids"]
    projection = keys @ torch.linspace(1.0, 2.0, keys.shape[1], dtype=keys.dtype)
    by_key = torch.argsort(projection, stable=True)
    order = by_key[torch.argsort(ids[by_key], stable=True)]
    return state | {
        f"queue.{name}": state[f"queue.{name}"][order] for name in ("keys", "ids", "labels")
    }


def batch_of(rank: int, world_size: int, batch_size: int) -> int:
    """The per-rank batch for a global ``batch_size`` (raises when the ranks do not divide it)."""
    from cslrobust.training import rank_batch_size

    del rank, world_size
    return rank_batch_size(batch_size)
