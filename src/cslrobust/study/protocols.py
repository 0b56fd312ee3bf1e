"""Protocols stage: SLF, ALF and AFF classifiers of a trained, probed run, each evaluated the same way.

The three evaluation protocols of adversarially pre-trained encoders (RobustSSL benchmark, Xu et al.;
ACL, Jiang et al. 2020; DynACL, Luo et al. 2023), settings in the ``protocols`` section:

- ``slf`` (standard linear finetuning): the probe stage's head on the frozen encoder, reused as is.
- ``alf`` (adversarial linear finetuning): a fresh linear head on the frozen encoder (eval mode, no
  gradient), trained on PGD examples made through the whole model
  (:func:`~cslrobust.training.adversarial.alf_loss`).
- ``aff`` (adversarial full finetuning): the pre-trained backbone plus a fresh linear head, finetuned
  with TRADES (:func:`~cslrobust.training.adversarial.trades_step`).

ALF's head acts on standardised features (:class:`~cslrobust.probe.standardized.StandardizedLinear`,
the probe's standardisation, folded into a plain ``nn.Linear`` at the end); AFF's fresh head is a plain
``nn.Linear`` on raw features (the backbone moves, so fixed statistics would not fit). Both are
initialised as the probe's head, from stream ``(seed, "<p>_init")``. ALF and AFF keep the epoch with the
best robust accuracy on the validation split (PGD with the training settings, first ``val_images`` of a
fixed validation subset); the test set is never seen before the evaluation.

Each protocol's classifier is evaluated on the fixed test subset: clean accuracy, PGD
(``eval_steps``, ``eval_step_size``, random start), AutoAttack (``autoattack``), the corruptions, and
the sanity gates (PGD settings; the AutoAttack examples re-evaluated). Files in the run folder:
``protocol-<p>.json`` (evaluation record), and for ALF/AFF ``protocol-<p>-train.json`` (selection
record) with ``protocol-<p>.safetensors`` (ALF: the folded head; AFF: the whole finetuned classifier).
Resume: a record whose run id, checkpoint and settings match is read back, not recomputed (the
evaluation record first, else the training record with its weights, checked by sha256).

Rows (``p`` in slf/alf/aff): ``protocol/<p>/clean_accuracy``, ``protocol/<p>/robust_accuracy``
(``attack`` = ``pgd`` or ``autoattack``, ``norm`` = ``linf``, ``eps``), per-image bits as the attack
stage stores them; ``protocol/<p>/corruption_accuracy`` (corruption, severity);
``protocol/<p>/gate/<gate>`` (1 pass / 0 fail, ``message``); ``protocol/<p>/val_robust_accuracy``
(``epoch`` = the selected epoch); ``protocol/<p>/seconds``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cslrobust.attacks import (
    AccuracyRow,
    AttackResult,
    AttackTarget,
    ConvergenceSettings,
    GateAttack,
    GateResult,
    GateThresholds,
    format_gates,
    frozen_eval,
    robust_accuracy,
    run_autoattack,
    run_gates,
)
from cslrobust.attacks.gates import gate_adversarial_examples
from cslrobust.config import RunConfig, format_linf_radius
from cslrobust.distributed import on_main
from cslrobust.errors import CheckpointError, ConfigError
from cslrobust.models import Classifier
from cslrobust.probe import assert_frozen, extract_features, state_snapshot
from cslrobust.probe.standardized import StandardizedLinear, init_linear, standardization
from cslrobust.provenance import provenance
from cslrobust.records import read_json_record, write_json_atomic
from cslrobust.run_files import Float, Int, Record, Str
from cslrobust.seeding import make_generator
from cslrobust.study.run_folder import (
    PROBE_FILE,
    PROBE_WEIGHTS,
    ProbedRun,
    checked_count,
    eval_subset,
    load_probed_run,
    test_subset,
)
from cslrobust.study.stages import Rows, Stage, register_stage
from cslrobust.study.store import pack_bits
from cslrobust.training import load_weights, save_weights
from cslrobust.training.adversarial import adversarial_finetune, alf_loss, trades_step

PREFIX = "protocol/"
"""Prefix of the stage's metrics: ``protocol/<p>/...``."""

