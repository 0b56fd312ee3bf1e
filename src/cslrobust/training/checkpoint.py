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

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from cslrobust.errors import CheckpointError, TrainingDivergedError
from cslrobust.records import read_json_record, write_json_atomic
from cslrobust.run_files import (
    AnyOf,
    Bool,
    Choice,
    Float,
    Int,
    IntText,
    ListOf,
    MapOf,
    Mismatch,
    Nullable,
    Record,
    Spec,
    Str,
    TensorOf,
    describe,
    field_error,
    flatten_tensors,
    load_torch_file,
    non_finite_tensors,
    validate,
)
from cslrobust.sections import HeadKind

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
LATEST_FILE = "latest.json"
_EPOCH_DIR = re.compile(r"epoch-(\d+)")

#: What ``meta.json`` holds (provenance keys besides these are free-form).
CHECKPOINT_META = Record(required={"epoch": Int(minimum=1)}, optional={"metrics": MapOf(Float())})

#: The header of a checkpoint's ``model.safetensors`` (fields older checkpoints lack are optional).
WEIGHTS_HEADER = Record(
    optional={
        "head_kind": Choice(get_args(HeadKind)),
        "feature_dim": IntText(minimum=1),
        "n_views": IntText(minimum=1),
        "epoch": IntText(minimum=1),
        "run_id": Str(),
        "config": Str(),
    }
)
#: The header of ``probe.safetensors``: the epoch of the checkpoint the probe was fitted on.
PROBE_HEADER = Record(optional={"checkpoint_epoch": IntText(minimum=0)})

#: What ``state.pt`` holds; tensor shapes are checked against the optimiser by
#: :func:`check_optimizer_state`. ``history`` and ``objective`` were absent in early versions.
TRAINING_STATE = Record(
    required={
        "epoch": Int(minimum=1),
        "optimizer": Record(
            required={
                "state": MapOf(MapOf(Nullable(AnyOf((TensorOf(), Float())))), keys=int),
                "param_groups": ListOf(Record(required={"params": ListOf(Int(minimum=0))})),
            }
        ),
    },
    optional={
        "global_step": Int(minimum=0),
        "history": ListOf(MapOf(Float())),
        "rng_cpu": TensorOf("uint8", ndim=1),
        "objective": MapOf(TensorOf()),
    },
)


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
        """The checkpoint's metadata (epoch, metrics, provenance).

        Raises:
            CheckpointError: If ``meta.json`` is damaged (one line naming the field).
        """
        return read_json_record(
            self.path / META_FILE, what="checkpoint metadata", spec=CHECKPOINT_META
        )


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a module's state dict (parameters and buffers) as safetensors, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata or {})
    tmp.replace(path)


