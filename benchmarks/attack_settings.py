"""Which attack settings pass the sanity gates on a study's trained cells (issue 12, item 4).

For every probed cell of a study and every candidate setting (PGD steps x restarts), it attacks the
first ``--n-images`` images of the study's fixed attack subset at every configured L-inf eps and at the
large-eps gate radius, runs every gate (whole path at eps = 0, large eps, input gradients, PGD
convergence at the largest eps, monotone, ordering), and prints one line per (cell, setting): robust
accuracy per eps, accuracy at the large eps, the gates that failed, and the wall time. Nothing in the
run folders is written.

    .venv/bin/python benchmarks/attack_settings.py presets/cpu-small.yaml \\
        --set base.data.source=../shared/data/cifar10-jpeg.tar.gz --settings 10x1,20x1,50x1,20x3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cslrobust.attacks import AccuracyRow, robust_accuracy
from cslrobust.attacks.pgd import default_step_size
from cslrobust.config import format_linf_radius
from cslrobust.study.gates import attack_gates, gate_images
from cslrobust.study.run_folder import PROBE_WEIGHTS, load_probed_run
from cslrobust.study.runner import study_cells
from cslrobust.study.spec import load_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--settings", default="10x1,20x1,50x1,20x3", help="STEPSxRESTARTS,...")
    parser.add_argument("--n-images", type=int, default=200)
    args = parser.parse_args()
    spec = load_study(args.study, args.overrides)
    settings = [tuple(int(x) for x in s.split("x")) for s in args.settings.split(",")]
    for cell in study_cells(spec):
        if not (cell.config.run_dir / PROBE_WEIGHTS).is_file():
            print(f"{cell.config.name}: no probe, skipped")
            continue
        for steps, restarts in settings:
            cfg = cell.config.model_copy(
                update={
                    "attack": cell.config.attack.model_copy(
                        update={"steps": steps, "restarts": restarts, "attacks": ("pgd",)}
                    ),
                    "gates": cell.config.gates.model_copy(update={"n_images": args.n_images}),
                }
            )
            tic = time.perf_counter()
            run = load_probed_run(cell.config.run_dir, config=cfg)
            images, labels = gate_images(run)
            points = []
            for eps in cfg.attack.eps_linf:
                res = robust_accuracy(
                    run.model,
                    images,
                    labels,
                    attack="pgd",
                    eps=eps,
                    steps=steps,
                    step_size=default_step_size(eps, steps),
                    restarts=restarts,
                    seed=cfg.seed,
                    batch_size=cfg.attack.batch_size,
                )
                points.append(
                    AccuracyRow("pgd", "linf", eps, res.clean_accuracy, res.robust_accuracy, res.n)
                )
            gates = attack_gates(run, points, images, labels)
            large = next(g for g in gates if g.name.startswith("large_eps"))
            failed = [g.name for g in gates if not g.passed]
            accuracies = "  ".join(
                f"{format_linf_radius(p.eps)} {100 * p.robust_accuracy:5.1f}" for p in points
            )
            print(
                f"{cell.method:<14} PGD-{steps:<3} x{restarts}  clean {100 * points[0].clean_accuracy:5.1f}"
                f"  {accuracies}  large-eps acc {100 * large.details.get('accuracy', float('nan')):5.1f}"
                f"  failed: {', '.join(failed) or 'none'}  ({time.perf_counter() - tic:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
