r"""MoCo v2 (Chen et al., 2020, "Improved Baselines with Momentum Contrastive Learning").

A query encoder (the run's encoder: normalise -> backbone -> MLP projector, trained by SGD) is
contrasted against a *key encoder*, an exponential moving average of it that receives no gradient
(He et al., 2020, MoCo), and a FIFO *queue* of the keys of earlier batches serves as the negatives.
Each query's positive is the key of the other view of its image.

**Loss.** For a query ``q`` (L2-normalised) with positive key ``k+`` and queue entries ``k_j``:

.. math::

    \ell(q) = -\log \frac{\exp(q \cdot k_+ / \tau)}
        {\exp(q \cdot k_+ / \tau) + \sum_{j \in N(q)} \exp(q \cdot k_j / \tau)}

computed by :func:`~cslrobust.objectives.contrastive.info_nce_logits` on the logits ``[q . k+,
q . queue]`` and masks, so false-negative removal changes masks only, as in ``simclr_fnr``:

- ``N(q)`` is the filled part of the queue, less the entries of ``q``'s own instance (an image
  enqueued in an earlier step or epoch is the same instance, not a negative; nor is it made a
  positive: its key is stale and its augmentation unknown, so it is simply left out);
- with a false-negative detector (``fn``), the queue entries it flags are removed from ``N(q)``
  (``eliminate``) or added to the positives (``attract``: multi-positive InfoNCE, SupCon's L_out
  form). The detector scores the queries against the queue as external candidates
  (:class:`~cslrobust.objectives.fn_detectors.CandidateSet`); the queue's labels reach only the
  oracle and the measurement of detection precision and recall.

``symmetric`` (default, as is common on CIFAR): both views are queries, each against the key of
the other, the loss is the mean over the ``2B`` queries (the mean of the two directions), and
both views' keys are enqueued (``2B`` per step). Otherwise view 0 is the query, view 1 the key,
and ``B`` keys are enqueued. Both encoders run on both views either way (the same BatchNorm
batches), so the asymmetric loss saves no forward pass.

**Queue.** :class:`KeyQueue` holds ``K`` normalised keys with their instance ids and labels, starts
empty (the first step has no negatives: its loss is ``-log 1 = 0``) and is filled after every
optimiser step with the keys of the global batch, overwriting the oldest entries. Under torchrun
every rank enqueues the same gathered keys, so every rank holds the same queue.

**BatchNorm.** MoCo's shuffle-BN is not used: the loop gives every module of a method (key
encoder included) BatchNorm over the global batch (SimCLR's and MoCo v3's remedy for the same
leak through batch statistics), so one process and ``W`` processes compute the same thing.

**Momentum.** After each step ``key <- m key + (1 - m) query`` (parameters; the key encoder keeps
its own BatchNorm statistics), with ``m`` constant (MoCo; 0.99 is the usual CIFAR value, 0.999 on
ImageNet) or rising from ``m`` to 1 on BYOL's cosine schedule.

The key encoder, the queue (keys, ids, labels, pointer, fill) and the current momentum are the
method's state, checkpointed for an exact resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from cslrobust.errors import ConfigError
from cslrobust.objectives.contrastive import info_nce_logits, normalize_views
from cslrobust.objectives.contrastive_objective import ContrastiveSection
from cslrobust.objectives.fn_detectors import (
    BankFalseNegativeDetector,
    CandidateSet,
    FalseNegativeDetector,
    FNRMode,
    OptionalRemoval,
    build_fn_detector,
    detection_quality,
)
from cslrobust.objectives.masks import expand_to_views
from cslrobust.objectives.method import (
    TrainingMethod,
    ViewRunner,
    cosine_momentum,
    ema_update,
    frozen_copy,
    load_module_state,
    module_state,
)
from cslrobust.objectives.objective import OBJECTIVES, HeadKind, LossOutput, check_batch

__all__ = [
    "KeyQueue",
    "MoCoMethod",
    "MoCoObjective",
    "MoCoSection",
    "MomentumSchedule",
    "build_moco",
]

MomentumSchedule = Literal["constant", "cosine"]
"""The key encoder's momentum: fixed (MoCo) or rising to 1 on a cosine (BYOL)."""

