"""Adapter to the reference AutoAttack (``pyautoattack``), never a re-implementation.

Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. Every attack (APGD-CE, APGD-DLR, APGD-T, FAB, FAB-T, Square), the
versions' hyperparameters, the attack order, the per-attack seeding and AutoAttack's own checks come
from ``pyautoattack.AutoAttack``; this module only feeds it batches and records what it returns.

How the adapter drives AutoAttack, and why:

- AutoAttack's outer loop attacks, for each attack in sequence, the samples still robust, in
  ``batch_size`` chunks taken in index order, and reseeds every ``perturb`` call. The adapter forms
  exactly those chunks and calls ``AutoAttack.run_standard_evaluation`` once per chunk with the one
  attack: the attacked batches, seeds and hence results are the same as one AutoAttack call (a test
  checks equality with a direct call), and we learn the robust accuracy after every attack, which
  ``run_standard_evaluation`` does not return.
- Resume. ``run_standard_evaluation(state_path=...)`` cannot resume in pyautoattack 0.2.0: the state
  file stores the attack set as ``str(set)``, which never equals the set on reload (``ValueError:
  The state was created with a different set of attacks``), its restore branch leaves ``y_adv``
  undefined, and a restored run returns only the adversarial examples of the current session. The
  adapter therefore keeps its own state folder with the same granularity as AutoAttack's state (one
  record per finished batch), written atomically and append-only: ``manifest.json`` (what is
  evaluated: settings and digests of model, images and labels), ``clean.pt`` and one
  ``<attack index>-<attack>-<batch>.pt`` per attacked batch with its fooled samples' adversarial
  examples. A rerun with the same folder replays the finished batches and attacks only the rest; a
  folder made for another evaluation is refused.
- Flags. AutoAttack's checks (randomised or dynamic defence, probabilities instead of logits, zero
  gradients, too many target classes, Square stronger than the gradient attacks) report through the
  ``auto-attack`` logger or ``warnings``; both are captured into :attr:`AutoAttackResult.flags`. The
  per-batch checks run on every batch (about 8 extra forward passes each, small next to the
  attacks); the Square check needs the whole sequence and is called once at the end. The adapter
  adds its own notes prefixed ``cslrobust:``.
- Several processes (torchrun). The clean pass and, for each attack, its batches are sharded
  across ranks (batch ``i`` on rank ``i % world_size``); every rank gathers all batch records and
  folds them in batch order, so each rank ends with the result of one process and forms the same
  batches for the next attack. A batch's record is written by the rank that attacked it, so no file
  has two writers; rank 0 alone checks the manifest and writes the clean pass. Flags of every batch
  travel with its record, so every rank reports all of them.
- Randomness. AutoAttack reseeds the global RNG inside every attack; the whole call runs inside
  :func:`~cslrobust.seeding.rng_scope`, so the caller's global RNG state is restored afterwards.
- Fewer than 10 classes: the versions' 9 target classes of APGD-T/FAB-T are capped at ``K - 1``
  (AutoAttack would index past the logits); identical to the version for CIFAR-10.
- Robust accuracy is AutoAttack's own: a sample counts as robust if it is correct clean and no
  attack in the sequence fooled it, by AutoAttack's prediction on its adversarial example. The gate
  :func:`~cslrobust.attacks.gates.gate_adversarial_examples` re-evaluates ``x_adv`` from scratch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import Tensor, nn

from cslrobust.attacks.evaluate import AttackResult
from cslrobust.attacks.target import AttackTarget, frozen_eval
from cslrobust.attacks.threat_model import Norm, perturbation_norm, validate_norm
from cslrobust.distributed import on_main, sharded_batches, sharded_map_objects
from cslrobust.errors import CheckpointError, ConfigError
from cslrobust.records import read_json_record
from cslrobust.run_files import (
    Float,
    ListOf,
    Record,
    Str,
    TensorOf,
    field_error,
    load_torch_file,
    validate,
)
from cslrobust.seeding import derive_seed, rng_scope

if TYPE_CHECKING:
    from pyautoattack import AutoAttack

AutoAttackVersion = Literal["standard", "plus", "custom"]
AutoAttackName = Literal["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
AUTOATTACK_VERSIONS: tuple[AutoAttackVersion, ...] = get_args(AutoAttackVersion)
AUTOATTACK_ATTACKS: tuple[AutoAttackName, ...] = get_args(AutoAttackName)

_NORM_NAMES: dict[Norm, str] = {"linf": "Linf", "l2": "L2"}
_LOGGER_NAME = "auto-attack"  # the logger pyautoattack reports its checks to
_STATE_FORMAT = 1
_MANIFEST = "manifest.json"
_CLEAN = "clean.pt"
#: The state folder's records, as written by :meth:`_StateFolder.open` and :func:`_attack_batch`.
_CLEAN_RECORD = Record(required={"clean_correct": TensorOf("bool", ndim=1)})
_BATCH_RECORD = Record(
    required={
        "indices": TensorOf("integer", ndim=1),
        "fooled": TensorOf("bool", ndim=1),
        "x_adv": TensorOf("float", ndim=4),
        "seconds": Float(),
        "flags": ListOf(Str()),
    }
)


@dataclass(frozen=True)
class AutoAttackBudget:
    """Overrides of a version's attack budgets; ``None`` keeps AutoAttack's value.

    The defaults reproduce the published versions. Smaller budgets are for tests and quick looks;
    a reduced budget is not "AutoAttack" in the RobustBench sense, and the result's ``settings``
    record what ran.

    Attributes:
        n_iter: Iterations of APGD-CE/DLR, APGD-T and FAB (100 in every version).
        n_restarts: Restarts of APGD-CE/DLR and untargeted FAB (standard 1, plus 5, custom 5).
        n_target_classes: Target classes of APGD-T and FAB-T (9; always capped at ``K - 1``).
        n_queries: Queries of Square (5000).
    """

    n_iter: int | None = None
    n_restarts: int | None = None
    n_target_classes: int | None = None
    n_queries: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_iter", "n_restarts", "n_target_classes", "n_queries"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"AutoAttackBudget.{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class AutoAttackResult:
    """Outcome of one AutoAttack evaluation at one (norm, eps).

    Attributes:
        version: ``"standard"``, ``"plus"`` or ``"custom"``.
        attacks: The attack sequence, in the order run.
        norm: ``"linf"`` or ``"l2"``.
        eps: Radius of the threat model (fraction of the [0,1] range).
        clean_correct: ``(N,)`` bool on CPU.
        robust_correct: ``(N,)`` bool on CPU, correct clean and not fooled by any attack.
        clean_accuracy: Mean of ``clean_correct``.
        robust_accuracy: Mean of ``robust_correct`` (AutoAttack's final robust accuracy).
        accuracy_after: Robust accuracy after each attack of the sequence (cumulative, in order,
            non-increasing), as AutoAttack reports it.
        attack_success_rate: Fraction of initially correct samples fooled (NaN if none correct).
        x_adv: ``(N, ...)`` on CPU: the adversarial example where a sample was fooled, else the
            clean input.
        fooled_by: Per-sample name of the attack that fooled it ('' if none; 'clean' if wrong clean).
        max_perturbation: Largest ``norm`` of ``x_adv - x``.
        runtime_s: Wall time spent attacking, summed over sessions (resumed batches included).
        attack_runtime_s: Wall time per attack, summed over sessions.
        session_s: Wall time of this call.
        resumed_batches: Number of batches replayed from the state folder instead of attacked.
        flags: AutoAttack's warnings (deduplicated, in order) and the adapter's ``cslrobust:`` notes.
        settings: The effective hyperparameters (provenance).
        n: Number of samples.
    """

    version: AutoAttackVersion
    attacks: tuple[str, ...]
    norm: Norm
    eps: float
    clean_correct: Tensor
    robust_correct: Tensor
    clean_accuracy: float
    robust_accuracy: float
    accuracy_after: dict[str, float]
    attack_success_rate: float
    x_adv: Tensor
    fooled_by: tuple[str, ...]
    max_perturbation: float
    runtime_s: float
    attack_runtime_s: dict[str, float]
    session_s: float
    resumed_batches: int
    flags: tuple[str, ...]
    settings: dict[str, Any] = field(repr=False)
    n: int

    def metrics(self) -> dict[str, float]:
        """Scalar results for long-format rows; per-attack keys are ``robust_accuracy_after_<a>``."""
        out = {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attack_success_rate": self.attack_success_rate,
            "max_perturbation": self.max_perturbation,
            "runtime_s": self.runtime_s,
            "n": float(self.n),
        }
        for attack, accuracy in self.accuracy_after.items():
            out[f"robust_accuracy_after_{attack}"] = accuracy
        return out

    def as_attack_result(self) -> AttackResult:
        """The same outcome as an :class:`AttackResult`, for code shared with FGSM/PGD."""
        return AttackResult(
            clean_correct=self.clean_correct,
            robust_correct=self.robust_correct,
            clean_accuracy=self.clean_accuracy,
            robust_accuracy=self.robust_accuracy,
            attack_success_rate=self.attack_success_rate,
            max_perturbation=self.max_perturbation,
            n=self.n,
        )


def build_autoattack(
    target: AttackTarget,
    *,
    eps: float,
    norm: Norm,
    version: AutoAttackVersion,
    attacks: Sequence[str] | None,
    seed: int,
    device: str | torch.device,
    budget: AutoAttackBudget | None = None,
    n_classes: int | None = None,
) -> tuple[AutoAttack, list[str]]:
    """Construct the reference ``AutoAttack`` for a version, with optional budget overrides.

    The version's hyperparameters are set by AutoAttack's constructor. Overrides replace the APGD
    attack objects through their own constructor (APGD derives its step-size schedule from
    ``n_iter`` in ``__init__``), or set FAB/Square attributes. ``seed`` is given to AutoAttack as
    is; :func:`run_autoattack` passes a seed derived from the run seed.

    Args:
        target: The frozen model.
        eps: Radius of the threat model.
        norm: ``"linf"`` or ``"l2"``.
        version: ``"standard"``, ``"plus"`` or ``"custom"``.
        attacks: The attack list; required for ``"custom"``, forbidden otherwise.
        seed: AutoAttack's seed (every attack reseeds the global RNG with it).
        device: Where AutoAttack moves batches.
        budget: Optional budget overrides.
        n_classes: Number of classes; caps the target classes at ``n_classes - 1`` when given.

    Returns:
        The ``AutoAttack`` object and the adapter's notes about what it changed.

    Raises:
        ConfigError: On an unknown version or attack name, or a misplaced attack list.
        ValueError: On invalid ``eps``.
    """
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    norm = validate_norm(norm)
    if version not in AUTOATTACK_VERSIONS:
        raise ConfigError(
            f"unknown AutoAttack version {version!r}; expected one of: {', '.join(AUTOATTACK_VERSIONS)}"
        )
    if version == "custom":
        if not attacks:
            raise ConfigError("AutoAttack version 'custom' needs a non-empty attack list")
        unknown = [a for a in attacks if a not in AUTOATTACK_ATTACKS]
        if unknown:
            raise ConfigError(
                f"unknown AutoAttack attack(s) {unknown}; expected: {', '.join(AUTOATTACK_ATTACKS)}"
            )
        if len(set(attacks)) != len(attacks):
            raise ConfigError(f"AutoAttack attack list repeats an attack: {list(attacks)}")
    elif attacks is not None:
        raise ConfigError(f"an attack list needs version 'custom', not {version!r}")
    if not (0.0 <= eps < math.inf):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    aa = AutoAttack(
        target,
        attacks=list(attacks) if version == "custom" else None,  # type: ignore[arg-type]
        device=torch.device(device),
        eps=eps,
        norm=_NORM_NAMES[norm],
        seed=seed,
        version=version,
    )
    if n_classes is not None:
        for name in aa.attacks_to_run or []:
            needed = _DLR_MIN_CLASSES.get(name, 0)
            if n_classes < needed:
                raise ConfigError(
                    f"AutoAttack's {name} (DLR loss) needs at least {needed} classes, the model has "
                    f"{n_classes}; expected autoattack_version: custom with attacks that use "
                    "cross-entropy (e.g. [apgd-ce, fab, square])"
                )
    notes: list[str] = []
    budget = budget or AutoAttackBudget()
    if budget.n_iter is not None or budget.n_restarts is not None:
        for name, cls in (("apgd", APGDAttack), ("apgd_targeted", APGDAttack_targeted)):
            old = getattr(aa, name)
            new = cls(
                old.model,
                n_iter=budget.n_iter if budget.n_iter is not None else old.n_iter,
                norm=old.norm,
                n_restarts=(
                    budget.n_restarts
                    if budget.n_restarts is not None and name == "apgd"
                    else old.n_restarts
                ),
                eps=old.eps,
                seed=old.seed,
                eot_iter=old.eot_iter,
                rho=old.thr_decr,
                verbose=False,
                device=old.device,
                use_largereps=old.use_largereps,
                logger=old.logger,
            )
            if name == "apgd_targeted":
                new.n_target_classes = old.n_target_classes
            setattr(aa, name, new)
    if budget.n_iter is not None:
        aa.fab.n_iter = budget.n_iter
    if budget.n_restarts is not None:
        aa.fab.n_restarts = budget.n_restarts
    if budget.n_target_classes is not None:
        aa.apgd_targeted.n_target_classes = budget.n_target_classes
        aa.fab.n_target_classes = budget.n_target_classes
    if budget.n_queries is not None:
        aa.square.n_queries = budget.n_queries
    if n_classes is not None:
        sequence = aa.attacks_to_run or []
        for name, attack_name in (("apgd_targeted", "apgd-t"), ("fab", "fab-t")):
            obj = getattr(aa, name)
            if obj.n_target_classes > n_classes - 1:
                if attack_name in sequence:
                    notes.append(
                        f"cslrobust: {attack_name} target classes capped at {n_classes - 1} "
                        f"(version uses {obj.n_target_classes}; the model has {n_classes} classes)"
                    )
                obj.n_target_classes = max(n_classes - 1, 1)
    return aa, notes


def _settings_of(aa: AutoAttack, batch_size: int) -> dict[str, Any]:
    """The effective hyperparameters of ``aa`` (provenance and state fingerprint)."""
    import pyautoattack

    return {
        "pyautoattack": pyautoattack.__version__,
        "version": aa.version,
        "attacks": list(aa.attacks_to_run or []),
        "norm": aa.norm,
        "eps": float(aa.epsilon),
        "seed": int(aa.seed),
        "batch_size": batch_size,
        "apgd": {
            "n_iter": aa.apgd.n_iter,
            "n_restarts": aa.apgd.n_restarts,
            "rho": aa.apgd.thr_decr,
        },
        "apgd_t": {
            "n_iter": aa.apgd_targeted.n_iter,
            "n_restarts": aa.apgd_targeted.n_restarts,
            "n_target_classes": aa.apgd_targeted.n_target_classes,
        },
        "fab": {
            "n_iter": aa.fab.n_iter,
            "n_restarts": aa.fab.n_restarts,
            "n_target_classes": aa.fab.n_target_classes,
        },
        "square": {"n_queries": aa.square.n_queries, "p_init": aa.square.p_init},
    }


class _FlagHandler(logging.Handler):
    """Collects the messages of AutoAttack's logger at WARNING and above."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextlib.contextmanager
def _autoattack_logging(verbose: bool) -> Iterator[list[str]]:
    """Route the ``auto-attack`` logger: flags into a list, progress to stderr only if verbose.

    The logger's level, propagation and handlers are restored on exit.
    """
    logger = logging.getLogger(_LOGGER_NAME)
    previous = (logger.level, logger.propagate)
    sink: list[str] = []
    handlers: list[logging.Handler] = [_FlagHandler(sink)]
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("[autoattack] %(message)s"))
        handlers.append(stream)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False  # quiet by default; verbose output goes to our stderr handler
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield sink
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]


