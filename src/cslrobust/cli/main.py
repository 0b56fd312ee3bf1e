"""Command-line interface: parse -> validated config -> call a stage. No logic beyond that.

User errors (bad config values, missing files, checksum mismatches, ...) print one line and exit 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer._click.exceptions import ClickException  # typer >= 0.24 vendors click here
from typer.core import TyperGroup

from cslrobust.errors import CslRobustError

if TYPE_CHECKING:  # the commands import their modules lazily (fast --help)
    from cslrobust.config import RunConfig
    from cslrobust.study.runner import Cell
    from cslrobust.study.spec import StudySpec


class _OneLineErrors(TyperGroup):
    """The command group whose usage errors (bad flag, missing argument, unknown command) are one line.

    Click prints usage errors as a usage block plus a boxed message; here they print as
    ``error: <message> (see 'cslrobust train --help')`` on stderr with exit code 2, like every
    other user error of the tool.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # noqa: D102
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as err:
            message = " ".join(err.format_message().split())
            context = getattr(err, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            typer.echo(f"error: {message}{hint}", err=True)
            if not standalone_mode:
                raise
            sys.exit(2)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            if not standalone_mode:
                raise
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Adversarial susceptibility of contrastive vs supervised encoders (and its remedy).",
)
study_app = typer.Typer(
    no_args_is_help=True, help="Run a study file: every method and seed, then a report."
)
app.add_typer(study_app, name="study")

T = TypeVar("T")


def _guard(call: Callable[[], T]) -> T:
    """Run ``call``; turn user errors into one line on stderr and exit code 2.

    Under torchrun every process runs the command; the process group (started by the stages on
    first use) is shut down at the end.
    """
    from cslrobust.distributed import shutdown_distributed

    try:
        return call()
    except CslRobustError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(
            "interrupted; run the same command again (with --resume for train) to continue",
            err=True,
        )
        raise typer.Exit(130) from None
    finally:
        shutdown_distributed()


def _echo(message: str = "", **kwargs: Any) -> None:
    """``typer.echo`` on rank 0 only (every rank of a torchrun launch runs the same command)."""
    from cslrobust.distributed import is_main

    if is_main():
        typer.echo(message, **kwargs)


def _list(text: str | None) -> list[str] | None:
    """``"8/255, 4/255"`` -> ``["8/255", "4/255"]`` (values are validated by the config)."""
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _settings(run_dir: Path, overrides: list[str]) -> RunConfig:
    """A run folder's settings (see ``run_settings``), once the folder is known to be writable.

    The evaluation commands write their records into the run folder; checking it first turns a
    read-only folder into one line before any model runs.
    """
    from cslrobust.records import ensure_writable_dir
    from cslrobust.study.run_folder import run_settings

    config = run_settings(run_dir, overrides)
    ensure_writable_dir(run_dir, "run folder")
    return config


def _overrides(set_: list[str] | None, shorthands: dict[str, Any]) -> list[str]:
    """``--set`` overrides followed by those of the shorthand flags given (which win).

    Every command has one override mechanism: ``--set key.sub=value``. A shorthand flag is the
    override of one key; lists are written as JSON, which the override parser reads as YAML.
    """
    import json

    extra = [
        f"{key}={json.dumps(value) if isinstance(value, list) else value}"
        for key, value in shorthands.items()
        if value is not None
    ]
    return [*(set_ or []), *extra]


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: key.sub=value (repeatable)."),
]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show progress bars.")
]
DeviceOption = Annotated[str | None, typer.Option(help="Torch device, e.g. cpu or cuda:0.")]


