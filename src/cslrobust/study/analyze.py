"""Geometry stage: measure the mechanism (uniformity, class margins, sensitivity) of a probed run.

Writes ``analysis.json`` and PNG plots (class distance matrix, t-SNE) into the run folder. All numerics
are in :mod:`cslrobust.geometry`; this module only runs the model to get features and perturbations.
With several processes, feature extraction is sharded across ranks and gathered; rank 0 alone computes
the metrics, draws the plots and writes the record, which every rank returns.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from cslrobust.attacks import AttackTarget, default_step_size, frozen_eval, pgd
from cslrobust.augment import SimCLRAugmentSection, build_augment
from cslrobust.config import RunConfig, section_identity
from cslrobust.distributed import on_main
from cslrobust.geometry import (
    SensitivityInputs,
    class_distance_matrix,
    compute_geometry,
    perturbation_norms,
    plot_distance_matrix,
    plot_embedding,
    random_like_norm,
    sensitivity_summaries,
    tsne_2d,
)
from cslrobust.probe import extract_features
from cslrobust.provenance import provenance
from cslrobust.records import write_json_atomic
from cslrobust.seeding import make_generator, rng_scope
from cslrobust.study.run_folder import ANALYSIS_FILE, checked_count, load_probed_run, test_subset
from cslrobust.study.stages import Rows, Stage, register_stage


def run_analyze(
    run_dir: Path,
    *,
    config: RunConfig | None = None,
    progress: bool = True,
    tsne: bool = True,
) -> dict[str, Any]:
    """Geometry of a probed run's backbone features on the test set, and its feature sensitivity.

    Metrics (MISSION.md "Geometry"): alignment between two SimCLR views of each test image, uniformity,
    intra/inter-class cosine distance and their ratio, centroid and probe-logit margins, effective rank;
    the same on the projector output when the run has one (``proj/`` keys); feature sensitivity
    ``||f(x+d) - f(x)|| / ||d||`` for PGD perturbations and for random perturbations of the same L-inf
    norm at each ``geometry.sensitivity_eps``.

    Args:
        run_dir: A run folder with ``probe.safetensors``.
        config: Geometry settings and device (default: the run's saved config).
        progress: Show progress bars (loading the data).
        tsne: Also draw the t-SNE plot.

    Returns:
        The record written to ``analysis.json``.
    """
    tic = time.perf_counter()
    run = load_probed_run(run_dir, config=config, head="probe", progress=progress)
    cfg, encoder, splits, head, model = run.config, run.encoder, run.splits, run.head, run.model
    geo, dev = cfg.geometry, run.config.device
    _, images, labels = test_subset(
        splits, checked_count(cfg, "geometry.n_images", len(splits.test))
    )
    labels = labels.cpu()
    batch = cfg.attack.batch_size

    def feats(x: torch.Tensor, fn: Any = None) -> torch.Tensor:
        return extract_features(fn or encoder.features, encoder, x, batch_size=batch, device=dev)

    features = feats(images)
    with torch.no_grad():
        logits = head(features)
    # Two augmented views of every test image for alignment (the same SimCLR views as in training;
    # clips: the run's own clip preset, temporally consistent).
    preset = SimCLRAugmentSection() if splits.layout == "image" else cfg.augment
    views = build_augment(preset).to(dev)
    with rng_scope(make_generator(cfg.seed, "analyze_views").initial_seed(), dev):
        x01 = images.to(dev).float().div(255)
        pair = views(x01, 2)
    v1, v2 = feats(pair[: len(x01)]), feats(pair[len(x01) :])
    z = feats(images, encoder) if run.head_kind == "projector" else None  # projector output

    # Sensitivity under PGD and random perturbations of the same L-inf norm.
    sensitivity: dict[str, float] = {}
    n_sens = min(geo.sensitivity_images, len(images))
    xs = images[:n_sens].to(dev).float().div(255)
    ys = labels[:n_sens].to(dev)
    f0 = feats(xs)
    with frozen_eval(model):
        target = AttackTarget(model)
        for eps in geo.sensitivity_eps:
            eps_255 = round(eps * 255, 9)  # names and random streams count in 1/255
            steps = cfg.attack.steps
            # One call over the sensitivity images (one random stream): every rank runs the same.
            x_adv = pgd(
                target,
                xs,
                ys,
                eps=eps,
                step_size=default_step_size(eps, steps),
                steps=steps,
                norm="linf",
                random_start=True,
                generator=make_generator(cfg.seed, "analyze_pgd", eps_255, device=dev),
            )
            delta = x_adv - xs
            x_rand = (
                xs
                + random_like_norm(
                    delta, "linf", make_generator(cfg.seed, "analyze_rand", eps_255, device=dev)
                )
            ).clamp(0, 1)
            inputs = SensitivityInputs(
                f_clean=f0,
                f_adv=feats(x_adv),
                f_random=feats(x_rand),
                adv_norms=perturbation_norms(x_adv - xs, "l2"),
                random_norms=perturbation_norms(x_rand - xs, "l2"),
                chunk_size=geo.chunk_size,
            )
            # pgd / random: raw features (scale-dependent); *_normalized and ratio: scale-free.
            for kind, summary in sensitivity_summaries(inputs).items():
                for key, value in summary.items():
                    sensitivity[f"sensitivity_{kind}_{eps_255:g}/{key}"] = value

    def summarize_and_write() -> dict[str, Any]:
        """Geometry metrics, plots and ``analysis.json`` from the gathered features (rank 0)."""
        record: dict[str, Any] = {
            "name": cfg.name,
            "objective": cfg.objective.name,
            "run_id": cfg.run_id(),
        }
        metrics = compute_geometry(
            features.cpu(), labels, logits=logits.cpu(), chunk_size=geo.chunk_size
        )
        metrics.update(
            {
                k: v
                for k, v in compute_geometry(
                    v1.cpu(), labels, paired=v2.cpu(), chunk_size=geo.chunk_size
                ).items()
                if k.startswith("alignment")
            }
        )
        if z is not None:
            for key, value in compute_geometry(z.cpu(), labels, chunk_size=geo.chunk_size).items():
                metrics[f"proj/{key}"] = value
        metrics.update(sensitivity)
        matrix = class_distance_matrix(features.cpu(), labels, num_classes=splits.num_classes)
        plot_distance_matrix(matrix, list(splits.classes), run_dir / "class_distances.png")
        if tsne:
            emb = tsne_2d(features.cpu(), seed=cfg.seed, max_points=geo.tsne_points)
            plot_embedding(emb.xy, labels[emb.indices], list(splits.classes), run_dir / "tsne.png")
        record.update(
            metrics=metrics,
            class_distance_matrix=matrix.tolist(),
            n_images=len(images),
            sensitivity_images=n_sens,
            checkpoint_epoch=run.checkpoint.epoch,
            wall_seconds=time.perf_counter() - tic,
            **provenance(),
        )
        write_json_atomic(run_dir / ANALYSIS_FILE, record)
        return record

    return on_main(summarize_and_write)


def analyze_rows(record: dict[str, Any]) -> Rows:
    """Rows of the analyze stage: one per geometry metric."""
    epoch = record["checkpoint_epoch"]
    return [
        {"metric": f"geometry/{k}", "value": v, "epoch": epoch}
        for k, v in record["metrics"].items()
    ]


register_stage(
    Stage(
        name="analyze",
        order=40,
        run=lambda cfg, progress: analyze_rows(
            run_analyze(cfg.run_dir, config=cfg, progress=progress, tsne=True)
        ),
        needs=("probe",),
        key_inputs=lambda cfg: {
            "geometry": section_identity(cfg, "geometry"),
            "steps": cfg.attack.steps,
        },
        sections=("geometry", "families"),
        settings=("geometry",),
        version=2,  # 2: scale-free sensitivity measures
    )
)