#: What is read back from a protocol's evaluation and training records (resume).
_SELECTION_FIELDS = {
    "run_id": Str(),
    "protocol": Str(),
    "checkpoint_epoch": Int(minimum=0),
    "selected_epoch": Int(minimum=0),
    "val_robust_accuracy": Float(),
}
EVAL_RECORD = Record(
    required={**_SELECTION_FIELDS, "val_n": Int(minimum=0), "clean": Record(), "pgd": Record()}
)
TRAIN_RECORD = Record(required={**_SELECTION_FIELDS, "weights_sha256": Str()})


def record_file(protocol: str) -> str:
    """``protocol-<p>.json``: a protocol's evaluation record."""
    return f"protocol-{protocol}.json"


def train_file(protocol: str) -> str:
    """``protocol-<p>-train.json``: an ALF/AFF selection record (beside its weights)."""
    return f"protocol-{protocol}-train.json"


def weights_file(protocol: str) -> str:
    """``protocol-<p>.safetensors``: ALF's folded head, AFF's whole finetuned classifier."""
    return f"protocol-{protocol}.safetensors"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state_digest(module: nn.Module) -> str:
    """SHA-256 over the names and bytes of a module's parameters and buffers."""
    hasher = hashlib.sha256()
    for name, value in module.state_dict().items():
        data = value.detach().cpu().contiguous()
        hasher.update(f"{name}{data.dtype}{tuple(data.shape)}".encode())
        hasher.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _matching(path: Path, expected: Mapping[str, Any], spec: Record) -> dict[str, Any] | None:
    """The record at ``path`` if it exists, is well formed and holds every ``expected`` value."""
    try:
        record = read_json_record(path, spec=spec)
    except CheckpointError:
        return None
    return record if all(record.get(k) == v for k, v in expected.items()) else None


@dataclass(frozen=True)
class ProtocolData:
    """The images a run's protocols use: validation subset for selection, test subset for evaluation.

    Attributes:
        val_images: ``(V, C, H, W)`` float [0,1], the first ``val_images`` of a fixed validation subset.
        val_labels: ``(V,)``.
        test_images: ``(N, C, H, W)`` float [0,1], the fixed test subset (``protocols.n_images``).
        test_labels: ``(N,)``.
    """

    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def protocol_data(run: ProbedRun) -> ProtocolData:
    """The fixed validation and test subsets of ``run`` for its protocols.

    Raises:
        ConfigError: If the run's data has no validation split (selection needs one).
    """
    cfg, splits = run.config, run.splits
    if len(splits.val) == 0:
        raise ConfigError(
            "the protocols select ALF/AFF epochs on the validation split, but the run has none; "
            "set data.val_per_class > 0"
        )
    val_n = checked_count(cfg, "protocols.val_images", len(splits.val), "validation images")
    val_index = eval_subset(splits.val.labels.cpu(), val_n)
    device = splits.val.images.device
    _, test_x, test_y = test_subset(
        splits, checked_count(cfg, "protocols.n_images", len(splits.test))
    )
    return ProtocolData(
        splits.val.images[val_index.to(device)].float().div_(255),
        splits.val.labels[val_index.to(splits.val.labels.device)],
        test_x.float().div_(255),
        test_y,
    )


def _pgd(
    cfg: RunConfig,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    steps: int,
    step_size: float,
    progress: bool = False,
) -> AttackResult:
    """PGD at ``protocols.eps`` (random start, one restart) through ``model``, frozen for the call."""
    pc = cfg.protocols
    with frozen_eval(model):
        return robust_accuracy(
            AttackTarget(model),
            images,
            labels,
            attack="pgd",
            eps=pc.eps,
            norm="linf",
            steps=steps,
            step_size=step_size,
            random_start=True,
            restarts=1,
            seed=cfg.seed,
            batch_size=pc.batch_size,
            device=cfg.device,
            progress=progress,
        )