@contextlib.contextmanager
def _capture_warnings(sink: list[str]) -> Iterator[None]:
    """Record warnings raised inside pyautoattack into ``sink``; re-issue all others."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        if "pyautoattack" in item.filename.replace(os.sep, "/"):
            sink.append(str(item.message))
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def _digest(tensor: Tensor) -> str:
    """SHA-256 of a tensor's bytes (CPU, contiguous) with its dtype and shape."""
    data = tensor.detach().cpu().contiguous()
    hasher = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    # reshape(-1): a 0-d tensor (BatchNorm's counter) cannot be viewed as bytes.
    hasher.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _model_digest(model: nn.Module) -> str:
    """SHA-256 over the names and values of parameters and buffers."""
    hasher = hashlib.sha256()
    for name, value in model.state_dict().items():
        hasher.update(name.encode())
        hasher.update(_digest(value).encode())
    return hasher.hexdigest()


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a reader never sees a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: Path, spec: Record) -> dict[str, Any]:
    """Load a state record written by :func:`_atomic_save` (``weights_only``) and check it.

    Raises:
        CheckpointError: If it is refused as unsafe, damaged, or a field does not fit ``spec``.
    """
    what = "AutoAttack state record"
    record: dict[str, Any] = validate(load_torch_file(path, what=what), spec, path, what=what)
    return record


