"""torch.distributed plumbing: one code path from a single CPU process to many GPUs on many nodes.

Every function here is a no-op (or the identity) when no process group is initialised, so training and
evaluation code calls them unconditionally. Launch several processes with ``torchrun``; the CLI calls
:func:`init_distributed`, which reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
and initialises NCCL on CUDA devices and gloo on the CPU.

The contrastive pieces are written here by hand, since they decide whether a multi-process run computes
the same thing as one process on the global batch:

- :func:`gather_with_grad` concatenates a tensor across ranks; its backward sums the incoming gradients
  over ranks (every rank computes the same global loss, so each rank's gradient of its own rows is
  ``world_size`` times the gradient of the global loss, which DDP's gradient averaging cancels);
- :class:`GlobalBatchNorm2d` (and ``1d``, ``3d``) normalises with the statistics of the global batch (SimCLR's "global BN"),
  on any device and backend (torch's ``SyncBatchNorm`` refuses CPU tensors), with gradients flowing
  through the statistics to every rank.

Evaluation is sharded by whole batches (:func:`shard`), so per-batch random streams (attack restarts)
are the same as in one process, and the per-image results are gathered back in order
(:func:`gather_batches`). :func:`sharded_batches` is the one evaluation loop built on them (attacks,
gates, features); :func:`sharded_map_objects` gathers per-batch records (AutoAttack); :func:`on_main`
runs what must happen once (writing a file) on rank 0 and hands its result to every rank.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from cslrobust.errors import ConfigError

__all__ = [
    "DistContext",
    "GlobalBatchNorm1d",
    "GlobalBatchNorm2d",
    "GlobalBatchNorm3d",
    "barrier",
    "broadcast_object",
    "context",
    "convert_global_batchnorm",
    "gather_batches",
    "gather_equal",
    "gather_rows",
    "gather_with_grad",
    "init_distributed",
    "is_main",
    "main_first",
    "on_main",
    "rank_seed_keys",
    "shard",
    "shutdown_distributed",
    "sharded_batches",
    "sharded_map",
    "sharded_map_objects",
]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``; ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes files)."""
        return self.rank == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def context() -> DistContext:
    """The current process group's rank and size; ``DistContext()`` without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def is_main() -> bool:
    """Whether this process is rank 0 (always true in a single process)."""
    return context().is_main


def init_distributed(device: str, *, timeout_s: float = 1800.0) -> tuple[DistContext, str]:
    """Initialise the process group from torchrun's environment, once; a no-op without it.

    Args:
        device: The configured device (``"cpu"``, ``"cuda"`` or ``"cuda:N"``). Under torchrun with
            CUDA, each process takes ``cuda:LOCAL_RANK`` whatever index was configured.
        timeout_s: Collective timeout.

    Returns:
        The context and the device this process must use.

    Raises:
        ConfigError: If torchrun's variables are malformed, or the device is not available here.
    """
    env = {key: os.environ.get(key) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if env["WORLD_SIZE"] is None:
        check_device_available(device)
        return context(), device
    try:
        world_size = int(env["WORLD_SIZE"])
        rank = int(env["RANK"] or "0")
        local_rank = int(env["LOCAL_RANK"] or "0")
    except ValueError:
        raise ConfigError(
            f"torchrun environment RANK={env['RANK']!r} WORLD_SIZE={env['WORLD_SIZE']!r} "
            f"LOCAL_RANK={env['LOCAL_RANK']!r}; expected integers"
        ) from None
    kind = torch.device(device).type
    if kind == "cuda":
        check_device_available(kind)
        device = f"cuda:{local_rank}"
        check_device_available(device)
        torch.cuda.set_device(device)
    else:
        check_device_available(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if kind == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    return context(), device


def available_devices() -> list[str]:
    """The devices this machine offers: ``cpu``, then ``cuda:0`` ... ``cuda:N-1``, then ``mps``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device_available(device: str) -> None:
    """Refuse a device this machine does not have, before anything is moved to it.

    Checked where a run is about to use its device, not when a config is validated: a config saved
    on a GPU machine still loads on a CPU machine, where ``--device cpu`` overrides it.

    Raises:
        ConfigError: If ``device`` is not ``cpu``, an existing ``cuda[:N]`` or an available ``mps``
            (one line listing the available devices).
    """
    parsed = torch.device(device)
    available = available_devices()
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda" and torch.cuda.is_available():
        if parsed.index is None or parsed.index < torch.cuda.device_count():
            return
    elif parsed.type == "mps" and "mps" in available:
        return
    raise ConfigError(
        f"device {device!r} is not available on this machine; available: {', '.join(available)}"
    )