_SCHEDULES: frozenset[str] = frozenset(("constant", "cosine"))
_MODES: frozenset[str] = frozenset(("eliminate", "attract"))


class KeyQueue:
    """A ring buffer of ``K`` keys with their instance ids and labels (FIFO overwrite).

    Slots ``0 .. filled-1`` hold entries; the next key goes to slot ``pointer`` and the pointer
    advances modulo ``K``, so once full the oldest entry is overwritten first. ``pointer`` and
    ``filled`` are Python ints (a key count is known from shapes: no host sync per step).

    Args:
        size: Capacity ``K`` (at least 1).
        dim: Key dimension ``D``.
        device: Where the buffers live.

    Shape:
        - keys: ``(K, D)`` float32, L2-normalised rows where filled
        - ids, labels: ``(K,)`` int64 (-1 where empty)
    """

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu") -> None:
        if size < 1 or dim < 1:
            raise ValueError(f"a queue needs size >= 1 and dim >= 1, got {size} and {dim}")
        self.size = size
        self.keys = torch.zeros(size, dim, device=device)
        self.ids = torch.full((size,), -1, dtype=torch.long, device=device)
        self.labels = torch.full((size,), -1, dtype=torch.long, device=device)
        self.pointer = 0
        self.filled = 0

    def entries(self) -> CandidateSet:
        """The filled entries (in slot order, not age order) as a detector's candidate set.

        Shape:
            - returns: ``z (F, D)``, ``sample_ids (F,)``, ``labels (F,)`` with ``F = filled``
        """
        n = self.filled
        return CandidateSet(self.keys[:n], self.ids[:n], self.labels[:n])

    @torch.no_grad()
    def enqueue(self, keys: Tensor, ids: Tensor, labels: Tensor) -> None:
        """Write ``n`` keys at the pointer (wrapping around), the oldest entries first to go.

        With ``n > K`` only the last ``K`` keys are kept.

        Shape:
            - keys: ``(n, D)``; ids, labels: ``(n,)``
        """
        n = keys.shape[0]
        if ids.shape != (n,) or labels.shape != (n,) or keys.shape[1:] != self.keys.shape[1:]:
            raise ValueError(
                f"enqueue expects keys (n, {self.keys.shape[1]}), ids and labels (n,); got "
                f"{tuple(keys.shape)}, {tuple(ids.shape)}, {tuple(labels.shape)}"
            )
        if n > self.size:
            keys, ids, labels = keys[-self.size :], ids[-self.size :], labels[-self.size :]
            n = self.size
        slots = (self.pointer + torch.arange(n, device=self.keys.device)) % self.size  # (n,)
        self.keys[slots] = keys.detach().to(self.keys.dtype)
        self.ids[slots] = ids.to(self.ids.device, torch.long)
        self.labels[slots] = labels.to(self.labels.device, torch.long)
        self.pointer = (self.pointer + n) % self.size
        self.filled = min(self.filled + n, self.size)

    def state_dict(self, prefix: str = "queue") -> dict[str, Tensor]:
        """Buffers, pointer and fill under ``<prefix>.<name>`` (copies)."""
        return {
            f"{prefix}.keys": self.keys.clone(),
            f"{prefix}.ids": self.ids.clone(),
            f"{prefix}.labels": self.labels.clone(),
            f"{prefix}.pointer": torch.tensor(self.pointer, dtype=torch.long),
            f"{prefix}.filled": torch.tensor(self.filled, dtype=torch.long),
        }

    def load_state_dict(self, state: Mapping[str, Tensor], prefix: str = "queue") -> None:
        """Restore :meth:`state_dict`.

        Raises:
            KeyError: If a key is missing.
            ValueError: If a buffer's shape differs (another queue size or key dimension) or the
                pointer or fill is out of range.
        """
        for name in ("keys", "ids", "labels"):
            own, saved = getattr(self, name), state[f"{prefix}.{name}"]
            if saved.shape != own.shape:
                raise ValueError(
                    f"{prefix}.{name} has shape {tuple(saved.shape)}, expected {tuple(own.shape)} "
                    "(queue_size and the projection dimension must match the checkpoint's)"
                )
        pointer, filled = int(state[f"{prefix}.pointer"]), int(state[f"{prefix}.filled"])
        if not (0 <= pointer < self.size and 0 <= filled <= self.size):
            raise ValueError(f"{prefix}: pointer {pointer} or fill {filled} outside 0..{self.size}")
        self.keys.copy_(state[f"{prefix}.keys"])
        self.ids.copy_(state[f"{prefix}.ids"])
        self.labels.copy_(state[f"{prefix}.labels"])
        self.pointer, self.filled = pointer, filled


