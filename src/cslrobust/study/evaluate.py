"""The evaluation suite of a probed run: sweeps, AutoAttack, FAB, corruptions, and sanity gates.

Everything attacks the composite model (normalise -> backbone -> probe head) in eval mode on [0,1]
inputs, on one fixed test subset, through one attack target in the precision of ``attack.precision``
(corruption accuracies too). The gates run with every evaluation and are stored with the numbers;
a failed gate is printed first and marked in every report that uses the number. Output: one JSON record
(``evaluation.json``) with every number, the gates and the protocol, plus sweep plots.

With several processes (torchrun) every evaluation is sharded across ranks and gathered (see
:mod:`cslrobust.distributed`), so each runs once; rank 0 alone writes the plots and the record, and
every rank returns the same record.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cslrobust.attacks import (
    AttackTarget,
    ConvergenceSettings,
    GateAttack,
    GateThresholds,
    format_gates,
    minimal_perturbation,
    plot_sweep,
    run_autoattack,
    run_gates,
    summarize_sweep,
    sweep,
)
from cslrobust.config import EvaluationConfig, RunConfig, section_identity
from cslrobust.distributed import on_main
from cslrobust.errors import ConfigError
from cslrobust.provenance import provenance
from cslrobust.study.attack import precision_key, probed_target
from cslrobust.study.gates import gate_rows
from cslrobust.study.run_folder import (
    EVALUATION_FILE,
    ProbedRun,
    checked_count,
    load_probed_run,
    publish,
    test_subset,
)
from cslrobust.study.stages import Rows, Stage, register_stage
from cslrobust.study.store import pack_bits


def _row(r: Any) -> dict[str, Any]:
    return {
        "attack": r.attack,
        "norm": r.norm,
        "eps": r.eps,
        **r.metrics(),
        "clean_correct_bits": pack_bits(r.result.clean_correct.cpu()),
        "robust_correct_bits": pack_bits(r.result.robust_correct.cpu()),
    }


def run_evaluate(
    run_dir: Path,
    *,
    config: RunConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the configured suite on a probed run and write ``evaluation.json`` and plots.

    Args:
        run_dir: A run folder with ``probe.safetensors``.
        config: Suite settings (its ``evaluation`` section) and device (default: the saved config).
        progress: Show progress bars.

    Returns:
        The record written to ``evaluation.json``.
    """
    tic = time.perf_counter()
    run = load_probed_run(run_dir, config=config, head="probe", progress=progress)
    with probed_target(run) as target:
        record = _suite_record(run_dir, run, target, progress, tic)
    return publish(run_dir / EVALUATION_FILE, record)