@app.command("train")
def train_command(
    config: Annotated[Path | None, typer.Argument(help="YAML run config (optional).")] = None,
    set_: SetOption = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under output dir).")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Folder holding run folders.")] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="A registered objective: supervised, simclr, supcon, simclr_fnr, debiased, byol, simsiam, barlow, moco."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed.")] = None,
    device: DeviceOption = None,
    data_root: Annotated[
        Path | None,
        typer.Option(help="Data cache folder (default $CSLROBUST_DATA or ~/.cache/cslrobust)."),
    ] = None,
    data_source: Annotated[
        Path | None,
        typer.Option(help="ImageFolder folder or .tar(.gz) to read instead of downloading."),
    ] = None,
    train_per_class: Annotated[
        int | None, typer.Option(help="Stratified training subset: images per class.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the run's latest checkpoint.")
    ] = False,
    progress: ProgressOption = True,
) -> None:
    """Train one encoder; writes checkpoints, config.json and train.json into the run folder."""
    from cslrobust.config import load_run_config
    from cslrobust.study.train import run_train

    overrides = _overrides(
        set_,
        {
            "name": name,
            "output_dir": output_dir,
            "objective.name": objective,
            "train.epochs": epochs,
            "seed": seed,
            "device": device,
            "data.root": data_root,
            "data.source": data_source,
            "data.train_per_class": train_per_class,
        },
    )

    def call() -> None:
        cfg = load_run_config(config, overrides)
        _echo(f"run {cfg.name} (id {cfg.run_id()}) -> {cfg.run_dir}")
        summary = run_train(cfg, resume=resume, progress=progress)
        last = summary["history"][-1] if summary["history"] else {}
        _echo(
            f"trained {summary['epochs']} epochs in {summary['wall_seconds']:.0f} s; "
            f"final loss {last.get('loss', float('nan')):.4f}; checkpoint {summary['checkpoint']}"
        )

    _guard(call)


@app.command("probe")
def probe_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder made by 'train'.")],
    epoch: Annotated[
        int | None, typer.Option(help="Probe this epoch's checkpoint (default: latest).")
    ] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    progress: ProgressOption = True,
) -> None:
    """Fit a linear probe on frozen features; writes probe.json and probe.safetensors."""
    from cslrobust.study.probe import run_probe

    def call() -> None:
        config = _settings(run_dir, _overrides(set_, {"device": device}))
        record = run_probe(run_dir, epoch=epoch, config=config, progress=progress)
        line = (
            f"probe (epoch {record['checkpoint_epoch']}): val {record['val_accuracy']:.4f} "
            f"(best probe epoch {record['best_epoch']}), test {record['test_accuracy']:.4f}"
        )
        if "own_head_test_accuracy" in record:
            line += f", own head test {record['own_head_test_accuracy']:.4f}"
        _echo(line)

    _guard(call)


