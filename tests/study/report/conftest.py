"""A small results store written row by row (no model runs): two methods, two seeds, probe and PGD."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cslrobust.study.store import ResultsStore, pack_bits

N_IMAGES = 10
# (method, seed) -> (probe test accuracy, robust accuracy at 2/255); robust accuracy at eps 0 is 0.8.
VALUES = {
    ("supervised", 0): (0.8, 0.5),
    ("supervised", 1): (0.9, 0.7),
    ("simclr", 0): (0.7, 0.2),
    ("simclr", 1): (0.7, 0.4),
}

# method -> the family its objective section declares (read by the writer through ``family_of``).
FAMILY = {"supervised": "supervised", "simclr": "contrastive"}


def _correct(accuracy: float) -> np.ndarray:
    return np.arange(N_IMAGES) < round(accuracy * N_IMAGES)


@pytest.fixture
def report_store(tmp_path: Path):
    """Build the store; return ``(db path, cells)`` with cells shaped like ``runner.Cell``."""
    db = tmp_path / "results.db"
    cells = []
    with ResultsStore(db) as store:
        for (method, seed), (test, robust) in VALUES.items():
            cell_id = f"{method}-{seed}"
            store.register_cell(cell_id, "t", method, seed, {})
            store.commit_stage(
                cell_id, "probe:k", [{"metric": "probe/test_accuracy", "value": test}], "sha"
            )
            attack = []
            for eps, acc in ((0.0, 0.8), (2 / 255, robust)):
                cond = {"attack": "pgd", "norm": "linf", "eps": eps}
                attack += [
                    {"metric": "clean_accuracy", "value": 0.8, **cond},
                    {
                        "metric": "robust_accuracy",
                        "value": acc,
                        "n": N_IMAGES,
                        "correct_bits": pack_bits(_correct(acc)),
                        **cond,
                    },
                ]
            store.commit_stage(cell_id, "attack:k", attack, "sha")
            cells.append(
                SimpleNamespace(
                    config=SimpleNamespace(
                        name=f"{method}-s{seed}",
                        objective=SimpleNamespace(name=method, family=FAMILY[method]),
                    ),
                    cell_id=cell_id,
                    method=method,
                    stages={"probe": "probe:k", "attack": "attack:k"},
                )
            )
    return db, cells


def robust_row(
    method: str, seed: int, n_correct: int, n_images: int, *, eps: float = 2 / 255
) -> dict:
    """A PGD L-inf robust-accuracy row whose first ``n_correct`` of ``n_images`` images are correct."""
    correct = np.arange(n_images) < n_correct
    return {
        "method": method,
        "seed": seed,
        "metric": "robust_accuracy",
        "attack": "pgd",
        "norm": "linf",
        "eps": eps,
        "value": float(correct.mean()),
        "n": n_images,
        "correct_bits": pack_bits(correct),
    }


@pytest.fixture
def make_robust_row():
    """:func:`robust_row`, for tests (conftest modules are not importable by name)."""
    return robust_row
