"""The trajectory stage: which checkpoints, which cells, its rows for every method, the report's
frontier, and resume (records of the same run, checkpoint and settings are read back)."""

from pathlib import Path

import pytest

from cslrobust.study import trajectory
from cslrobust.study.run_folder import ATTACK_FILE, PROBE_FILE, tagged
from cslrobust.study.runner import open_store, run_study, study_cells
from cslrobust.study.spec import expand_study, load_study
from cslrobust.study.trajectory import (
    checkpoint_tag,
    run_trajectory,
    trajectory_epochs,
    trajectory_rows,
)

TWO_METHODS = (
    "methods={supervised: {objective: {name: supervised}}, simclr: {objective: {name: simclr}}}"
)
FAST = ["stages=[train,probe,attack]", "base.attack.attacks=[pgd]", TWO_METHODS]


@pytest.mark.parametrize(
    ("final", "every", "expected"),
    [(12, 3, [3, 6, 9, 12]), (10, 3, [3, 6, 9, 10]), (3, 1, [1, 2, 3]), (5, 0, [5]), (2, 5, [2])],
)
def test_trajectory_epochs_are_the_multiples_of_the_step_and_the_final_epoch(
    final: int, every: int, expected: list[int]
):
    assert trajectory_epochs(final, every) == expected


@pytest.mark.parametrize(
    ("overrides", "keep_every", "with_stage"),
    [
        ([], {"supervised": 0, "simclr": 0}, set()),
        (["trajectory_every=3"], {"supervised": 3, "simclr": 3}, {"supervised", "simclr"}),
        (["match_clean_accuracy=true"], {"supervised": 1, "simclr": 0}, {"supervised"}),
        (
            ["trajectory_every=3", "match_clean_accuracy=true"],  # the finer step wins
            {"supervised": 1, "simclr": 3},
            {"supervised", "simclr"},
        ),
    ],
)
def test_trajectory_settings_set_keep_every_and_the_stage_per_cell(
    synthetic_study, overrides: list[str], keep_every: dict[str, int], with_stage: set[str]
):
    spec = load_study(synthetic_study(), [*overrides, TWO_METHODS])
    assert {c.name.split("-s")[0]: c.train.keep_every for c in expand_study(spec)} == keep_every
    assert {c.method for c in study_cells(spec) if "trajectory" in c.stages} == with_stage


def _robust(rows: list[dict]) -> list[tuple]:
    """(epoch, eps, value) of the trajectory's robust-accuracy rows."""
    return sorted(
        (r["epoch"], r["eps"], r["value"])
        for r in rows
        if r["metric"] == "trajectory/robust_accuracy"
    )


def test_trajectory_rows_for_every_method_report_and_resume(
    synthetic_study, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    spec = load_study(synthetic_study(epochs=2), [*FAST, "trajectory_every=1"])
    run_study(spec, progress=False, echo=lambda _: None)
    from cslrobust.study.report import write_report

    cells = study_cells(spec)
    with open_store(spec) as store:
        rows = store.rows()
        write_report("t", cells, store, spec.output_dir)
    # Every method has both checkpoints probed and attacked, at every eps.
    for method in ("supervised", "simclr"):
        mine = [r for r in rows if r["method"] == method]
        epochs = {r["epoch"] for r in mine if r["metric"] == "trajectory/probe/val_accuracy"}
        assert epochs == {1, 2}
        robust = {
            (r["epoch"], r["eps"]) for r in mine if r["metric"] == "trajectory/robust_accuracy"
        }
        assert robust == {(e, eps) for e in (1, 2) for eps in (0.0, 2 / 255)}
        # The final checkpoint of the trajectory is the model the attack stage attacked.
        final = {
            r["eps"]: r["value"]
            for r in mine
            if r["metric"] == "trajectory/robust_accuracy" and r["epoch"] == 2
        }
        assert final == {r["eps"]: r["value"] for r in mine if r["metric"] == "robust_accuracy"}
    report = (spec.output_dir / "report.md").read_text()
    assert (spec.output_dir / "frontier_pgd.png").is_file()
    assert "![Accuracy frontier along training (PGD)](frontier_pgd.png)" in report
    assert "Robustness at matched clean accuracy (PGD)" in report
    assert any(line.startswith("| simclr | 2/255 |") for line in report.splitlines())

    # Resume: delete the last checkpoint's records of one cell; only that checkpoint is recomputed.
    cell = next(c for c in cells if c.method == "simclr")
    run_dir = cell.config.run_dir
    for name in (PROBE_FILE, ATTACK_FILE):
        (run_dir / tagged(name, checkpoint_tag(2))).unlink()
    probes: list[int | None] = []
    attacks: list[str] = []
    real_probe, real_attack = trajectory.run_probe, trajectory.run_attack

    def counted_probe(*args, **kwargs):
        probes.append(kwargs["epoch"])
        return real_probe(*args, **kwargs)

    def counted_attack(*args, **kwargs):
        attacks.append(kwargs["tag"])
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(trajectory, "run_probe", counted_probe)
    monkeypatch.setattr(trajectory, "run_attack", counted_attack)
    again = trajectory_rows(run_trajectory(run_dir, config=cell.config, progress=False))
    assert probes == [2] and attacks == ["-epoch0002"]
    assert _robust(again) == _robust([r for r in rows if r["cell_id"] == cell.cell_id])

    # A lost attack record re-runs that attack only; other attack settings re-run every attack.
    probes.clear(), attacks.clear()
    (run_dir / tagged(ATTACK_FILE, checkpoint_tag(1))).unlink()
    run_trajectory(run_dir, config=cell.config, progress=False)
    assert probes == [] and attacks == ["-epoch0001"]
    attacks.clear()
    steps = cell.config.attack.model_copy(update={"steps": 1})
    run_trajectory(run_dir, config=cell.config.model_copy(update={"attack": steps}), progress=False)
    assert probes == [] and attacks == ["-epoch0001", "-epoch0002"]
