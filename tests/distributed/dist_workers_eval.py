"""Worker functions for the sharded-evaluation tests, run in each rank by ``dist_spawn.run_ranks``.

Each worker takes ``(rank, world_size, ...)`` and returns what the test compares with one process.
The toy model and data are built here, deterministically, so the parent test computes the same
one-process reference with the same functions.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cslrobust import distributed
from cslrobust.attacks import AutoAttackBudget, robust_accuracy, run_autoattack
from cslrobust.attacks.gates import gate_adversarial_examples, gate_input_gradients
from cslrobust.attacks.sweep import minimal_perturbation
from cslrobust.corruptions import evaluate_corruptions
from cslrobust.probe import extract_features


def plain(obj: Any) -> Any:
    """Result dataclasses as dicts, recursively: what ``run_ranks`` can send back to the parent."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {key: plain(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(value) for value in obj]
    return obj


def toy_model(seed: int = 0) -> nn.Module:
    """A tiny CNN from [0,1] images (3, H, W) to 10 logits, initialised from ``seed``, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(128, 10),
        )
    return model.eval()


def toy_data(n: int, size: int = 16, seed: int = 1) -> tuple[Tensor, Tensor]:
    """``n`` random uint8 images and labels: the toy model's predictions, a quarter of them changed.

    So clean accuracy is about 75% and attacks have correct samples to flip.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        labels = toy_model()(images.float() / 255).argmax(dim=1)
    changed = torch.arange(n) % 4 == 3
    labels[changed] = (labels[changed] + 1) % 10
    return images, labels


def gather_ordering(rank: int, world_size: int, batch_counts: list[int]) -> list[dict[str, Any]]:
    """:func:`gather_case` for each number of batches."""
    del world_size
    return [gather_case(rank, n_batches) for n_batches in batch_counts]


def gather_case(rank: int, n_batches: int) -> dict[str, Any]:
    """Shard/gather of batches of unequal lengths, object gathering and ``on_main``."""
    positions = [position for position, _ in distributed.shard(list(range(n_batches)))]
    # Batch i holds i + 1 rows, each row (i, row index): order and lengths are both checked.
    results = {
        i: torch.stack([torch.full((i + 1,), i), torch.arange(i + 1)], dim=1) for i in positions
    }
    gathered = distributed.gather_batches(results, n_batches)
    objects = distributed.sharded_map_objects(
        [f"item{i}" for i in range(n_batches)], lambda i, item: (i, item, rank)
    )
    rows = distributed.sharded_batches(
        2 * n_batches + 1, 2, lambda i, s: torch.arange(s.start, s.stop) * 10 + i
    )
    main_rank = distributed.on_main(lambda: rank)
    try:
        distributed.on_main(_fail)
        error = ""
    except ValueError as raised:
        error = str(raised)
    return {
        "positions": positions,
        "gathered": gathered,
        "objects": objects,
        "rows": rows,
        "main_rank": main_rank,
        "error": error,
    }


def _fail() -> None:
    raise ValueError("raised on rank 0")


def attack_results(rank: int, world_size: int, cases: list[dict[str, Any]]) -> list[Any]:
    """:func:`robust_accuracy` for each case (``n``, ``batch_size`` and attack keyword arguments)."""
    del rank, world_size
    return [plain(attack_case(**case)) for case in cases]


def attack_case(n: int, batch_size: int, **kwargs: Any) -> Any:
    """One :func:`robust_accuracy` call on the toy model and ``n`` toy images."""
    images, labels = toy_data(n)
    return robust_accuracy(
        toy_model(), images.float() / 255, labels, batch_size=batch_size, seed=3, **kwargs
    )


def autoattack_result(rank: int, world_size: int, state_dir: str | None) -> Any:
    """A cheap custom AutoAttack (APGD-CE then APGD-DLR, 3 iterations) on 30 toy images."""
    del rank, world_size
    images, labels = toy_data(30)
    result = run_autoattack(
        toy_model(),
        images.float() / 255,
        labels,
        eps=16 / 255,
        version="custom",
        attacks=["apgd-ce", "apgd-dlr"],
        budget=AutoAttackBudget(n_iter=3),
        seed=5,
        batch_size=8,
        state_dir=Path(state_dir) if state_dir is not None else None,
    )
    return plain(result)


