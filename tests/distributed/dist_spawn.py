"""Run a function in ``world_size`` gloo processes on the CPU (the tests' stand-in for torchrun).

``run_ranks(fn, world_size, *args)`` spawns processes, initialises a gloo process group in each, calls
``fn(rank, world_size, *args)`` and returns what every rank returned (rank order). ``fn`` must be a
module-level function (it is pickled into the child processes) and return values that ``torch.save`` writes
and ``torch.load(weights_only=True)`` reads back (tensors, numbers, strings, lists, dicts). A failing rank raises here with its traceback.
"""

from __future__ import annotations

import io
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    queue: Any,
) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        try:
            # Serialised here: tensors sent as such would live in this process's shared memory,
            # which is gone once it exits.
            buffer = io.BytesIO()
            torch.save(fn(rank, world_size, *args), buffer)
            queue.put((rank, "ok", buffer.getvalue()))
        finally:
            dist.destroy_process_group()
    except BaseException:  # report every failure to the parent
        queue.put((rank, "error", traceback.format_exc()))


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """``[fn(rank, world_size, *args) for rank in range(world_size)]``, each in its own process."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, world_size, port, fn, args, queue))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, Any] = {}
    errors = []
    for _ in procs:
        rank, status, value = queue.get()
        if status == "ok":
            results[rank] = torch.load(io.BytesIO(value), weights_only=True)
        else:
            errors.append(f"rank {rank}:\n{value}")
            break
    for proc in procs:
        proc.join(timeout=60 if not errors else 5)
        if proc.is_alive():
            proc.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[rank] for rank in range(world_size)]
