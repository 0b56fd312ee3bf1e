"""The study runner: only missing stages run; SIGKILL at any moment loses and duplicates nothing."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cslrobust.study.runner import open_store, run_study, study_cells
from cslrobust.study.spec import load_study


def _result_keys(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return sorted(
            conn.execute(
                "SELECT cell_id, stage, metric, attack, norm, eps, corruption, severity, epoch, value "
                "FROM results WHERE metric NOT IN ('train_seconds', 'train/images_per_s', "
                "'train/epoch_seconds')"  # wall-clock numbers differ between runs
            ).fetchall()
        )


def test_runs_missing_cells_only_and_new_seed_adds_cells(
    synthetic_study, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    study = synthetic_study(epochs=1)
    spec = load_study(study)
    messages: list[str] = []
    run_study(spec, progress=False, echo=messages.append)
    assert sum("train done" in m for m in messages) == 3
    messages.clear()
    run_study(spec, progress=False, echo=messages.append)
    assert sum("done, skipped" in m for m in messages) == 3
    # Add a seed: only the three new cells train.
    spec2 = load_study(study, ["seeds=[0,1]"])
    messages.clear()
    run_study(spec2, progress=False, echo=messages.append)
    assert sum("train done" in m for m in messages) == 3
    assert sum("done, skipped" in m for m in messages) == 3
    # Changing only the attack settings re-runs only the attack stage.
    spec3 = load_study(study, ["seeds=[0,1]", "base.attack.steps=3"])
    messages.clear()
    run_study(spec3, progress=False, echo=messages.append)
    assert sum("attack done" in m for m in messages) == 6
    assert not any("train done" in m or "probe done" in m for m in messages)
    with open_store(spec3) as store:
        statuses = store.cell_statuses({c.cell_id: c.stages for c in study_cells(spec3)})
    assert {s.state for s in statuses} == {"done"}


@pytest.mark.slow
def test_sigkill_then_rerun_completes_without_duplicates_or_losses(synthetic_study, tmp_path: Path):
    study = synthetic_study(epochs=3)
    env = {**os.environ, "CSLROBUST_DATA": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cslrobust", "study", "run", str(study), "--no-progress"]
    db = tmp_path / "out" / "results.db"

    # Reference: an uninterrupted run of the same study in another folder.
    ref_study = tmp_path / "ref.yaml"
    ref_study.write_text(study.read_text().replace("output_dir: out", "output_dir: ref"))
    assert (
        subprocess.run(
            [*cmd[:-2], str(ref_study), "--no-progress"], env=env, capture_output=True
        ).returncode
        == 0
    )
    reference = _result_keys(tmp_path / "ref" / "results.db")

    kills = 0
    for wait_for_rows in (
        1,
        40,
    ):  # kill once early (in training) and once later (after some stages)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if db.is_file():
                try:
                    with sqlite3.connect(db, timeout=1) as conn:
                        n = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0
                if n >= wait_for_rows:
                    break
            time.sleep(0.2)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
    assert kills >= 1, "the runner finished before it could be killed"
    lock = tmp_path / "out" / ".study.lock"
    assert lock.is_file(), "a SIGKILLed runner leaves its study lock"

    status = subprocess.run(
        [sys.executable, "-m", "cslrobust", "study", "status", str(study)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0
    assert "interrupted" in status.stdout or "pending" in status.stdout
    assert "stale lock: study 'synthetic' by pid" in status.stdout

    final = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"took over the stale study lock {lock}" in final.stdout  # the killed runner's lock
    assert not lock.exists()
    rows = _result_keys(db)
    keys = [r[:-1] for r in rows]
    assert len(keys) == len(set(keys)), "duplicated rows"
    # Same rows and values as the uninterrupted run (training resumes exactly; cell ids are config hashes).
    assert rows == reference


EVAL_OVERRIDES = [
    "stages=[train,probe,evaluate]",
    "methods={supervised: {objective: {name: supervised}}, simclr: {objective: {name: simclr}}}",
    "base.evaluation={n_images: 24, batch_size: 24, eps_linf: [1/255, 4/255], eps_l2: [0.1], steps: 2, "
    "convergence_restarts: 2, autoattack_version: custom, autoattack_attacks: [apgd-ce], fab_images: 8, "
    "fab_n_iter: 5, corruptions: [gaussian_noise, fog], severities: [1, 5], corruption_images: 24}",
]


@pytest.mark.slow
def test_evaluate_stage_feeds_gates_corruptions_and_autoattack_into_the_report(
    synthetic_study, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    study = synthetic_study(epochs=1, size=32)
    spec = load_study(study, EVAL_OVERRIDES)
    run_study(spec, progress=False, echo=lambda _: None)
    from cslrobust.study.report import write_report

    with open_store(spec) as store:
        rows = store.rows()
        write_report("t", study_cells(spec), store, spec.output_dir)
    metrics = {r["metric"] for r in rows}
    assert "corruption_accuracy" in metrics and "eval/eps50" in metrics
    assert any(m.startswith("gate/") for m in metrics)
    assert any(r["attack"] == "autoattack" for r in rows)
    report = (spec.output_dir / "report.md").read_text()
    assert "Common corruptions" in report and "AutoAttack" in report
    assert "GATE FAILED" in report or "All sanity gates passed" in report
    # eps = 0 equals clean exactly in the evaluation suite too.
    for r in rows:
        if r["metric"] == "eval/robust_accuracy" and r["eps"] == 0.0:
            clean = [
                c
                for c in rows
                if c["metric"] == "eval/clean_accuracy"
                and c["cell_id"] == r["cell_id"]
                and c["attack"] == r["attack"]
                and c["norm"] == r["norm"]
                and c["eps"] == 0.0
            ]
            assert clean and clean[0]["value"] == r["value"]


def test_matched_clean_accuracy_compares_with_the_closest_supervised_epoch(
    synthetic_study, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    study = synthetic_study(epochs=3)
    spec = load_study(
        study,
        [
            "match_clean_accuracy=true",
            "stages=[train,probe,attack]",
            "methods={supervised: {objective: {name: supervised}}, simclr: {objective: {name: simclr}}}",
        ],
    )
    run_study(spec, progress=False, echo=lambda _: None)
    from cslrobust.study.report import write_report

    with open_store(spec) as store:
        rows = store.rows()
        write_report("t", study_cells(spec), store, spec.output_dir)
    sl_val = {
        int(r["epoch"]): r["value"] for r in rows if r["metric"] == "trajectory/probe/val_accuracy"
    }
    assert sorted(sl_val) == [1, 2, 3]  # every epoch of the supervised reference kept and probed
    simclr_val = next(
        r["value"] for r in rows if r["method"] == "simclr" and r["metric"] == "probe/val_accuracy"
    )
    expected = min(sl_val, key=lambda e: (abs(sl_val[e] - simclr_val), e))
    report = (spec.output_dir / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("| simclr | 0 |"))
    assert line.split(" | ")[3] == str(expected)
    # The last supervised epoch attacked in the trajectory stage equals the main attack stage.
    main = {
        r["eps"]: r["value"]
        for r in rows
        if r["method"] == "supervised" and r["metric"] == "robust_accuracy"
    }
    last = {
        r["eps"]: r["value"]
        for r in rows
        if r["metric"] == "trajectory/robust_accuracy" and r["epoch"] == 3
    }
    assert main == last
