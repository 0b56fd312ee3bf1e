"""The stage registry: what a study cell runs, in which order, and what each stage's key hashes.

A stage is one entry: its name, the stages it builds on, the settings its key depends on, the function
that runs it on a cell and returns its result rows, and the report sections that present those rows.
The runner loops over the entries a study asks for and has no per-stage code, so a new stage is one
new module in ``study/`` ending in ``register_stage(Stage(...))`` plus its import in
``study/__init__.py``.

A stage's key is ``<name>:<digest>``; the digest hashes the digests of the stages it needs and its own
inputs, so changing the attack settings re-runs the attack stage and nothing it does not depend on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cslrobust.config import RunConfig, canonical_hash
from cslrobust.registry import Registry

#: Rows a stage commits to the results store (``metric``, ``value`` and condition columns).
Rows = list[dict[str, Any]]


def _no_inputs(cfg: RunConfig) -> dict[str, Any]:
    del cfg
    return {}


@dataclass(frozen=True)
class Stage:
    """One registered stage.

    Attributes:
        name: Registry key, as written in a study's ``stages`` list.
        order: Position in the pipeline (stages of a cell run in increasing order).
        run: Runs the stage on a cell's config and returns its rows (progress bars on or off).
        needs: Stages whose results this one reads; their digests enter its key.
        key_inputs: The settings of the config the stage's result depends on.
        digest: Overrides the key's digest (the train stage uses the run id).
        sections: Names of the report sections that present the stage's rows.
        also_when: Also run on a cell the study did not ask it for, when this returns true
            (arguments: the study's settings as a mapping, the cell's method name).
        settings: Config sections that only change how the stage evaluates a trained model; the
            commands on a trained run accept overrides of these (and ``device``), nothing else.
        version: Raised when the stage's code changes its results; enters the key from 2 on, so
            stored results of the older code are recomputed (and keys of version 1 stay as they were).
    """

    name: str
    order: int
    run: Callable[[RunConfig, bool], Rows]
    needs: tuple[str, ...] = ()
    key_inputs: Callable[[RunConfig], dict[str, Any]] = _no_inputs
    digest: Callable[[RunConfig], str] | None = None
    sections: tuple[str, ...] = ()
    also_when: Callable[[Mapping[str, Any], str], bool] | None = field(default=None)
    settings: tuple[str, ...] = ()
    version: int = 1


STAGES: Registry[Stage] = Registry("stage")


def register_stage(stage: Stage) -> Stage:
    """Add ``stage`` to :data:`STAGES` under its name (a duplicate name is a programming error)."""
    return STAGES.register(stage.name)(stage)


def evaluation_sections() -> tuple[str, ...]:
    """``device`` and every registered stage's ``settings``: what a trained run may be given anew."""
    return ("device", *sorted({s for name in STAGES.names() for s in STAGES.get(name).settings}))


def stage_order(names: Sequence[str] | None = None) -> list[str]:
    """Registered stage names (or ``names``) in pipeline order."""
    chosen = STAGES.names() if names is None else list(names)
    return sorted(chosen, key=lambda name: (STAGES.get(name).order, name))


def stage_digest(cfg: RunConfig, name: str, _memo: dict[str, str] | None = None) -> str:
    """The digest of stage ``name`` for ``cfg``: its inputs and those of every stage it needs."""
    memo = {} if _memo is None else _memo
    if name not in memo:
        stage = STAGES.get(name)
        if stage.digest is not None:
            memo[name] = stage.digest(cfg)
        else:
            upstream = {need: stage_digest(cfg, need, memo) for need in stage.needs}
            version = {"version": stage.version} if stage.version != 1 else {}
            memo[name] = canonical_hash({**upstream, **stage.key_inputs(cfg), **version})
    return memo[name]


def stage_keys(cfg: RunConfig, names: Sequence[str] | None = None) -> dict[str, str]:
    """``{stage: "<stage>:<digest>"}`` for ``names`` (default: every registered stage), in order."""
    memo: dict[str, str] = {}
    return {name: f"{name}:{stage_digest(cfg, name, memo)}" for name in stage_order(names)}
