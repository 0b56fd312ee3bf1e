"""Attack stage: clean and robust accuracy of a probed run under each configured attack and radius."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor

from cslrobust.attacks import AttackTarget, default_step_size, frozen_eval, robust_accuracy
from cslrobust.config import RunConfig, format_linf_radius, section_identity
from cslrobust.provenance import provenance
from cslrobust.run_files import Float, Int, ListOf, Record, Str
from cslrobust.study.run_folder import (
    ATTACK_FILE,
    ProbedRun,
    checked_count,
    load_probed_run,
    publish,
    tagged,
    test_subset,
)
from cslrobust.study.stages import Rows, Stage, register_stage
from cslrobust.study.store import pack_bits

#: What is read back from ``attack.json``: the gates stage's result rows, and every field of
#: :func:`attack_rows` (the trajectory stage reuses a checkpoint's record).
ATTACK_RECORD = Record(
    required={
        "results": ListOf(
            Record(
                required={
                    "attack": Str(),
                    "norm": Str(),
                    "eps": Float(),
                    "clean_accuracy": Float(),
                    "robust_accuracy": Float(),
                    "attack_success_rate": Float(),
                    "n": Int(minimum=0),
                    "steps": Int(minimum=0),
                    "restarts": Int(minimum=0),
                },
                optional={"clean_correct_bits": Str(), "robust_correct_bits": Str()},
            )
        ),
        "checkpoint_epoch": Int(minimum=0),
    }
)


@contextlib.contextmanager
def probed_target(run: ProbedRun) -> Iterator[AttackTarget]:
    """The probed run's model as the attack target, in the precision of ``attack.precision``.

    The attack, gates, trajectory and evaluate stages attack through this one target, so clean and
    robust accuracy of every stage share the model's precision; the model is restored on exit.
    """
    with frozen_eval(run.model):
        yield AttackTarget(run.model, precision=run.config.attack.precision)


def precision_key(cfg: RunConfig) -> dict[str, Any]:
    """``attack.precision`` for the keys of stages that attack without hashing the attack section.

    Empty at the default (fp32), so the keys of results stored before the setting stay as they were.
    """
    precision = section_identity(cfg, "attack").get("precision")
    return {} if precision is None else {"attack_precision": precision}


def run_attack(
    run_dir: Path,
    *,
    config: RunConfig | None = None,
    progress: bool = True,
    tag: str = "",
) -> dict[str, Any]:
    """Attack the composite model (normalise -> backbone -> probe head) of a probed run.

    With ``tag``, the probe ``probe<tag>.safetensors`` (and its checkpoint) is attacked and the record
    goes to ``attack<tag>.json``.

    Args:
        run_dir: A run folder with ``probe.safetensors``.
        config: Attack settings and device (default: the run's saved config).
        progress: Show progress bars.
        tag: Attack the probe of a tagged (non-final) checkpoint.

    Returns:
        The record written to ``attack.json``: one row per (attack, norm, eps).
    """
    tic = time.perf_counter()
    run = load_probed_run(run_dir, tag=tag, config=config, progress=progress)
    cfg = run.config
    att = cfg.attack
    subset, images, labels = test_subset(
        run.splits, checked_count(cfg, "attack.n_images", len(run.splits.test))
    )
    images = images.float().div_(255)  # attacks take [0,1] float images; the data set stores uint8
    with probed_target(run) as target:
        rows = _attack_rows(target, images, labels, cfg, progress)
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


def _attack_rows(
    target: AttackTarget, images: Tensor, labels: Tensor, cfg: RunConfig, progress: bool
) -> list[dict[str, Any]]:
    """One record row per (attack, norm, eps) of ``cfg.attack`` on ``images`` ([0,1]) and ``labels``."""
    att, dev = cfg.attack, cfg.device
    rows = []
    budgets = [("linf", e) for e in att.eps_linf] + [("l2", e) for e in att.eps_l2]
    for attack in att.attacks:
        for norm, eps in budgets:
            steps = 1 if attack == "fgsm" else att.steps
            step_size = (
                att.step_size * eps if att.step_size is not None else default_step_size(eps, steps)
            )
            res = robust_accuracy(
                target,
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
                    "eps_display": format_linf_radius(eps) if norm == "linf" else f"{eps:g}",
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
    return rows


def attack_rows(record: dict[str, Any]) -> Rows:
    """Rows of the attack stage: clean, robust accuracy and success rate per (attack, norm, eps)."""
    rows = []
    for r in record["results"]:
        cond = {
            "attack": r["attack"],
            "norm": r["norm"],
            "eps": r["eps"],
            "epoch": record["checkpoint_epoch"],
        }
        meta = {"n": r["n"], "steps": r["steps"], "restarts": r["restarts"]}
        rows.append({**cond, **meta, "metric": "clean_accuracy", "value": r["clean_accuracy"]})
        rows.append(
            {
                **cond,
                **meta,
                "metric": "robust_accuracy",
                "value": r["robust_accuracy"],
                "correct_bits": r.get("robust_correct_bits"),
                "clean_bits": r.get("clean_correct_bits"),
            }
        )
        rows.append(
            {**cond, **meta, "metric": "attack_success_rate", "value": r["attack_success_rate"]}
        )
    return rows


register_stage(
    Stage(
        name="attack",
        order=30,
        run=lambda cfg, progress: attack_rows(
            run_attack(cfg.run_dir, config=cfg, progress=progress)
        ),
        needs=("probe",),
        key_inputs=lambda cfg: {"attack": section_identity(cfg, "attack")},
        sections=("attacks", "families"),
        settings=("attack",),
    )
)