def _check_batch_record(record: dict[str, Any], path: Path, images: Tensor) -> None:
    """Check that a batch record's tensors agree with each other and with the attacked images."""
    n, fooled = record["indices"].numel(), record["fooled"]
    n_fooled = int(fooled.sum())
    expected = {
        "fooled": (fooled.numel() == n, f"{n} entries, one per index"),
        "x_adv": (
            tuple(record["x_adv"].shape) == (n_fooled, *images.shape[1:]),
            f"shape {(n_fooled, *images.shape[1:])}, one image per fooled sample",
        ),
    }
    for name, (ok, text) in expected.items():
        if not ok:
            got = f"a tensor of shape {tuple(record[name].shape)}"
            raise field_error("AutoAttack state record", path, name, got, text)


class _StateFolder:
    """The adapter's resumable state: a manifest, the clean pass and one record per batch."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, manifest: dict[str, Any], clean_correct: Tensor) -> Tensor:
        """Check (or write) the manifest, then read (or write) the clean pass; run on rank 0 only.

        Returns:
            The stored clean correctness, or ``clean_correct`` when none was stored yet.

        Raises:
            CheckpointError: If the folder holds a different evaluation.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / _MANIFEST
        if path.exists():
            stored = read_json_record(path, what="AutoAttack manifest")
            if stored != manifest:
                keys = sorted(
                    k for k in set(stored) | set(manifest) if stored.get(k) != manifest.get(k)
                )
                raise CheckpointError(
                    f"AutoAttack state folder {str(self.root)!r} holds a different evaluation "
                    f"(differs in: {', '.join(keys)}); use another folder or delete it"
                )
        else:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.replace(tmp, path)
        clean_path = self.root / _CLEAN
        if clean_path.exists():
            loaded: Tensor = _load(clean_path, _CLEAN_RECORD)["clean_correct"]
            if loaded.shape != clean_correct.shape:
                raise field_error(
                    "AutoAttack state record",
                    clean_path,
                    "clean_correct",
                    f"a tensor of shape {tuple(loaded.shape)}",
                    f"shape {tuple(clean_correct.shape)}, one entry per image",
                )
            return loaded
        _atomic_save({"clean_correct": clean_correct}, clean_path)
        return clean_correct

    def batch_path(self, attack_index: int, attack: str, batch_index: int) -> Path:
        return self.root / f"{attack_index:02d}-{attack}-{batch_index:05d}.pt"


