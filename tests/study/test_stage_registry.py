"""The stage registry drives the runner: a stage added in a test runs, keys and skips like the others."""

import sqlite3
from pathlib import Path

import pytest

import cslrobust.study  # noqa: F401  (registers the built-in stages)
from cslrobust.config import RunConfig, canonical_hash
from cslrobust.errors import ConfigError
from cslrobust.study.run_folder import ATTACK_FILE, load_probed_run
from cslrobust.study.runner import run_study, study_cells
from cslrobust.study.spec import load_study
from cslrobust.study.stages import STAGES, Stage, stage_keys


def test_keys_chain_the_digests_of_the_stages_a_stage_needs():
    cfg = RunConfig()
    keys = stage_keys(cfg, ["attack", "probe", "train"])
    assert list(keys) == ["train", "probe", "attack"]  # pipeline order, whatever the request order
    probe_inputs = {"train": cfg.run_id(), "probe": cfg.probe.model_dump(mode="json")}
    assert keys["train"] == f"train:{cfg.run_id()}"
    # version 1 keys hash the inputs alone; a later version of the stage's code enters the key
    assert STAGES.get("probe").version == 2
    assert keys["probe"] == f"probe:{canonical_hash({**probe_inputs, 'version': 2})}"
    steps = stage_keys(
        cfg.model_copy(update={"attack": cfg.attack.model_copy(update={"steps": 3})})
    )
    assert steps["attack"] != stage_keys(cfg)["attack"] and steps["probe"] == keys["probe"]


def test_unknown_stage_in_a_study_is_one_line(synthetic_study):
    with pytest.raises(ConfigError) as info:
        load_study(synthetic_study(epochs=1), ["stages=[train, tpyo]"])
    assert "stages=" in str(info.value) and "unknown stage 'tpyo'" in str(info.value)


def _rows(db: Path, metric: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT cell_id, stage, value FROM results WHERE metric = ?", (metric,)
        ).fetchall()


def test_a_stage_registered_in_a_test_runs_through_the_runner(
    synthetic_study, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    calls: list[tuple[str, int]] = []

    def run(cfg: RunConfig, progress: bool) -> list[dict]:
        del progress
        probed = load_probed_run(cfg.run_dir, config=cfg)
        calls.append((cfg.name, cfg.attack.steps))
        weight_norm = float(probed.head.weight.detach().norm())
        return [{"metric": "toy/probe_weight_norm", "value": weight_norm, "epoch": 1}]

    toy = Stage(
        name="toy",
        order=35,
        run=run,
        needs=("probe",),
        key_inputs=lambda cfg: {"steps": cfg.attack.steps},
    )
    monkeypatch.setitem(STAGES._entries, "toy", toy)
    study = synthetic_study(epochs=1)
    spec = load_study(study, ["stages=[train, probe, attack, toy]"])
    messages: list[str] = []
    run_study(spec, progress=False, echo=messages.append)
    assert sorted(steps for _, steps in calls) == [2, 2, 2]
    assert all(list(c.stages) == ["train", "probe", "attack", "toy"] for c in study_cells(spec))
    db = spec.output_dir / "results.db"
    rows = _rows(db, "toy/probe_weight_norm")
    assert len(rows) == 3 and all(
        stage.startswith("toy:") and value > 0 for _, stage, value in rows
    )

    # Done stages are skipped; a change of the toy stage's inputs re-runs it and the attack only,
    # and the attack stage runs with the study's new settings (not the ones saved at training).
    calls.clear()
    spec2 = load_study(study, ["stages=[train, probe, attack, toy]", "base.attack.steps=3"])
    messages.clear()
    run_study(spec2, progress=False, echo=messages.append)
    assert sorted(steps for _, steps in calls) == [3, 3, 3]
    assert sum("toy done" in m for m in messages) == 3
    assert not any("train done" in m or "probe done" in m for m in messages)
    import json

    for cell in study_cells(spec2):
        record = json.loads((cell.config.run_dir / ATTACK_FILE).read_text())
        assert {r["steps"] for r in record["results"] if r["attack"] == "pgd"} == {3}


@pytest.mark.parametrize("name", STAGES.names())
def test_every_stage_names_report_sections_that_exist(name):
    from cslrobust.study.report.sections import SECTIONS

    stage = STAGES.get(name)
    assert stage.sections, f"stage {name!r} names no report section"
    assert all(section in SECTIONS for section in stage.sections), stage.sections
    assert all(need in STAGES and STAGES.get(need).order < stage.order for need in stage.needs)


def test_trained_runs_accept_overrides_of_the_stages_settings_only(monkeypatch):
    from cslrobust.study.stages import evaluation_sections

    assert evaluation_sections() == (
        "device",
        "attack",
        "evaluation",
        "gates",
        "geometry",
        "probe",
        "protocols",
    )
    toy = Stage(name="toy", order=99, run=lambda cfg, progress: [], settings=("toy_settings",))
    monkeypatch.setitem(STAGES._entries, "toy", toy)
    assert "toy_settings" in evaluation_sections()  # a new stage's section needs no other edit


# Stage keys of the default config, computed before `attack.precision` existed (issue 13 item 5):
# a setting added later must leave every key of existing results as it was while at its default.
DEFAULT_STAGE_KEYS = {
    "train": "train:3d2fab66a8de",
    "probe": "probe:b214c5f021b0",
    "attack": "attack:8adec119faff",
    "gates": "gates:3297cc26699a",
    "analyze": "analyze:63c2e9ca450c",
    "evaluate": "evaluate:a80e00001677",
    "trajectory": "trajectory:a1e09871efb4",
}


def test_attack_precision_keys_only_the_stages_that_attack():
    # stages registered later (protocols) have keys of their own; these must stay as they were
    names = list(DEFAULT_STAGE_KEYS)
    assert stage_keys(RunConfig(), names) == DEFAULT_STAGE_KEYS
    assert stage_keys(RunConfig(attack={"precision": "fp32"}), names) == DEFAULT_STAGE_KEYS
    bf16 = stage_keys(RunConfig(attack={"precision": "bf16"}), names)
    changed = {name for name, key in bf16.items() if key != DEFAULT_STAGE_KEYS[name]}
    # analyze stays fp32 (its sensitivity PGD attacks features, not the probe's logits)
    assert changed == {"attack", "gates", "evaluate", "trajectory"}
    assert RunConfig(attack={"precision": "bf16"}).run_id() == RunConfig().run_id()
