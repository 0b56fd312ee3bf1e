"""Clip training through the real loop against the bare 3D backbone (issue 16: ratio >= 0.9).

For each backbone (R3D-18, R(2+1)D-18), objective (supervised, simclr) and memory format
(``channels_last``: NDHWC, or NCDHW), two rates in clip views per second (views that pass through the
network; a SimCLR step on ``B`` clips makes ``2B``):

- bare: the encoder's forward + backward + optimiser step on fixed ``(V*B, 3, T, H, W)`` views in the
  same memory format (``V`` the objective's views per clip: 1 supervised, 2 SimCLR), with a trivial
  loss; the first step is warm-up and not timed.
- loop: one epoch of :func:`cslrobust.training.loop.train` (the loop of ``cslrobust train``), wired as
  ``study/train.py`` wires it: ``build_objective``, ``build_method``, ``build_augment`` with
  ``simclr_clip`` (temporal jitter: ``T + jitter``-frame uint8 clips in a ``TensorClipDataset``),
  ``build_optimizer`` of the ``train`` section and ``LoopSettings(channels_last=...)``. The rate is
  the loop's own clock (``images_per_s`` of the epoch: batch gathers, views, memory-format
  conversion, loss, backward, optimiser, metric sums; checkpoint writing excluded). The loop runs
  right after the bare model on the same shapes, so its first step finds warm kernels, but it is
  timed (conservative for the loop).

Settings are measured interleaved ``--repeats`` times and medians are printed, with the ratio loop /
bare per row (target >= 0.9) and, per backbone, NDHWC / NCDHW of the bare rate. Time is this
process's CPU time by default (``--clock cpu``; with one thread it is the elapsed time of an idle
machine, and other jobs on a shared one do not stretch it; the loop's own clock is pointed at it for
the measurement); ``--clock wall`` for GPUs. ``--breakdown``
also prints the median milliseconds of the loop's parts, timed one by one on the loop's own
functions. Use one thread (``torch.set_num_threads(1)``, the default here) on a shared machine so
ratios are stable::

    python benchmarks/clip_step.py [--archs r3d_18,r2plus1d_18] [--objectives supervised,simclr] \\
        [--width 8] [--batch 64] [--frames 8] [--jitter 4] [--size 32] [--steps 4] [--repeats 3] \\
        [--channels-last both|true|false] [--threads 1] [--breakdown] [--clock cpu|wall] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from cslrobust.augment import AUGMENTATIONS, build_augment
from cslrobust.config import TrainConfig
from cslrobust.data import TensorClipDataset
from cslrobust.models import Encoder, build_encoder
from cslrobust.objectives import OBJECTIVES, build_objective
from cslrobust.objectives.method import build_method
from cslrobust.seeding import rng_scope
from cslrobust.training import LoopSettings, build_optimizer, train, warmup_cosine
from cslrobust.training import loop as loop_module

MEAN, STD = (0.5,) * 3, (0.25,) * 3
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


@contextlib.contextmanager
def loop_clock() -> Iterator[None]:
    """Make the loop's own epoch clock (``time.perf_counter`` in ``training/loop.py``) ``clock``."""
    saved = loop_module.time
    loop_module.time = types.SimpleNamespace(perf_counter=clock)  # type: ignore[assignment]
    try:
        yield
    finally:
        loop_module.time = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _encoder(args: argparse.Namespace, arch: str, head_kind: str, channels_last: bool) -> Encoder:
    torch.manual_seed(0)
    return build_encoder(
        arch, width=args.width, head_kind=head_kind, num_classes=10, proj_hidden_dim=512,
        proj_dim=128, mean=MEAN, std=STD, channels_last=channels_last, stem="cifar",
        clip_frames=args.frames,
    ).to(args.device)  # fmt: skip


def _train_section(args: argparse.Namespace) -> TrainConfig:
    # A small rate: random clips, a few steps; the rate does not change the arithmetic's cost.
    return TrainConfig(epochs=1, batch_size=args.batch, lr=0.01, warmup_epochs=0.0)


