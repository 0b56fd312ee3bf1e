"""Scalar metric logging: a JSON-lines file always, TensorBoard when it is installed."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any


class MetricLog:
    """Append scalars to ``<folder>/metrics.jsonl`` and, optionally, TensorBoard event files.

    Args:
        folder: Where to write.
        tensorboard: Also write TensorBoard scalars (silently skipped if tensorboard is missing).
    """

    def __init__(self, folder: Path, *, tensorboard: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "metrics.jsonl"
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                self._writer = None
            else:
                self._writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float], *, prefix: str = "") -> None:
        """Record ``scalars`` at ``step`` under ``prefix`` (e.g. ``"train/"``)."""
        record = {"step": step, **{prefix + k: v for k, v in scalars.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(prefix + key, value, step)

    def close(self) -> None:
        """Flush and close TensorBoard files."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
