"""Accuracy under common corruptions, as long-format rows, and their summary (mean accuracy, mCE).

Protocol (store :func:`protocol` with the results):

- Each ``(corruption, severity)`` is one row ``{corruption, family, severity, accuracy, n}``; rows are
  never averaged before storing. Generated sets come from :func:`corrupted_test_set` (seeded, cached),
  so every model evaluated with the same seed sees the same corrupted images.
- Several processes (torchrun): conditions are sharded across ranks (each generated, cached and
  evaluated by one rank) and the counts gathered, so every rank returns all rows.
- The predictor receives float images in [0, 1], ``(B, 3, 32, 32)``, on ``device``, inside
  ``torch.no_grad()``; putting a model in eval mode and normalising are its job.
- :func:`summarise` gives the unweighted mean accuracy over all rows and, against a reference
  model's rows, the corruption error of Hendrycks & Dietterich (2019):
  ``CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}`` and ``mCE = mean_c CE_c``, plus the relative version
  ``relCE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} - E^ref_clean)`` when both clean
  accuracies are given. The paper's reference is AlexNet; in this project it is whichever model the
  caller passes (for example the supervised model), so CE < 1 means more robust than the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypedDict

import torch
from torch import Tensor

from cslrobust.corruptions.cifar_c import load_official
from cslrobust.corruptions.generate import GENERATOR_VERSION, corrupted_test_set
from cslrobust.corruptions.registry import CORRUPTION_NAMES, FAMILIES, SEVERITIES
from cslrobust.distributed import sharded_map

Predict = Callable[[Tensor], Tensor]
"""Float images in [0, 1] ``(B, 3, H, W)`` -> logits ``(B, K)``."""

_FAMILY = {name: family for family, names in FAMILIES.items() for name in names}
HELD_OUT_FAMILY = "held_out"
"""Family reported for the official release's four extra corruptions."""


class CorruptionRow(TypedDict):
    """Accuracy on one corruption at one severity."""

    corruption: str
    family: str
    severity: int
    accuracy: float
    n: int


def _severity_text(severities: Sequence[int]) -> str:
    ordered = sorted(set(severities))
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(map(str, ordered))


def protocol(seed: int, severities: Sequence[int] = SEVERITIES, dataset: str = "cifar10") -> str:
    """The protocol string of generated-corruption results, e.g. ``"cifar10-c-generated-v1 (...)"``."""
    return (
        f"{dataset}-c-{GENERATOR_VERSION} (Hendrycks & Dietterich 2019 CIFAR parameters), "
        f"seed {seed}, severities {_severity_text(severities)}"
    )


def official_protocol(severities: Sequence[int] = SEVERITIES, dataset: str = "cifar10") -> str:
    """The protocol string of results on the official release, e.g. ``"cifar10-c-official (...)"``."""
    return (
        f"{dataset}-c-official (Hendrycks & Dietterich 2019 release files), "
        f"severities {_severity_text(severities)}"
    )


def _count_correct(
    predict: Predict, images: Tensor, labels: Tensor, batch_size: int, device: torch.device
) -> Tensor:
    """``(1, 2)`` int64 on ``device``: correct predictions and images of one condition (no sync)."""
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device).float().div_(255.0)
            y = labels[start : start + batch_size].to(device)
            logits = predict(x)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"predict must return logits (B, K), got {tuple(logits.shape)}")
            correct += (logits.argmax(dim=1) == y).sum()
    return torch.stack([correct, torch.tensor(images.shape[0], device=device)]).view(1, 2)


def _evaluate_conditions(
    predict: Predict,
    conditions: Sequence[tuple[str, int]],
    load: Callable[[str, int], tuple[Tensor, Tensor]],
    *,
    batch_size: int,
    device: torch.device,
    progress: str | None,
) -> list[CorruptionRow]:
    """Rows for ``conditions``, sharded across ranks by whole conditions; every rank gets all rows.

    Each ``(corruption, severity)`` is loaded (or generated and cached) and evaluated by one rank, so
    no set is generated twice and no cache file has two writers; the counts are gathered in order.
    """

    def evaluate(position: int, condition: tuple[str, int]) -> Tensor:
        del position
        images, labels = load(*condition)
        return _count_correct(predict, images, labels, batch_size, device)

    if not conditions:
        return []
    counts = torch.cat(sharded_map(conditions, evaluate, description=progress)).tolist()
    return [
        CorruptionRow(
            corruption=name,
            family=_FAMILY.get(name, HELD_OUT_FAMILY),
            severity=severity,
            accuracy=correct / n,
            n=n,
        )
        for (name, severity), (correct, n) in zip(conditions, counts, strict=True)
    ]


