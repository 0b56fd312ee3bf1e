"""The protocols section: pairing by false-negative removal, the paired gain, rendering from a store."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cslrobust.statistics import paired_difference
from cslrobust.study.report import ReportContext, StudyResults, write_report
from cslrobust.study.report.protocols import (
    NO_ROWS,
    fn_pairs,
    gain,
    method_pairs,
    protocols_section,
)
from cslrobust.study.store import ResultsStore, pack_bits

ORACLE = {"detector": "oracle", "mode": "eliminate", "warmup_epochs": 0}


def _config(name: str, seed: int, fn=None, objective: str = "acl", lr: float = 0.5) -> dict:
    return {
        "name": f"{name}-s{seed}",
        "output_dir": "runs/x",
        "device": "cpu",
        "seed": seed,
        "train": {"epochs": 3, "lr": lr},
        "objective": {"name": objective, "temperature": 0.5, "fn": fn},
    }


def test_pairs_differ_only_by_the_detector_and_share_the_seed():
    configs = {
        ("acl", 0): _config("acl", 0),
        ("acl", 1): _config("acl", 1),
        ("acl_fn", 0): _config("acl_fn", 0, ORACLE),
        ("acl_fn", 1): _config("acl_fn", 1, ORACLE),
        ("acl_fast", 0): _config("acl_fast", 0, ORACLE, lr=1.0),  # another lr: no partner
        ("dynacl", 0): _config("dynacl", 0, objective="dynacl"),
        ("dynacl_fn", 0): _config("dynacl_fn", 0, ORACLE, objective="dynacl"),
        ("simclr_fnr", 0): _config("simclr_fnr", 0, ORACLE, objective="simclr_fnr"),
        ("simclr", 0): _config("simclr", 0, objective="simclr"),
    }
    pairs = fn_pairs(configs)
    assert sorted(pairs) == [
        (("acl_fn", 0), ("acl", 0)),
        (("acl_fn", 1), ("acl", 1)),
        (("dynacl_fn", 0), ("dynacl", 0)),
    ]
    assert method_pairs(configs) == {("acl_fn", "acl"): [0, 1], ("dynacl_fn", "dynacl"): [0]}
    # method-level keys work too; an objective without `fn` counts as no removal
    plain = {
        "rocl": {"objective": {"name": "rocl"}},
        "rocl_fn": {"objective": {"name": "rocl", "fn": ORACLE}},
    }
    assert fn_pairs(plain) == [("rocl_fn", "rocl")]
    assert fn_pairs(plain, objectives=("acl",)) == []


def test_paired_difference_keeps_each_seeds_pair_together():
    rng = np.random.default_rng(0)
    b = rng.random((3, 50)) < 0.5
    a = b.copy()
    a[:, :5] = True  # a wins on a few images, for every seed
    est = paired_difference(a, b)
    assert est.value == pytest.approx(a.mean() - b.mean()) and est.method == "hierarchical"
    assert est.low <= est.value <= est.high
    # identical models: no difference in any resample (the seed draw is shared by the pair)
    same = paired_difference(b, b)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    one = paired_difference(a[0], b[0])
    assert one.method == "bootstrap"
    with pytest.raises(ValueError):
        paired_difference(a, b[:2])


PROTOCOL_VALUES = {  # method -> seed -> protocol -> (clean, pgd, autoattack) correct counts of 20
    "acl": {0: {"slf": (15, 8, 7), "alf": (12, 9, 8), "aff": (14, 10, 9)}},
    "acl_fn": {0: {"slf": (16, 10, 9), "alf": (13, 10, 10), "aff": (15, 12, 11)}},
}
PROTOCOL_VALUES["acl"][1] = PROTOCOL_VALUES["acl"][0]
PROTOCOL_VALUES["acl_fn"][1] = {"slf": (16, 11, 9), "alf": (13, 11, 10), "aff": (15, 12, 12)}
N = 20
EPS = 8 / 255


def _bits(k: int) -> str:
    return pack_bits(np.arange(N) < k)


def _rows(method: str, seed: int) -> list[dict]:
    rows = []
    for p, (clean, pgd, aa) in PROTOCOL_VALUES[method][seed].items():
        pre = f"protocol/{p}/"
        rows.append(
            {
                "metric": pre + "clean_accuracy",
                "value": clean / N,
                "n": N,
                "correct_bits": _bits(clean),
            }
        )
        for attack, k in (("pgd", pgd), ("autoattack", aa)):
            rows.append(
                {
                    "metric": pre + "robust_accuracy",
                    "attack": attack,
                    "norm": "linf",
                    "eps": EPS,
                    "value": k / N,
                    "n": N,
                    "correct_bits": _bits(k),
                    "clean_bits": _bits(clean),
                }
            )
        rows.append({"metric": pre + "val_robust_accuracy", "value": 0.4, "epoch": 2, "n": 10})
        rows.append({"metric": pre + "gate/input_gradients", "value": 1.0, "message": "ok"})
    return rows


@pytest.fixture
def protocol_store(tmp_path: Path):
    db = tmp_path / "results.db"
    cells = []
    with ResultsStore(db) as store:
        for method, seeds in PROTOCOL_VALUES.items():
            for seed in seeds:
                cell_id = f"{method}-{seed}"
                fn = ORACLE if method == "acl_fn" else None
                config = _config(method, seed, fn)
                store.register_cell(cell_id, "t", method, seed, config)
                store.commit_stage(cell_id, "protocols:k", _rows(method, seed), "sha")
                cells.append(
                    SimpleNamespace(
                        config=SimpleNamespace(
                            name=config["name"],
                            seed=seed,
                            objective=SimpleNamespace(name="acl", family="contrastive", fn=fn),
                            model_dump=lambda mode="json", c=config: c,
                        ),
                        cell_id=cell_id,
                        method=method,
                        stages={"protocols": "protocols:k"},
                    )
                )
    return db, cells


def test_the_section_renders_tables_gain_reference_and_plot(protocol_store, tmp_path: Path):
    db, cells = protocol_store
    out = tmp_path / "report"
    with ResultsStore(db) as store:
        _, path = write_report("t", cells, store, out, sections=["protocols"])
    md = path.read_text()
    assert "Adversarial pre-training: evaluation protocols" in md
    for title in ("SLF (standard", "ALF (adversarial linear", "AFF (adversarial full"):
        assert title in md
    assert "Gain of false-negative removal" in md and "| acl_fn | acl | 0, 1 |" in md
    assert "39.17" in md and "not comparable" in md
    assert (out / "protocols.png").stat().st_size > 0
    # the AFF AutoAttack gain: (11 + 12) / 40 - (9 + 9) / 40 = 12.5 points
    line = next(row for row in md.splitlines() if "| AFF | AutoAttack 8/255 |" in row)
    assert "12.5 [" in line


def test_the_gain_is_paired_by_seed(protocol_store):
    db, cells = protocol_store
    with ResultsStore(db) as store:
        res = StudyResults(store.rows(), ["acl", "acl_fn"])
    est = gain(res, "acl_fn", "acl", [0, 1], "protocol/slf/robust_accuracy", attack="pgd", eps=EPS)
    assert est.value == pytest.approx((10 + 11 - 8 - 8) / 40) and est.method == "hierarchical"
    only_seed_0 = gain(
        res, "acl_fn", "acl", [0], "protocol/slf/robust_accuracy", attack="pgd", eps=EPS
    )
    assert only_seed_0.value == pytest.approx(2 / 20) and only_seed_0.method == "bootstrap"


def test_without_protocol_rows_the_section_is_one_line_or_omitted(tmp_path: Path):
    res = StudyResults([], ["a"])
    ran = protocols_section(res, ReportContext(tmp_path, "a", "a", stages=frozenset({"protocols"})))
    assert [b.markdown() for b in ran.blocks] == [NO_ROWS] and not ran.plots
    skipped = protocols_section(res, ReportContext(tmp_path, "a", "a"))
    assert not skipped.blocks and not skipped.plots


def test_failed_protocol_gates_reach_the_report_top(protocol_store, tmp_path: Path):
    db, cells = protocol_store
    with ResultsStore(db) as store:
        rows = _rows("acl", 0)
        rows[-1] = {**rows[-1], "value": 0.0, "message": "gradient masking"}
        store.commit_stage("acl-0", "protocols:k", rows, "sha")
        _, path = write_report("t", cells, store, tmp_path / "r", sections=["protocols"])
    text = path.read_text()
    assert "GATE FAILED: acl (seed 0): protocol/aff/gate/input_gradients: gradient masking" in text


def test_claim_c5_reads_the_gain_of_every_pair_per_protocol(protocol_store, tmp_path: Path):
    db, cells = protocol_store
    out = tmp_path / "report"
    with ResultsStore(db) as store:
        _, path = write_report("t", cells, store, out, sections=["findings", "protocols"])
    md = path.read_text()
    line = next(row for row in md.splitlines() if row.startswith("- **C5**"))
    assert "acl_fn - acl" in line
    for where in ("SLF pgd", "ALF autoattack", "AFF autoattack"):
        assert where in line
    assert "AFF autoattack: 12.5 [" in line  # the AFF AutoAttack gain, as in the gain table
