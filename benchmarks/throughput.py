"""Throughput benchmark: bare model vs the real training loop per objective vs PGD-10.

Prints numbers; asserts nothing. All rates are measured in one run and compared as ratios (timings on
shared machines are noisy; absolute seconds mean little). Usage::

    python benchmarks/throughput.py [--width 16] [--batch 256] [--steps 6] [--repeats 3] [--device cpu]

"images/s" counts images that pass through the network: a contrastive step on a batch of B makes 2B
views, so its rate is compared with the bare model's forward+backward rate on 2B images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cslrobust.attacks import robust_accuracy
from cslrobust.augment import build_augment
from cslrobust.data import TensorImageDataset
from cslrobust.models import Classifier, build_encoder
from cslrobust.models.heads import LinearHead
from cslrobust.objectives import OBJECTIVES, build_objective
from cslrobust.training import LoopSettings, build_sgd, train, warmup_cosine


def _encoder(head_kind: str, width: int, device: str, channels_last: bool):
    encoder = build_encoder(
        "resnet18",
        width=width,
        head_kind=head_kind,
        num_classes=10,
        proj_hidden_dim=512,
        proj_dim=128,
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
        channels_last=channels_last,
    )
    return encoder.to(device)


def bare_rate(n_images: int, width: int, device: str, channels_last: bool, steps: int) -> float:
    """Forward+backward+SGD step of the encoder alone on fixed [0,1] images (no augmentation, no loss)."""
    encoder = _encoder("projector", width, device, channels_last)
    optimizer = build_sgd(encoder, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(n_images, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    encoder.train()
    for i in range(steps + 1):
        if i == 1:  # first step is warm-up
            _sync(device)
            tic = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        encoder(x).square().mean().backward()
        optimizer.step()
    _sync(device)
    return n_images * steps / (time.perf_counter() - tic)


def loop_rate(
    objective_name: str, batch: int, width: int, device: str, channels_last: bool, steps: int
) -> float:
    """One epoch of the real training loop (augmentation, loss, checkpoint excluded from timing)."""
    objective = build_objective(objective_name)
    encoder = _encoder(objective.head_kind, width, device, channels_last)
    g = torch.Generator().manual_seed(0)
    n = batch * (steps + 1)
    data = TensorImageDataset(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        device=device,
    )
    optimizer = build_sgd(encoder, lr=0.01, momentum=0.9, weight_decay=5e-4)
    settings = LoopSettings(
        epochs=1,
        batch_size=batch,
        seed=0,
        log_every=10**9,
        channels_last=channels_last,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            encoder,
            objective,
            build_augment("simclr").to(device),
            data,
            optimizer,
            warmup_cosine(0.01, steps + 1, 0),
            Path(tmp),
            settings,
        )
    # The loop's own clock covers the whole epoch, including the first (warm-up) step: remove it by
    # re-running would double the cost, so report the epoch rate as measured (conservative).
    return float(result.history[0]["images_per_s"])


def pgd_rate(n_images: int, width: int, device: str, channels_last: bool, steps: int) -> float:
    """Images/s of PGD-``steps`` on the composite model (eval mode), including the clean pass."""
    encoder = _encoder("projector", width, device, channels_last)
    model = Classifier(encoder, LinearHead(encoder.feature_dim, 10)).to(device)
    x = torch.rand(n_images, 3, 32, 32)
    with torch.no_grad():
        # Labels = the model's own predictions: every image starts correct, and at a tiny eps few are
        # fooled, so PGD's early stop on fooled images barely helps (the worst case is timed).
        y = model.eval()(x.to(device)).argmax(dim=1).cpu()
    tic = time.perf_counter()
    robust_accuracy(
        model,
        x,
        y,
        attack="pgd",
        eps=0.1 / 255,
        norm="linf",
        steps=steps,
        step_size=None,
        random_start=True,
        restarts=1,
        seed=0,
        batch_size=n_images,
        device=device,
    )
    _sync(device)
    return n_images / (time.perf_counter() - tic)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats; medians reported"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-channels-last", action="store_true")
    args = parser.parse_args()
    cl = not args.no_channels_last
    print(
        f"ResNet-18 width {args.width}, batch {args.batch}, device {args.device}, channels_last={cl}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    rates: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for n_views_images in (args.batch, 2 * args.batch):
            key = f"bare fwd+bwd ({n_views_images} img)"
            rates.setdefault(key, []).append(
                bare_rate(n_views_images, args.width, args.device, cl, args.steps)
            )
        for name in OBJECTIVES.names():
            rates.setdefault(f"train loop: {name}", []).append(
                loop_rate(name, args.batch, args.width, args.device, cl, args.steps)
            )
        rates.setdefault("PGD-10 (images attacked)", []).append(
            pgd_rate(args.batch, args.width, args.device, cl, 10)
        )
    med = {k: statistics.median(v) for k, v in rates.items()}
    bare_1 = med[f"bare fwd+bwd ({args.batch} img)"]
    bare_2 = med[f"bare fwd+bwd ({2 * args.batch} img)"]
    print(f"{'measurement':<34}{'images/s':>10}{'vs bare':>9}")
    for key, value in med.items():
        if key.startswith("train loop"):
            name = key.split(": ")[1]
            ref = bare_1 if build_objective(name).n_views == 1 else bare_2
            print(f"{key:<34}{value:>10.1f}{value / ref:>8.2f}x")
        elif key.startswith("PGD"):
            # PGD-10 costs 10 input-gradient passes plus 2 forward passes per image.
            per_step = value * 10
            print(f"{key:<34}{value:>10.1f}")
            print(f"{'PGD-10 (input-grad passes)':<34}{per_step:>10.1f}{per_step / bare_1:>8.2f}x")
        else:
            print(f"{key:<34}{value:>10.1f}")


if __name__ == "__main__":
    main()
