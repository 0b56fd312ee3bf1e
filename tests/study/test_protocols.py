"""The protocols stage on a tiny trained run: SLF/ALF/AFF, their rows, gates, selection and resume."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from tests.study.conftest import STUDY

import cslrobust.study  # noqa: F401  (registers the stages)
from cslrobust.config import RunConfig, apply_overrides, build_run_config
from cslrobust.study import protocols as stage
from cslrobust.study.protocols import (
    protocol_data,
    protocol_rows,
    record_file,
    run_protocols,
    train_file,
    weights_file,
)
from cslrobust.study.report import write_report
from cslrobust.study.run_folder import load_probed_run, run_settings
from cslrobust.study.runner import open_store, run_study, study_cells
from cslrobust.study.spec import expand_study, load_study
from cslrobust.study.stages import stage_keys
from cslrobust.study.store import unpack_bits
from cslrobust.training import load_weights

REPO = Path(__file__).resolve().parents[2]

CHEAP = [
    "protocols.alf.epochs=2",
    "protocols.aff.epochs=2",
    "protocols.alf.batch_size=32",
    "protocols.aff.batch_size=32",
    "protocols.aff.lr=0.01",
    "protocols.train_steps=3",
    "protocols.eval_steps=4",
    "protocols.autoattack=[apgd-ce]",
    "protocols.corruptions=[]",
    "protocols.gate_images=8",
    "protocols.batch_size=40",
    "protocols.convergence_restarts=2",
]


def _with(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    return build_run_config(apply_overrides(cfg.model_dump(mode="json"), overrides))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synthetic_archive):
    """One simclr cell trained 1 epoch and probed; the protocols run once with spies on the loop."""
    tmp = tmp_path_factory.mktemp("protocols")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSLROBUST_DATA", str(tmp / "cache"))
        study = tmp / "study.yaml"
        study.write_text(
            STUDY.format(source=synthetic_archive, epochs=1).replace(
                "output_dir: out", f"output_dir: {tmp / 'out'}"
            )
        )
        spec = load_study(
            study,
            [
                "stages=[train, probe, protocols]",
                "methods={simclr: {objective: {name: simclr}}}",
                *(f"base.{o}" for o in CHEAP),
            ],
        )
        cfg = study_cells(spec)[0].config
        assert cfg.protocols == _with(cfg, CHEAP).protocols
        spy: dict = {}
        real_loop = stage.adversarial_finetune
        real_trades = stage.trades_step

        def loop(model, parameters, keep, step_loss, *args, **kwargs):
            name = kwargs["stream"]
            spy[f"{name}_encoder_before"] = {
                k: v.clone() for k, v in model.encoder.state_dict().items()
            }
            spy[f"{name}_head_before"] = {k: v.clone() for k, v in model.head.state_dict().items()}
            result = real_loop(model, parameters, keep, step_loss, *args, **kwargs)
            spy[f"{name}_encoder_after"] = {
                k: v.clone() for k, v in model.encoder.state_dict().items()
            }
            spy[f"{name}_head_after"] = {k: v.clone() for k, v in model.head.state_dict().items()}
            return result

        def trades(model, *args, **kwargs):
            if "aff_first_step" not in spy:
                spy["aff_first_step"] = {
                    k: v.clone() for k, v in model.encoder.backbone.state_dict().items()
                }
            return real_trades(model, *args, **kwargs)

        mp.setattr(stage, "adversarial_finetune", loop)
        mp.setattr(stage, "trades_step", trades)
        run_study(spec, progress=False, echo=lambda _: None)  # the runner runs the stage
        result = run_protocols(cfg.run_dir, config=cfg, progress=False)  # its records, read back
        with open_store(spec) as store:
            stored = [r for r in store.rows() if r["stage"].startswith("protocols:")]
            report = tmp / "report"
            write_report("tiny", study_cells(spec), store, report, sections=["protocols"])
        yield cfg, result, spy, mp, stored


def _pretrained_backbone(cfg):
    run = load_probed_run(cfg.run_dir, config=cfg, progress=False)
    return {k: v.clone() for k, v in run.encoder.backbone.state_dict().items()}


def test_rows_follow_the_convention_with_bits_per_image(tiny):
    cfg, result, _, _, stored = tiny
    rows = protocol_rows(result)
    assert sorted(r["metric"] for r in stored) == sorted(r["metric"] for r in rows)
    n = 40
    for p in ("slf", "alf", "aff"):
        mine = [r for r in rows if r["metric"].startswith(f"protocol/{p}/")]
        names = {r["metric"].removeprefix(f"protocol/{p}/").split("/")[0] for r in mine}
        assert names == {
            "clean_accuracy",
            "robust_accuracy",
            "gate",
            "val_robust_accuracy",
            "seconds",
        }, names
        (clean,) = [r for r in mine if r["metric"].endswith("/clean_accuracy")]
        bits = unpack_bits(clean["correct_bits"], clean["n"])
        assert clean["n"] == n and bits.mean() == pytest.approx(clean["value"])
        robust = {r["attack"]: r for r in mine if r["metric"].endswith("/robust_accuracy")}
        assert set(robust) == {"pgd", "autoattack"}
        for r in robust.values():
            assert r["norm"] == "linf" and r["eps"] == pytest.approx(8 / 255)
            got = unpack_bits(r["correct_bits"], r["n"])
            assert got.mean() == pytest.approx(r["value"])
            assert (got <= unpack_bits(r["clean_bits"], r["n"])).all()  # robust needs clean
        assert robust["pgd"]["steps"] == 4 and robust["pgd"]["step_size"] == pytest.approx(2 / 255)
        (val,) = [r for r in mine if r["metric"].endswith("/val_robust_accuracy")]
        assert val["n"] == 16 and val["epoch"] >= 1
        (seconds,) = [r for r in mine if r["metric"].endswith("/seconds")]
        assert seconds["value"] > 0
    selected = {p: r["selected_epoch"] for p, r in result["protocols"].items()}
    assert 1 <= selected["alf"] <= 2 and 1 <= selected["aff"] <= 2


def test_gates_run_per_protocol_with_the_pgd_settings(tiny):
    _, result, _, _, _ = tiny
    for p, record in result["protocols"].items():
        names = [g["name"] for g in record["gates"]]
        for prefix in (
            "attack_ordering",
            "eps_zero_path[pgd/linf]",
            "large_eps[pgd/linf/eps=0.1255]",
            "input_gradients",
            "pgd_convergence",
            "adversarial_examples[autoattack",
        ):
            assert any(name.startswith(prefix) for name in names), (p, prefix, names)
        eps_zero = next(g for g in record["gates"] if g["name"].startswith("eps_zero_path"))
        assert eps_zero["passed"] and eps_zero["details"]["steps"] == 4
        # the attack path at eps = 0 uses the evaluation step (2/255 relative to 8/255, at 32/255)
        assert eps_zero["details"]["step_size"] == pytest.approx(0.25 * 32 / 255)


def test_alf_leaves_the_encoder_bitwise_unchanged_and_trains_the_head(tiny):
    _, _, spy, _, _ = tiny
    before, after = spy["alf_encoder_before"], spy["alf_encoder_after"]
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    for k in before:  # parameters and BatchNorm buffers, bit for bit
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(
        spy["alf_head_before"]["linear.weight"], spy["alf_head_after"]["linear.weight"]
    )


def test_aff_starts_from_the_pretrained_backbone_and_changes_it(tiny):
    cfg, _, spy, _, _ = tiny
    pretrained = _pretrained_backbone(cfg)
    first = spy["aff_first_step"]
    assert all(torch.equal(first[k], pretrained[k]) for k in pretrained)
    changed = [
        k
        for k in pretrained
        if not torch.equal(spy["aff_encoder_after"][f"backbone.{k}"], pretrained[k])
    ]
    assert any(k.endswith("weight") for k in changed)
    # the saved classifier holds the selected finetuned weights with a folded plain linear head
    saved = load_probed_run(cfg.run_dir, config=cfg, progress=False).model
    saved.head = torch.nn.Linear(saved.encoder.feature_dim, 4)
    load_weights(saved, cfg.run_dir / weights_file("aff"), require_finite=True)
    assert any(
        not torch.equal(saved.encoder.backbone.state_dict()[k], pretrained[k]) for k in changed
    )


def test_selection_reads_the_validation_split_only(tiny):
    cfg, result, _, _, _ = tiny
    run = load_probed_run(cfg.run_dir, config=cfg, progress=False)
    data = protocol_data(run)
    tampered = dataclasses.replace(
        data,
        test_images=torch.rand_like(data.test_images),
        test_labels=(data.test_labels + 1) % 4,
    )
    _, fit = stage._finetune(run, "alf", tampered, progress=False)
    record = json.loads((cfg.run_dir / train_file("alf")).read_text())
    assert (
        fit.best_epoch == record["selected_epoch"] == result["protocols"]["alf"]["selected_epoch"]
    )
    assert [h["val_score"] for h in fit.history] == [h["val_score"] for h in record["history"]]


def test_a_second_run_reuses_records_and_the_aff_weights(tiny):
    cfg, result, _, mp, _ = tiny

    def refuse(*args, **kwargs):
        raise AssertionError("a finished protocol was trained again")

    mp.setattr(stage, "adversarial_finetune", refuse)
    assert run_protocols(cfg.run_dir, config=cfg, progress=False) == result
    # without the evaluation records, ALF/AFF are evaluated again from their saved weights
    sha = hashlib.sha256((cfg.run_dir / weights_file("aff")).read_bytes()).hexdigest()
    for p in ("alf", "aff"):
        (cfg.run_dir / record_file(p)).unlink()
    again = run_protocols(cfg.run_dir, config=cfg, progress=False)
    for p in ("alf", "aff"):
        for key in ("selected_epoch", "val_robust_accuracy", "clean", "pgd", "autoattack"):
            assert again["protocols"][p][key] == result["protocols"][p][key], (p, key)
    assert hashlib.sha256((cfg.run_dir / weights_file("aff")).read_bytes()).hexdigest() == sha
    # another evaluation setting re-evaluates without retraining; another training setting retrains
    changed = _with(cfg, ["protocols.eval_steps=5", "protocols.protocols=[alf]"])
    assert (
        run_protocols(cfg.run_dir, config=changed, progress=False)["protocols"]["alf"]["pgd"][
            "steps"
        ]
        == 5
    )
    with pytest.raises(AssertionError, match="trained again"):
        run_protocols(cfg.run_dir, config=_with(changed, ["protocols.alf.lr=0.02"]), progress=False)


def test_trained_runs_accept_protocols_overrides(tiny):
    cfg, _, _, _, _ = tiny
    settings = run_settings(cfg.run_dir, ["protocols.aff.beta=1.0", "protocols.autoattack=null"])
    assert settings.protocols.aff.beta == 1.0 and settings.protocols.autoattack is None
    assert settings.run_id() == cfg.run_id()


def test_protocols_settings_key_only_the_protocols_stage():
    base = RunConfig()
    other = _with(base, ["protocols.aff.beta=1.0", "protocols.eps=4/255"])
    assert other.run_id() == base.run_id()
    a, b = stage_keys(base), stage_keys(other)
    assert {k for k in a if a[k] != b[k]} == {"protocols"}


# sha256 (first 16 hex digits) of every preset cell's keys of the stages that existed before the
# protocols stage, computed on main before it was added: a new RunConfig section changes none.
PRESET_STAGE_KEYS = {
    "cpu-budget": "d06c986ee5f7c009",
    "cpu-families": "d9cc1294b8ba9699",
    "cpu-fn": "4e1de6adc1cfda81",
    "cpu-seeds": "efb69934f82c71f6",
    "cpu-small": "5518935f09909819",
    "gpu-quick": "e7bcef47373e0eca",
    "paper-cifar10": "b910eb4842ecf981",
    "paper-cifar100": "227c1b5b94e30bab",
    "paper-families-cifar10": "251d422d0e5767bc",
}
EARLIER_STAGES = ["train", "probe", "attack", "gates", "analyze", "evaluate", "trajectory"]


@pytest.mark.parametrize("preset", sorted(PRESET_STAGE_KEYS))
def test_run_ids_and_stage_keys_of_the_presets_are_unchanged(preset):
    cells = expand_study(load_study(REPO / "presets" / f"{preset}.yaml"))
    payload = {c.name: stage_keys(c, EARLIER_STAGES) for c in cells}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert digest == PRESET_STAGE_KEYS[preset]


def test_the_report_renders_the_stored_protocol_rows(tiny):
    cfg, _, _, _, _ = tiny
    md = (cfg.output_dir.parent / "report" / "report.md").read_text()
    for title in ("SLF (standard", "ALF (adversarial linear", "AFF (adversarial full"):
        assert title in md
    assert "| simclr | 1 |" in md and "AutoAttack 8/255" in md
    assert (cfg.output_dir.parent / "report" / "protocols.png").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("protocols.autoattack=strong", "is not a version"),
        ("protocols.autoattack=[apgd-xx]", "unknown AutoAttack attack"),
        ("protocols.protocols=[slf, slf]", "repeat a name"),
        ("protocols.large_eps_linf=4/255", "must exceed eps"),
        ("protocols.protocols=[lf]", "protocols.protocols"),
        ("protocols.aff.beta=-1", "protocols.aff.beta"),
    ],
)
def test_protocols_settings_are_validated_in_one_line(override, message):
    from cslrobust.config import load_run_config
    from cslrobust.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_run_config(None, [override])