def features_and_corruptions(rank: int, world_size: int, cache_dir: str) -> dict[str, Any]:
    """Features of 50 images (batches of 16) and corruption rows of 3 conditions (32x32 images)."""
    del rank, world_size
    return features_and_corruptions_once(Path(cache_dir))


def features_and_corruptions_once(cache_dir: Path) -> dict[str, Any]:
    """What :func:`features_and_corruptions` computes, in the calling process."""
    model = toy_model()
    images, _ = toy_data(50)
    features = extract_features(model[:4], model, images, batch_size=16, device="cpu")
    images32, labels32 = toy_data(24, size=32)

    def predict(x: Tensor) -> Tensor:
        logits: Tensor = model(x)
        return logits

    rows = evaluate_corruptions(
        predict,
        images32,
        labels32,
        names=["gaussian_noise", "brightness"],
        severities=[1, 4],
        seed=0,
        cache_dir=cache_dir,
        batch_size=10,
    )
    return plain({"features": features, "rows": rows})


def fab_and_gates(rank: int, world_size: int) -> dict[str, Any]:
    """FAB minimal perturbations and the two gates that run the model, on 20 toy images."""
    del rank, world_size
    return fab_and_gates_once()


def fab_and_gates_once() -> dict[str, Any]:
    """What :func:`fab_and_gates` computes, in the calling process."""
    model = toy_model()
    images, labels = toy_data(20)
    x = images.float() / 255
    fab = minimal_perturbation(model, x, labels, norm="linf", n_iter=5, seed=2, batch_size=8)
    x_adv = (
        x + 0.01 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(4)))
    ).clamp(0, 1)
    reported = robust_accuracy(model, x, labels, attack="fgsm", eps=0.0, seed=0, batch_size=8)
    examples = gate_adversarial_examples(
        model,
        x,
        labels,
        x_adv,
        eps=0.01,
        norm="linf",
        reported_robust_correct=reported.clean_correct,
        batch_size=8,
    )
    gradients = gate_input_gradients(model, x, labels, batch_size=8)
    return plain({"fab": fab, "examples": examples, "gradients": gradients})


def stage_records(rank: int, world_size: int, run_dir: str) -> dict[str, Any]:
    """:func:`stages_once` in each rank."""
    del rank, world_size
    return stages_once(Path(run_dir))


def stages_once(run_dir: Path) -> dict[str, Any]:
    """The records of probe, attack, evaluate (a tiny standard suite) and analyze on a trained run."""
    from cslrobust.config import EvaluationConfig
    from cslrobust.study.analyze import run_analyze
    from cslrobust.study.attack import run_attack
    from cslrobust.study.evaluate import run_evaluate
    from cslrobust.study.probe import run_probe
    from cslrobust.study.run_folder import run_settings

    evaluation = EvaluationConfig(
        n_images=40,
        batch_size=16,
        eps_linf=("1/255", "2/255"),
        eps_l2=(0.25,),
        steps=2,
        convergence_restarts=2,
        autoattack_version="custom",
        autoattack_attacks=("apgd-ce",),
        autoattack_eps_linf=("2/255",),
        fab_images=10,
        fab_n_iter=5,
        corruptions=("gaussian_noise",),
        severities=(1, 3),
        corruption_images=20,
    )
    records = {
        "probe": run_probe(run_dir, progress=False),
        "attack": run_attack(run_dir, progress=False),
        "evaluate": run_evaluate(
            run_dir,
            config=run_settings(run_dir).model_copy(update={"evaluation": evaluation}),
            progress=False,
        ),
        "analyze": run_analyze(run_dir, progress=False, tsne=False),
    }
    return json.loads(json.dumps(records))  # as written to disk (plain types, e.g. torch's version)
