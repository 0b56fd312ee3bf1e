"""Evaluation sharded across 2 gloo processes equals one process: per image, per batch, per flag.

Each test computes the one-process reference here (one thread, like the ranks) and the same thing in
2 processes with :func:`dist_spawn.run_ranks`; every rank must return the reference.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dist_spawn
import dist_workers_eval as workers
import pytest
import torch

from cslrobust import distributed


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Compute the reference with one thread, as each rank does (same float reduction order)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def test_shard_and_gather_are_identities_in_one_process():
    results = {i: torch.full((i + 1,), i) for i in range(3)}
    assert distributed.shard(["a", "b", "c"]) == [(0, "a"), (1, "b"), (2, "c")]
    assert [t.tolist() for t in distributed.gather_batches(results, 3)] == [[0], [1, 1], [2, 2, 2]]
    rows = distributed.sharded_batches(5, 2, lambda i, s: torch.arange(s.start, s.stop) * 10 + i)
    assert rows.tolist() == [0, 10, 21, 31, 42]
    assert distributed.on_main(lambda: 7) == 7
    with pytest.raises(ValueError, match="n >= 1"):
        distributed.sharded_batches(0, 2, lambda i, s: torch.zeros(0))


def test_gather_batches_keeps_batch_order_across_ranks():
    batch_counts = [1, 3, 4]  # 1: rank 1 holds no batch; 3: uneven shards
    per_rank = dist_spawn.run_ranks(workers.gather_ordering, 2, batch_counts)
    for case, n_batches in enumerate(batch_counts):
        assert [r[case]["positions"] for r in per_rank] == [
            list(range(0, n_batches, 2)),
            list(range(1, n_batches, 2)),
        ]
        expected = [
            torch.stack([torch.full((i + 1,), i), torch.arange(i + 1)], dim=1)
            for i in range(n_batches)
        ]
        expected_rows = torch.tensor([r * 10 + r // 2 for r in range(2 * n_batches + 1)])
        for rank_result in per_rank:
            got = rank_result[case]
            assert_same(got["gathered"], expected)
            assert_same(got["objects"], [(i, f"item{i}", i % 2) for i in range(n_batches)])
            assert torch.equal(got["rows"], expected_rows)
            assert got["main_rank"] == 0  # rank 0's result on every rank
            assert got["error"] == "raised on rank 0"  # and its exception


def assert_same(got: Any, want: Any, where: str = "result") -> None:
    """Exact equality of nested results: tensors by value, floats bit for bit (NaN equals NaN)."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float) and math.isnan(got), where
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_robust_accuracy_two_processes_equal_one():
    cases = [
        # 3 batches over 2 ranks, the last one smaller
        {"n": 40, "batch_size": 16, "attack": "pgd", "eps": 8 / 255, "steps": 3, "restarts": 2},
        {"n": 40, "batch_size": 16, "attack": "fgsm", "eps": 8 / 255},
        {"n": 40, "batch_size": 16, "attack": "pgd", "eps": 0.5, "norm": "l2", "steps": 2},
        # random start only: max_perturbation is a draw of the batches' random streams
        {"n": 40, "batch_size": 16, "attack": "pgd", "eps": 2.0, "norm": "l2", "steps": 0},
        # one batch: rank 1 computes nothing and still returns the full result
        {"n": 12, "batch_size": 16, "attack": "pgd", "eps": 8 / 255, "steps": 2},
    ]
    with one_thread():
        reference = [workers.plain(workers.attack_case(**case)) for case in cases]
    assert 0 < reference[0]["robust_accuracy"] < reference[0]["clean_accuracy"] < 1  # a real test
    for rank_results in dist_spawn.run_ranks(workers.attack_results, 2, cases):
        assert_same(rank_results, reference)


