"""Throughput benchmarks of the training loop: CPU breakdown, GPU epoch time, multi-process scaling.

Prints numbers; asserts nothing. Three modes:

``--mode loop`` (default; CPU): bare model vs the real training loop per objective vs PGD-10, each in
fp32 and in bf16 (``train.precision`` / ``attack.precision``: bf16 autocast around the model's forward),
side by side. All rates are measured in one run and printed as ratios to the bare model's fp32
forward+backward rate (timings on shared machines are noisy; absolute seconds mean little), plus the
bf16/fp32 speed-up per row. "images/s" counts images that pass through the network: a contrastive step
on a batch of B makes 2B views, so its rate is compared with the bare model's fp32 forward+backward
rate on 2B images. bf16 pays off on CPUs with AVX512-BF16 or AMX (the header prints torch's CPU
capability); on plain AVX2 it is emulated and slower::

    python benchmarks/throughput.py [--width 16] [--batch 256] [--steps 6] [--repeats 3] [--device cpu] \\
        [--precisions fp32,bf16]

``--mode gpu-epoch`` (one CUDA GPU): seconds per SimCLR epoch of ResNet-18 (width 64) on the 50,000
CIFAR-10 training images at global batch 512, through the real ``train()`` loop: the images sit on the
GPU as uint8, views are made by kornia on the GPU, checkpoints are written each epoch. Whole epochs are
timed: ``--warmup-epochs`` (default 1; includes cuDNN autotuning and ``torch.compile``) are excluded,
then the mean of ``--timed-epochs`` (default 2) is reported, both by the loop's own clock (ends with
the epoch's loss fetch, a host-device sync; excludes the checkpoint) and by wall clock between epoch
ends (``torch.cuda.synchronize`` then a host clock; includes the checkpoint write). Variants (comma
list, ``--variants``): ``fp32``, ``fp32-cl``, ``bf16``, ``bf16-cl``, ``bf16-cl-compile``,
``bf16-cl-fast``, ``bf16-cl-fast-compile`` (``cl``: channels_last; ``fast``: the ``simclr_fast`` views
instead of kornia's ``simclr``). The real data is read from ``--data-source`` (the offline ``cifar10-jpeg.tar.gz``,
decoded once into ``$CSLROBUST_DATA``); without it, random uint8 images of the same shape are used
(same arithmetic, meaningless loss). Reference points printed beside the table: lightly's published
SimCLR ResNet-18 CIFAR-10 benchmark (batch 512: 331.1 min for 800 epochs = 24.8 s/epoch, 87.1 min for
200 epochs = 26.1 s/epoch, including lightly's per-epoch kNN evaluation; lightly's benchmarks page,
CIFAR-10 table; that page names an RTX A6000 for its ImageNette runs and no GPU in the CIFAR-10 table,
so "A6000" for these numbers is our reading, not theirs) and this project's target of <= 5 s/epoch on one H100 (the H200 has the H100's compute and 1.4x its memory
bandwidth)::

    python benchmarks/throughput.py --mode gpu-epoch [--data-source cifar10-jpeg.tar.gz] \\
        [--variants fp32,bf16-cl,bf16-cl-fast,bf16-cl-fast-compile] [--warmup-epochs 1] [--timed-epochs 2]

``--mode gpu-breakdown`` (one CUDA GPU): median milliseconds of one SimCLR step's parts at batch 512
(model forward+backward+SGD on fixed views; each augmentation preset alone; the full step with each),
and the host-device synchronisations each triggers (torch's sync debug mode)::

    python benchmarks/throughput.py --mode gpu-breakdown [--repeats 20]

``--mode multiproc`` (CPU, gloo): the same loop in 1 process vs ``--nproc`` processes (default 2) at
the same global batch and images, each process with ``torch.set_num_threads(cores // nproc)``. The
processes are spawned with torchrun's variables set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and call
``cslrobust.distributed.init_distributed`` as the CLI does; the loop then wraps the model in DDP with
global BatchNorm and gathers the projections. SimCLR, ResNet-18 width 16, 2,048 random images, batch
256, one warm-up epoch then ``--timed-epochs`` (default 1), slowest rank's clock; ``--repeats``
interleaves the two settings (medians). On a shared machine, other jobs' load hurts the one process
with several threads most (its threads wait at every parallel region for the slowest)::

    python benchmarks/throughput.py --mode multiproc [--nproc 2] [--images 2048] [--batch 256] [--repeats 1]
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cslrobust.attacks import AttackTarget, robust_accuracy
from cslrobust.attacks.ascent import ViewAttack
from cslrobust.augment import AUGMENTATIONS, SimCLRAugmentSection, build_augment
from cslrobust.data import TensorImageDataset
from cslrobust.models import Classifier, build_encoder
from cslrobust.models.heads import LinearHead
from cslrobust.objectives import OBJECTIVES, SimCLRSection, build_objective
from cslrobust.objectives.method import build_method
from cslrobust.training import LoopSettings, build_sgd, train, warmup_cosine

# CIFAR-10 training-set channel statistics (used for the normalisation buffers on random images).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_TRAIN = 50_000

# Reference points for --mode gpu-epoch (see the module docstring for the sources).
LIGHTLY_S_PER_EPOCH = 331.1 * 60 / 800  # 24.8 s: SimCLR, ResNet-18, batch 512, 800 epochs
TARGET_S_PER_EPOCH = 5.0  # this project's target on one H100


def _encoder(
    head_kind: str,
    width: int,
    device: str,
    channels_last: bool,
    mean: tuple[float, float, float] = (0.49, 0.48, 0.45),
    std: tuple[float, float, float] = (0.25, 0.24, 0.26),
):
    encoder = build_encoder(
        "resnet18",
        width=width,
        head_kind=head_kind,
        num_classes=10,
        proj_hidden_dim=512,
        proj_dim=128,
        mean=mean,
        std=std,
        channels_last=channels_last,
    )
    return encoder.to(device)


def bare_rate(
    n_images: int, width: int, device: str, channels_last: bool, steps: int, precision: str = "fp32"
) -> float:
    """Forward+backward+SGD step of the encoder alone on fixed [0,1] images (no augmentation, no loss).

    With ``precision="bf16"`` the forward runs under bf16 autocast and its output is cast to float32
    before the (trivial) loss, as in the training loop.
    """
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
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bf16"):
            out = encoder(x)
        out.float().square().mean().backward()
        optimizer.step()
    _sync(device)
    return n_images * steps / (time.perf_counter() - tic)


def loop_rate(
    objective_name: str,
    batch: int,
    width: int,
    device: str,
    channels_last: bool,
    steps: int,
    precision: str = "fp32",
) -> float:
    """One epoch of the real training loop (augmentation, loss, checkpoint excluded from timing)."""
    objective = build_objective(OBJECTIVES.section(objective_name))
    encoder = _encoder(objective.head_kind, width, device, channels_last)
    g = torch.Generator().manual_seed(0)
    n = batch * (steps + 1)
    data = TensorImageDataset(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        device=device,
    )
    method = build_method(objective, encoder)
    perturbation = None
    if hasattr(method, "attack_settings"):  # adversarial methods: wired as the train stage does
        attack = method.attack_settings()
        perturbation = ViewAttack(attack.eps, attack.step_size, attack.steps)
        method.set_total_epochs(1)
    optimizer = build_sgd(method.network(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    settings = LoopSettings(
        epochs=1,
        batch_size=batch,
        seed=0,
        log_every=10**9,
        channels_last=channels_last,
        progress=False,
        precision=precision,  # type: ignore[arg-type]
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            method,
            build_augment(SimCLRAugmentSection()).to(device),
            data,
            optimizer,
            warmup_cosine(0.01, steps + 1, 0),
            Path(tmp),
            settings,
            perturbation=perturbation,
        )
    # The loop's own clock covers the whole epoch, including the first (warm-up) step: remove it by
    # re-running would double the cost, so report the epoch rate as measured (conservative).
    return float(result.history[0]["images_per_s"])


def pgd_rate(
    n_images: int, width: int, device: str, channels_last: bool, steps: int, precision: str = "fp32"
) -> float:
    """Images/s of PGD-``steps`` on the composite model (eval mode), including the clean pass.

    The model is attacked through an :class:`AttackTarget` in ``precision``, as the attack stage does.
    """
    encoder = _encoder("projector", width, device, channels_last)
    model = Classifier(encoder, LinearHead(encoder.feature_dim, 10)).to(device)
    target = AttackTarget(model, precision=precision)  # type: ignore[arg-type]
    x = torch.rand(n_images, 3, 32, 32)
    with torch.no_grad():
        # Labels = the model's own predictions: every image starts correct, and at a tiny eps few are
        # fooled, so PGD's early stop on fooled images barely helps (the worst case is timed).
        y = target(x.to(device)).argmax(dim=1).cpu()
    tic = time.perf_counter()
    robust_accuracy(
        target,
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


def run_loop_mode(args: argparse.Namespace) -> None:
    """``--mode loop``: bare model vs training loop per objective vs PGD-10, fp32 and bf16 side by side."""
    width, batch, device = args.width or 16, args.batch or 256, args.device or "cpu"
    cl = not args.no_channels_last
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    print(
        f"ResNet-18 width {width}, batch {batch}, device {device}, channels_last={cl}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats or 3):
        # Interleaved: load from other jobs on a shared machine hits both precisions alike.
        for precision in precisions:
            for n_images in (batch, 2 * batch):
                rates.setdefault((f"bare fwd+bwd ({n_images} img)", precision), []).append(
                    bare_rate(n_images, width, device, cl, args.steps, precision)
                )
            for name in args.objectives.split(",") if args.objectives else OBJECTIVES.names():
                rates.setdefault((f"train loop: {name}", precision), []).append(
                    loop_rate(name, batch, width, device, cl, args.steps, precision)
                )
            # PGD-10 costs 10 input-gradient passes (plus 2 forward passes) per image.
            rates.setdefault(("PGD-10 (input-grad passes)", precision), []).append(
                10 * pgd_rate(batch, width, device, cl, 10, precision)
            )
    med = {key: statistics.median(v) for key, v in rates.items()}
    _print_loop_table(med, precisions, batch)


def _print_loop_table(med: dict[tuple[str, str], float], precisions: list[str], batch: int) -> None:
    """One row per measurement: images/s and ratio to the bare fp32 fwd+bwd, per precision."""
    rows = list(dict.fromkeys(row for row, _ in med))
    header = f"{'measurement':<30}" + "".join(
        f"{p + ' img/s':>13}{p + ' vs bare':>14}{'ideal':>7}{'of ideal':>9}" for p in precisions
    )
    speedup = len(precisions) == 2
    if speedup:
        header += f"{precisions[1] + '/' + precisions[0]:>12}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ref = _bare_reference(row, batch)
        base = med.get((ref, "fp32"))
        line = f"{row:<30}"
        ideal = _ideal_ratio(row)
        for precision in precisions:
            value = med[(row, precision)]
            ratio = f"{value / base:.2f}x" if base else "-"
            of_ideal = f"{value / base / ideal:.2f}" if base and ideal else "-"
            ideal_text = f"{ideal:.2f}" if ideal else "-"
            line += f"{value:>13.1f}{ratio:>14}{ideal_text:>7}{of_ideal:>9}"
        if speedup:
            line += f"{med[(row, precisions[1])] / med[(row, precisions[0])]:>11.2f}x"
        print(line)
    print(
        "vs bare: ratio to the bare model's fp32 forward+backward rate on as many images as pass "
        "through the network (B for supervised and PGD, 2B views for contrastive objectives). "
        "ideal: what a step costs over the bare forward+backward if nothing but the method's own "
        "extra passes were added (a target network's forward without backward costs about a third "
        "of a step: BYOL, MoCo 0.75; adversarial methods 1/(k + 2) for ACL's and DynACL's dual "
        "stream with k attack steps, RoCL 1/(k/2 + 1.67); every other objective 1.00); "
        "of ideal = measured / ideal "
        "(the loop also pays for augmentation, the loss and the optimiser)."
    )


# Extra work of a method over its network's forward+backward, in steps: a target network's forward
# on every view without backward (BYOL's EMA target, MoCo's key encoder) costs about 1/3 of a step.
TARGET_FORWARD_COST = 1 / 3
TARGET_NETWORK_METHODS = ("byol", "moco")


def adversarial_step_cost(name: str) -> float | None:
    """Passes of an adversarial method's step, in forward+backward passes over the 2B views.

    ACL's dual stream and DynACL: ``k`` attack passes on both views (input gradient only) + the
    clean and the adversarial training pass = ``k + 2``; A2A ``k + 1``; A2S and RoCL attack one
    view (``k/2``) against a fixed partner embedded once (a forward: 1/3 of a pass, on half the
    views); A2S then trains on two views (1), RoCL on three (1.5). ``None`` for other methods.
    """
    section = OBJECTIVES.section(name)
    attack = getattr(section, "attack", None)
    if attack is None:
        return None
    k = attack.steps
    if name == "rocl":
        return k / 2 + TARGET_FORWARD_COST / 2 + 1.5
    variant = getattr(section, "variant", "ds")
    if variant == "a2s":
        return k / 2 + TARGET_FORWARD_COST / 2 + 1
    return k + (1 if variant == "a2a" else 2)


def _ideal_ratio(row: str) -> float | None:
    """The ideal images/s of a training-loop row as a fraction of the bare fwd+bwd rate."""
    if not row.startswith("train loop: "):
        return None
    name = row.removeprefix("train loop: ")
    adversarial = adversarial_step_cost(name)
    if adversarial is not None:
        return 1 / adversarial
    return 1 / (1 + TARGET_FORWARD_COST) if name in TARGET_NETWORK_METHODS else 1.0


def _bare_reference(row: str, batch: int) -> str:
    """The bare fwd+bwd row a measurement is compared with (2B images for 2-view objectives)."""
    if row.startswith("train loop: "):
        name = row.removeprefix("train loop: ")
        n_views = build_objective(OBJECTIVES.section(name)).n_views
        return f"bare fwd+bwd ({n_views * batch} img)"
    if row.startswith("bare fwd+bwd"):
        return row
    return f"bare fwd+bwd ({batch} img)"


# ----------------------------------------------------------------------------------- gpu-epoch


@dataclass(frozen=True)
class Variant:
    """One row of the GPU table: precision, memory format and compilation of the training step."""

    precision: str
    channels_last: bool
    compile: bool
    augment: str = "simclr"


VARIANTS = {
    "fp32": Variant("fp32", channels_last=False, compile=False),
    "fp32-cl": Variant("fp32", channels_last=True, compile=False),
    "bf16": Variant("bf16", channels_last=False, compile=False),
    "bf16-cl": Variant("bf16", channels_last=True, compile=False),
    "bf16-cl-compile": Variant("bf16", channels_last=True, compile=True),
    "bf16-cl-fast": Variant("bf16", channels_last=True, compile=False, augment="simclr_fast"),
    "bf16-cl-fast-compile": Variant(
        "bf16", channels_last=True, compile=True, augment="simclr_fast"
    ),
}


def _gpu_data(source: Path | None, device: str) -> tuple[TensorImageDataset, tuple, tuple, str]:
    """The 50,000 CIFAR-10 training images on ``device`` as uint8 (real if ``source``, else random)."""
    if source is not None:
        from cslrobust.data import build_datasets, default_data_root

        # val_per_class=0 keeps the whole official training split (the study carves 500 for val).
        splits = build_datasets(
            "cifar10",
            root=default_data_root(),
            source=source,
            val_per_class=0,
            seed=0,
            device=device,
        )
        return splits.train, splits.mean, splits.std, f"CIFAR-10 from {source}"
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(
        0, 256, (CIFAR10_TRAIN, 3, 32, 32), dtype=torch.uint8, device=device, generator=g
    )
    labels = torch.randint(0, 10, (CIFAR10_TRAIN,), device=device, generator=g)
    return TensorImageDataset(images, labels, device), CIFAR10_MEAN, CIFAR10_STD, "random uint8"


def gpu_epoch_variant(
    variant: Variant,
    data: TensorImageDataset,
    mean: tuple,
    std: tuple,
    args: argparse.Namespace,
    device: str,
) -> dict[str, float]:
    """Train SimCLR for warm-up + timed epochs with ``variant``; per-epoch times of the timed ones."""
    from cslrobust.training import steps_per_epoch

    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats(device)
    objective = build_objective(SimCLRSection())
    encoder = _encoder(objective.head_kind, args.width, device, variant.channels_last, mean, std)
    make_views = build_augment(AUGMENTATIONS.section(variant.augment)).to(device)
    lr = 0.3 * args.batch / 256  # SimCLR's linear scaling; the value does not change the speed
    optimizer = build_sgd(encoder, lr=lr, momentum=0.9, weight_decay=5e-4)
    n_steps = steps_per_epoch(data, args.batch, True)
    epochs = args.warmup_epochs + args.timed_epochs
    settings = LoopSettings(
        epochs=epochs,
        batch_size=args.batch,
        seed=0,
        keep_last=1,
        channels_last=variant.channels_last,
        progress=False,
        precision=variant.precision,
        compile=variant.compile,
    )
    ends: list[float] = []

    def mark(epoch: int, metrics: dict[str, float]) -> None:
        torch.cuda.synchronize(device)
        ends.append(time.perf_counter())
        print(
            f"    epoch {epoch}: {ends[-1] - ends[-2]:.2f} s wall, "
            f"{metrics['epoch_seconds']:.2f} s loop clock, loss {metrics['loss']:.4f}",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="cslrobust-gpu-epoch-") as tmp:
        torch.cuda.synchronize(device)
        ends.append(time.perf_counter())
        result = train(
            build_method(objective, encoder),
            make_views,
            data,
            optimizer,
            warmup_cosine(lr, epochs * n_steps, warmup_steps=n_steps),
            Path(tmp),
            settings,
            epoch_hooks=[mark],
        )
    timed = slice(args.warmup_epochs, epochs)
    wall = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)][timed]
    loop_clock = [float(h["epoch_seconds"]) for h in result.history][timed]
    return {
        "images_per_epoch": float(n_steps * args.batch),
        "loop_s": statistics.mean(loop_clock),
        "wall_s": statistics.mean(wall),
        "warmup_s": sum(ends[i + 1] - ends[i] for i in range(args.warmup_epochs)),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
    }


def run_gpu_epoch_mode(args: argparse.Namespace) -> None:
    """``--mode gpu-epoch``: seconds per SimCLR CIFAR-10 epoch for each variant on one GPU."""
    device = args.device or "cuda"
    if not torch.cuda.is_available():
        print("--mode gpu-epoch needs CUDA; no GPU here. Nothing measured.")
        return
    args.width, args.batch = args.width or 64, args.batch or 512
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark  # as a speed-minded CLI would
    props = torch.cuda.get_device_properties(device)
    print(
        f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
        f"cudnn.benchmark={torch.backends.cudnn.benchmark}, "
        f"TF32 conv={torch.backends.cudnn.allow_tf32} matmul={torch.backends.cuda.matmul.allow_tf32}"
    )
    tic = time.perf_counter()
    data, mean, std, what = _gpu_data(args.data_source, device)
    print(
        f"data: {len(data)} images ({what}) on {device} as {data.images.dtype}, "
        f"loaded in {time.perf_counter() - tic:.1f} s"
    )
    print(
        f"SimCLR, ResNet-18 width {args.width}, global batch {args.batch}, 2 views made on the GPU "
        f"(kornia, or simclr_fast for '-fast' variants); {args.warmup_epochs} warm-up epoch(s) "
        f"excluded, mean of {args.timed_epochs} timed"
    )
    rows: dict[str, dict[str, float] | str] = {}
    start = time.perf_counter()
    for name in names:
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            rows[name] = f"skipped: --budget-s {args.budget_s:g} spent"
            print(f"  {name}: {rows[name]}", flush=True)
            continue
        print(f"  {name}: {VARIANTS[name]}", flush=True)
        try:
            row = gpu_epoch_variant(VARIANTS[name], data, mean, std, args, device)
            rows[name] = row
            print(
                f"  {name}: {row['loop_s']:.2f} s/epoch loop clock, {row['wall_s']:.2f} s wall, "
                f"warm-up {row['warmup_s']:.1f} s, peak {row['peak_gib']:.1f} GiB",
                flush=True,
            )
        except Exception as err:  # one broken variant must not hide the others' numbers
            traceback.print_exc()
            rows[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
        finally:
            if VARIANTS[name].compile:
                torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()

    print()
    header = (
        f"{'variant':<18}{'s/epoch':>9}{'s/ep wall':>10}{'img/s':>9}{'views/s':>9}"
        f"{'warm-up s':>10}{'peak GiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        if isinstance(row, str):
            print(f"{name:<18}{row}")
            continue
        rate = row["images_per_epoch"] / row["loop_s"]
        print(
            f"{name:<18}{row['loop_s']:>9.2f}{row['wall_s']:>10.2f}{rate:>9.0f}{2 * rate:>9.0f}"
            f"{row['warmup_s']:>10.1f}{row['peak_gib']:>9.1f}"
        )
    for label, seconds in (
        ("lightly b512 (*)", LIGHTLY_S_PER_EPOCH),
        ("target H100", TARGET_S_PER_EPOCH),
    ):
        rate = CIFAR10_TRAIN / seconds
        print(f"{label:<18}{seconds:>9.2f}{'':>10}{rate:>9.0f}{2 * rate:>9.0f}")
    print(
        "s/epoch: the loop's clock (ends with the epoch's loss fetch; checkpoint excluded); "
        "s/ep wall: synchronize-to-synchronize between epoch ends, checkpoint write included.\n"
        "img/s: training images per second (each gives 2 views). (*) lightly benchmarks docs, "
        "SimCLR ResNet-18 CIFAR-10 batch 512: 331.1 min / 800 epochs, per-epoch kNN eval included "
        "(GPU not named there; A6000 per their ImageNette runs)."
    )


# ----------------------------------------------------------------------------------- multiproc


def _cuda_ms(fn: Any, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` on the GPU (synchronised around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        tic = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - tic) * 1e3)
    return statistics.median(times)


def _count_syncs(fn: Any) -> int:
    """Host-device synchronisations ``fn()`` triggers (torch's sync debug mode, as warnings)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def run_gpu_breakdown_mode(args: argparse.Namespace) -> None:
    """``--mode gpu-breakdown``: where one SimCLR step's time goes, per augmentation preset."""
    device = args.device or "cuda"
    if not torch.cuda.is_available():
        print("--mode gpu-breakdown needs CUDA; no GPU here. Nothing measured.")
        return
    torch.backends.cudnn.benchmark = True
    width, batch, repeats = args.width or 64, args.batch or 512, args.repeats or 20
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(batch, 3, 32, 32, device=device, generator=g)
    labels = torch.randint(0, 10, (batch,), device=device, generator=g)
    index = torch.arange(batch, device=device)
    objective = build_objective(SimCLRSection())
    encoder = _encoder("projector", width, device, True, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    optimizer = build_sgd(encoder, lr=0.1, momentum=0.9, weight_decay=5e-4)
    fixed_views = images.repeat(2, 1, 1, 1).contiguous(memory_format=torch.channels_last)

    def model_step(views: torch.Tensor) -> None:
        with torch.autocast("cuda", torch.bfloat16):
            out = encoder(views)
        loss = objective(out.float().view(2, batch, -1), index, labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rows = [
        (
            "model fwd+bwd+SGD (bf16, channels_last)",
            _cuda_ms(lambda: model_step(fixed_views), repeats),
            _count_syncs(lambda: model_step(fixed_views)),
        )
    ]
    for kind in ("simclr", "simclr_fast"):
        try:
            augment = build_augment(AUGMENTATIONS.section(kind)).to(device)
        except Exception as err:  # preset missing in this version
            print(f"{kind}: {err}")
            continue

        def views(augment: Any = augment) -> torch.Tensor:
            return augment(images, 2).contiguous(memory_format=torch.channels_last)

        rows.append(
            (f"augment {kind} (2 x {batch} views)", _cuda_ms(views, repeats), _count_syncs(views))
        )
        rows.append(
            (
                f"full step with {kind}",
                _cuda_ms(lambda v=views: model_step(v()), repeats),
                _count_syncs(lambda v=views: model_step(v())),
            )
        )
    steps = CIFAR10_TRAIN // batch
    print(f"SimCLR ResNet-18 width {width}, batch {batch}; median of {repeats} synchronised calls")
    print(f"{'part':<44}{'ms/step':>9}{'s/epoch':>9}{'host syncs':>11}")
    for name, ms, syncs in rows:
        print(f"{name:<44}{ms:>9.2f}{ms * steps / 1e3:>9.2f}{syncs:>11}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _multiproc_worker(
    rank: int,
    world_size: int,
    port: int,
    threads: int,
    cfg: dict[str, Any],
    folder: str,
    queue: Any,
) -> None:
    """One process of ``--mode multiproc``: torchrun's environment, then the real loop on CPU."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
    try:
        import torch.distributed as dist

        from cslrobust.distributed import init_distributed
        from cslrobust.training import steps_per_epoch

        _, device = init_distributed("cpu")
        g = torch.Generator().manual_seed(0)  # the same images on every rank
        n = cfg["images"]
        data = TensorImageDataset(
            torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g),
            device=device,
        )
        torch.manual_seed(0)  # DDP also broadcasts rank 0's weights
        objective = build_objective(SimCLRSection())
        encoder = _encoder(objective.head_kind, cfg["width"], device, True)
        optimizer = build_sgd(encoder, lr=0.3, momentum=0.9, weight_decay=5e-4)
        n_steps = steps_per_epoch(data, cfg["batch"], True)
        epochs = 1 + cfg["timed_epochs"]
        settings = LoopSettings(
            epochs=epochs,
            batch_size=cfg["batch"],
            seed=0,
            keep_last=1,
            channels_last=True,
            progress=False,
            sync_batchnorm=cfg["sync_batchnorm"],
        )
        result = train(
            build_method(objective, encoder),
            build_augment(SimCLRAugmentSection()).to(device),
            data,
            optimizer,
            warmup_cosine(0.3, epochs * n_steps, 0),
            Path(folder),
            settings,
        )
        seconds = [float(h["epoch_seconds"]) for h in result.history[1:]]
        queue.put((rank, seconds, n_steps * cfg["batch"], None))
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        queue.put((rank, [], 0, traceback.format_exc()))


def multiproc_rate(nproc: int, cores: int, cfg: dict[str, Any]) -> tuple[float, float, int]:
    """Global training images/s of ``nproc`` gloo processes (slowest rank's clock, mean epoch)."""
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    threads = max(1, cores // nproc)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="cslrobust-multiproc-") as folder:
        procs = [
            ctx.Process(
                target=_multiproc_worker, args=(r, nproc, port, threads, cfg, folder, queue)
            )
            for r in range(nproc)
        ]
        for p in procs:
            p.start()
        results = [queue.get(timeout=cfg["timeout_s"]) for _ in procs]
        for p in procs:
            p.join(timeout=60)
    errors = [err for _, _, _, err in results if err]
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed; first:\n{errors[0]}")
    # Ranks advance in lockstep (collectives every step): the epoch lasts as long as the slowest.
    epoch_s = statistics.mean(
        max(per_epoch) for per_epoch in zip(*(r[1] for r in results), strict=True)
    )
    images = results[0][2]
    return images / epoch_s, epoch_s, threads


def run_multiproc_mode(args: argparse.Namespace) -> None:
    """``--mode multiproc``: 1 process vs ``--nproc`` processes on CPU at the same global batch."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cfg = {
        "images": args.images,
        "width": args.width or 16,
        "batch": args.batch or 256,
        "timed_epochs": args.timed_epochs or 1,
        "timeout_s": 1800,
        "sync_batchnorm": not args.no_sync_bn,
    }
    print(
        f"SimCLR, ResNet-18 width {cfg['width']}, {cfg['images']} random images, global batch "
        f"{cfg['batch']}, CPU gloo, {cores} cores, torch {torch.__version__}; 1 warm-up epoch, "
        f"{cfg['timed_epochs']} timed; global BatchNorm {'on' if cfg['sync_batchnorm'] else 'off'}"
    )
    runs: dict[int, list[tuple[float, float, int]]] = {1: [], args.nproc: []}
    for _ in range(args.repeats or 1):
        # Interleaved, so that load from other jobs on a shared machine hits both alike.
        for nproc, measured in runs.items():
            measured.append(multiproc_rate(nproc, cores, cfg))
            epoch_s, threads = measured[-1][1], measured[-1][2]
            print(f"  {nproc} process(es) x {threads} thread(s): {epoch_s:.2f} s/epoch", flush=True)
    rows = []
    for nproc, measured in runs.items():
        epoch_s = statistics.median(m[1] for m in measured)
        rows.append((nproc, measured[0][2], epoch_s, statistics.median(m[0] for m in measured)))
    print(
        f"{'processes':>10}{'threads each':>14}{'s/epoch':>10}{'img/s':>9}{'views/s':>9}{'vs 1':>7}"
    )
    for nproc, threads, epoch_s, rate in rows:
        print(
            f"{nproc:>10}{threads:>14}{epoch_s:>10.2f}{rate:>9.1f}{2 * rate:>9.1f}"
            f"{rate / rows[0][3]:>6.2f}x"
        )
    print("img/s: global training images per second (each gives 2 views).")


def main() -> None:
    """Parse the mode and run it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode", choices=("loop", "gpu-epoch", "gpu-breakdown", "multiproc"), default="loop"
    )
    parser.add_argument(
        "--width", type=int, help="ResNet-18 width (loop 16, gpu-epoch 64, multiproc 16)"
    )
    parser.add_argument(
        "--batch", type=int, help="global batch (loop 256, gpu-epoch 512, multiproc 256)"
    )
    parser.add_argument("--device", help="loop: cpu; gpu-epoch: cuda")
    parser.add_argument("--steps", type=int, default=6, help="loop: timed steps per measurement")
    parser.add_argument(
        "--objectives", default="", help="loop: comma list of objectives (default: all registered)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="interleaved repeats, medians reported (loop default 3, multiproc default 1)",
    )
    parser.add_argument("--no-channels-last", action="store_true", help="loop: NCHW memory format")
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="loop: comma list of fp32, bf16 (columns)"
    )
    parser.add_argument(
        "--data-source", type=Path, help="gpu-epoch: CIFAR-10 ImageFolder .tar(.gz); else random"
    )
    parser.add_argument(
        "--variants",
        default="fp32,bf16-cl,bf16-cl-fast,bf16-cl-fast-compile",
        help=f"gpu-epoch: comma list of {', '.join(VARIANTS)}",
    )
    parser.add_argument("--warmup-epochs", type=int, default=1, help="gpu-epoch: untimed epochs")
    parser.add_argument(
        "--timed-epochs", type=int, help="gpu-epoch (default 2) / multiproc (default 1)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="gpu-epoch: start no further variant after this many seconds (0: no limit)",
    )
    parser.add_argument(
        "--no-cudnn-benchmark", action="store_true", help="gpu-epoch: leave cuDNN autotuning off"
    )
    parser.add_argument("--nproc", type=int, default=2, help="multiproc: processes to compare")
    parser.add_argument(
        "--no-sync-bn", action="store_true", help="multiproc: per-process BatchNorm statistics"
    )
    parser.add_argument("--images", type=int, default=2048, help="multiproc: training images")
    args = parser.parse_args()
    if args.mode == "loop":
        run_loop_mode(args)
    elif args.mode == "gpu-epoch":
        args.timed_epochs = args.timed_epochs or 2
        run_gpu_epoch_mode(args)
    elif args.mode == "gpu-breakdown":
        run_gpu_breakdown_mode(args)
    else:
        run_multiproc_mode(args)


if __name__ == "__main__":
    main()