@app.command("attack")
def attack_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a probe.")],
    attack: Annotated[str | None, typer.Option(help="Comma-separated attacks: fgsm,pgd.")] = None,
    eps: Annotated[
        str | None,
        typer.Option(help="L-inf radii as fractions or k/255, e.g. 0.5/255,1/255,8/255."),
    ] = None,
    eps_l2: Annotated[
        str | None, typer.Option(help="L2 radii in [0,1] pixel units, e.g. 0.1,0.25.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="PGD steps.")] = None,
    restarts: Annotated[int | None, typer.Option(help="PGD restarts.")] = None,
    n_images: Annotated[
        int | None, typer.Option(help="Test images attacked (fixed subset).")
    ] = None,
    head: Annotated[
        str | None, typer.Option(help="probe (default) or own (supervised model's classifier).")
    ] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    progress: ProgressOption = True,
) -> None:
    """Attack normalise -> backbone -> head in eval mode; writes attack.json."""
    from cslrobust.study.attack import run_attack

    def call() -> None:
        overrides = _overrides(
            set_,
            {
                "attack.attacks": _list(attack),
                "attack.eps_linf": _list(eps),
                "attack.eps_l2": _list(eps_l2),
                "attack.steps": steps,
                "attack.restarts": restarts,
                "attack.n_images": n_images,
                "attack.head": head,
                "device": device,
            },
        )
        record = run_attack(run_dir, config=_settings(run_dir, overrides), progress=progress)
        _echo(f"{record['name']}: {record['n_images']} test images, head={record['head']}")
        for row in record["results"]:
            _echo(
                f"  {row['attack']:>4} {row['norm']:>4} eps {row['eps_display']:>8}: "
                f"clean {100 * row['clean_accuracy']:5.1f}%  robust {100 * row['robust_accuracy']:5.1f}%  "
                f"success {100 * row['attack_success_rate']:5.1f}%"
            )

    _guard(call)


@app.command("evaluate")
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a probe.")],
    suite: Annotated[
        str | None,
        typer.Option(
            help="quick (FGSM/PGD sweeps + gates) or standard (+ L2, AutoAttack, FAB, corruptions)."
        ),
    ] = None,
    n_images: Annotated[
        int | None, typer.Option(help="Test images (fixed subset); default 1000.")
    ] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    progress: ProgressOption = True,
) -> None:
    """Trustworthy evaluation with sanity gates; writes evaluation.json and sweep plots."""
    from cslrobust.config import format_linf_radius
    from cslrobust.study.evaluate import run_evaluate

    def call() -> None:
        overrides = _overrides(
            set_, {"evaluation.suite": suite, "evaluation.n_images": n_images, "device": device}
        )
        record = run_evaluate(run_dir, config=_settings(run_dir, overrides), progress=progress)
        if record["gates_failed"]:
            _echo(
                f"!!! {len(record['gates_failed'])} SANITY GATE(S) FAILED: the numbers below are suspect"
            )
        _echo(record["gates_text"])
        _echo(
            f"{record['name']}: suite {record['suite']}, {record['protocol']['n_images']} test images"
        )
        for row in record["sweeps"]:
            eps = format_linf_radius(row["eps"]) if row["norm"] == "linf" else f"{row['eps']:g}"
            _echo(
                f"  {row['attack']:>4} {row['norm']:>4} eps {eps:>8}: robust {100 * row['robust_accuracy']:5.1f}%  "
                f"success {100 * row['attack_success_rate']:5.1f}%"
            )
        for s in record["eps50"]:
            _echo(f"  eps50 {s['attack']}/{s['norm']}: {s['eps50']:.5f}")
        for aa in record["autoattack"]:
            after = ", ".join(
                f"{k.removeprefix('robust_accuracy_after_')} {100 * v:.1f}%"
                for k, v in aa.items()
                if k.startswith("robust_accuracy_after_")
            )
            _echo(
                f"  AutoAttack {aa['version']} {aa['norm']} eps {aa['eps']:.5f}: {100 * aa['robust_accuracy']:.1f}% ({after})"
            )
            for flag in aa["flags"]:
                _echo(f"    flag: {flag}")
        for norm, fab in record["fab"].items():
            _echo(f"  FAB {norm}: median minimal perturbation {fab['min_norm_median']:.5f}")
        if record["corruptions"]:
            _echo(
                f"  corruptions: mean accuracy {100 * record['corruptions']['summary']['mean_accuracy']:.1f}% over {record['corruptions']['summary']['n_conditions']} conditions"
            )
        _echo(f"wrote {run_dir / 'evaluation.json'} in {record['wall_seconds']:.0f} s")

    _guard(call)


@app.command("analyze")
def analyze_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a probe.")],
    n_images: Annotated[int | None, typer.Option(help="Test images for the metrics.")] = None,
    tsne: Annotated[bool, typer.Option("--tsne/--no-tsne", help="Also write a t-SNE plot.")] = True,
    set_: SetOption = None,
    device: DeviceOption = None,
    progress: ProgressOption = True,
) -> None:
    """Representation geometry and feature sensitivity; writes analysis.json and PNG plots."""
    from cslrobust.study.analyze import run_analyze

    def call() -> None:
        overrides = _overrides(set_, {"geometry.n_images": n_images, "device": device})
        config = _settings(run_dir, overrides)
        record = run_analyze(run_dir, config=config, progress=progress, tsne=tsne)
        m = record["metrics"]
        keys = [
            "uniformity",
            "alignment",
            "class_distance_intra",
            "class_distance_inter",
            "class_distance_ratio",
            "centroid_margin_median",
            "logit_margin_median",
        ]
        _echo(f"{record['name']}: {record['n_images']} test images")
        for key in keys:
            if key in m:
                _echo(f"  {key:<26} {m[key]: .4f}")
        for key in sorted(k for k in m if k.startswith("sensitivity_") and k.endswith("/median")):
            _echo(f"  {key:<26} {m[key]: .4f}")
        _echo(
            f"wrote {run_dir / 'analysis.json'}, class_distances.png"
            + (", tsne.png" if tsne else "")
        )

    _guard(call)


