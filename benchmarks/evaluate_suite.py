"""Wall time of `cslrobust evaluate --suite standard` (issue 3 benchmark).

Trains a small encoder through the CLI exactly as a user would (or reuses ``--run-dir``), fits its linear
probe, then times the standard suite: clean, FGSM/PGD sweeps (L-inf and L2), AutoAttack standard, FAB
eps50, the 75 corruption sets and the sanity gates. Prints the wall time of each part as recorded in
``evaluation.json`` and the whole command's wall time. Prints numbers; asserts nothing. Usage::

    python benchmarks/evaluate_suite.py --data-source ../shared/data/cifar10-jpeg.tar.gz [--n-images 1000]
    python benchmarks/evaluate_suite.py --run-dir runs/bench/simclr   # reuse a trained, probed run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cli(*args: str) -> float:
    """Run ``cslrobust ARGS`` and return its wall time in seconds (fails loudly on a non-zero exit)."""
    command = [sys.executable, "-m", "cslrobust", *args]
    tic = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="Trained and probed run folder to reuse.")
    parser.add_argument(
        "--data-source", type=Path, help="CIFAR-10 ImageFolder .tar(.gz) (offline)."
    )
    parser.add_argument(
        "--output-dir", type=Path, help="Where to train (default: a temporary folder)."
    )
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    timings: dict[str, float] = {}
    run_dir = args.run_dir
    if run_dir is None:
        output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="cslrobust-bench-"))
        train_args = [
            "train",
            "--name",
            "simclr",
            "--output-dir",
            str(output_dir),
            "--objective",
            "simclr",
            "--epochs",
            str(args.epochs),
            "--train-per-class",
            str(args.train_per_class),
            "--device",
            args.device,
            "--set",
            f"model.width={args.width}",
            "--no-progress",
        ]
        if args.data_source is not None:
            train_args += ["--data-source", str(args.data_source)]
        timings["train"] = _cli(*train_args)
        run_dir = output_dir / "simclr"
        timings["probe"] = _cli("probe", str(run_dir), "--device", args.device, "--no-progress")

    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    timings["evaluate (whole command)"] = _cli(
        "evaluate",
        str(run_dir),
        "--suite",
        "standard",
        "--n-images",
        str(args.n_images),
        "--device",
        args.device,
        "--no-progress",
    )
    record = json.loads((run_dir / "evaluation.json").read_text())
    print(
        f"\nResNet-18 width {args.width}, {args.n_images} test images, device {args.device}, {threads} threads"
    )
    for part, seconds in record.get("timings", {}).items():
        print(f"  evaluate part {part:<22s} {seconds:9.1f} s")
    for part, seconds in timings.items():
        print(f"  {part:<36s} {seconds:9.1f} s")
    failed = record.get("gates_failed", [])
    print(f"  gates failed: {', '.join(failed) if failed else 'none'}")


if __name__ == "__main__":
    main()
