"""Executors and the `study work` / `study status` commands on real tiny studies.

Ray runs as a local cluster (started once for the module), Slurm through submitit's local executor,
the store on SQLite and on the real PostgreSQL server of the test session.
"""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cslrobust.cli.main import app
from cslrobust.errors import ConfigError
from cslrobust.study.executors import CellTask, cell_command, pending_tasks, run_cell_task
from cslrobust.study.runner import open_store, study_cells
from cslrobust.study.spec import load_study
from cslrobust.study.store import ResultsStore

SMALL = [
    "stages=[train,probe]",
    "methods={supervised: {objective: {name: supervised}}, simclr: {objective: {name: simclr}}}",
]


@pytest.fixture
def small_study(synthetic_study, tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("CSLROBUST_DATA", str(tmp_path / "cache"))
    return synthetic_study(epochs=1)


def _all_done(study: Path, overrides: list[str], storage: str | None = None) -> None:
    spec = load_study(study, overrides)
    cells = study_cells(spec)
    with open_store(spec, storage) as store:
        statuses = store.cell_statuses({c.cell_id: c.stages for c in cells})
        assert {s.state for s in statuses} == {"done"}, statuses
        keys = [
            (r["cell_id"], r["stage"], r["metric"], r["epoch"], r["attack"], r["eps"])
            for r in store.rows()
        ]
        assert keys and len(keys) == len(set(keys))
        assert store.leases() == []


def test_cluster_settings_are_validated_and_change_no_cell(small_study: Path):
    plain = study_cells(load_study(small_study, SMALL))
    clustered = study_cells(
        load_study(
            small_study,
            [
                *SMALL,
                "cluster={gpus_per_cell: 1, processes_per_cell: 2, lease_s: 60, heartbeat_s: 20, "
                "slurm: {partition: gpu, time_limit_min: 30, max_concurrent: 3}}",
            ],
        )
    )
    assert [(c.cell_id, c.stages) for c in plain] == [(c.cell_id, c.stages) for c in clustered]
    with pytest.raises(ConfigError, match="cluster.slurm.partitions"):
        load_study(small_study, ["cluster.slurm.partitions=gpu"])
    with pytest.raises(ConfigError, match="at most half of cluster.lease_s"):
        load_study(small_study, ["cluster.lease_s=10", "cluster.heartbeat_s=6"])


@pytest.mark.parametrize(
    "preset",
    sorted((Path(__file__).resolve().parents[2] / "presets").glob("*.yaml")),
    ids=lambda p: p.stem,
)
def test_presets_keep_their_cell_ids_and_stage_keys_with_a_cluster_section(preset: Path):
    spec = load_study(preset)
    with_cluster = load_study(preset, ["cluster.gpus_per_cell=2", "cluster.slurm.partition=p"])
    for (_, sub), (_, other) in zip(
        spec.budget_studies(), with_cluster.budget_studies(), strict=True
    ):
        assert [(c.cell_id, c.stages) for c in study_cells(sub)] == [
            (c.cell_id, c.stages) for c in study_cells(other)
        ]


def test_a_multi_process_cell_runs_under_torchrun(tmp_path: Path):
    task = CellTask(
        str(tmp_path / "s.yaml"),
        ("seeds=[0]",),
        "postgresql://u@h/db",
        "abcdef0123456789",
        "simclr-s0-abcdef01",
        processes=4,
    )
    assert cell_command(task) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "cslrobust",
        "study",
        "work",
        str(tmp_path / "s.yaml"),
        "--cell",
        "abcdef0123456789",
        "--no-progress",
        "--storage",
        "postgresql://u@h/db",
        "--set",
        "seeds=[0]",
    ]


def test_pending_tasks_leave_out_done_and_leased_cells(small_study: Path, tmp_path: Path):
    spec = load_study(small_study, SMALL)
    cells = study_cells(spec)
    tasks = pending_tasks(small_study, SMALL, spec, None)
    assert [t.cell_id for t in tasks] == [c.cell_id for c in cells]
    assert ("CSLROBUST_DATA", str(tmp_path / "cache")) in tasks[0].env
    with open_store(spec) as store:
        for key in cells[0].stages.values():
            store.commit_stage(cells[0].cell_id, key, [], "sha")
        store.claim(cells[1].cell_id, cells[1].stages["train"], "elsewhere", 600)
    assert pending_tasks(small_study, SMALL, spec, None) == []


def test_two_study_work_processes_on_postgres_and_the_report_equals_sqlites(
    small_study: Path, postgres_url: str, tmp_path: Path
):
    cmd = [sys.executable, "-m", "cslrobust", "study", "work", str(small_study), "--no-progress"]
    cmd += ["--storage", postgres_url, *[a for o in SMALL for a in ("--set", o)]]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("worker finished" in out for out in outputs)
    _all_done(small_study, SMALL, postgres_url)

    # The same committed rows in a SQLite store -> byte-identical report.md and results.csv.
    spec = load_study(small_study, SMALL)
    cells = study_cells(spec)
    sqlite_db = tmp_path / "copy" / "results.db"
    with open_store(spec, postgres_url) as source, ResultsStore(sqlite_db) as copy:
        _copy_rows(source, copy, cells)
    folders = []
    for name, location in (("pg", postgres_url), ("sqlite", f"sqlite:///{sqlite_db}")):
        from cslrobust.study.report import write_report

        folder = tmp_path / f"report-{name}"
        with ResultsStore(location) as store:
            write_report("Study t", cells, store, folder)
        folders.append(folder)
    pg, lite = folders
    assert (pg / "report.md").read_text() == (lite / "report.md").read_text()
    # Row order is commit order (two concurrent PostgreSQL commits may interleave their ids).
    key = lambda r: tuple(r.values())  # noqa: E731
    assert sorted(_csv_without_times(pg), key=key) == sorted(_csv_without_times(lite), key=key)