def validation_robust_accuracy(cfg: RunConfig, model: nn.Module, data: ProtocolData) -> float:
    """Selection score: robust accuracy under PGD with the *training* settings, validation only."""
    pc = cfg.protocols
    return _pgd(
        cfg,
        model,
        data.val_images,
        data.val_labels,
        steps=pc.train_steps,
        step_size=pc.train_step_size,
    ).robust_accuracy


def train_identity(cfg: RunConfig, protocol: str, run_dir: Path) -> dict[str, Any]:
    """The settings a protocol's classifier depends on (its selection included)."""
    pc = cfg.protocols.model_dump(mode="json")
    identity: dict[str, Any] = {
        k: pc[k] for k in ("eps", "train_steps", "train_step_size", "val_images", "batch_size")
    }
    if protocol == "slf":
        identity["probe"] = cfg.probe.model_dump(mode="json")
        identity["probe_sha256"] = _sha256(run_dir / PROBE_WEIGHTS)
    else:
        identity[protocol] = pc[protocol]
    return identity


def eval_identity(cfg: RunConfig, protocol: str, run_dir: Path) -> dict[str, Any]:
    """The settings a protocol's evaluation record depends on: its classifier's and the evaluation's."""
    pc = cfg.protocols.model_dump(mode="json")
    evaluation = {k: v for k, v in pc.items() if k not in ("protocols", "alf", "aff")}
    return {**train_identity(cfg, protocol, run_dir), "evaluation": evaluation}


@dataclass
class Finetuned:
    """A protocol's classifier and how it was selected."""

    model: Classifier
    selected_epoch: int
    val_robust_accuracy: float
    history: list[dict[str, float]]
    seconds: float


def _slf(run_dir: Path, run: ProbedRun, data: ProtocolData) -> Finetuned:
    """SLF: the probe's head (selected by the probe on clean validation accuracy), not retrained."""
    tic = time.perf_counter()
    probe = read_json_record(run_dir / PROBE_FILE, what="probe record")
    score = validation_robust_accuracy(run.config, run.model, data)
    epoch = int(probe.get("best_epoch", 0))
    return Finetuned(run.model, epoch, score, [], time.perf_counter() - tic)


def _train_features(run: ProbedRun) -> tuple[Tensor, Tensor, Tensor]:
    """Standardisation (mean, std, dead) of the frozen pre-trained encoder's training features."""
    cfg, encoder = run.config, run.encoder
    feats = extract_features(
        encoder.features,
        encoder,
        run.splits.probe_train.images,  # videos: the training clips cut as evaluation samples
        batch_size=cfg.protocols.batch_size,
        device=cfg.device,
    )
    return standardization(feats)