@app.command("audit")
def audit_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="External weights file (for cslrobust also a run folder).")
    ],
    reference: Annotated[
        Path, typer.Option(help="Supervised run folder (trained and probed) of the same arch.")
    ],
    mean: Annotated[str, typer.Option(help="Input mean of [0,1] pixels, 'r,g,b'.")],
    std: Annotated[str, typer.Option(help="Input std of [0,1] pixels, 'r,g,b'.")],
    format_: Annotated[
        str,
        typer.Option(
            "--format", help="cslrobust | solo-learn | lightly | timm | torchvision (key layout)."
        ),
    ],
    arch: Annotated[str, typer.Option(help="resnet18 | resnet50 (our registered backbones).")],
    cifar_stem: Annotated[
        bool, typer.Option("--cifar-stem", help="3x3 stem without max-pool (default: ImageNet).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/audit-<name>).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name of the audited model (default: file stem).")
    ] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    progress: ProgressOption = True,
) -> None:
    """Probe, attack (with gates) and analyze an external encoder against a supervised reference."""
    from cslrobust.study.audit import AuditRequest, run_audit

    def call() -> None:
        request = AuditRequest(
            checkpoint=checkpoint,
            format=format_,
            arch=arch,
            cifar_stem=cifar_stem,
            mean=mean,
            std=std,
            reference=reference,
            out=out,
            name=name,
            overrides=tuple(_overrides(set_, {"device": device})),
        )
        result = run_audit(request, progress=progress, echo=_echo)
        if result.summary:
            _echo(result.summary)
        _echo(f"wrote {result.report} (+ report.html); audited run folder {result.run_dir}")

    _guard(call)


StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Results store URL overriding the study's storage: sqlite:///path or "
        "postgresql://user:password@host:port/database.",
    ),
]


def _study_report(
    spec: StudySpec, cells: list[Cell] | None, wall: float | None, storage: str | None = None
) -> None:
    """Write one study's report from its database and echo its summary."""
    from cslrobust.study.report import write_report
    from cslrobust.study.runner import open_store, study_cells

    with open_store(spec, storage) as store:
        text, report = write_report(
            f"Study {spec.name}",
            cells if cells is not None else study_cells(spec),
            store,
            spec.report_folder,
            supervised=spec.supervised_method,
            contrastive=spec.contrastive_method,
            wall_seconds=wall,
        )
    _echo("\n" + text)
    timing = f"wall time {wall / 60:.1f} min; " if wall is not None else ""
    _echo(f"\n{timing}report: {report} (and report.html)")


def _budget_report(spec: StudySpec) -> None:
    """With budgets: the report across them (each budget's own report is written before)."""
    from cslrobust.study.report import write_budget_report

    if spec.budgets:
        text, report = write_budget_report(spec)
        _echo("\n" + text)
        _echo(f"\nbudget report: {report} (and report.html)")