@dataclass(frozen=True)
class MoCoObjective:
    """MoCo v2's settings; :meth:`make_method` builds the method (key encoder, queue) around an encoder.

    Args:
        temperature: Softmax temperature (0.2, MoCo v2).
        queue_size: Keys ``K`` in the queue (4,096 by default for CIFAR; 65,536 in the paper).
        momentum: Key-encoder momentum (0.99 for CIFAR), the base of the cosine schedule.
        momentum_schedule: ``"constant"`` or ``"cosine"``.
        symmetric: Both views as queries (default) or view 0 only.
        detector: False-negative detector over the queue, or None (plain MoCo).
        mode: ``"eliminate"`` or ``"attract"`` the detected queue entries.
        warmup_epochs: Epochs of plain MoCo before detection starts.
        support_views: Extra views for the detector only (``n_views = 2 + support_views``); must
            equal the detector's.

    Raises:
        ConfigError: On a value out of range or support views different from the detector's.
    """

    temperature: float = 0.2
    queue_size: int = 4096
    momentum: float = 0.99
    momentum_schedule: MomentumSchedule = "constant"
    symmetric: bool = True
    detector: FalseNegativeDetector | None = None
    mode: FNRMode = "eliminate"
    warmup_epochs: int = 0
    support_views: int = 0
    head_kind: HeadKind = field(default="projector", init=False)

    def __post_init__(self) -> None:
        # Values may arrive untyped from code: check them at run time.
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if isinstance(self.queue_size, bool) or self.queue_size < 1:
            raise ConfigError(f"queue_size must be an integer >= 1, got {self.queue_size}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.momentum_schedule not in _SCHEDULES:
            raise ConfigError(
                f"momentum_schedule must be 'constant' or 'cosine', got {self.momentum_schedule!r}"
            )
        if self.mode not in _MODES:
            raise ConfigError(f"mode must be 'eliminate' or 'attract', got {self.mode!r}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        detector: object = self.detector
        if detector is not None and not isinstance(detector, FalseNegativeDetector):
            raise ConfigError(
                f"detector must be a FalseNegativeDetector, got {type(detector).__name__}"
            )
        expected = 0 if self.detector is None else self.detector.support_views
        if self.support_views != expected:
            raise ConfigError(
                f"support_views={self.support_views} of moco differs from the detector's "
                f"support_views={expected}; set them equal"
            )

    @property
    def n_views(self) -> int:
        """The query/key views plus the detector's support views."""
        return 2 + self.support_views

    def needs_bank(self, epoch: int) -> bool:
        """Whether to refresh a bank detector (``cluster``) at the start of ``epoch``."""
        detector = self.detector
        if not isinstance(detector, BankFalseNegativeDetector) or epoch < self.warmup_epochs:
            return False
        return detector.needs_refresh(epoch - self.warmup_epochs)

    def refresh(self, bank: Tensor, *, epoch: int, generator: torch.Generator) -> dict[str, float]:
        """Normalise the bank (query encoder, eval mode) and refit a bank detector; ``{}`` else."""
        if not isinstance(self.detector, BankFalseNegativeDetector):
            return {}
        bank = F.normalize(bank.detach().to(torch.promote_types(bank.dtype, torch.float32)), dim=1)
        return self.detector.refresh(bank, generator=generator)

    def make_method(self, encoder: nn.Module) -> TrainingMethod:
        """The MoCo method around ``encoder`` (its key encoder starts as a copy of it)."""
        return MoCoMethod(encoder, self)


class MoCoMethod:
    """MoCo v2 in the loop: query encoder (optimised), key encoder (EMA), queue of keys.

    Args:
        encoder: The run's encoder (projector head), the query encoder.
        objective: The settings.
    """

    head_kind: HeadKind = "projector"

    def __init__(self, encoder: nn.Module, objective: MoCoObjective) -> None:
        self.encoder = encoder
        self.objective = objective
        self.n_views = objective.n_views
        self.key_encoder = frozen_copy(encoder)
        dim = int(encoder.head.out_dim)  # type: ignore[union-attr, arg-type]
        device = next(encoder.parameters()).device
        self.queue = KeyQueue(objective.queue_size, dim, device)
        self.momentum = objective.momentum
        # Keys of the last loss, enqueued after the optimiser step (keys, ids, labels).
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    def network(self) -> nn.Module:
        """The query encoder."""
        return self.encoder

    def modules(self) -> dict[str, nn.Module]:
        """The query encoder and the key encoder (both get global BatchNorm across ranks)."""
        return {"encoder": self.encoder, "key_encoder": self.key_encoder}

    def loss(
        self,
        run: ViewRunner,
        network: nn.Module,
        views: Tensor,
        index: Tensor,
        labels: Tensor,
        *,
        generator: torch.Generator | None,
        epoch: int,
    ) -> LossOutput:
        """InfoNCE of the queries against their positive key and the queue (see the module).

        Returns:
            The loss and metrics ``loss``, ``pos_sim`` (mean query . positive key), ``neg_sim``
            (mean over the final negatives), ``fn_rate`` (fraction of the queue candidates that
            share the query's label), ``queue_fill`` (filled / K), ``momentum`` (last applied) and,
            with a detector, ``fn_precision``, ``fn_recall``, ``fn_f1``, ``fn_removed_fraction``.

        Shape:
            - views: ``(V*b, 3, H, W)`` this rank's views, view-major
            - index, labels: ``(B,)`` of the global batch
        """
        obj = self.objective
        out = run(network, views)  # (V, B, D)
        with torch.no_grad():
            keys = F.normalize(run(self.key_encoder, views, grad=False)[:2], dim=-1)  # (2, B, D)
        check_batch(out, index, labels, self.n_views)
        index, labels = index.to(out.device), labels.to(out.device)
        n_query_views = 2 if obj.symmetric else 1
        q = normalize_views(out[:n_query_views])  # (M, D), M = n_query_views * B
        positive = keys.flip(0)[:n_query_views].flatten(0, 1)  # (M, D): the other view's key
        row_ids = expand_to_views(index, n_query_views)  # (M,)
        row_labels = expand_to_views(labels, n_query_views)  # (M,)
        queue = self.queue.entries()  # N filled entries
        l_pos = (q * positive).sum(dim=-1, keepdim=True)  # (M, 1)
        l_neg = q @ queue.z.T  # (M, N)
        logits = torch.cat([l_pos, l_neg], dim=1) / obj.temperature  # (M, 1 + N)

        # The query's own instance in the queue (an earlier step's key of the same image) is
        # neither a negative nor a positive.
        candidates = row_ids[:, None] != queue.sample_ids[None, :]  # (M, N)
        n_entries = queue.sample_ids.shape[0]
        if obj.detector is None or epoch < obj.warmup_epochs or n_entries == 0:
            detected = torch.zeros_like(candidates)
        else:
            support = None
            if obj.support_views > 0:
                support = F.normalize(out[2:].detach(), dim=-1)  # (S, B, D), detection only
            detected = obj.detector(
                q.detach(),
                sample_ids=row_ids,
                labels=row_labels,
                candidate_mask=candidates,
                generator=generator,
                support=support,
                candidates=queue,
            )
            detected = detected & candidates  # the subset contract, without a host sync
        quality = detection_quality(detected, candidates, row_labels, queue.labels)
        negatives = candidates & ~detected
        extra_positives = detected if obj.mode == "attract" else torch.zeros_like(detected)
        own = torch.ones_like(l_pos, dtype=torch.bool)  # (M, 1): column 0 is the positive key
        pos_mask = torch.cat([own, extra_positives], dim=1)  # (M, 1 + N)
        neg_mask = torch.cat([~own, negatives], dim=1)  # (M, 1 + N)
        loss = info_nce_logits(logits, pos_mask, neg_mask)

        # The keys of the global batch join the queue after the optimiser step.
        if obj.symmetric:
            self._pending = (keys.flatten(0, 1), expand_to_views(index, 2), row_labels)
        else:
            self._pending = (keys[1], index, labels)
        with torch.no_grad():
            zero = torch.zeros((), device=loss.device)
            neg_sum = torch.where(negatives, l_neg, zero).sum()
            metrics = {
                "loss": loss.detach(),
                "pos_sim": l_pos.mean(),
                "neg_sim": neg_sum / negatives.sum().clamp(min=1),
                "fn_rate": quality["true_fraction"],
                "queue_fill": torch.tensor(n_entries / self.queue.size, device=loss.device),
                "momentum": torch.tensor(self.momentum, device=loss.device),
            }
            if obj.detector is not None:
                for name in ("precision", "recall", "f1", "removed_fraction"):
                    metrics[f"fn_{name}"] = quality[name]
        return LossOutput(loss, metrics)

    def after_step(self, step: int, total_steps: int) -> None:
        """Momentum update of the key encoder, then the last loss's keys join the queue."""
        obj = self.objective
        if obj.momentum_schedule == "cosine":
            self.momentum = cosine_momentum(obj.momentum, step, total_steps)
        ema_update(self.key_encoder, self.encoder, self.momentum)
        if self._pending is not None:
            self.queue.enqueue(*self._pending)
            self._pending = None

    def state_dict(self) -> dict[str, Tensor]:
        """Key encoder, queue, momentum and a bank detector's fit."""
        state = module_state("key_encoder", self.key_encoder)
        state |= self.queue.state_dict("queue")
        state["momentum"] = torch.tensor(float(self.momentum), dtype=torch.float64)
        detector = self.objective.detector
        if isinstance(detector, BankFalseNegativeDetector):
            state |= {f"detector.{k}": v for k, v in detector.state_dict().items()}
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict` (strict: another method's state is refused).

        Raises:
            KeyError: On missing keys (e.g. a checkpoint of another method).
            ValueError: On a queue of another size or detector state the detector cannot hold.
        """
        load_module_state("key_encoder", self.key_encoder, state)
        self.queue.load_state_dict(state, "queue")
        self.momentum = float(state["momentum"])
        self._pending = None
        fit = {
            k.removeprefix("detector."): v for k, v in state.items() if k.startswith("detector.")
        }
        detector = self.objective.detector
        if isinstance(detector, BankFalseNegativeDetector):
            detector.load_state_dict(fit)
        elif fit:
            raise ValueError(f"moco's detector holds no state, got keys {sorted(fit)}")


class MoCoSection(ContrastiveSection):
    """Config section of ``moco``.

    ``objective: {name: moco, temperature: 0.2, queue_size: 4096, momentum: 0.99,
    momentum_schedule: constant, symmetric: true}``; ``fn`` (default None: plain MoCo) is a
    detector's section exactly as in ``simclr_fnr``, e.g. ``fn: {detector: topk, k: 10, mode:
    attract}``, applied over the queue.
    """

    name: Literal["moco"] = "moco"
    family: ClassVar[str] = "contrastive"
    temperature: float = Field(default=0.2, gt=0.0)
    queue_size: int = Field(default=4096, ge=1)
    momentum: float = Field(default=0.99, ge=0.0, lt=1.0)
    momentum_schedule: MomentumSchedule = "constant"
    symmetric: bool = True
    fn: OptionalRemoval = None


@OBJECTIVES.register("moco", MoCoSection)
def build_moco(section: MoCoSection) -> MoCoObjective:
    """The ``moco`` objective of a config section (support views as the detector's)."""
    detector = None if section.fn is None else build_fn_detector(section.fn)
    return MoCoObjective(
        temperature=section.temperature,
        queue_size=section.queue_size,
        momentum=section.momentum,
        momentum_schedule=section.momentum_schedule,
        symmetric=section.symmetric,
        detector=detector,
        mode="eliminate" if section.fn is None else section.fn.mode,
        warmup_epochs=0 if section.fn is None else section.fn.warmup_epochs,
        support_views=0 if detector is None else detector.support_views,
    )