def bare_rate(args: argparse.Namespace, arch: str, objective: str, channels_last: bool) -> float:
    """Clip views/s of forward + backward + optimiser step on fixed views (first step untimed)."""
    obj = build_objective(OBJECTIVES.section(objective))
    encoder = _encoder(args, arch, obj.head_kind, channels_last)
    optimizer = build_optimizer(encoder, _train_section(args))
    n = obj.n_views * args.batch
    x = torch.rand(n, 3, args.frames, args.size, args.size, device=args.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    encoder.train()
    for i in range(args.steps + 1):
        if i == 1:
            _sync(args.device)
            tic = clock()
        optimizer.zero_grad(set_to_none=True)
        encoder(x).square().mean().backward()
        optimizer.step()
    _sync(args.device)
    return n * args.steps / (clock() - tic)


def _clip_data(args: argparse.Namespace) -> TensorClipDataset:
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    t, s = args.frames + args.jitter, args.size
    clips = torch.randint(0, 256, (n, 3, t, s, s), dtype=torch.uint8, generator=g)
    return TensorClipDataset(clips, torch.arange(n) % 10, args.device)


def loop_rate(args: argparse.Namespace, arch: str, objective: str, channels_last: bool) -> float:
    """Clip views/s of one epoch (``--steps`` steps) of the real training loop."""
    obj = build_objective(OBJECTIVES.section(objective))
    encoder = _encoder(args, arch, obj.head_kind, channels_last)
    method = build_method(obj, encoder)
    tr = _train_section(args)
    optimizer = build_optimizer(method.network(), tr)
    make_views = build_augment(AUGMENTATIONS.section("simclr_clip", frames=args.frames))
    settings = LoopSettings(
        epochs=1,
        batch_size=args.batch,
        seed=0,
        log_every=tr.log_every,
        channels_last=channels_last,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp, loop_clock():
        result = train(
            method,
            make_views.to(args.device),
            _clip_data(args),
            optimizer,
            warmup_cosine(tr.peak_lr(), args.steps, warmup_steps=0),
            Path(tmp),
            settings,
        )
    return float(result.history[0]["images_per_s"])


def breakdown(args: argparse.Namespace, arch: str, objective: str, channels_last: bool) -> dict:
    """Median ms per step of the loop's parts, each timed alone with the loop's own calls."""
    from cslrobust.training.loop import _CHANNELS_LAST, _ViewRunner

    obj = build_objective(OBJECTIVES.section(objective))
    method = build_method(obj, _encoder(args, arch, obj.head_kind, channels_last))
    optimizer = build_optimizer(method.network(), _train_section(args))
    make_views = build_augment(AUGMENTATIONS.section("simclr_clip", frames=args.frames))
    data = _clip_data(args)
    generator = torch.Generator().manual_seed(0)
    batch = next(data.batches(args.batch, shuffle=True, generator=generator, drop_last=True))
    with rng_scope(0, args.device):
        views = make_views(batch.images, obj.n_views)
    cl_views = views.contiguous(memory_format=_CHANNELS_LAST[5]) if channels_last else views
    network = method.network()
    objective_gen = torch.Generator(device=args.device).manual_seed(0)

    def gather() -> None:
        next(data.batches(args.batch, shuffle=True, generator=generator, drop_last=True))

    def augment() -> None:
        with rng_scope(0, args.device):
            make_views(batch.images, obj.n_views)

    def convert() -> None:
        views.contiguous(memory_format=_CHANNELS_LAST[5])

    def step() -> None:
        run = _ViewRunner(obj.n_views, args.batch, "fp32")
        out = method.loss(run, network, cl_views, batch.index, batch.labels,
                          generator=objective_gen, epoch=0)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    parts: dict[str, Callable[[], None]] = {"batch gather": gather, "views": augment}
    if channels_last:
        parts["NDHWC conversion"] = convert
    parts["fwd+loss+bwd+opt"] = step
    ms = {}
    for name, fn in parts.items():
        fn()  # warm-up
        times = []
        for _ in range(args.steps):
            _sync(args.device)
            tic = clock()
            fn()
            _sync(args.device)
            times.append(1e3 * (clock() - tic))
        ms[name] = statistics.median(times)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="r3d_18,r2plus1d_18")
    parser.add_argument("--objectives", default="supervised,simclr")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="clips per step (SimCLR: 2x views)")
    parser.add_argument("--frames", type=int, default=8, help="frames per view")
    parser.add_argument(
        "--jitter", type=int, default=4, help="extra input frames for temporal jitter"
    )
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians)")
    parser.add_argument("--channels-last", choices=("both", "true", "false"), default="both")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--breakdown", action="store_true", help="also time the loop's parts")
    parser.add_argument(
        "--clock", choices=tuple(CLOCKS), default="cpu",
        help="cpu: this process's CPU time (robust to other jobs on a shared machine; CPU only, "
        "one thread); wall: elapsed time (GPUs)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = args.archs.split(",")
    objectives = args.objectives.split(",")
    formats = {"both": (True, False), "true": (True,), "false": (False,)}[args.channels_last]
    print(
        f"width {args.width}, cifar stem, batch {args.batch} clips of {args.frames}x{args.size}x"
        f"{args.size} (inputs {args.frames + args.jitter} frames, simclr_clip views), "
        f"{args.steps} steps x {args.repeats} repeats, {torch.get_num_threads()} thread(s) on "
        f"{args.device}, {args.clock} clock, torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
        flush=True,
    )
    rates: dict[tuple[str, str, bool, str], list[float]] = {}
    for _ in range(args.repeats):
        for arch in archs:
            for cl in formats:
                for objective in objectives:
                    # Bare first: the loop then runs on kernels already warm for these shapes.
                    for kind, fn in (("bare", bare_rate), ("loop", loop_rate)):
                        rate = fn(args, arch, objective, cl)
                        rates.setdefault((arch, objective, cl, kind), []).append(rate)
                        print(f"  {arch} {objective} channels_last={cl} {kind}: {rate:.1f}",
                              flush=True)  # fmt: skip
    med = {key: statistics.median(v) for key, v in rates.items()}
    header = (
        f"{'backbone':<13}{'objective':<12}{'format':<8}{'views':>6}{'loop views/s':>14}"
        f"{'bare views/s':>14}{'loop/bare':>11}"
    )
    print(header)
    print("-" * len(header))
    for arch in archs:
        for cl in formats:
            for objective in objectives:
                n_views = build_objective(OBJECTIVES.section(objective)).n_views
                loop, bare = med[(arch, objective, cl, "loop")], med[(arch, objective, cl, "bare")]
                fmt = "NDHWC" if cl else "NCDHW"
                print(
                    f"{arch:<13}{objective:<12}{fmt:<8}{n_views * args.batch:>6}{loop:>14.1f}"
                    f"{bare:>14.1f}{loop / bare:>11.3f}"
                )
    if len(formats) == 2:
        print("NDHWC / NCDHW (channels_last true / false), medians:")
        for arch in archs:
            for objective in objectives:
                for kind in ("bare", "loop"):
                    ratio = med[(arch, objective, True, kind)] / med[(arch, objective, False, kind)]
                    print(f"  {arch:<13}{objective:<12}{kind:<5}{ratio:.3f}")
    print(
        "views/s: clip views through the network per second (supervised 1 per clip, simclr 2); "
        "loop: train() of the real loop (its own clock, first step included); bare: forward + "
        "backward + optimiser step of the same encoder on as many fixed views, same format."
    )
    if args.breakdown:
        print("loop parts, median ms per step:")
        for arch in archs:
            for cl in formats:
                for objective in objectives:
                    ms = breakdown(args, arch, objective, cl)
                    parts = ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
                    fmt = "NDHWC" if cl else "NCDHW"
                    print(f"  {arch:<13}{objective:<12}{fmt:<7}{parts}")


if __name__ == "__main__":
    main()