def _suite_record(
    run_dir: Path, run: ProbedRun, model: AttackTarget, progress: bool, tic: float
) -> dict[str, Any]:
    """Run the suite on ``model`` (the run's target, in ``attack.precision``); the record to write."""
    cfg, dev = run.config, run.config.device
    ev = cfg.evaluation
    subset, images, labels = test_subset(
        run.splits, checked_count(cfg, "evaluation.n_images", len(run.splits.test))
    )
    images = images.float().div_(255)
    common = {"seed": cfg.seed, "batch_size": ev.batch_size, "device": dev}
    timings: dict[str, float] = {}

    # 1. FGSM / PGD sweeps (eps = 0 included: it must equal clean accuracy exactly).
    t0 = time.perf_counter()
    linf = [0.0, *ev.eps_linf, ev.large_eps_linf]
    budgets: list[tuple[str, list[float]]] = [("linf", sorted(set(linf)))]
    if ev.suite == "standard" and ev.eps_l2:
        budgets.append(("l2", sorted({0.0, *ev.eps_l2})))
    sweep_rows = []
    for norm, eps_list in budgets:
        for attack in ("fgsm", "pgd"):
            sweep_rows += sweep(
                model,
                images,
                labels,
                attack=attack,
                norm=norm,  # type: ignore[arg-type]
                eps_list=eps_list,
                steps=ev.steps,
                relative_step_size=ev.relative_step_size,
                random_start=True,
                restarts=ev.restarts,
                progress=progress,
                **common,
            )
    timings["sweeps"] = time.perf_counter() - t0
    summaries = []
    for attack in ("fgsm", "pgd"):
        for norm, _ in budgets:
            rows = [r for r in sweep_rows if r.attack == attack and r.norm == norm]
            summaries.append(asdict(summarize_sweep(rows)))

    # 2. AutoAttack (reference implementation), resumable through its state folder.
    aa_results = []
    if ev.suite == "standard":
        t0 = time.perf_counter()
        aa_budgets = [("linf", e) for e in ev.autoattack_eps_linf] + [
            ("l2", e) for e in ev.autoattack_eps_l2
        ]
        for norm, eps in aa_budgets:
            aa_results.append(
                run_autoattack(
                    model,
                    images,
                    labels,
                    eps=eps,
                    norm=norm,  # type: ignore[arg-type]
                    version=ev.autoattack_version,
                    attacks=ev.autoattack_attacks,
                    state_dir=run_dir / "autoattack" / f"{ev.autoattack_version}-{norm}-{eps:.6g}",
                    verbose=False,
                    **common,
                )
            )
        timings["autoattack"] = time.perf_counter() - t0

    # 3. FAB minimal perturbations: per-sample eps50 (median minimal perturbation).
    fab: dict[str, Any] = {}
    if ev.suite == "standard" and ev.fab_images > 0:
        t0 = time.perf_counter()
        n_fab = min(ev.fab_images, len(images))
        for norm, _ in budgets:
            res = minimal_perturbation(
                model,
                images[:n_fab],
                labels[:n_fab],
                norm=norm,
                n_iter=ev.fab_n_iter,
                **common,  # type: ignore[arg-type]
            )
            fab[norm] = {**res.metrics(), "n": res.n}
        timings["fab"] = time.perf_counter() - t0

    # 4. Common corruptions (CIFAR-10-C parameterisation, generated from the test set, cached).
    corruption: dict[str, Any] = {}
    if ev.suite == "standard" and ev.corruptions != ():
        t0 = time.perf_counter()
        corruption = _corruptions(model, run, ev, progress)
        timings["corruptions"] = time.perf_counter() - t0

    # 5. Sanity gates, always.
    t0 = time.perf_counter()
    gates = run_gates(
        sweep_rows,
        autoattack=aa_results,
        target=model,
        images=images,
        labels=labels,
        convergence=[
            ConvergenceSettings(
                eps=ev.convergence_eps_linf,
                norm="linf",
                steps=ev.steps,
                restarts=ev.convergence_restarts,
            )
        ],
        gate_attacks=[
            GateAttack(
                attack="pgd",
                steps=ev.steps,
                relative_step_size=ev.relative_step_size,
                restarts=ev.restarts,
            )
        ],
        thresholds=GateThresholds(large_eps=ev.large_eps_linf),
        **common,
    )
    timings["gates"] = time.perf_counter() - t0

    def draw_plots() -> list[str]:
        names = []
        for norm, _ in budgets:
            path = run_dir / f"sweep_{norm}.png"
            curves = {cfg.name: [r for r in sweep_rows if r.norm == norm]}
            plot_sweep(curves, path, norm)  # type: ignore[arg-type]
            names.append(path.name)
        return names

    plots = on_main(draw_plots)
    record: dict[str, Any] = {
        "name": cfg.name,
        "objective": cfg.objective.name,
        "run_id": cfg.run_id(),
        "checkpoint_epoch": run.checkpoint.epoch,
        "suite": ev.suite,
        "protocol": {
            "model": "normalise -> backbone -> linear probe, eval mode, parameters frozen, inputs in [0,1]",
            "precision": cfg.attack.precision,
            "n_images": int(subset.numel()),
            "image_subset": "fixed random test subset, stream (0, 'eval_subset')",
            "seed": cfg.seed,
            "evaluation": ev.model_dump(mode="json"),
            "pgd": {
                "steps": ev.steps,
                "restarts": ev.restarts,
                "random_start": True,
                "step_size": "2.5*eps/steps"
                if ev.relative_step_size is None
                else f"{ev.relative_step_size}*eps",
            },
            "autoattack": [r.settings for r in aa_results],
        },
        "sweeps": [_row(r) for r in sweep_rows],
        "eps50": summaries,
        "autoattack": [
            {
                **r.metrics(),
                "norm": r.norm,
                "eps": r.eps,
                "version": r.version,
                "attacks": list(r.attacks),
                "flags": list(r.flags),
                "robust_correct_bits": pack_bits(r.robust_correct),
            }
            for r in aa_results
        ],
        "fab": fab,
        "corruptions": corruption,
        "gates": [asdict(g) for g in gates],
        "gates_failed": [g.name for g in gates if not g.passed],
        "gates_text": format_gates(gates),
        "plots": plots,
        "timings": timings,
        "wall_seconds": time.perf_counter() - tic,
        **provenance(),
    }
    return record