def shutdown_distributed() -> None:
    """Destroy the process group if one was started (end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if _active():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run a block on rank 0 first, then on the others (e.g. download or build a cache once)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (the object itself in one process)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradients over ranks and returns this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        world_size, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: Tensor, dim: int = 0) -> Tensor:
    """Concatenate ``x`` from every rank along ``dim`` (rank order), differentiably.

    Every rank must pass the same shape. The backward pass sums the gradient arriving at the gathered
    tensor over all ranks and hands each rank the rows it contributed. When each rank computes the
    same loss ``L`` on the gathered tensor, rank ``r`` thus receives ``world_size * dL/dx_r``; DDP's
    averaging of parameter gradients divides by ``world_size``, so the parameters get exactly the
    gradient of ``L`` on the global batch.

    Shape:
        - x: ``(..., n, ...)`` with ``n`` rows along ``dim`` on every rank
        - output: ``(..., world_size * n, ...)``
    """
    if not _active():
        return x
    moved = x.movedim(dim, 0)
    return _GatherWithGrad.apply(moved).movedim(0, dim)


def gather_equal(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient; every rank has the same shape.

    Unlike :func:`gather_rows` it exchanges no sizes, so it never waits for the host (training step).

    Shape:
        - x: ``(n, ...)`` on every rank
        - output: ``(world_size * n, ...)`` in rank order
    """
    if not _active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0 without gradient; ranks may differ in rows.

    Shape:
        - x: ``(n_r, ...)`` on rank ``r`` (the trailing shape equal on every rank)
        - output: ``(sum_r n_r, ...)`` in rank order
    """
    if not _active():
        return x
    world_size = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    counts = [torch.empty_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def shard(items: Sequence[T]) -> list[tuple[int, T]]:
    """This rank's share of ``items`` as ``(position, item)``: positions ``rank, rank + W, ...``.

    Evaluation shards whole batches this way, so each batch keeps its position (and the random
    stream derived from it) whatever the number of ranks.
    """
    ctx = context()
    return [(i, items[i]) for i in range(ctx.rank, len(items), ctx.world_size)]


def _empty_like_main(sample: Tensor | None) -> Tensor:
    """A zero-row tensor shaped like rank 0's results, for a rank that holds no batch.

    With fewer batches than ranks some ranks compute nothing; they learn the dtype, trailing shape
    and device kind of the results from rank 0 (which always holds batch 0). Every rank takes this
    branch together, since all know ``n_batches`` and the world size.
    """
    meta: tuple[torch.dtype, tuple[int, ...], str] | None = None
    if sample is not None and is_main():
        meta = (sample.dtype, tuple(sample.shape[1:]), sample.device.type)
    received = broadcast_object(meta)
    assert received is not None  # rank 0 holds batch 0
    dtype, trailing, kind = received
    if sample is not None:
        return sample
    device = (
        torch.device(kind, torch.cuda.current_device()) if kind == "cuda" else torch.device(kind)
    )
    return torch.empty((0, *trailing), dtype=dtype, device=device)


def gather_batches(results: dict[int, Tensor], n_batches: int) -> list[Tensor]:
    """Per-batch results computed on the ranks' shards, gathered on every rank in batch order.

    A rank may hold no batch (fewer batches than ranks). With NCCL the tensors must be on this
    rank's GPU; gloo takes CPU tensors.

    Args:
        results: ``{batch position: tensor}`` for this rank's batches (from :func:`shard`). Every
            tensor has the same trailing shape and dtype.
        n_batches: Total number of batches.

    Returns:
        One tensor per batch position ``0 .. n_batches - 1``.

    Raises:
        ValueError: If this rank's positions are not the ones :func:`shard` assigns it.
    """
    if not _active() or n_batches == 0:
        return [results[i] for i in range(n_batches)]
    ctx = context()
    mine = sorted(results)
    expected = list(range(ctx.rank, n_batches, ctx.world_size))
    if mine != expected:
        raise ValueError(f"rank {ctx.rank} holds batches {mine}, expected {expected}")
    sample = results[mine[0]] if mine else None
    if n_batches < ctx.world_size:
        sample = _empty_like_main(sample)
    assert sample is not None
    lengths = torch.tensor([results[i].shape[0] for i in mine], device=sample.device)
    flat = torch.cat([results[i] for i in mine]) if mine else sample
    all_lengths = gather_rows(lengths.to(torch.int64))
    all_flat = gather_rows(flat)
    # Rank r's batches are r, r + W, ...: rebuild the positions of the gathered rows.
    positions = [i for r in range(ctx.world_size) for i in range(r, n_batches, ctx.world_size)]
    out: dict[int, Tensor] = {}
    offset = 0
    for position, length in zip(positions, all_lengths.tolist(), strict=True):
        out[position] = all_flat[offset : offset + length]
        offset += length
    return [out[i] for i in range(n_batches)]


def sharded_map(
    batches: Sequence[T], fn: Callable[[int, T], Tensor], *, description: str | None = None
) -> list[Tensor]:
    """Apply ``fn(position, batch)`` to this rank's batches and gather all results in batch order.

    The one-process result is ``[fn(i, b) for i, b in enumerate(batches)]``; with several ranks each
    batch runs once, on rank ``position % world_size``. ``fn`` must not call collectives itself.
    With ``description``, rank 0 shows a progress bar over its batches.
    """
    mine = shard(batches)
    bar = tqdm(mine, desc=description, disable=description is None or not is_main(), leave=False)
    results = {position: fn(position, batch) for position, batch in bar}
    return gather_batches(results, len(batches))


def sharded_batches(
    n: int,
    batch_size: int,
    fn: Callable[[int, slice], Tensor],
    *,
    description: str | None = None,
) -> Tensor:
    """Run ``fn`` over ``range(n)`` in batches, sharded across ranks; every rank gets all rows.

    The one loop behind every evaluation (attacks, gates, features, AutoAttack's clean pass): batch
    ``i`` covers rows ``i * batch_size`` to ``(i + 1) * batch_size`` and runs once, on rank
    ``i % world_size``, so whatever ``fn`` derives from its position (a random stream) is the same
    in any number of processes. ``fn`` returns one result row per input row, on the device it
    computed on (no per-batch host transfer).

    Args:
        n: Number of rows (e.g. images), ``> 0``.
        batch_size: Rows per batch.
        fn: ``(position, rows) -> (len(rows), ...)`` tensor; ``rows`` is a ``slice``.
        description: Shows a progress bar (batches) with this title on rank 0; ``None``: no bar.

    Returns:
        The rows of all batches in order, on the device of ``fn``'s results.

    Shape:
        output: ``(n, ...)``, the trailing shape of ``fn``'s results.

    Raises:
        ValueError: If ``n < 1`` or ``batch_size < 1``.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    spans = [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    return torch.cat(sharded_map(spans, fn, description=description))


def sharded_map_objects(items: Sequence[T], fn: Callable[[int, T], R]) -> list[R]:
    """:func:`sharded_map` for any picklable results (records with tensors, strings, numbers).

    Results travel pickled (``all_gather_object``): meant for per-batch records, not bulk tensors.
    Tensors inside come back on the device they were pickled on, so keep them on the CPU.
    """
    mine = {position: fn(position, item) for position, item in shard(items)}
    if not _active():
        return [mine[i] for i in range(len(items))]
    parts: list[dict[int, R] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    merged = {position: value for part in parts if part for position, value in part.items()}
    return [merged[i] for i in range(len(items))]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn()`` on rank 0 only; every rank returns its result or raises its exception.

    For work with side effects that must happen once (writing a file, checking a folder) and whose
    outcome the other ranks need; the broadcast also orders the ranks like :func:`barrier`, so
    what rank 0 wrote exists when this returns. ``fn`` must not call collectives, and its result
    must be picklable (CPU tensors, plain data).
    """
    if not _active():
        return fn()
    outcome: tuple[bool, Any] | None = None
    if is_main():
        try:
            outcome = (True, fn())
        except Exception as error:  # handed to every rank, so none waits forever
            outcome = (False, error)
    shared = broadcast_object(outcome)
    assert shared is not None
    ok, value = shared
    if not ok:
        raise value
    result: T = value
    return result


class _AllGatherStats(torch.autograd.Function):
    """All-gather of a small (k,) stats vector per rank -> (W, k), gradients summed over ranks."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank]


class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks (forward and backward), on any device.

    Outside training, or in a single process, it is exactly the torch layer it replaces. In training
    with several ranks, each rank computes its per-channel count, mean and sum of squared deviations,
    gathers them from every rank (one collective per layer) and combines them (Chan et al.'s
    parallel variance), so the normalisation, the running statistics and the gradients are those of
    the torch layer on the concatenation of the ranks' batches. Parameters and buffers keep their
    names: checkpoints move freely between the two.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (N, C, ...) with the global batch statistics in training."""
        if not (self.training and _active()):
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        xf = x.float()
        n_local = x.numel() // channels
        mean_local = xf.mean(dim=dims)  # (C,)
        m2_local = (xf - mean_local.view(shape)).square().sum(dim=dims)  # (C,)
        count = torch.full((1,), float(n_local), device=x.device)
        stats = _AllGatherStats.apply(torch.cat([count, mean_local, m2_local]))  # (W, 1 + 2C)
        counts = stats[:, :1]  # (W, 1)
        means = stats[:, 1 : 1 + channels]  # (W, C)
        m2s = stats[:, 1 + channels :]  # (W, C)
        total = counts.sum()
        mean = (counts * means).sum(dim=0) / total  # (C,)
        m2 = (m2s + counts * (means - mean).square()).sum(dim=0)  # (C,)
        var = m2 / total  # biased, used to normalise
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                unbiased = m2 / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
                self.num_batches_tracked.add_(1)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            shift = self.bias - mean * scale * self.weight
            scale = scale * self.weight
        else:
            shift = -mean * scale
        out = xf * scale.view(shape) + shift.view(shape)
        return out.to(x.dtype)


class GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over the global batch of all ranks (see :class:`_GlobalBatchNorm`)."""


class GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the global batch of all ranks (see :class:`_GlobalBatchNorm`)."""


class GlobalBatchNorm3d(_GlobalBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` over the global batch of all ranks (clip backbones; see :class:`_GlobalBatchNorm`)."""


_GLOBAL_OF: dict[type[nn.Module], type[_GlobalBatchNorm]] = {
    nn.BatchNorm1d: GlobalBatchNorm1d,
    nn.BatchNorm2d: GlobalBatchNorm2d,
    nn.BatchNorm3d: GlobalBatchNorm3d,
}


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d``/``2d``/``3d`` in ``module`` by its global version, in place.

    Parameters and buffers are kept (the same tensors), so the state dict is unchanged.

    Returns:
        ``module`` itself (or a new layer when ``module`` is itself a BatchNorm layer).
    """
    global_type = _GLOBAL_OF.get(type(module))
    if global_type is not None:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        converted = global_type(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers()]:
            setattr(converted, name, tensor)
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        replaced = convert_global_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def rank_seed_keys(world_size: int, rank: int) -> tuple[int, ...]:
    """Extra seed keys that make a per-rank stream differ across ranks, and add none in one process."""
    return (rank,) if world_size > 1 else ()