def _finetune(
    run: ProbedRun, protocol: str, data: ProtocolData, progress: bool
) -> tuple[Classifier, Any]:
    """Train ALF's head or AFF's whole classifier; the selected model (eval mode) and the result."""
    cfg = run.config
    pc = cfg.protocols
    section = pc.alf if protocol == "alf" else pc.aff
    generator = make_generator(cfg.seed, f"{protocol}_init")
    common: dict[str, Any] = {
        "epochs": section.epochs,
        "lr": section.lr,
        "weight_decay": section.weight_decay,
        "batch_size": section.batch_size,
        "seed": cfg.seed,
        "stream": protocol,
        "augment": section.augment,
        "device": cfg.device,
        "progress": progress,
    }
    attack: dict[str, Any] = {
        "eps": pc.eps,
        "step_size": pc.train_step_size,
        "steps": pc.train_steps,
    }
    train = run.splits.probe_train  # images: the training set itself
    if protocol == "alf":
        mean, std, dead = _train_features(run)
        head = StandardizedLinear(mean, std, dead, run.splits.num_classes, generator)
        head = head.to(cfg.device)
        encoder = run.encoder
        reference = state_snapshot(encoder)
        with frozen_eval(encoder):  # eval mode, no gradient: only the head trains
            model = Classifier(encoder, head).eval()
            result = adversarial_finetune(
                model,
                list(head.linear.parameters()),
                head,
                functools.partial(alf_loss, model, **attack),
                train.images,
                train.labels,
                validate=lambda: validation_robust_accuracy(cfg, model, data),
                **common,
            )
        assert_frozen(encoder, reference)
        return Classifier(encoder, head.folded()).eval(), result
    encoder = copy.deepcopy(run.encoder)  # starts from the pre-trained weights
    encoder.requires_grad_(True)
    encoder.head.requires_grad_(False)  # the training head (projector) is not part of the model
    # A plain linear head on raw features: the backbone moves, so fixed standardisation statistics
    # of the pre-trained features would amplify features that start nearly constant.
    linear = init_linear(encoder.feature_dim, run.splits.num_classes, generator).to(cfg.device)
    model = Classifier(encoder, linear)
    parameters = [*encoder.backbone.parameters(), *linear.parameters()]
    aff = pc.aff
    result = adversarial_finetune(
        model,
        parameters,
        model,
        functools.partial(trades_step, model, beta=aff.beta, **attack),
        train.images,
        train.labels,
        validate=lambda: validation_robust_accuracy(cfg, model, data),
        **common,
    )
    return model.eval(), result


def _trained(
    run_dir: Path, run: ProbedRun, protocol: str, data: ProtocolData, progress: bool
) -> Finetuned:
    """ALF/AFF: the saved classifier when its training record and weights match, else trained now."""
    cfg = run.config
    expected = {
        "run_id": cfg.run_id(),
        "protocol": protocol,
        "checkpoint_epoch": run.checkpoint.epoch,
        "settings": train_identity(cfg, protocol, run_dir),
    }
    path, weights = run_dir / train_file(protocol), run_dir / weights_file(protocol)
    record = _matching(path, expected, TRAIN_RECORD)
    if record is not None and weights.is_file() and _sha256(weights) == record["weights_sha256"]:
        head = nn.Linear(run.encoder.feature_dim, run.splits.num_classes)
        if protocol == "alf":
            load_weights(head, weights, require_finite=True)
            model = Classifier(run.encoder, head.to(cfg.device)).eval()
        else:
            model = Classifier(copy.deepcopy(run.encoder), head).to(cfg.device)
            load_weights(model, weights, require_finite=True)
            model.eval()
        return Finetuned(
            model,
            record["selected_epoch"],
            record["val_robust_accuracy"],
            record.get("history", []),
            float(record.get("seconds", 0.0)),
        )
    tic = time.perf_counter()
    model, result = _finetune(run, protocol, data, progress)
    seconds = time.perf_counter() - tic

    def write() -> None:
        module = model.head if protocol == "alf" else model
        metadata = {
            "run_id": cfg.run_id(),
            "protocol": protocol,
            "checkpoint_epoch": str(run.checkpoint.epoch),
            "selected_epoch": str(result.best_epoch),
        }
        save_weights(module, weights, metadata)  # atomic (temporary file, then rename)
        write_json_atomic(
            path,
            {
                **expected,
                "selected_epoch": result.best_epoch,
                "val_robust_accuracy": result.best_score,
                "history": result.history,
                "seconds": seconds,
                "weights_sha256": _sha256(weights),
                **provenance(),
            },
        )

    on_main(write)
    return Finetuned(model, result.best_epoch, result.best_score, result.history, seconds)


