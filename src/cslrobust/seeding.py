"""Deterministic seeding with separate, named random streams.

Data order, model initialisation, augmentation and attack restarts each draw from their own seed derived
from ``(run_seed, stream, *keys)``, so changing one (say, the number of attack restarts) never shifts another
(the data order). Library code never reseeds the global RNG except through :func:`rng_scope`, which restores
the previous state on exit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


def derive_seed(seed: int, stream: str, *keys: int | str) -> int:
    """Derive a 63-bit seed for a named stream from the run seed.

    Args:
        seed: The run seed.
        stream: Stream name, e.g. ``"data"``, ``"init"``, ``"augment"``, ``"attack"``.
        *keys: Further keys, e.g. the epoch.

    Returns:
        A non-negative integer seed, stable across processes and Python versions.
    """
    text = "/".join([str(seed), stream, *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def make_generator(
    seed: int, stream: str, *keys: int | str, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded from ``derive_seed(seed, stream, *keys)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, stream, *keys))
    return generator


def seed_everything(seed: int) -> torch.Generator:
    """Seed ``random``, ``numpy`` and ``torch`` (all devices) and return a CPU generator for ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return make_generator(seed, "main")


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker initialiser: seed ``random`` and ``numpy`` from torch's per-worker seed."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed + worker_id)
    np.random.seed((worker_seed + worker_id) % 2**32)


@contextlib.contextmanager
def rng_scope(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run a block with the global torch RNG (CPU and ``device``) seeded to ``seed``, then restore it.

    Used around code whose randomness comes from the global RNG and cannot take a generator
    (kornia augmentation parameters), so that it is reproducible per epoch without disturbing callers.
    """
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Enable deterministic algorithms (for tests and reproductions) and restore the previous flags."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_bench = torch.backends.cudnn.benchmark
    previous_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = previous_bench
        if previous_env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = previous_env