def test_autoattack_two_processes_equal_one(tmp_path: Path):
    with one_thread():
        reference = workers.autoattack_result(0, 1, None)
    assert reference["clean_accuracy"] > reference["robust_accuracy"]  # something was fooled
    timings = ("runtime_s", "attack_runtime_s", "session_s")
    state = tmp_path / "state"
    for got in dist_spawn.run_ranks(workers.autoattack_result, 2, str(state)):
        # Everything but the wall times: per-image outcomes, x_adv, per-attack accuracy, flags.
        assert_same(
            {k: v for k, v in got.items() if k not in timings},
            {k: v for k, v in reference.items() if k not in timings},
        )
        assert got["resumed_batches"] == 0
    # One record per (attack, batch), each written once by the rank that attacked it.
    records = sorted(p.name for p in state.glob("*.pt") if p.name != "clean.pt")
    attacked = [
        round(30 * reference["clean_accuracy"]),
        round(30 * reference["accuracy_after"]["apgd-ce"]),
    ]
    assert len(records) == sum(math.ceil(n / 8) for n in attacked)  # batches of 8 still robust
    assert not list(state.glob("*.tmp"))
    # A rerun (here in one process) replays every batch from the records of both ranks.
    with one_thread():
        resumed = workers.autoattack_result(0, 1, str(state))
    assert resumed["resumed_batches"] == len(records)
    for key in ("clean_correct", "robust_correct", "x_adv", "accuracy_after", "flags"):
        assert_same(resumed[key], reference[key], key)


def test_features_and_corruptions_two_processes_equal_one(tmp_path: Path):
    with one_thread():
        reference = workers.features_and_corruptions_once(tmp_path / "one")
    per_rank = dist_spawn.run_ranks(workers.features_and_corruptions, 2, str(tmp_path / "two"))
    for got in per_rank:
        assert_same(got, reference)
    # Each condition was generated and cached once, by one rank.
    assert len(list((tmp_path / "two").rglob("*.safetensors"))) == 4


def test_fab_and_gates_two_processes_equal_one():
    with one_thread():
        reference = workers.fab_and_gates_once()
    for got in dist_spawn.run_ranks(workers.fab_and_gates, 2):
        assert_same(got, reference)


def _without(record: Any, keys: frozenset[str]) -> Any:
    """``record`` without the keys (at any depth) that differ between runs: wall times, dates."""
    if isinstance(record, dict):
        return {k: _without(v, keys) for k, v in record.items() if k not in keys}
    if isinstance(record, list):
        return [_without(v, keys) for v in record]
    return record


@pytest.mark.slow
def test_stages_in_two_processes_write_once_and_equal_one_process(tmp_path: Path):
    from cslrobust.config import build_run_config
    from cslrobust.study.train import run_train

    conftest = importlib.util.spec_from_file_location(
        "study_conftest", Path(__file__).parents[1] / "study" / "conftest.py"
    )
    assert conftest is not None and conftest.loader is not None
    study = importlib.util.module_from_spec(conftest)
    conftest.loader.exec_module(study)
    archive = study.make_archive(tmp_path / "data.tar.gz", size=32)
    cfg = build_run_config(
        {
            "name": "tiny",
            "output_dir": str(tmp_path / "runs"),
            "data": {
                "name": "image_folder",
                "source": str(archive),
                "root": str(tmp_path),
                "val_per_class": 4,
            },
            "objective": {"name": "simclr"},
            "model": {"width": 8, "proj_hidden_dim": 32, "proj_dim": 16, "channels_last": False},
            "train": {"epochs": 1, "batch_size": 32, "tensorboard": False},
            "probe": {"epochs": 3, "batch_size": 32},
            "attack": {"eps_linf": [0, "2/255"], "steps": 2, "n_images": 40, "batch_size": 16},
            "geometry": {"n_images": 40, "sensitivity_images": 20, "sensitivity_eps": ["2/255"]},
        }
    )
    with one_thread():
        run_train(cfg, progress=False)
        for copy in ("one", "two"):
            shutil.copytree(cfg.run_dir, tmp_path / copy)
        reference = workers.stages_once(tmp_path / "one")
    per_rank = dist_spawn.run_ranks(workers.stage_records, 2, str(tmp_path / "two"))
    assert_same(per_rank[1], per_rank[0])  # rank 0's records, wall times included, on every rank
    varying = frozenset({"wall_seconds", "timings", "runtime_s", "created_at"})
    assert_same(_without(per_rank[0], varying), _without(reference, varying))
    written = {p.name for p in (tmp_path / "two").iterdir()}
    for name in ("probe.json", "attack.json", "evaluation.json", "analysis.json", "sweep_linf.png"):
        assert name in written
    assert not list((tmp_path / "two").rglob("*.tmp"))