def _corruptions(
    cfg: RunConfig, run: ProbedRun, model: nn.Module, progress: bool
) -> list[dict[str, Any]]:
    """Accuracy per (corruption, severity) of ``model`` on the fixed corruption subset."""
    from cslrobust.corruptions import CORRUPTION_NAMES, evaluate_corruptions
    from cslrobust.data import default_data_root

    pc = cfg.protocols
    names = list(pc.corruptions) if pc.corruptions is not None else list(CORRUPTION_NAMES)
    if not names:
        return []
    _, images, labels = test_subset(
        run.splits, checked_count(cfg, "protocols.corruption_images", len(run.splits.test))
    )
    if tuple(images.shape[-2:]) != (32, 32):
        raise ConfigError(
            f"corruptions use the CIFAR 32x32 parameters, but the images are {tuple(images.shape[-2:])}; "
            "set protocols.corruptions: [] to skip them"
        )
    with frozen_eval(model):
        target = AttackTarget(model)

        def predict(x: Tensor) -> Tensor:
            with torch.no_grad():
                logits: Tensor = target(x)
            return logits

        rows = evaluate_corruptions(
            predict,
            images.cpu(),
            labels.cpu(),
            names=names,
            severities=list(pc.severities),
            seed=cfg.seed,
            cache_dir=(cfg.data.root or default_data_root()) / "corruptions",
            batch_size=pc.batch_size,
            device=cfg.device,
            progress=progress,
        )
    return [dict(r) for r in rows]


def protocol_gates(
    cfg: RunConfig,
    model: nn.Module,
    data: ProtocolData,
    pgd: AttackResult,
    autoattack: Any | None,
) -> list[GateResult]:
    """The sanity gates of one protocol's classifier, with its PGD evaluation settings.

    Result gates on the PGD and AutoAttack numbers (ordering); on the first ``gate_images`` of the
    test subset: the whole PGD path at eps = 0, PGD at ``large_eps_linf`` (near 0), input gradients,
    PGD convergence at ``eps``; AutoAttack's examples re-evaluated on the whole subset.
    """
    pc = cfg.protocols
    thresholds = GateThresholds(large_eps=pc.large_eps_linf)
    common: dict[str, Any] = {"seed": cfg.seed, "batch_size": pc.batch_size, "device": cfg.device}
    point = AccuracyRow("pgd", "linf", pc.eps, pgd.clean_accuracy, pgd.robust_accuracy, pgd.n)
    aa = [autoattack] if autoattack is not None else []
    gates = run_gates([point], autoattack=aa, thresholds=thresholds)
    n = len(data.test_images)
    if pc.gate_images is not None:
        n = min(n, checked_count(cfg, "protocols.gate_images", n, "images of the test subset") or n)
    images, labels = data.test_images[:n], data.test_labels[:n]
    with frozen_eval(model):
        target = AttackTarget(model)
        gates += run_gates(
            (),
            target=target,
            images=images,
            labels=labels,
            convergence=[
                ConvergenceSettings(
                    eps=pc.eps, norm="linf", steps=pc.eval_steps, restarts=pc.convergence_restarts
                )
            ],
            gate_attacks=[
                GateAttack(
                    attack="pgd",
                    norm="linf",
                    steps=pc.eval_steps,
                    relative_step_size=pc.eval_step_size / pc.eps,
                    restarts=1,
                )
            ],
            thresholds=thresholds,
            **common,
        )
        for result in aa:
            gates.append(
                gate_adversarial_examples(
                    target,
                    data.test_images,
                    data.test_labels,
                    result.x_adv,
                    eps=result.eps,
                    norm="linf",
                    reported_robust_correct=result.robust_correct,
                    max_mismatch=thresholds.max_reevaluation_mismatch,
                    atol=thresholds.atol,
                    batch_size=pc.batch_size,
                    device=cfg.device,
                    label=f"autoattack/linf/eps={result.eps:.4g}",
                )
            )
    return gates