@dataclass
class _Progress:
    """Mutable bookkeeping of one evaluation while it runs."""

    robust: Tensor
    x_adv: Tensor
    fooled_by: list[str]
    flags: list[str]
    attack_runtime_s: dict[str, float]
    resumed_batches: int = 0


def run_autoattack(
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    version: AutoAttackVersion = "standard",
    attacks: Sequence[str] | None = None,
    seed: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    state_dir: str | os.PathLike[str] | None = None,
    budget: AutoAttackBudget | None = None,
    verbose: bool = False,
) -> AutoAttackResult:
    """Evaluate ``target`` with the reference AutoAttack and record per-attack robust accuracy.

    See the module docstring for how AutoAttack is driven, resumed and checked.

    Args:
        target: An :class:`AttackTarget`, or a model from [0,1] inputs to logits (frozen for the
            call, then restored). Must be float32 (AutoAttack casts inputs to float32).
        images: Inputs in [0,1] (any device; batches are moved to ``device``).
        labels: Integer labels.
        eps: Radius of the threat model, a fraction of the [0,1] range (e.g. 8/255).
        norm: ``"linf"`` or ``"l2"``.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square), ``"plus"`` (all six with
            restarts) or ``"custom"`` (``attacks`` in the given order).
        attacks: Attack list for ``"custom"``, from :data:`AUTOATTACK_ATTACKS`.
        seed: Run seed; AutoAttack gets ``derive_seed(seed, "autoattack")``.
        batch_size: Samples per attacked batch (results depend on it, as in AutoAttack).
        device: Where batches are attacked; the target must already be there.
        state_dir: Folder for resumable state; a rerun with the same folder continues where an
            interrupted run stopped and does not repeat finished batches. ``None``: no state.
        budget: Budget overrides (tests, quick looks); ``None`` keeps the version's budgets.
        verbose: Show AutoAttack's progress messages on stderr.

    Returns:
        An :class:`AutoAttackResult`.

    Shape:
        images: ``(N, C, H, W)``; labels: ``(N,)``.

    Raises:
        ConfigError: On an unknown version or attack.
        CheckpointError: If ``state_dir`` holds a different evaluation.
        ValueError: On invalid inputs.
    """
    norm = validate_norm(norm)
    if images.dim() < 2 or images.shape[0] == 0 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"expected images (N, C, ...) with N > 0 and labels (N,), "
            f"got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if images.dtype != torch.float32:
        raise ValueError(f"AutoAttack works in float32; got images of dtype {images.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    if images.dim() == 5:  # clips: AutoAttack's attacks take (N, C, H, W) images
        tall = run_autoattack(
            _ClipAsTallImage(target, frames=images.shape[2]),
            images.flatten(2, 3),
            labels,
            eps=eps,
            norm=norm,
            version=version,
            attacks=attacks,
            seed=seed,
            batch_size=batch_size,
            device=device,
            state_dir=state_dir,
            budget=budget,
            verbose=verbose,
        )
        return dataclasses.replace(tall, x_adv=tall.x_adv.reshape(images.shape))
    aa_seed = derive_seed(seed, "autoattack")
    with contextlib.nullcontext() if isinstance(target, AttackTarget) else frozen_eval(target):
        frozen = target if isinstance(target, AttackTarget) else AttackTarget(target)
        with rng_scope(aa_seed, device), _autoattack_logging(verbose) as log_sink:
            return _run(
                frozen,
                images.detach().cpu(),
                labels.detach().cpu(),
                eps=eps,
                norm=norm,
                version=version,
                attacks=attacks,
                aa_seed=aa_seed,
                batch_size=batch_size,
                device=device,
                state_dir=Path(state_dir) if state_dir is not None else None,
                budget=budget,
                verbose=verbose,
                log_sink=log_sink,
            )


# The DLR loss divides by the gap between the largest and the 3rd (untargeted) or the mean of the
# 3rd and 4th (targeted) largest logits: fewer classes index out of bounds inside pyautoattack.
_DLR_MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}


