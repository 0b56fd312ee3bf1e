"""The gates stage runs by default and records every gate of every cell."""

import json
import sqlite3
from pathlib import Path

from cslrobust.study.run_folder import ATTACK_FILE, GATES_FILE
from cslrobust.study.runner import run_study, study_cells
from cslrobust.study.spec import load_study


def test_gates_stage_records_every_gate_of_every_cell(synthetic_study, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    spec = load_study(
        synthetic_study(epochs=1),
        ["stages=[train, probe, attack, gates]", "base.gates.n_images=16", "seeds=[0]"],
    )
    assert "gates" in load_study(synthetic_study(epochs=1)).stages  # on by default
    run_study(spec, progress=False, echo=lambda _: None)
    with sqlite3.connect(spec.output_dir / "results.db") as conn:
        names = {
            (cell, metric)
            for cell, metric in conn.execute(
                "SELECT cell_id, metric FROM results WHERE metric LIKE 'gate/%'"
            )
        }
    for cell in study_cells(spec):
        record = json.loads((cell.config.run_dir / GATES_FILE).read_text())
        assert record["n_images"] == 16
        gates = {g["name"] for g in record["gates"]}
        for prefix in ("eps_zero_path", "large_eps", "input_gradients", "pgd_convergence"):
            assert any(name.startswith(prefix) for name in gates), (prefix, gates)
        assert {f"gate/{name}" for name in gates} == {m for c, m in names if c == cell.cell_id}
        # the whole attack path at eps = 0 returns its input exactly on a correct model
        assert all(g["passed"] for g in record["gates"] if g["name"].startswith("eps_zero"))


def test_bf16_study_attacks_in_bf16_and_passes_the_eps_zero_gates(
    synthetic_study, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    spec = load_study(
        synthetic_study(epochs=1),
        [
            "stages=[train, probe, attack, gates]",
            "base.gates.n_images=16",
            "base.train.precision=bf16",
            "base.attack.precision=bf16",
        ],
    )
    run_study(spec, progress=False, echo=lambda _: None)
    for cell in study_cells(spec):
        attack = json.loads((cell.config.run_dir / ATTACK_FILE).read_text())
        assert attack["attack_config"]["precision"] == "bf16"
        for row in attack["results"]:
            assert row["robust_accuracy"] <= row["clean_accuracy"]
            if row["eps"] == 0.0:  # eps = 0 equals clean accuracy exactly in bf16 too
                assert row["robust_accuracy"] == row["clean_accuracy"]
        gates = json.loads((cell.config.run_dir / GATES_FILE).read_text())["gates"]
        zero = [g for g in gates if g["name"].startswith("eps_zero")]
        assert zero and all(g["passed"] for g in zero), zero