def _copy_rows(source: ResultsStore, target: ResultsStore, cells) -> None:
    """Commit the source's stages into the target in the source's row order (ids follow it)."""
    skip = {"id", "cell_id", "stage", "git_sha", "created_at", "method", "seed", "study"}
    rows = source.rows()
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cell_id"], r["stage"]), []).append(
            {k: v for k, v in r.items() if k not in skip}
        )
    for cell in cells:
        target.register_cell(cell.cell_id, "t", cell.method, cell.config.seed, {})
        for key in cell.stages.values():
            groups.setdefault((cell.cell_id, key), [])
    for (cell_id, key), mine in groups.items():
        seconds, _ = source.stage_seconds({cell_id: [key]})
        target.commit_stage(cell_id, key, mine, rows[0]["git_sha"], seconds)


def _csv_without_times(folder: Path) -> list[dict]:
    with (folder / "results.csv").open() as handle:
        return [{k: v for k, v in r.items() if k != "created_at"} for r in csv.DictReader(handle)]


def test_status_shows_leases_and_releases_stale_ones_only(small_study: Path):
    spec = load_study(small_study, SMALL)
    cells = study_cells(spec)
    with open_store(spec) as store:
        store.claim(cells[0].cell_id, cells[0].stages["train"], "gone-worker", 0.01)
        store.claim(cells[1].cell_id, cells[1].stages["train"], "live-worker", 600)
    args = ["study", "status", str(small_study), *[a for o in SMALL for a in ("--set", o)]]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    lines = [line for line in out.stdout.splitlines() if line.startswith("lease: ")]
    assert len(lines) == 2
    assert "train by gone-worker (host " in lines[0] and lines[0].endswith("EXPIRED")
    assert "last heartbeat" in lines[1] and "expires in" in lines[1]
    out = CliRunner().invoke(app, [*args, "--release", cells[1].config.name])
    assert "no lease released (live leases need --force)" in out.stdout
    out = CliRunner().invoke(app, [*args, "--release-stale"])
    assert f"released the lease on train of cell {cells[0].cell_id[:8]}" in out.stdout
    out = CliRunner().invoke(app, [*args, "--release", f"{cells[1].cell_id[:8]}:train", "--force"])
    assert "held by live-worker" in out.stdout
    with open_store(spec) as store:
        assert store.leases() == []


def test_study_work_refuses_an_unknown_cell(small_study: Path):
    from tests.conftest import one_line_error

    line = one_line_error(["study", "work", str(small_study), "--cell", "nope"])
    assert line == "error: no cell of study 'synthetic' matches nope"


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the cluster extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_runs_a_study_to_completion(small_study: Path, local_ray):
    runner = CliRunner()
    args = ["study", "run", str(small_study), "--executor", "ray"]
    out = runner.invoke(app, [*args, *[a for o in SMALL for a in ("--set", o)]])
    assert out.exit_code == 0, out.output
    assert "2 cell(s) to run on ray" in out.stdout and "report:" in out.stdout
    _all_done(small_study, SMALL)
    out = runner.invoke(app, [*args, *[a for o in SMALL for a in ("--set", o)]])
    assert "0 cell(s) to run on ray" in out.stdout  # nothing left: nothing submitted


def test_slurm_executor_through_submitit_local_fills_only_the_gaps(
    small_study: Path, postgres_url: str
):
    pytest.importorskip("submitit", reason="the cluster extra is not installed")
    from cslrobust.study.executors import run_slurm

    spec = load_study(small_study, SMALL)
    cells = study_cells(spec)
    run_cell_task(pending_tasks(small_study, SMALL, spec, postgres_url)[0])  # one cell done before
    tasks = pending_tasks(small_study, SMALL, spec, postgres_url)
    assert [t.cell_id for t in tasks] == [cells[1].cell_id]
    messages: list[str] = []
    ids = run_slurm(tasks, spec, cluster="local", echo=messages.append)
    assert len(ids) == 1 and any("done" in m for m in messages)
    _all_done(small_study, SMALL, postgres_url)
    assert (spec.output_dir / "slurm").is_dir()


def test_a_two_process_cell_runs_under_torchrun_with_gloo(small_study: Path):
    spec = load_study(small_study, [*SMALL, "cluster.processes_per_cell=2"])
    (task, *_) = pending_tasks(small_study, [*SMALL, "cluster.processes_per_cell=2"], spec, None)
    assert task.processes == 2
    run_cell_task(task)
    with open_store(spec) as store:
        assert store.completed_stages(task.cell_id) == set(study_cells(spec)[0].stages.values())


def test_a_missing_cluster_extra_and_an_unknown_executor_are_one_line(
    small_study: Path, monkeypatch
):
    from tests.conftest import one_line_error

    line = one_line_error(["study", "run", str(small_study), "--executor", "kubernetes"])
    assert line == "error: unknown executor 'kubernetes'; expected local, ray or slurm"
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "submitit", None)
    for executor in ("ray", "slurm"):
        line = one_line_error(
            ["study", "run", str(small_study), "--executor", executor, "--set", SMALL[0]]
        )
        assert line == (
            f"error: executor {executor!r} needs the cluster extra: pip install 'cslrobust[cluster]'"
        )
