"""One eps unit: L-inf radii are fractions, parsed once at the edge from "k/255" or a number."""

import json
from pathlib import Path

import pytest

from cslrobust.config import (
    BARE_LINF_MAX,
    RunConfig,
    build_run_config,
    format_linf_radius,
    load_saved_config,
    parse_linf_radius,
    save_config,
    section_identity,
)
from cslrobust.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8/255", 8.0 / 255.0),
        ("0.5/255", 0.5 / 255.0),
        (" 16 / 255 ", 16.0 / 255.0),
        (0.0314, 0.0314),
        ("0.0314", 0.0314),
        (0, 0.0),
        ("1/1", 1.0),
    ],
)
def test_radii_parse_to_fractions(text, expected):
    assert parse_linf_radius(text) == expected  # exact: the same float as k / 255.0


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("eight", "expected an L-inf radius such as '8/255' or 0.0314, got 'eight'"),
        ("8/0", "got '8/0'"),
        ("8/x", "got '8/x'"),
        ("300/255", "outside [0, 1]"),
        ("-1/255", "outside [0, 1]"),
        (8, "write '8/255' if you meant units of 1/255"),
        (0.5, "write '0.5/255'"),
        ("2", "write '2/255'"),
        (True, "got True"),
        ([1], "got [1]"),
    ],
)
def test_bad_radii_are_rejected_with_a_hint(value, fragment):
    with pytest.raises(ValueError) as info:
        parse_linf_radius(value)
    assert fragment in str(info.value)


def test_bare_numbers_up_to_the_bound_are_fractions():
    assert parse_linf_radius(BARE_LINF_MAX) == BARE_LINF_MAX
    with pytest.raises(ValueError):
        parse_linf_radius(BARE_LINF_MAX * 1.01)


@pytest.mark.parametrize(
    "eps", [0.0, 0.25 / 255, 0.5 / 255, 1 / 255, 8 / 255, 16 / 255, 0.0314, 0.3]
)
def test_formatting_round_trips_exactly(eps):
    text = format_linf_radius(eps)
    assert parse_linf_radius(text) == eps
    if eps in (0.5 / 255, 8 / 255):
        assert text in ("0.5/255", "8/255")


def test_config_error_names_the_key_on_one_line():
    with pytest.raises(ConfigError) as info:
        build_run_config({"evaluation": {"large_eps_linf": 16}})
    message = str(info.value)
    assert "evaluation.large_eps_linf=16" in message and "write '16/255'" in message
    assert "\n" not in message


def test_saved_config_writes_radii_as_k_over_255(tmp_path: Path):
    cfg = build_run_config({"attack": {"eps_linf": ["8/255", 0.0314]}})
    save_config(cfg, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attack"]["eps_linf"] == ["8/255", "8.007/255"]
    assert saved["config_version"] == 2
    assert load_saved_config(tmp_path / "config.json") == cfg


def test_layout_1_config_is_upgraded_with_its_meaning(tmp_path: Path):
    """Configs saved before radii became fractions held numbers in units of 1/255."""
    old = RunConfig().model_dump(mode="json")
    del old["config_version"]
    old["attack"]["eps_linf"] = [0.5, 1.0, 2.0]
    old["evaluation"]["large_eps_linf"] = 16.0
    old["evaluation"]["autoattack_eps_linf"] = [8]
    old["geometry"]["sensitivity_eps"] = [1.0, 4.0]
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = load_saved_config(tmp_path / "config.json")
    assert cfg.attack.eps_linf == (0.5 / 255.0, 1.0 / 255.0, 2.0 / 255.0)
    assert cfg.evaluation.large_eps_linf == 16.0 / 255.0
    assert cfg.evaluation.autoattack_eps_linf == (8.0 / 255.0,)
    assert cfg.geometry.sensitivity_eps == (1.0 / 255.0, 4.0 / 255.0)
    # Stage keys hash the layout-1 units, so results stored before the change stay valid.
    assert section_identity(cfg, "attack")["eps_linf"] == [0.5, 1.0, 2.0]
    assert section_identity(cfg, "evaluation")["large_eps_linf"] == 16.0