def _evaluate(
    run_dir: Path,
    run: ProbedRun,
    protocol: str,
    classifier: Finetuned,
    data: ProtocolData,
    progress: bool,
) -> dict[str, Any]:
    """Clean, PGD, AutoAttack, corruptions and gates of one protocol's classifier: its record body."""
    cfg = run.config
    pc = cfg.protocols
    model = classifier.model
    tic = time.perf_counter()
    pgd = _pgd(
        cfg,
        model,
        data.test_images,
        data.test_labels,
        steps=pc.eval_steps,
        step_size=pc.eval_step_size,
        progress=progress,
    )
    autoattack = None
    if pc.autoattack is not None:
        version, attacks = (
            (pc.autoattack, None) if isinstance(pc.autoattack, str) else ("custom", pc.autoattack)
        )
        state = (
            run_dir / "autoattack" / f"protocol-{protocol}-{_state_digest(model)[:12]}-{version}"
        )
        with frozen_eval(model):
            autoattack = run_autoattack(
                AttackTarget(model),
                data.test_images,
                data.test_labels,
                eps=pc.eps,
                norm="linf",
                version=version,  # type: ignore[arg-type]
                attacks=attacks,
                seed=cfg.seed,
                batch_size=pc.batch_size,
                device=cfg.device,
                state_dir=state,
                verbose=False,
            )
    corruptions = _corruptions(cfg, run, model, progress)
    gates = protocol_gates(cfg, model, data, pgd, autoattack)
    body: dict[str, Any] = {
        "clean": {
            "accuracy": pgd.clean_accuracy,
            "n": pgd.n,
            "correct_bits": pack_bits(pgd.clean_correct.cpu()),
        },
        "pgd": {
            "eps": pc.eps,
            "eps_display": format_linf_radius(pc.eps),
            "steps": pc.eval_steps,
            "step_size": pc.eval_step_size,
            "random_start": True,
            "restarts": 1,
            "clean_accuracy": pgd.clean_accuracy,
            "robust_accuracy": pgd.robust_accuracy,
            "n": pgd.n,
            "clean_correct_bits": pack_bits(pgd.clean_correct.cpu()),
            "robust_correct_bits": pack_bits(pgd.robust_correct.cpu()),
        },
        "autoattack": None
        if autoattack is None
        else {
            "eps": autoattack.eps,
            "version": autoattack.version,
            "attacks": list(autoattack.attacks),
            "flags": list(autoattack.flags),
            "clean_accuracy": autoattack.clean_accuracy,
            "robust_accuracy": autoattack.robust_accuracy,
            "n": autoattack.n,
            "clean_correct_bits": pack_bits(autoattack.clean_correct.cpu()),
            "robust_correct_bits": pack_bits(autoattack.robust_correct.cpu()),
        },
        "corruptions": corruptions,
        "gates": [asdict(g) for g in gates],
        "gates_failed": [g.name for g in gates if not g.passed],
        "gates_text": format_gates(gates),
        "eval_seconds": time.perf_counter() - tic,
    }
    return body


def run_protocol(
    run_dir: Path, run: ProbedRun, protocol: str, data: ProtocolData, progress: bool
) -> dict[str, Any]:
    """One protocol's evaluation record: read back when it matches, else built (and written)."""
    cfg = run.config
    expected = {
        "run_id": cfg.run_id(),
        "protocol": protocol,
        "checkpoint_epoch": run.checkpoint.epoch,
        "settings": eval_identity(cfg, protocol, run_dir),
    }
    path = run_dir / record_file(protocol)
    found = _matching(path, expected, EVAL_RECORD)
    if found is not None:
        return found
    if protocol == "slf":
        classifier = _slf(run_dir, run, data)
    else:
        classifier = _trained(run_dir, run, protocol, data, progress)
    record = {
        **expected,
        "selected_epoch": classifier.selected_epoch,
        "val_robust_accuracy": classifier.val_robust_accuracy,
        "val_n": len(data.val_images),
        "history": classifier.history,
        "train_seconds": classifier.seconds,
        **_evaluate(run_dir, run, protocol, classifier, data, progress),
        **provenance(),
    }

    def write() -> dict[str, Any]:
        write_json_atomic(path, record)
        return record

    return on_main(write)