@study_app.command("run")
def study_run_command(
    study: Annotated[Path, typer.Argument(help="Study YAML file (see presets/).")],
    set_: SetOption = None,
    progress: ProgressOption = True,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="If another runner uses the output folder, wait for it instead of refusing.",
        ),
    ] = False,
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            help="Where the cells run: local (this process), ray (one Ray task per cell) or "
            "slurm (one job-array task per cell, through submitit).",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster to use (default: $RAY_ADDRESS, else a local Ray).",
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="slurm: submit the cells and return without waiting (run `study report` later).",
        ),
    ] = False,
    storage: StorageOption = None,
) -> None:
    """Run every missing stage of every (method, seed) cell, then write the report."""
    from cslrobust.distributed import is_main
    from cslrobust.errors import ConfigError
    from cslrobust.study.runner import run_study
    from cslrobust.study.spec import load_study

    def call() -> None:
        if executor not in ("local", "ray", "slurm"):
            raise ConfigError(f"unknown executor {executor!r}; expected local, ray or slurm")
        spec = load_study(study, set_ or [])
        if executor != "local":
            _run_on_cluster(study, set_ or [], spec, executor, ray_address, detach, storage)
            return
        for _, sub in spec.budget_studies():
            tic = time.perf_counter()
            _echo(
                f"study {sub.name}: {len(sub.methods)} methods x {len(sub.seeds)} seeds -> {sub.output_dir}"
            )
            cells = run_study(sub, progress=progress, echo=typer.echo, wait=wait, storage=storage)
            if is_main():  # under torchrun rank 0 writes the report
                _study_report(sub, cells, time.perf_counter() - tic, storage)
        if is_main():
            _budget_report(spec)

    _guard(call)


def _run_on_cluster(
    study: Path,
    overrides: list[str],
    spec: StudySpec,
    executor: str,
    ray_address: str | None,
    detach: bool,
    storage: str | None,
) -> None:
    """``study run --executor ray|slurm``: one task per cell not done, then the report."""
    from cslrobust.study.executors import pending_tasks, run_ray, run_slurm
    from cslrobust.study.runner import check_locations

    tic = time.perf_counter()
    for _, sub in spec.budget_studies():
        check_locations(sub, storage)
    tasks = pending_tasks(study, overrides, spec, storage)
    _echo(f"study {spec.name}: {len(tasks)} cell(s) to run on {executor}")
    if tasks and executor == "ray":
        run_ray(tasks, spec, address=ray_address, echo=typer.echo)
    elif tasks:
        run_slurm(tasks, spec, wait=not detach, echo=typer.echo)
        if detach:
            _echo(
                "submitted; `cslrobust study status` follows them, `study report` writes the report"
            )
            return
    for _, sub in spec.budget_studies():
        _study_report(sub, None, time.perf_counter() - tic, storage)
    _budget_report(spec)


@study_app.command("work")
def study_work_command(
    study: Annotated[Path, typer.Argument(help="Study YAML file.")],
    set_: SetOption = None,
    progress: ProgressOption = True,
    storage: StorageOption = None,
    cell: Annotated[
        list[str] | None,
        typer.Option(
            "--cell",
            help="Work on this cell only (cell id, its first 8+ hex digits, or its run name; "
            "repeatable).",
        ),
    ] = None,
) -> None:
    """A worker: claim, run and commit stages of the study until none is left (start it N times).

    Workers coordinate through leases in the results store (no study lock), so any number of them
    may run on any machines that share the store; one killed is replaced by another after its
    lease expires. Writes no report (see `study report`).
    """
    from cslrobust.distributed import is_main
    from cslrobust.errors import ConfigError
    from cslrobust.study.runner import check_locations, select_cells, study_cells, work_study

    def call() -> None:
        spec = load_study_for(study, set_)
        subs = [sub for _, sub in spec.budget_studies()]
        if cell and not any(select_cells(study_cells(sub), cell) for sub in subs):
            raise ConfigError(f"no cell of study {spec.name!r} matches {', '.join(cell)}")
        for sub in subs:
            if cell and not select_cells(study_cells(sub), cell):
                continue
            if is_main():
                check_locations(sub, storage)
            work_study(sub, only=cell, progress=progress, echo=typer.echo, storage=storage)
        _echo(f"worker finished: nothing left to claim in study {spec.name}")

    _guard(call)


def load_study_for(study: Path, set_: list[str] | None) -> StudySpec:
    """The study file with its ``--set`` overrides."""
    from cslrobust.study.spec import load_study

    return load_study(study, set_ or [])