class _ClipAsTallImage(nn.Module):
    """A clip model seen as an image model: frames stacked along the height and split back.

    AutoAttack's attacks are written for ``(N, C, H, W)`` inputs (Square draws its patches over
    ``H x W``). A clip ``(N, C, T, H, W)`` is handed to them as the tall image
    ``(N, C, T * H, W)`` (a view: the same numbers) and this module restores the clip before the
    model. Every threat model is a norm over all input values, so the ball is unchanged; only
    Square's patches may straddle two frames, which is one more search direction, not a weaker
    or stronger threat model.
    """

    def __init__(self, model: nn.Module, *, frames: int) -> None:
        super().__init__()
        self.model = model
        self.frames = frames

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, T * H, W)`` -> the model's logits on ``(N, C, T, H, W)``."""
        n, c, rows, w = x.shape
        logits: Tensor = self.model(x.reshape(n, c, self.frames, rows // self.frames, w))
        return logits


def _clean_pass(
    target: AttackTarget, images: Tensor, labels: Tensor, batch_size: int, device: torch.device
) -> tuple[Tensor, int]:
    """Per-sample clean correctness (CPU bool) and the number of classes (sharded across ranks)."""

    def logits_of(position: int, rows: slice) -> Tensor:
        del position
        with torch.no_grad():
            logits: Tensor = target(images[rows].to(device))
        return logits

    logits = sharded_batches(images.shape[0], batch_size, logits_of)  # (N, K) on device
    return (logits.argmax(dim=1) == labels.to(logits.device)).cpu(), logits.shape[1]


def _run(
    target: AttackTarget,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    norm: Norm,
    version: AutoAttackVersion,
    attacks: Sequence[str] | None,
    aa_seed: int,
    batch_size: int,
    device: torch.device,
    state_dir: Path | None,
    budget: AutoAttackBudget | None,
    verbose: bool,
    log_sink: list[str],
) -> AutoAttackResult:
    """The body of :func:`run_autoattack`, inside the RNG scope and log capture."""
    tic = time.perf_counter()
    n = images.shape[0]
    clean_correct, n_classes = _clean_pass(target, images, labels, batch_size, device)
    aa, notes = build_autoattack(
        target,
        eps=eps,
        norm=norm,
        version=version,
        attacks=attacks,
        seed=aa_seed,
        device=device,
        budget=budget,
        n_classes=n_classes,
    )
    aa.verbose = verbose
    settings = _settings_of(aa, batch_size)
    sequence: list[str] = list(aa.attacks_to_run or [])

    state: _StateFolder | None = None
    if state_dir is not None:
        manifest = {
            "format": _STATE_FORMAT,
            "settings": settings,
            "n": n,
            "model": _model_digest(target),
            "images": _digest(images),
            "labels": _digest(labels),
        }
        folder = state = _StateFolder(state_dir)
        clean_correct = on_main(lambda: folder.open(manifest, clean_correct))

    progress = _Progress(
        robust=clean_correct.clone(),
        x_adv=images.clone(),
        fooled_by=["" if ok else "clean" for ok in clean_correct.tolist()],
        flags=list(notes),
        attack_runtime_s={},
    )

    def attack_chunk(
        batch_index: int, item: tuple[Tensor, Path | None]
    ) -> tuple[dict[str, Any], bool]:
        """A batch's record, replayed from its state file or attacked (and saved), and if replayed."""
        del batch_index
        chunk, path = item
        if path is not None and path.exists():
            record = _load(path, _BATCH_RECORD)
            _check_batch_record(record, path, images)
            if not torch.equal(record["indices"], chunk):
                raise CheckpointError(
                    f"AutoAttack state record {str(path)!r} attacked other samples than "
                    "this evaluation would; the state folder is inconsistent, delete it"
                )
            return record, True
        record = _attack_batch(aa, images, labels, chunk, batch_size, device, log_sink)
        if path is not None:
            _atomic_save(record, path)  # each batch runs on one rank: no file has two writers
        return record, False

    accuracy_after: dict[str, float] = {}
    for attack_index, attack in enumerate(sequence):
        aa.attacks_to_run = [attack]
        progress.attack_runtime_s[attack] = 0.0
        pending = progress.robust.nonzero().squeeze(1)  # (R,) samples still robust, index order
        items = [
            (
                pending[start : start + batch_size],
                state.batch_path(attack_index, attack, batch_index) if state else None,
            )
            for batch_index, start in enumerate(range(0, pending.numel(), batch_size))
        ]
        # Batches are sharded across ranks; every rank folds all records in batch order.
        for record, resumed in sharded_map_objects(items, attack_chunk):
            progress.resumed_batches += int(resumed)
            _apply(progress, attack, record)
        accuracy_after[attack] = int(progress.robust.sum()) / n

    # AutoAttack's last check compares Square with the other attacks over the whole sequence; a
    # per-batch call cannot see that, so it is run here on the sequence's accuracies.
    from pyautoattack import checks

    mark = len(log_sink)
    checks.check_square_sr(
        {"clean": int(clean_correct.sum()) / n, **accuracy_after}, logger=aa.logger
    )
    progress.flags.extend(log_sink[mark:])
    flags = list(dict.fromkeys(progress.flags))  # dedupe, keep order
    n_clean = int(clean_correct.sum())
    n_robust = int(progress.robust.sum())
    delta = progress.x_adv.double() - images.double()
    max_perturbation = float(perturbation_norm(delta, norm).max()) if n else 0.0
    return AutoAttackResult(
        version=version,
        attacks=tuple(sequence),
        norm=norm,
        eps=eps,
        clean_correct=clean_correct,
        robust_correct=progress.robust,
        clean_accuracy=n_clean / n,
        robust_accuracy=n_robust / n,
        accuracy_after=accuracy_after,
        attack_success_rate=(n_clean - n_robust) / n_clean if n_clean else math.nan,
        x_adv=progress.x_adv,
        fooled_by=tuple(progress.fooled_by),
        max_perturbation=max_perturbation,
        runtime_s=sum(progress.attack_runtime_s.values()),
        attack_runtime_s=dict(progress.attack_runtime_s),
        session_s=time.perf_counter() - tic,
        resumed_batches=progress.resumed_batches,
        flags=tuple(flags),
        settings=settings,
        n=n,
    )


def _attack_batch(
    aa: AutoAttack,
    images: Tensor,
    labels: Tensor,
    chunk: Tensor,
    batch_size: int,
    device: torch.device,
    log_sink: list[str],
) -> dict[str, Any]:
    """Run AutoAttack's current attack on the samples ``chunk``; return the batch record."""
    x = images[chunk].to(device)
    y = labels[chunk].to(device)
    start_flags = len(log_sink)
    caught: list[str] = []
    tic = time.perf_counter()
    with _capture_warnings(caught):
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    seconds = time.perf_counter() - tic
    fooled = (y_adv != y).cpu()  # AutoAttack's own prediction on its adversarial example
    return {
        "indices": chunk.clone(),
        "fooled": fooled,
        "x_adv": x_adv.detach().cpu()[fooled].contiguous(),
        "seconds": seconds,
        "flags": [*log_sink[start_flags:], *caught],
    }


def _apply(progress: _Progress, attack: str, record: dict[str, Any]) -> None:
    """Fold one batch record into the running flags, adversarial examples and timings."""
    indices: Tensor = record["indices"]
    fooled_index = indices[record["fooled"]]
    progress.robust[fooled_index] = False
    progress.x_adv[fooled_index] = record["x_adv"].to(progress.x_adv.dtype)
    for i in fooled_index.tolist():
        progress.fooled_by[i] = attack
    progress.flags.extend(record["flags"])
    progress.attack_runtime_s[attack] += float(record["seconds"])
