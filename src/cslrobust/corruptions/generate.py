"""Generating corrupted copies of a test set: :func:`corrupt` and its on-disk cache.

Determinism: :func:`corrupt` draws everything from one ``numpy.random.Generator`` seeded with
``derive_seed(seed, "corruption", name, severity)``, consumed in a fixed order over the batch in
chunks of :data:`CHUNK` images. The output is a function of ``(images, name, severity, seed)`` and
:data:`GENERATOR_VERSION` only. It is *not* per-image: the same image at another position, or in a
batch of another size, gets other random draws (which is why the cache key hashes the whole input).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from cslrobust.corruptions.registry import CORRUPTIONS, SEVERITIES
from cslrobust.errors import ConfigError, DataError
from cslrobust.seeding import derive_seed

GENERATOR_VERSION = "generated-v1"
"""Bump whenever any corruption's output changes: it is part of the cache key and the protocol."""

CHUNK = 2500
"""Images per call of a corruption function (bounds memory; part of the deterministic order)."""

IMAGE_SIZE = 32


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be a torch.uint8 tensor, got {getattr(images, 'dtype', type(images))}"
        )
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"images must have shape (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) (the CIFAR parameters are "
            f"defined for 32x32 images), got {tuple(images.shape)}"
        )


def _check_severity(severity: int) -> None:
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int | np.integer)
        or severity not in SEVERITIES
    ):
        raise ConfigError(f"corruption severity must be an integer in 1..5, got {severity!r}")


def corrupt(images: Tensor, name: str, severity: int, seed: int) -> Tensor:
    """Apply a registered corruption at one severity, reproducibly.

    Args:
        images: Clean images, ``torch.uint8`` in [0, 255] (any device; computed on the CPU).
        name: A name in :data:`~cslrobust.corruptions.registry.CORRUPTIONS`.
        severity: 1 (mild) to 5 (severe).
        seed: Seed; the generator is derived from ``(seed, "corruption", name, severity)``.

    Returns:
        Corrupted images, ``torch.uint8`` on the CPU, same shape.

    Shape:
        images: ``(N, 3, 32, 32)``. Returns ``(N, 3, 32, 32)``.

    Raises:
        ConfigError: If ``name`` is unknown or ``severity`` is not in 1..5.
        ValueError: If ``images`` is not a uint8 ``(N, 3, 32, 32)`` tensor.
        DataError: If frost's texture images cannot be found.
    """
    corruption = CORRUPTIONS.get(name)
    _check_severity(severity)
    _check_images(images)
    rng = np.random.default_rng(derive_seed(seed, "corruption", name, int(severity)))
    hwc = images.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty_like(hwc)
    for start in range(0, hwc.shape[0], CHUNK):
        chunk = hwc[start : start + CHUNK]
        result = corruption(chunk, int(severity), rng)
        if result.shape != chunk.shape or result.dtype != np.uint8:  # a contract check on plug-ins
            raise RuntimeError(f"corruption {name!r} returned {result.dtype} {result.shape}")
        out[start : start + CHUNK] = result
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def images_digest(images: Tensor) -> str:
    """SHA-256 of a uint8 image tensor's shape and bytes (C order), as a hex string."""
    array = images.detach().cpu().contiguous().numpy()
    digest = hashlib.sha256(json.dumps(list(array.shape)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def cache_path(cache_dir: Path, digest: str, name: str, severity: int, seed: int) -> Path:
    """Where :func:`corrupted_test_set` stores one ``(images, name, severity, seed)`` entry."""
    return (
        Path(cache_dir)
        / digest[:16]
        / f"{name}-s{severity}-seed{seed}-{GENERATOR_VERSION}.safetensors"
    )


def _metadata(digest: str, name: str, severity: int, seed: int) -> dict[str, str]:
    return {
        "images_sha256": digest,
        "corruption": name,
        "severity": str(severity),
        "seed": str(seed),
        "generator_version": GENERATOR_VERSION,
    }


def _read_entry(path: Path, metadata: dict[str, str], shape: torch.Size) -> Tensor | None:
    """The cached tensor, or None when the entry is absent, stale or damaged (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata() != metadata:
                return None
            images: Tensor = handle.get_tensor("images")
    except Exception as err:  # truncated or foreign file: recompute rather than fail
        warnings.warn(f"ignoring unreadable corruption cache entry {path}: {err!r}", stacklevel=3)
        return None
    if images.dtype != torch.uint8 or images.shape != shape:
        return None
    return images


def _write_entry(path: Path, images: Tensor, metadata: dict[str, str]) -> None:
    """Write through a uniquely named temporary file in the same folder and an atomic rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        os.close(handle)
    except OSError as err:
        raise DataError(f"cannot write corruption cache under {path.parent}: {err}") from None
    tmp = Path(tmp_name)
    try:
        save_file({"images": images.contiguous()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(f"cannot write corruption cache entry {path}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def corrupted_test_set(
    images: Tensor, name: str, severity: int, *, seed: int, cache_dir: Path | None
) -> Tensor:
    """:func:`corrupt`, cached on disk as safetensors.

    The entry is keyed by the SHA-256 of the input (shape and bytes), ``name``, ``severity``,
    ``seed`` and :data:`GENERATOR_VERSION`; the key is also stored in the file's metadata and checked
    on load. Entries are written atomically (temporary file + ``os.replace``), so a crash never leaves
    a partial entry under the final name and concurrent writers of the same entry are harmless.
    Stale or damaged entries are recomputed and overwritten.

    Args:
        images: Clean images, ``torch.uint8``.
        name: Corruption name.
        severity: 1..5.
        seed: Generation seed.
        cache_dir: Folder for the cache; ``None`` disables caching.

    Returns:
        The corrupted images, ``torch.uint8`` on the CPU.

    Shape:
        images: ``(N, 3, 32, 32)``. Returns ``(N, 3, 32, 32)``.
    """
    if cache_dir is None:
        return corrupt(images, name, severity, seed)
    CORRUPTIONS.get(name)
    _check_severity(severity)
    _check_images(images)
    digest = images_digest(images)
    path = cache_path(Path(cache_dir), digest, name, int(severity), seed)
    metadata = _metadata(digest, name, int(severity), seed)
    cached = _read_entry(path, metadata, images.shape)
    if cached is not None:
        return cached
    result = corrupt(images, name, severity, seed)
    _write_entry(path, result, metadata)
    return result
