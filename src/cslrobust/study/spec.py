"""Study specification: a base run config, named methods and seeds, expanded into run configs.

A study file (YAML) looks like::

    name: cpu-small
    output_dir: runs/cpu-small        # relative paths are relative to the study file's folder
    seeds: [0]
    base:                             # any RunConfig section
      data: {train_per_class: 500}
      train: {epochs: 15}
    methods:                          # method name -> overrides of base
      supervised: {objective: {name: supervised}}
      simclr: {objective: {name: simclr}}

Each (method, seed) cell becomes one :class:`~cslrobust.config.RunConfig` named
``<method>-s<seed>-<first 8 hex digits of its run id>``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cslrobust.config import (
    RunConfig,
    apply_overrides,
    build_run_config,
    format_validation_error,
    read_yaml,
)
from cslrobust.errors import ConfigError


class SlurmSettings(BaseModel):
    """How ``study run --executor slurm`` submits the cells (one job-array task per cell)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit_min: int = Field(default=24 * 60, gt=0)  # per task (one cell)
    max_concurrent: int = Field(default=16, gt=0)  # tasks of the array running at once
    mem_gb: float | None = Field(default=None, gt=0)
    log_dir: Path | None = None  # submitit's folder; default <output_dir>/slurm


class ClusterSettings(BaseModel):
    """Per-cell resources and lease timing of the cluster executors and ``study work``.

    None of it enters a cell's id or stage keys: the same study runs anywhere and shares its cells.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus_per_cell: int = Field(default=0, ge=0)
    cpus_per_cell: int = Field(default=1, ge=1)
    # > 1: the cell's task runs ``torchrun --nproc_per_node=P -m cslrobust study work ... --cell ID``.
    processes_per_cell: int = Field(default=1, ge=1)
    lease_s: float = Field(default=120.0, gt=0)  # a lease not renewed for this long expires
    heartbeat_s: float = Field(default=30.0, gt=0)  # renewal period of a held lease
    poll_s: float = Field(default=10.0, gt=0)  # how often a worker waiting on others' leases looks
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> ClusterSettings:
        if self.heartbeat_s > self.lease_s / 2:
            raise ValueError(
                f"cluster.heartbeat_s {self.heartbeat_s:g} must be at most half of cluster.lease_s "
                f"{self.lease_s:g} (a lease must survive a late heartbeat)"
            )
        return self


class StudySpec(BaseModel):
    """A validated study file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    output_dir: Path = Path("runs")
    # Where report.md/.html, results.csv/.json and plots go (default: output_dir). Studies that share
    # an output_dir (to reuse its cells) set their own, so one report does not overwrite another.
    report_dir: Path | None = None
    # Results store URL: sqlite:///path (relative to output_dir) or postgresql://user:pw@host/db;
    # default sqlite:///<output_dir>/results.db.
    storage: str | None = None
    seeds: tuple[int, ...] = Field(default=(0,), min_length=1)
    # Names in the stage registry; "evaluate" adds the full evaluation suite (base.evaluation).
    # "gates" checks every reported robust accuracy; leaving it out is reported as "gates not run".
    stages: tuple[str, ...] = ("train", "probe", "attack", "gates", "analyze")
    # Keep every epoch of the supervised reference, probe and attack each, and compare every other
    # method with the supervised checkpoint of the closest validation clean accuracy.
    match_clean_accuracy: bool = False
    # Keep a checkpoint every k epochs of every method (train.keep_every = k, part of the run id: new
    # cells), probe and attack each and the final one (stage "trajectory"): the report's accuracy
    # frontier and the comparison at matched clean accuracy. 0: off.
    trajectory_every: int = Field(default=0, ge=0)
    supervised_method: str = "supervised"  # the SL reference of gap computations
    contrastive_method: str = "simclr"  # the CSL reference
    base: dict[str, Any] = Field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    # Training budgets (name -> overrides of base, e.g. data.train_per_class, train.epochs): each is
    # a study of its own under output_dir/<name> (cells, database, lock, report), and the budget
    # report at the top compares the gap SL - CSL across them. Empty: one study, as written.
    budgets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Executors (ray, slurm, study work): per-cell resources, Slurm settings, lease timing.
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    def budget_studies(self) -> list[tuple[str, StudySpec]]:
        """``(budget name, study)`` per budget, in file order; ``[("", self)]`` without budgets.

        A budget's study is this one with the budget's overrides merged into ``base`` (methods
        still override both), named ``<name>-<budget>``, in ``<output_dir>/<budget>`` (its report
        in ``<report folder>/<budget>``); a relative ``storage`` URL is relative to that folder.
        """
        if not self.budgets:
            return [("", self)]
        return [
            (
                budget,
                self.model_copy(
                    update={
                        "name": f"{self.name}-{budget}",
                        "output_dir": self.output_dir / budget,
                        "report_dir": self.report_folder / budget,
                        "base": deep_merge(self.base, overrides),
                        "budgets": {},
                    }
                ),
            )
            for budget, overrides in self.budgets.items()
        ]

    @property
    def report_folder(self) -> Path:
        """Folder of the report files: ``report_dir``, else ``output_dir``."""
        return self.report_dir or self.output_dir

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from cslrobust.study.stages import STAGES

        for name in value:
            if name not in STAGES:
                raise ValueError(f"unknown stage {name!r}; expected one of {STAGES.names()}")
        return value

    @model_validator(mode="after")
    def _trajectory_has_checkpoints(self) -> StudySpec:
        if "trajectory" in self.stages and not (self.trajectory_every or self.match_clean_accuracy):
            raise ValueError(
                "stage 'trajectory' keeps no checkpoint to evaluate; expected trajectory_every > 0 "
                "or match_clean_accuracy: true (the stage is then added by itself)"
            )
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        repeated = sorted({seed for seed in value if value.count(seed) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice; expected distinct seeds")
        return value

    @field_validator("methods", "budgets")
    @classmethod
    def _names(cls, value: dict[str, dict[str, Any]], info: ValidationInfo) -> dict[str, Any]:
        noun = "method" if info.field_name == "methods" else "budget"
        for name in value:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"{noun} name {name!r} must be letters, digits, '_' or '-'")
        return value


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, other values replace)."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_study(path: Path, overrides: Iterable[str] = ()) -> StudySpec:
    """Read and validate a study file; ``key.sub=value`` overrides apply to the file's mapping.

    Relative ``output_dir``, ``base.data.source`` and ``base.data.split_dir`` paths are resolved
    against the file's folder.

    Raises:
        ConfigError: Naming the offending key.
    """
    data = apply_overrides(read_yaml(path, "study file"), overrides)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(
            format_validation_error(err).replace("invalid config", "invalid study")
        ) from None
    folder = path.resolve().parent
    output_dir = (
        spec.output_dir if spec.output_dir.is_absolute() else folder / spec.output_dir
    ).resolve()
    base = copy.deepcopy(spec.base)
    data_section = base.get("data")
    for key in ("source", "split_dir"):
        value = data_section.get(key) if isinstance(data_section, dict) else None
        if value and not Path(value).is_absolute():
            data_section[key] = str(folder / value)
    report_dir = spec.report_dir
    if report_dir is not None and not report_dir.is_absolute():
        report_dir = (folder / report_dir).resolve()
    spec = spec.model_copy(
        update={"output_dir": output_dir, "report_dir": report_dir, "base": base}
    )
    for budget, study in spec.budget_studies():  # validate every cell now, before anything runs
        try:
            expand_study(study)
        except ConfigError as err:
            raise ConfigError(f"budget {budget!r}: {err}" if budget else str(err)) from None
    return spec


