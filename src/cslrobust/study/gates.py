"""Gates stage: sanity gates on the attack stage's numbers, run on every cell by default.

The attack stage's rows feed the result gates (row eps = 0, monotone in eps, ordering); the model gates
re-run the attack stage's own settings on the first ``gates.n_images`` of its fixed test subset
(whole attack path at eps = 0, large eps, input gradients, PGD convergence at the largest reported
L-inf eps). Writes ``gates.json``; rows ``gate/<name>`` (1 pass, 0 fail) carry each gate's message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor

from cslrobust.attacks import (
    AccuracyRow,
    ConvergenceSettings,
    GateAttack,
    GateResult,
    GateThresholds,
    format_gates,
    run_gates,
)
from cslrobust.config import RunConfig, section_identity
from cslrobust.errors import CheckpointError
from cslrobust.provenance import provenance
from cslrobust.records import read_json_record
from cslrobust.study.attack import ATTACK_RECORD, probed_target
from cslrobust.study.run_folder import (
    ATTACK_FILE,
    GATES_FILE,
    ProbedRun,
    checked_count,
    load_probed_run,
    publish,
    test_subset,
)
from cslrobust.study.stages import Rows, Stage, register_stage


def attack_gates(
    run: ProbedRun, points: Sequence[AccuracyRow], images: Tensor, labels: Tensor
) -> list[GateResult]:
    """Every gate for the attack settings of ``run.config.attack`` on ``images`` ([0,1]) and ``labels``.

    ``points`` are the attack stage's results (for the result gates); the model gates re-run the
    configured attacks (whole path at eps = 0, ``gates.large_eps_linf``, PGD convergence at the
    largest L-inf eps) in the attack stage's precision (``attack.precision``).
    """
    cfg, att, gates = run.config, run.config.attack, run.config.gates
    attacks = [
        GateAttack(
            attack=name,
            norm="linf",
            steps=1 if name == "fgsm" else att.steps,
            relative_step_size=att.step_size,
            restarts=att.restarts if name != "fgsm" else 1,
        )
        for name in att.attacks
    ]
    largest = max(att.eps_linf, default=0.0)
    convergence = (
        [
            ConvergenceSettings(
                eps=largest, norm="linf", steps=att.steps, restarts=gates.convergence_restarts
            )
        ]
        if "pgd" in att.attacks and largest > 0
        else []
    )
    with probed_target(run) as target:
        return run_gates(
            points,
            target=target,
            images=images,
            labels=labels,
            convergence=convergence,
            gate_attacks=attacks,
            thresholds=GateThresholds(large_eps=gates.large_eps_linf),
            seed=cfg.seed,
            batch_size=gates.batch_size,
            device=cfg.device,
        )


def gate_images(run: ProbedRun) -> tuple[Tensor, Tensor]:
    """The first ``gates.n_images`` of the attack stage's fixed test subset, as [0,1] floats."""
    cfg = run.config
    _, images, labels = test_subset(
        run.splits, checked_count(cfg, "attack.n_images", len(run.splits.test))
    )
    wanted = checked_count(cfg, "gates.n_images", len(images), "images of the attack subset")
    n = len(images) if wanted is None else min(wanted, len(images))
    return images[:n].float().div_(255), labels[:n]


def run_gates_stage(
    run_dir: Path, *, config: RunConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Apply every sanity gate to a run's attack stage; write ``gates.json``.

    Raises:
        CheckpointError: If the run has no ``attack.json`` (run the attack stage first).
    """
    tic = time.perf_counter()
    run = load_probed_run(run_dir, config=config, progress=progress)
    cfg = run.config
    attack_path = run_dir / ATTACK_FILE
    if not attack_path.is_file():
        raise CheckpointError(f"run folder {str(run_dir)!r} has no attack.json; run 'attack' first")
    record = read_json_record(attack_path, what="attack record", spec=ATTACK_RECORD)
    points = [
        AccuracyRow(
            r["attack"], r["norm"], r["eps"], r["clean_accuracy"], r["robust_accuracy"], r["n"]
        )
        for r in record["results"]
    ]
    images, labels = gate_images(run)
    results = attack_gates(run, points, images, labels)
    out = {
        "run_id": cfg.run_id(),
        "name": cfg.name,
        "objective": cfg.objective.name,
        "checkpoint_epoch": run.checkpoint.epoch,
        "n_images": len(images),
        "gates_config": cfg.gates.model_dump(mode="json"),
        "attack_config": cfg.attack.model_dump(mode="json"),
        "gates": [asdict(g) for g in results],
        "gates_failed": [g.name for g in results if not g.passed],
        "gates_text": format_gates(results),
        "wall_seconds": time.perf_counter() - tic,
        **provenance(),
    }
    return publish(run_dir / GATES_FILE, out)


def gate_rows(record: dict[str, Any]) -> Rows:
    """One row per gate: ``gate/<name>``, 1 pass / 0 fail, with its message."""
    return [
        {"metric": f"gate/{g['name']}", "value": float(g["passed"]), "message": g["message"]}
        for g in record["gates"]
    ]


register_stage(
    Stage(
        name="gates",
        order=35,
        run=lambda cfg, progress: gate_rows(
            run_gates_stage(cfg.run_dir, config=cfg, progress=progress)
        ),
        needs=("attack",),
        key_inputs=lambda cfg: {"gates": section_identity(cfg, "gates")},
        sections=("gates",),
        settings=("gates",),
    )
)