def load_weights(
    module: nn.Module, path: Path, *, require_finite: bool = False, header: Spec | None = None
) -> dict[str, str]:
    """Load safetensors weights into ``module`` (strict) and return the file's metadata.

    Args:
        module: The module to load into.
        path: The safetensors file.
        require_finite: Refuse weights holding NaN or inf (checked before ``module`` is touched).
        header: What the header's metadata must hold (e.g. :data:`WEIGHTS_HEADER`).

    Raises:
        CheckpointError: If the file is missing, corrupt, its header does not fit ``header``, its
            keys/shapes do not match the module, or (``require_finite``) a tensor holds NaN or inf.
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
    validate(metadata, header or Record(), path, what="weights header")
    if require_finite:
        check_finite_weights(tensors, path)
    problem = _mismatch(module.state_dict(), tensors)
    if problem:
        raise CheckpointError(f"weights file {str(path)!r} does not match the model: {problem}")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:  # e.g. a dtype that cannot be copied into the parameter
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"weights file {str(path)!r} does not match the model: {first}"
        ) from None
    return metadata


def _mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """The first difference in names or shapes between a module's state and loaded tensors."""
    missing = [k for k in expected if k not in found]
    if missing:
        return f"tensor {missing[0]!r} is missing ({len(missing)} missing)"
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        return f"tensor {unexpected[0]!r} is not in the model ({len(unexpected)} such)"
    for name, tensor in expected.items():
        if found[name].shape != tensor.shape:
            return (
                f"tensor {name!r} has shape {tuple(found[name].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
    return ""


def check_finite_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights read from ``path`` that hold NaN or inf.

    Raises:
        CheckpointError: Naming the file, the first non-finite tensor and how many there are.
    """
    bad = non_finite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"weights file {str(path)!r} holds NaN or inf in {len(bad)} tensor(s), first "
            f"{bad[0]!r}; refused: non-finite weights cannot be evaluated or trained further"
        )


def read_metadata(path: Path, spec: Spec | None = None) -> dict[str, str]:
    """The string metadata stored in a safetensors file header, checked against ``spec``.

    Raises:
        CheckpointError: If the file is missing or not safetensors, or a header field does not fit
            ``spec`` (one line naming the file and the field).
    """
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"weights file {str(path)!r} is not valid safetensors: {err}"
        ) from None
    validate(metadata, spec or Record(), path, what="weights header")
    return metadata


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

    Raises:
        TrainingDivergedError: If a parameter, buffer or state tensor holds NaN or inf (nothing is
            written: a checkpoint on disk is always finite).
    """
    bad = non_finite_in_checkpoint(model, state)
    if bad:
        raise TrainingDivergedError(
            f"checkpoint of epoch {epoch} not written: {len(bad)} tensor(s) hold NaN or inf, "
            f"first {bad[0]!r}"
        )
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


def non_finite_in_checkpoint(model: nn.Module, state: dict[str, Any]) -> list[str]:
    """Names of the model's parameters and buffers, then state tensors, holding NaN or inf."""
    return non_finite_tensors(dict(model.state_dict())) + non_finite_tensors(
        flatten_tensors(state, "state")
    )


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under ``root`` sorted by epoch (unfinished ``.tmp`` folders ignored)."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _EPOCH_DIR.fullmatch(path.name)  # "epoch-0003"; others are not checkpoints
            if match and path.is_dir():
                if (path / MODEL_FILE).is_file() and (path / META_FILE).is_file():
                    found.append(Checkpoint(path, int(match.group(1))))
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
    """Load the training state with ``weights_only=True`` (no arbitrary unpickling) and check it.

    Raises:
        CheckpointError: If ``state.pt`` is refused as unsafe, damaged, or a field does not fit
            :data:`TRAINING_STATE` or the checkpoint's epoch (one line naming the file and field).
    """
    path = checkpoint.state_file
    state = validate(
        load_torch_file(path, what="state file"), TRAINING_STATE, path, what="state file"
    )
    if state["epoch"] != checkpoint.epoch:
        raise field_error(
            "state file",
            path,
            "epoch",
            describe(state["epoch"]),
            f"{checkpoint.epoch}, the epoch of its checkpoint folder",
        )
    return dict(state)


def _hyperparameter_spec(current: Any) -> Spec | None:
    """What a saved optimiser hyperparameter must be, from the optimiser's own value (None: any)."""
    if isinstance(current, bool):
        return Bool()
    if isinstance(current, int | float):
        return Float()
    return None


def check_optimizer_state(
    saved: dict[str, Any], optimizer: torch.optim.Optimizer, path: Path
) -> None:
    """Check a saved optimiser state (validated by :data:`TRAINING_STATE`) against ``optimizer``.

    Every parameter group must list as many parameters as the optimiser's, with hyperparameters of
    the optimiser's types (numbers, flags); every state entry must belong to a listed parameter, and
    every non-scalar tensor in it must have its parameter's shape.

    Raises:
        CheckpointError: One line naming ``path`` and the first field that does not fit.
    """
    groups = optimizer.param_groups
    saved_groups = saved["param_groups"]

    def fail(field_path: str, got: str, expected: str) -> CheckpointError:
        return field_error("state file", path, f"optimizer.{field_path}", got, expected)

    if len(saved_groups) != len(groups):
        raise fail("param_groups", f"{len(saved_groups)} group(s)", f"{len(groups)}, the model's")
    shapes: dict[int, torch.Size] = {}
    for i, (saved_group, group) in enumerate(zip(saved_groups, groups, strict=True)):
        ids, params = saved_group["params"], group["params"]
        if len(ids) != len(params):
            raise fail(
                f"param_groups[{i}].params",
                f"{len(ids)} parameter(s)",
                f"{len(params)}, the model's",
            )
        shapes.update({pid: p.shape for pid, p in zip(ids, params, strict=True)})
        for key, current in group.items():
            spec = _hyperparameter_spec(current)
            if key != "params" and spec is not None and key in saved_group:
                try:
                    spec.check(saved_group[key], "")
                except Mismatch:
                    raise fail(
                        f"param_groups[{i}].{key}", describe(saved_group[key]), spec.expected
                    ) from None
    for pid, entry in saved["state"].items():
        if pid not in shapes:
            raise fail(f"state.{pid}", "the state of no listed parameter", "one of param_groups")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != shapes[pid]:
                raise fail(
                    f"state.{pid}.{key}",
                    describe(value),
                    f"shape {tuple(shapes[pid])}, its parameter's",
                )


def _prune(root: Path, *, keep_last: int, keep_every: int) -> None:
    checkpoints = list_checkpoints(root)
    recent = {c.epoch for c in checkpoints[-keep_last:]}
    for checkpoint in checkpoints:
        periodic = keep_every > 0 and checkpoint.epoch % keep_every == 0
        if checkpoint.epoch not in recent and not periodic:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