def _check_data(images: Tensor, labels: Tensor, batch_size: int) -> None:
    if images.ndim not in (4, 5) or images.shape[0] == 0 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"expected images (N, 3, H, W) or clips (N, 3, T, H, W) with N > 0 and labels (N,), "
            f"got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def evaluate_corruptions(
    predict: Predict,
    images: Tensor,
    labels: Tensor,
    *,
    names: Sequence[str] = CORRUPTION_NAMES,
    severities: Sequence[int] = SEVERITIES,
    seed: int,
    cache_dir: Path | None = None,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[CorruptionRow]:
    """Accuracy of ``predict`` on generated corrupted copies of a test set.

    Args:
        predict: Float images in [0, 1] on ``device`` -> logits.
        images: Clean test images, ``torch.uint8`` ``(N, 3, 32, 32)``, or clips
            ``(N, 3, T, 32, 32)`` (corrupted frame by frame, each frame as one image).
        labels: ``(N,)`` integer labels.
        names: Corruptions to evaluate (default: the 15 benchmark corruptions).
        severities: Severities to evaluate (default 1..5).
        seed: Generation seed (use one seed for every model that is compared).
        cache_dir: Cache for the generated sets (see :func:`corrupted_test_set`); ``None``: none.
        batch_size: Images per call of ``predict``.
        device: Where batches are sent.
        progress: Show a progress bar over the conditions.

    Returns:
        One :class:`CorruptionRow` per ``(corruption, severity)``, in the order of ``names`` then
        ``severities``.
    """
    _check_data(images, labels, batch_size)
    clips = images.ndim == 5
    # Clips are corrupted frame by frame: every frame is one image of the corrupted set (frame t of
    # clip i is image i * T + t), so noise is drawn per frame, like sensor noise in a video.
    frames = images.transpose(1, 2).flatten(0, 1) if clips else images  # (N*T | N, 3, H, W)

    def generate(name: str, severity: int) -> tuple[Tensor, Tensor]:
        corrupted = corrupted_test_set(frames, name, severity, seed=seed, cache_dir=cache_dir)
        if clips:
            n, c, t, h, w = images.shape
            corrupted = corrupted.view(n, t, c, h, w).transpose(1, 2).contiguous()
        return corrupted, labels

    return _evaluate_conditions(
        predict,
        [(name, severity) for name in names for severity in severities],
        generate,
        batch_size=batch_size,
        device=torch.device(device),
        progress="corruptions" if progress else None,
    )


def evaluate_official(
    predict: Predict,
    root: Path,
    *,
    names: Sequence[str] = CORRUPTION_NAMES,
    severities: Sequence[int] = SEVERITIES,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[CorruptionRow]:
    """:func:`evaluate_corruptions` on the official release files in ``root`` (see :func:`load_official`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return _evaluate_conditions(
        predict,
        [(name, severity) for name in names for severity in severities],
        lambda name, severity: load_official(root, name, severity),
        batch_size=batch_size,
        device=torch.device(device),
        progress="CIFAR-C" if progress else None,
    )


def _index(rows: Iterable[CorruptionRow], what: str) -> dict[str, dict[int, float]]:
    """Rows as ``{corruption: {severity: accuracy}}``; duplicates are an error."""
    table: dict[str, dict[int, float]] = {}
    for row in rows:
        by_severity = table.setdefault(row["corruption"], {})
        if row["severity"] in by_severity:
            raise ValueError(
                f"{what} has two rows for {row['corruption']} severity {row['severity']}"
            )
        by_severity[row["severity"]] = float(row["accuracy"])
    return table


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


def summarise(
    rows: Sequence[CorruptionRow],
    reference_rows: Sequence[CorruptionRow] | None = None,
    *,
    clean_accuracy: float | None = None,
    reference_clean_accuracy: float | None = None,
) -> dict[str, float | dict[str, float]]:
    """Summary numbers of corruption rows, optionally relative to a reference model.

    Args:
        rows: The model's rows (one per corruption and severity).
        reference_rows: The reference model's rows for exactly the same conditions.
        clean_accuracy: The model's clean accuracy (needed for the relative mCE).
        reference_clean_accuracy: The reference's clean accuracy (needed for the relative mCE).

    Returns:
        ``mean_accuracy`` (unweighted over rows), ``mean_error``, ``n_conditions``,
        ``accuracy_by_corruption``, ``accuracy_by_family``, ``accuracy_by_severity`` (keys ``"1"``..);
        with a reference also ``ce_by_corruption`` and ``mce``; with both clean accuracies also
        ``relative_ce_by_corruption`` and ``relative_mce``. A CE whose reference denominator is 0 is
        NaN.

    Raises:
        ValueError: If ``rows`` is empty, has duplicates, or the reference covers other conditions.
    """
    if not rows:
        raise ValueError("no corruption rows to summarise")
    table = _index(rows, "rows")
    accuracies = [row["accuracy"] for row in rows]
    by_family: dict[str, list[float]] = {}
    by_severity: dict[str, list[float]] = {}
    for row in rows:
        by_family.setdefault(row["family"], []).append(row["accuracy"])
        by_severity.setdefault(str(row["severity"]), []).append(row["accuracy"])
    mean_accuracy = sum(accuracies) / len(accuracies)
    summary: dict[str, float | dict[str, float]] = {
        "mean_accuracy": mean_accuracy,
        "mean_error": 1.0 - mean_accuracy,
        "n_conditions": float(len(rows)),
        "accuracy_by_corruption": {c: sum(s.values()) / len(s) for c, s in table.items()},
        "accuracy_by_family": {f: sum(v) / len(v) for f, v in by_family.items()},
        "accuracy_by_severity": {s: sum(v) / len(v) for s, v in sorted(by_severity.items())},
    }
    if reference_rows is None:
        return summary
    reference = _index(reference_rows, "reference_rows")
    if {c: set(s) for c, s in table.items()} != {c: set(s) for c, s in reference.items()}:
        raise ValueError(
            "reference_rows must cover exactly the same (corruption, severity) pairs as rows"
        )
    ce = {
        c: _ratio(sum(1.0 - a for a in s.values()), sum(1.0 - a for a in reference[c].values()))
        for c, s in table.items()
    }
    summary["ce_by_corruption"] = ce
    summary["mce"] = sum(ce.values()) / len(ce)
    if clean_accuracy is not None and reference_clean_accuracy is not None:
        clean_error = 1.0 - clean_accuracy
        reference_clean_error = 1.0 - reference_clean_accuracy
        relative = {
            c: _ratio(
                sum((1.0 - a) - clean_error for a in s.values()),
                sum((1.0 - a) - reference_clean_error for a in reference[c].values()),
            )
            for c, s in table.items()
        }
        summary["relative_ce_by_corruption"] = relative
        summary["relative_mce"] = sum(relative.values()) / len(relative)
    return summary