@study_app.command("report")
def study_report_command(
    study: Annotated[Path, typer.Argument(help="Study YAML file.")],
    set_: SetOption = None,
    storage: StorageOption = None,
) -> None:
    """Rewrite the report from the results database (runs no model)."""

    def call() -> None:
        spec = load_study_for(study, set_)
        for _, sub in spec.budget_studies():
            _study_report(sub, None, None, storage)
        _budget_report(spec)

    _guard(call)


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago"


@study_app.command("status")
def study_status_command(
    study: Annotated[Path, typer.Argument(help="Study YAML file.")],
    set_: SetOption = None,
    storage: StorageOption = None,
    release: Annotated[
        list[str] | None,
        typer.Option(
            "--release",
            help="Release the expired leases of CELL or CELL:STAGE (cell id, 8+ hex digits or run "
            "name; repeatable); with --force also live ones.",
        ),
    ] = None,
    release_stale: Annotated[
        bool, typer.Option("--release-stale", help="Release every expired lease.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With --release: also release live leases (their workers' results are then "
            "refused at commit).",
        ),
    ] = False,
) -> None:
    """List every cell as done / running / interrupted / failed / pending, the leases and the lock."""
    import datetime as dt

    from cslrobust.errors import ConfigError
    from cslrobust.study.lock import describe_lock, lock_path
    from cslrobust.study.runner import open_store, select_cells, study_cells
    from cslrobust.study.store import abandoned

    def show(epoch: float) -> str:
        return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def call() -> None:
        spec = load_study_for(study, set_)
        subs = spec.budget_studies()
        if release:
            wanted = [r.split(":", 1)[0] for r in release]
            if not any(select_cells(study_cells(sub), wanted) for _, sub in subs):
                raise ConfigError(f"no cell of study {spec.name!r} matches {', '.join(wanted)}")
        for budget, sub in subs:
            if budget:
                _echo(f"budget {budget} ({sub.output_dir}):")
            cells = study_cells(sub)
            with open_store(sub, storage) as store:
                released = []
                if release_stale:
                    released += store.release_leases(cell_ids=[c.cell_id for c in cells])
                for item in release or []:
                    name, _, stage = item.partition(":")
                    for chosen in select_cells(cells, [name]):
                        released += store.release_leases(chosen.cell_id, stage or None, force=force)
                for lease in released:
                    _echo(
                        f"released the lease on {lease.stage} of cell {lease.cell_id[:8]} "
                        f"held by {lease.worker} on {lease.host}"
                    )
                if (release or release_stale) and not released:
                    _echo("no lease released (live leases need --force)")
                statuses = store.cell_statuses({c.cell_id: c.stages for c in cells})
                leases = store.leases([c.cell_id for c in cells])
            counts: dict[str, int] = {}
            for chosen, status in zip(cells, statuses, strict=True):
                counts[status.state] = counts.get(status.state, 0) + 1
                detail = f"stages done: {','.join(status.stages_done) or '-'}"
                if status.state in ("running", "interrupted", "failed") and status.stage:
                    detail += f"; {status.state} in {status.stage}"
                if status.state == "failed" and status.error:
                    detail += f"; error: {status.error}"
                _echo(f"{status.state:>11}  {chosen.config.name:<40} {detail}")
            _echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
            names = {c.cell_id: c.config.name for c in cells}
            for lease in leases:
                left = lease.expires_at - lease.now
                state = (
                    "EXPIRED"
                    if lease.expired
                    else "holder gone (its process no longer exists)"
                    if abandoned(lease)
                    else f"expires in {left:.0f} s"
                )
                _echo(
                    f"lease: {names.get(lease.cell_id, lease.cell_id[:8])} {lease.stage} by "
                    f"{lease.worker} (host {lease.host}, pid {lease.pid}) since "
                    f"{show(lease.acquired_at)}, last heartbeat "
                    f"{_ago(lease.now - lease.heartbeat_at)}; {state}"
                )
            if (lock := describe_lock(lock_path(sub.output_dir))) is not None:
                _echo(lock)

    _guard(call)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="cslrobust")


if __name__ == "__main__":
    sys.exit(main())
