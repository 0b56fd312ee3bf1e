"""Audit an encoder trained elsewhere against a supervised reference run (``cslrobust audit``).

The external backbone weights are read safely (safetensors, or ``torch.load(weights_only=True)``
through :func:`~cslrobust.run_files.load_torch_file`), renamed by the format's key map
(:mod:`cslrobust.models.external_weights`), loaded strictly into our ResNet and wrapped with the
declared normalisation, exactly like a trained encoder. They are written as a run folder of their own::

    <out>/<name>/config.json                       the reference's config; model: arch, width, stem
    <out>/<name>/checkpoints/epoch-0001/...        the mapped weights (head kind "none")
    <out>/<name>/audit.json                        where the weights came from, what was dropped

so the probe, attack, gates and analyze stages run on it unchanged. The reference's probe is used as it
is; its attack and gates records are reused when they were made with the same settings, else run
again (like the analyze stage), so both models are evaluated on the same images and radii. Rows go to
``<out>/results.db`` and the report (``report.md``/``.html``) is the study report's sections
``clean``, ``attacks``, ``gates`` and ``geometry`` for the two models.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from cslrobust.config import RunConfig, build_run_config, canonical_hash, save_config
from cslrobust.errors import CheckpointError, ConfigError
from cslrobust.models import MODELS, build_encoder
from cslrobust.models.external_weights import (
    FORMATS,
    check_backbone_weights,
    map_state_dict,
)
from cslrobust.provenance import git_sha, provenance
from cslrobust.records import ensure_writable_dir, read_json_record, write_json_atomic
from cslrobust.run_files import load_torch_file, non_finite_tensors
from cslrobust.study.attack import ATTACK_RECORD, attack_rows
from cslrobust.study.gates import gate_rows
from cslrobust.study.probe import PROBE_RECORD, probe_rows
from cslrobust.study.run_folder import (
    ATTACK_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    GATES_FILE,
    PROBE_FILE,
    PROBE_WEIGHTS,
    run_settings,
)
from cslrobust.study.runner import Cell
from cslrobust.study.stages import STAGES, Rows, stage_keys
from cslrobust.study.store import ResultsStore
from cslrobust.training import latest_checkpoint
from cslrobust.training.checkpoint import save_checkpoint

AUDIT_FILE = "audit.json"
AUDIT_STAGES = ("probe", "attack", "gates", "analyze")
AUDIT_SECTIONS = ("clean", "attacks", "gates", "geometry")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class AuditRequest:
    """What ``cslrobust audit`` was asked.

    Args:
        checkpoint: The external weights (a file; for ``cslrobust`` also a run folder).
        format: One of :data:`~cslrobust.models.external_weights.FORMATS`.
        arch: Backbone name (e.g. ``resnet18``); the reference must have the same.
        cifar_stem: Build the CIFAR stem (3x3, no max-pool) instead of torchvision's ImageNet stem.
        mean: The declared per-channel input mean, ``"r,g,b"`` in [0, 1] pixel units.
        std: The declared per-channel input standard deviation, ``"r,g,b"``.
        reference: A supervised run folder trained and probed by cslrobust.
        out: Output folder (default ``runs/audit-<name>``).
        name: Name of the audited model (default: the checkpoint's file stem).
        overrides: ``section.key=value`` overrides of the evaluation sections, for both models.
    """

    checkpoint: Path
    format: str
    arch: str
    cifar_stem: bool
    mean: str
    std: str
    reference: Path
    out: Path | None = None
    name: str | None = None
    overrides: Sequence[str] = ()


@dataclass(frozen=True)
class AuditResult:
    """What an audit wrote: the report, its terminal summary and the audited run folder."""

    report: Path
    summary: str
    run_dir: Path
    dropped: list[str]


def parse_statistics(text: str, flag: str) -> tuple[float, float, float]:
    """``"0.49,0.48,0.45"`` -> three floats (commas or spaces); ``--std`` entries must be > 0.

    Raises:
        ConfigError: Unless there are exactly 3 finite numbers in [0, 1] (std: in (0, 1]).
    """
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    low_ok = (lambda v: v > 0) if flag == "--std" else (lambda v: v >= 0)
    if len(values) != 3 or not all(math.isfinite(v) and low_ok(v) and v <= 1 for v in values):
        bound = "in (0, 1]" if flag == "--std" else "in [0, 1]"
        raise ConfigError(
            f"{flag} {text!r}: expected 3 numbers {bound} for [0,1] pixels, e.g. "
            f"{'0.2470,0.2435,0.2616' if flag == '--std' else '0.4914,0.4822,0.4465'}"
        )
    return values[0], values[1], values[2]


def read_external_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an external checkpoint, never unpickling anything.

    ``*.safetensors`` is read with safetensors; anything else with ``torch.load(weights_only=True)``.
    A dict holding a ``state_dict`` (Lightning, solo-learn) or ``model`` dict is unwrapped once.

    Raises:
        CheckpointError: If the file is missing, refused as unsafe (a pickle payload), damaged, or
            holds no flat mapping of names to tensors.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not valid safetensors: {err}"
            ) from None
    loaded = load_torch_file(path, what="checkpoint")
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds {type(loaded).__name__}; expected a state dict "
            "(names -> tensors), possibly under 'state_dict'"
        )
    bad = [
        k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: entry {str(bad[0])!r} is not a named tensor "
            f"({len(bad)} such); expected a state dict (names -> tensors)"
        )
    return loaded


def _weights_file(path: Path, fmt: str) -> Path:
    """The weights file of ``path``; a cslrobust run folder gives its latest checkpoint's."""
    if fmt == "cslrobust" and path.is_dir():
        checkpoint = latest_checkpoint(path / CHECKPOINT_DIR)
        if checkpoint is None:
            raise CheckpointError(f"run folder {str(path)!r} has no checkpoint; run 'train' first")
        return checkpoint.model_file
    return path


def _reference_settings(request: AuditRequest) -> RunConfig:
    """The reference run's settings (with the overrides), refused unless trained, probed, same arch."""
    ref = request.reference
    if not (ref / CONFIG_FILE).is_file():
        raise ConfigError(
            f"reference {str(ref)!r} is not a cslrobust run folder (no {CONFIG_FILE}); "
            "expected a supervised run trained by 'cslrobust train'"
        )
    cfg = run_settings(ref, request.overrides)
    if cfg.model.arch != request.arch:
        raise ConfigError(
            f"reference {str(ref)!r} is a {cfg.model.arch}, the audited encoder a {request.arch}; "
            "expected a reference of the same architecture"
        )
    if latest_checkpoint(ref / CHECKPOINT_DIR) is None:
        raise ConfigError(f"reference {str(ref)!r} is not trained (no checkpoint); train it first")
    if not (ref / PROBE_WEIGHTS).is_file() or not (ref / PROBE_FILE).is_file():
        raise ConfigError(
            f"reference {str(ref)!r} is not probed; run 'cslrobust probe {ref}' first"
        )
    return cfg


def _audit_name(request: AuditRequest) -> str:
    raw = request.name or request.checkpoint.name.partition(".")[0] or "encoder"
    name = _NAME.sub("-", raw).strip("-.")
    if not name:
        raise ConfigError(f"audit name {raw!r} has no letter or digit; pass --name")
    return name


def _audited_config(
    ref: RunConfig, request: AuditRequest, name: str, out: Path, width: int
) -> RunConfig:
    """The reference's config with the audited model's name, folder and backbone."""
    data = ref.model_dump(mode="json")
    data.update(name=name, output_dir=str(out))
    data["model"] = {
        **data["model"],
        "arch": request.arch,
        "width": width,
        "stem": "cifar" if request.cifar_stem else "imagenet",
    }
    return build_run_config(data)


def _width_of(mapped: dict[str, torch.Tensor], what: str) -> int:
    stem = mapped.get("conv1.weight")
    if stem is None or stem.dim() != 4:
        raise CheckpointError(
            f"{what} has no first convolution 'conv1.weight' after the key map; "
            "expected a ResNet backbone in this format"
        )
    return int(stem.shape[0])


def _stem_hint(mapped: dict[str, torch.Tensor], cifar_stem: bool) -> str:
    kernel = int(mapped["conv1.weight"].shape[-1])
    if cifar_stem and kernel == 7:
        return " (a 7x7 first convolution is an ImageNet stem: drop --cifar-stem)"
    if not cifar_stem and kernel == 3:
        return " (a 3x3 first convolution is a CIFAR stem: pass --cifar-stem)"
    return ""


def _write_audited_run(
    request: AuditRequest, ref: RunConfig, name: str, out: Path
) -> tuple[RunConfig, dict[str, Any]]:
    """Map, check and write the external weights as the run folder ``<out>/<name>``."""
    source = _weights_file(request.checkpoint, request.format)
    tensors = read_external_weights(source)
    mapped = map_state_dict(tensors, request.format)
    what = f"checkpoint {str(source)!r} (format {request.format})"
    width = _width_of(mapped.backbone, what)
    mean = parse_statistics(request.mean, "--mean")
    std = parse_statistics(request.std, "--std")
    stem = "cifar" if request.cifar_stem else "imagenet"
    encoder = build_encoder(
        request.arch,
        width=width,
        head_kind="none",
        num_classes=1,
        proj_hidden_dim=1,
        proj_dim=1,
        mean=mean,
        std=std,
        stem=stem,
    )
    try:
        state = check_backbone_weights(
            encoder.backbone.state_dict(), mapped, f"{what} as {request.arch} ({stem} stem)"
        )
    except CheckpointError as err:
        raise CheckpointError(f"{err}{_stem_hint(mapped.backbone, request.cifar_stem)}") from None
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(
            f"{what} holds NaN or inf in {len(bad)} tensor(s), first {bad[0]!r}; refused"
        )
    encoder.backbone.load_state_dict(state, strict=True)
    cfg = _audited_config(ref, request, name, out, width)
    run_dir = cfg.run_dir
    if run_dir.exists() and not (run_dir / AUDIT_FILE).is_file():
        raise ConfigError(
            f"audit folder {str(run_dir)!r} exists and was not made by 'audit'; "
            "choose another --name or --out"
        )
    ensure_writable_dir(run_dir, "audit run folder")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    save_config(cfg, run_dir / CONFIG_FILE)
    metadata = {
        "head_kind": "none",
        "feature_dim": str(encoder.feature_dim),
        "n_views": "1",
        "run_id": cfg.run_id(),
        "config": json.dumps(cfg.model_dump(mode="json")),
    }
    save_checkpoint(
        run_dir / CHECKPOINT_DIR,
        1,
        encoder,
        {},
        {"source": str(source), "sha256": digest},
        metadata,
        keep_last=1,
    )
    record = {
        "name": name,
        "source": str(source),
        "sha256": digest,
        "format": request.format,
        "arch": request.arch,
        "stem": stem,
        "width": width,
        "mean": list(mean),
        "std": list(std),
        "dropped_keys": mapped.dropped,
        "reference": str(request.reference),
        "reference_run_id": ref.run_id(),
        **provenance(),
    }
    write_json_atomic(run_dir / AUDIT_FILE, record)
    return cfg, record


def _reusable(path: Path, cfg: RunConfig, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The reference's record at ``path`` if it was made for this run with these settings."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("run_id") != cfg.run_id():
        return None
    if any(record.get(k) != v for k, v in fields.items()):
        return None
    return record


def _reference_rows(cfg: RunConfig, stage: str, progress: bool) -> Rows:
    """The reference's rows of ``stage``: its probe as is; attack/gates reused when settings match."""
    run_dir = cfg.run_dir
    attack_settings = {"attack_config": cfg.attack.model_dump(mode="json")}
    if stage == "probe":
        return probe_rows(
            read_json_record(run_dir / PROBE_FILE, what="probe record", spec=PROBE_RECORD)
        )
    if stage == "attack" and (_reusable(run_dir / ATTACK_FILE, cfg, attack_settings)) is not None:
        return attack_rows(
            read_json_record(run_dir / ATTACK_FILE, what="attack record", spec=ATTACK_RECORD)
        )
    gate_settings = {**attack_settings, "gates_config": cfg.gates.model_dump(mode="json")}
    if stage == "gates" and (record := _reusable(run_dir / GATES_FILE, cfg, gate_settings)):
        return gate_rows(record)
    return STAGES.get(stage).run(cfg, progress)


def run_audit(
    request: AuditRequest, *, progress: bool = True, echo: Callable[[str], None] = print
) -> AuditResult:
    """Audit ``request.checkpoint`` against ``request.reference``; write the report.

    Raises:
        ConfigError: A bad format, architecture, statistic, reference or override (one line).
        CheckpointError: A missing, unsafe or damaged checkpoint, or keys/shapes that do not fit.
    """
    from cslrobust.study.report import write_report

    tic = time.perf_counter()
    if request.format not in FORMATS:
        raise ConfigError(f"unknown --format {request.format!r}; expected one of {list(FORMATS)}")
    if request.arch not in MODELS:
        raise ConfigError(f"unknown --arch {request.arch!r}; expected one of {MODELS.names()}")
    parse_statistics(request.mean, "--mean")
    parse_statistics(request.std, "--std")
    if not request.checkpoint.exists():
        raise CheckpointError(f"checkpoint {str(request.checkpoint)!r} does not exist")
    ref_cfg = _reference_settings(request)
    name = _audit_name(request)
    out = request.out or RunConfig.model_fields["output_dir"].default / f"audit-{name}"
    ensure_writable_dir(out, "audit output folder")
    cfg, record = _write_audited_run(request, ref_cfg, name, out)

    ref_method = ref_cfg.name if ref_cfg.name != name else f"{ref_cfg.name} (reference)"
    audited = Cell(
        cfg,
        canonical_hash(
            {"run_id": cfg.run_id(), "weights": record["sha256"], "audit": record["stem"]}
        ),
        name,
        stage_keys(cfg, AUDIT_STAGES),
    )
    reference = Cell(ref_cfg, ref_cfg.run_id(), ref_method, stage_keys(ref_cfg, AUDIT_STAGES))
    with ResultsStore(out / "results.db") as store:
        for cell in (reference, audited):
            store.register_cell(
                cell.cell_id,
                f"audit-{name}",
                cell.method,
                cell.config.seed,
                cell.config.model_dump(mode="json"),
            )
            for stage in AUDIT_STAGES:
                started = time.perf_counter()
                echo(f"{cell.method}: {stage} ...")
                store.mark_running(cell.cell_id, stage)
                if cell is reference:
                    rows = _reference_rows(ref_cfg, stage, progress)
                else:
                    rows = STAGES.get(stage).run(cfg, progress)
                seconds = time.perf_counter() - started
                store.commit_stage(cell.cell_id, cell.stages[stage], rows, git_sha(), seconds)
                echo(f"{cell.method}: {stage} done in {seconds:.0f} s")
            store.mark_done(cell.cell_id)
        notes = [
            f"Audited encoder `{name}`: {record['arch']} ({record['stem']} stem, width "
            f"{record['width']}) from `{record['source']}` (format {record['format']}, sha256 "
            f"{record['sha256'][:12]}), normalised with mean {record['mean']} and std "
            f"{record['std']} inside the model; reference `{ref_method}` "
            f"(`{request.reference}`, run {ref_cfg.run_id()}).",
            f"Dropped from the checkpoint ({len(record['dropped_keys'])} tensors of heads): "
            + (", ".join(record["dropped_keys"][:6]) or "none")
            + (", ..." if len(record["dropped_keys"]) > 6 else "")
            + ".",
        ]
        summary, report = write_report(
            f"Audit: {name} vs {ref_method}",
            [reference, audited],
            store,
            out,
            supervised=ref_method,
            contrastive=name,
            wall_seconds=time.perf_counter() - tic,
            sections=AUDIT_SECTIONS,
            notes=notes,
        )
    return AuditResult(report, summary, cfg.run_dir, record["dropped_keys"])