def expand_study(spec: StudySpec) -> list[RunConfig]:
    """One run config per (method, seed), in file order.

    Raises:
        ConfigError: If a cell is invalid; the message names the method and the key.
    """
    runs = []
    settings = spec.model_dump()
    for method, overrides in spec.methods.items():
        for seed in spec.seeds:
            data = deep_merge(spec.base, overrides)
            if keep_every := trajectory_step(settings, method):
                data = deep_merge(data, {"train": {"keep_every": keep_every}})
            data.update(name=f"{method}-s{seed}", output_dir=str(spec.output_dir), seed=seed)
            try:
                cfg = build_run_config(data)
            except ConfigError as err:
                raise ConfigError(f"method {method!r}: {err}") from None
            # The folder carries the cell id (hash of the training config): editing the study makes
            # new cells beside the old ones instead of overwriting them.
            runs.append(cfg.model_copy(update={"name": f"{method}-s{seed}-{cfg.run_id()[:8]}"}))
    return runs


def trajectory_step(study: Mapping[str, Any], method: str) -> int:
    """Epochs between the checkpoints of a method's trajectory (its ``train.keep_every``); 0: none.

    ``trajectory_every`` for every method; 1 (every epoch) for the supervised reference of a study
    that matches clean accuracy. When both apply, the finer step wins.

    Args:
        study: The study's settings (``StudySpec.model_dump()``).
        method: The method's name.
    """
    steps = [int(study.get("trajectory_every") or 0)]
    if study.get("match_clean_accuracy") and method == study.get("supervised_method"):
        steps.append(1)
    return min((s for s in steps if s > 0), default=0)


def method_of(run: RunConfig) -> str:
    """The method name of a study cell (its run name without the ``-s<seed>-<id>`` suffix)."""
    return run.name.rsplit("-s", 1)[0]
