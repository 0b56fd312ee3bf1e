"""Atomic per-epoch checkpoints: weights in safetensors, training state beside them.

Layout under a run folder::

    checkpoints/epoch-0003/model.safetensors   # weights (+ config JSON and epoch in the metadata)
    checkpoints/epoch-0003/state.pt            # optimiser, RNG, step; read with weights_only=True
    checkpoints/epoch-0003/meta.json           # epoch, metrics, provenance
    checkpoints/latest.json                    # {"epoch": 3, "path": "epoch-0003"}

A checkpoint folder is first written as ``epoch-0003.tmp`` and renamed when complete, and ``latest.json`` is
replaced atomically afterwards, so a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from cslrobust.errors import CheckpointError
from cslrobust.records import write_json_atomic

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
LATEST_FILE = "latest.json"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder."""

    path: Path
    epoch: int

    @property
    def model_file(self) -> Path:
        """The safetensors weights."""
        return self.path / MODEL_FILE

    @property
    def state_file(self) -> Path:
        """The training state (optimiser, RNG)."""
        return self.path / STATE_FILE

    def meta(self) -> dict[str, Any]:
        """The checkpoint's metadata (epoch, metrics, provenance)."""
        return dict(json.loads((self.path / META_FILE).read_text()))


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a module's state dict (parameters and buffers) as safetensors, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata or {})
    tmp.replace(path)


def load_weights(module: nn.Module, path: Path) -> dict[str, str]:
    """Load safetensors weights into ``module`` (strict) and return the file's metadata.

    Raises:
        CheckpointError: If the file is missing, corrupt, or its keys/shapes do not match the module.
    """
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"weights file {str(path)!r} is not valid safetensors: {err}"
        ) from None
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"weights file {str(path)!r} does not match the model: {first}"
        ) from None
    return metadata


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file header."""
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"weights file {str(path)!r} is not valid safetensors: {err}"
        ) from None


def _epoch_dir(root: Path, epoch: int) -> Path:
    return root / f"epoch-{epoch:04d}"


def save_checkpoint(
    root: Path,
    epoch: int,
    model: nn.Module,
    state: dict[str, Any],
    meta: dict[str, Any],
    weights_metadata: dict[str, str],
    *,
    keep_last: int,
    keep_every: int = 0,
) -> Checkpoint:
    """Write the checkpoint of a finished ``epoch`` (1-based) atomically and prune old ones.

    Args:
        root: The ``checkpoints`` folder.
        epoch: Number of epochs completed.
        model: The trained module.
        state: Training state (tensors and plain containers only, loadable with ``weights_only``).
        meta: JSON-serialisable metadata (metrics, provenance).
        weights_metadata: String metadata stored inside the safetensors header (e.g. the config).
        keep_last: Number of most recent checkpoints to keep.
        keep_every: Also keep every ``keep_every``-th epoch (0: none).

    Returns:
        The written checkpoint.
    """
    final = _epoch_dir(root, epoch)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / MODEL_FILE, {**weights_metadata, "epoch": str(epoch)})
    torch.save(state, tmp / STATE_FILE)
    write_json_atomic(tmp / META_FILE, {**meta, "epoch": epoch})
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    write_json_atomic(root / LATEST_FILE, {"epoch": epoch, "path": final.name})
    _prune(root, keep_last=keep_last, keep_every=keep_every)
    return Checkpoint(final, epoch)


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under ``root`` sorted by epoch (unfinished ``.tmp`` folders ignored)."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            name = path.name
            if path.is_dir() and name.startswith("epoch-") and not name.endswith(".tmp"):
                if (path / MODEL_FILE).is_file() and (path / META_FILE).is_file():
                    found.append(Checkpoint(path, int(name.removeprefix("epoch-"))))
    return sorted(found, key=lambda c: c.epoch)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The most recent complete checkpoint, or None."""
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def find_checkpoint(root: Path, epoch: int) -> Checkpoint:
    """The checkpoint of a given epoch.

    Raises:
        CheckpointError: If it does not exist (the message lists the available epochs).
    """
    for checkpoint in list_checkpoints(root):
        if checkpoint.epoch == epoch:
            return checkpoint
    available = [c.epoch for c in list_checkpoints(root)]
    raise CheckpointError(
        f"no checkpoint for epoch {epoch} in {str(root)!r}; available: {available}"
    )


def load_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """Load the training state with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        state = torch.load(checkpoint.state_file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"state file {str(checkpoint.state_file)!r} unreadable: {first}"
        ) from None
    return dict(state)


def _prune(root: Path, *, keep_last: int, keep_every: int) -> None:
    checkpoints = list_checkpoints(root)
    recent = {c.epoch for c in checkpoints[-keep_last:]}
    for checkpoint in checkpoints:
        periodic = keep_every > 0 and checkpoint.epoch % keep_every == 0
        if checkpoint.epoch not in recent and not periodic:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