def run_protocols(
    run_dir: Path, *, config: RunConfig | None = None, progress: bool = True
) -> dict[str, Any]:
    """Build and evaluate every protocol of ``protocols.protocols`` on a trained, probed run.

    Args:
        run_dir: A run folder with a checkpoint and ``probe.safetensors``.
        config: Protocol settings and device (default: the run's saved config).
        progress: Show progress bars.

    Returns:
        ``{"run_id", "checkpoint_epoch", "protocols": {p: record}}``.
    """
    run = load_probed_run(run_dir, config=config, head="probe", progress=progress)
    data = protocol_data(run)
    records = {
        p: run_protocol(run_dir, run, p, data, progress) for p in run.config.protocols.protocols
    }
    return {
        "run_id": run.config.run_id(),
        "checkpoint_epoch": run.checkpoint.epoch,
        "protocols": records,
    }


def protocol_rows(result: Mapping[str, Any]) -> Rows:
    """Rows of the protocols stage (see the module docstring for the names)."""
    rows: Rows = []
    epoch = result["checkpoint_epoch"]
    for p, r in result["protocols"].items():
        pre = f"{PREFIX}{p}/"
        clean = r["clean"]
        rows.append(
            {
                "metric": pre + "clean_accuracy",
                "value": clean["accuracy"],
                "n": clean["n"],
                "correct_bits": clean["correct_bits"],
                "epoch": epoch,
            }
        )
        pgd = r["pgd"]
        rows.append(
            {
                "metric": pre + "robust_accuracy",
                "attack": "pgd",
                "norm": "linf",
                "eps": pgd["eps"],
                "epoch": epoch,
                "value": pgd["robust_accuracy"],
                "n": pgd["n"],
                "steps": pgd["steps"],
                "step_size": pgd["step_size"],
                "restarts": pgd["restarts"],
                "correct_bits": pgd["robust_correct_bits"],
                "clean_bits": pgd["clean_correct_bits"],
            }
        )
        aa = r.get("autoattack")
        if aa:
            rows.append(
                {
                    "metric": pre + "robust_accuracy",
                    "attack": "autoattack",
                    "norm": "linf",
                    "eps": aa["eps"],
                    "epoch": epoch,
                    "value": aa["robust_accuracy"],
                    "n": aa["n"],
                    "version": aa["version"],
                    "attacks": aa["attacks"],
                    "flags": aa["flags"],
                    "correct_bits": aa["robust_correct_bits"],
                    "clean_bits": aa["clean_correct_bits"],
                }
            )
        for c in r.get("corruptions", []):
            rows.append(
                {
                    "metric": pre + "corruption_accuracy",
                    "corruption": c["corruption"],
                    "severity": c["severity"],
                    "family": c["family"],
                    "n": c["n"],
                    "epoch": epoch,
                    "value": c["accuracy"],
                }
            )
        for g in r.get("gates", []):
            rows.append(
                {
                    "metric": f"{pre}gate/{g['name']}",
                    "value": float(g["passed"]),
                    "message": g["message"],
                }
            )
        rows.append(
            {
                "metric": pre + "val_robust_accuracy",
                "value": r["val_robust_accuracy"],
                "epoch": r["selected_epoch"],
                "n": r["val_n"],
            }
        )
        rows.append(
            {
                "metric": pre + "seconds",
                "value": float(r.get("train_seconds", 0.0)) + float(r.get("eval_seconds", 0.0)),
            }
        )
    return rows


register_stage(
    Stage(
        name="protocols",
        order=55,
        run=lambda cfg, progress: protocol_rows(
            run_protocols(cfg.run_dir, config=cfg, progress=progress)
        ),
        needs=("train", "probe"),
        key_inputs=lambda cfg: {"protocols": cfg.protocols.model_dump(mode="json")},
        sections=("protocols",),
        settings=("protocols",),
    )
)