def _corruptions(
    model: nn.Module, run: Any, ev: EvaluationConfig, progress: bool
) -> dict[str, Any]:
    """Accuracy per (corruption, severity) on a fixed test subset, and the mean over all of them."""
    from cslrobust.corruptions import CORRUPTION_NAMES, evaluate_corruptions, protocol, summarise
    from cslrobust.data import default_data_root

    cfg = run.config
    subset, images, labels = test_subset(
        run.splits, checked_count(cfg, "evaluation.corruption_images", len(run.splits.test))
    )
    images, labels = images.cpu(), labels.cpu()
    names = list(ev.corruptions) if ev.corruptions is not None else list(CORRUPTION_NAMES)
    if tuple(images.shape[-2:]) != (32, 32):
        raise ConfigError(
            f"corruptions use the CIFAR 32x32 parameters, but the images are {tuple(images.shape[-2:])}; "
            "set evaluation.corruptions: [] to skip them"
        )

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    rows = evaluate_corruptions(
        predict,
        images,
        labels,
        names=names,
        severities=list(ev.severities),
        seed=cfg.seed,
        cache_dir=(cfg.data.root or default_data_root()) / "corruptions",
        batch_size=ev.batch_size,
        device=cfg.device,
        progress=progress,
    )
    return {
        "rows": [dict(r) for r in rows],
        "summary": summarise(rows),
        "protocol": protocol(cfg.seed, list(ev.severities)),
        "n_images": int(subset.numel()),
    }


def evaluate_rows(record: dict[str, Any]) -> Rows:
    """Rows of the evaluate stage (metrics prefixed ``eval/`` so they never mix with the attack stage)."""
    epoch = record["checkpoint_epoch"]
    rows: Rows = []
    for r in record["sweeps"]:
        cond = {"attack": r["attack"], "norm": r["norm"], "eps": r["eps"], "epoch": epoch}
        for key in (
            "clean_accuracy",
            "robust_accuracy",
            "attack_success_rate",
            "robust_clean_ratio",
        ):
            extra = (
                {"correct_bits": r["robust_correct_bits"], "n": r["n"]}
                if key == "robust_accuracy"
                else {}
            )
            rows.append({**cond, **extra, "metric": f"eval/{key}", "value": r[key]})
    for s in record["eps50"]:
        rows.append(
            {
                "attack": s["attack"],
                "norm": s["norm"],
                "epoch": epoch,
                "metric": "eval/eps50",
                "value": s["eps50"],
            }
        )
    for aa in record["autoattack"]:
        cond = {"attack": "autoattack", "norm": aa["norm"], "eps": aa["eps"], "epoch": epoch}
        rows.append(
            {
                **cond,
                "metric": "eval/robust_accuracy",
                "value": aa["robust_accuracy"],
                "flags": aa["flags"],
            }
        )
        rows.append({**cond, "metric": "eval/clean_accuracy", "value": aa["clean_accuracy"]})
    for norm, fab in record["fab"].items():
        rows.append(
            {
                "attack": "fab",
                "norm": norm,
                "epoch": epoch,
                "metric": "eval/min_norm_median",
                "value": fab["min_norm_median"],
            }
        )
    for c in record.get("corruptions", {}).get("rows", []):
        rows.append(
            {
                "corruption": c["corruption"],
                "severity": c["severity"],
                "epoch": epoch,
                "metric": "corruption_accuracy",
                "value": c["accuracy"],
                "family": c["family"],
            }
        )
    return rows + gate_rows(record)


register_stage(
    Stage(
        name="evaluate",
        order=50,
        run=lambda cfg, progress: evaluate_rows(
            run_evaluate(cfg.run_dir, config=cfg, progress=progress)
        ),
        needs=("probe",),
        key_inputs=lambda cfg: {
            "evaluation": section_identity(cfg, "evaluation"),
            **precision_key(cfg),
        },
        sections=("evaluation", "corruptions"),
        settings=("evaluation",),
    )
)
