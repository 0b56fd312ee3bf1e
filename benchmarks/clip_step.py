"""One SimCLR step on clips against the bare 3D backbone (issue 16; a stand-in until the loop takes clips).

Times, per clip that passes through the network, (a) the bare model: encoder forward + backward + SGD
step on fixed ``(2B, 3, T, H, W)`` views, and (b) a SimCLR step as the loop will run it: a batch of ``B``
uint8 clips of ``T + jitter`` frames gathered from a ``TensorClipDataset``, ``simclr_clip`` views (2 per
clip, ``T`` frames each, temporal jitter), the same forward + backward + SGD step and the InfoNCE loss.
Prints clips/s of both and their ratio (the issue's target: >= 0.9 for the real loop). The training
loop itself does not take clips yet (its ``channels_last`` path is 4-D), so this measures the clip
pieces written so far, not ``train()``. Timings on shared machines are noisy; the ratio is what counts::

    python benchmarks/clip_step.py [--arch r3d_18] [--width 16] [--batch 32] [--frames 8] [--size 32] \\
        [--stem cifar] [--steps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from cslrobust.augment import AUGMENTATIONS, build_augment
from cslrobust.data import TensorClipDataset
from cslrobust.models import build_encoder
from cslrobust.objectives import SimCLRSection, build_objective
from cslrobust.seeding import rng_scope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="r3d_18")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--stem", default="cifar")
    parser.add_argument("--batch", type=int, default=32, help="clips per step (2x views)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument(
        "--jitter", type=int, default=4, help="extra input frames for temporal jitter"
    )
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    encoder = build_encoder(
        args.arch, width=args.width, head_kind="projector", num_classes=10, proj_hidden_dim=512,
        proj_dim=128, mean=(0.5,) * 3, std=(0.25,) * 3, stem=args.stem,
    ).to(device)  # fmt: skip
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.01, momentum=0.9)
    b, t, s = args.batch, args.frames, args.size
    data = TensorClipDataset(
        torch.randint(0, 256, (4 * b, 3, t + args.jitter, s, s), dtype=torch.uint8),
        torch.arange(4 * b) % 10,
        device,
    )
    views_of = build_augment(AUGMENTATIONS.section("simclr_clip", frames=t))
    fixed = torch.rand(2 * b, 3, t, s, s, device=device)

    objective = build_objective(SimCLRSection())

    def loss_of(views: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        outputs = encoder(views).view(2, b, -1)  # (V, B, D), view-major as the loop gathers them
        loss: torch.Tensor = objective(outputs, index, labels).loss
        return loss

    def bare() -> None:
        optimizer.zero_grad(set_to_none=True)
        encoder(fixed).square().mean().backward()
        optimizer.step()

    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        batch = next(data.batches(b, shuffle=True, generator=generator, drop_last=True))
        with rng_scope(0, device):
            views = views_of(batch.images, 2)
        optimizer.zero_grad(set_to_none=True)
        loss_of(views, batch.index, batch.labels).backward()
        optimizer.step()

    def rate(fn) -> float:  # type: ignore[no-untyped-def]
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return 2 * b * args.steps / (time.perf_counter() - start)

    bare_rate, step_rate = rate(bare), rate(step)
    bare_rate = max(bare_rate, rate(bare))  # best of two, against drift on a shared machine
    print(
        f"{args.arch} width {args.width} stem {args.stem}, {2 * b} views of {t}x{s}x{s}, "
        f"{torch.get_num_threads()} threads on {device}"
    )
    print(f"bare forward+backward+SGD: {bare_rate:8.1f} clips/s")
    print(f"SimCLR step (views, loss): {step_rate:8.1f} clips/s  ratio {step_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
