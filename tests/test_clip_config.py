"""Clip data sets in the run config: keys, layout checks at config time, run ids, clip length."""

import subprocess
import sys

import pytest

from cslrobust.config import build_run_config
from cslrobust.errors import ConfigError

CLIP_BASE = {
    "data": {"name": "synthetic_clips"},
    "model": {"arch": "r3d_18"},
    "augment": {"kind": "simclr_clip"},
}


def _with(**sections: dict) -> dict:
    merged = {k: dict(v) for k, v in CLIP_BASE.items()}
    for key, values in sections.items():
        merged.setdefault(key, {}).update(values)
    return merged


def _one_line_error(values: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build_run_config(values)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_clip_run_config_is_valid_and_names_its_clip_length() -> None:
    cfg = build_run_config(CLIP_BASE)
    assert cfg.data.layout == "clip" and cfg.data.clip_frames == 8
    assert cfg.clip_frames() == 8
    jittered = build_run_config(_with(data={"frames": 10}, augment={"frames": 6}))
    assert jittered.clip_frames() == 6 and jittered.data.clip_frames == 10
    assert build_run_config({}).clip_frames() is None


def test_image_backbone_on_clip_data_fails_at_config_time() -> None:
    message = _one_line_error(_with(model={"arch": "resnet18"}))
    assert message == (
        "model.arch 'resnet18' supports image samples, data 'synthetic_clips' gives clip samples; "
        "expected one of model.arch: ['r2plus1d_18', 'r3d_18']"
    )


def test_image_views_on_clip_data_fail_at_config_time() -> None:
    message = _one_line_error(_with(augment={"kind": "simclr"}))
    assert message.startswith(
        "augment.kind 'simclr' supports image samples, data 'synthetic_clips'"
    )
    assert message.endswith("expected one of augment.kind: ['simclr_clip']")


def test_clip_backbone_and_views_on_image_data_fail_at_config_time() -> None:
    message = _one_line_error({"model": {"arch": "r3d_18"}})
    assert (
        "model.arch 'r3d_18' supports clip samples, data 'cifar10' gives image samples" in message
    )
    message = _one_line_error({"augment": {"kind": "simclr_clip"}})
    assert "augment.kind 'simclr_clip' supports clip samples, data 'cifar10'" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"name": "cifar10", "frames": 8},
            "frames applies to synthetic_clips / ucf101 / hmdb51 only",
        ),
        ({"name": "cifar10", "eval_clips": 3}, "eval_clips applies to synthetic_clips"),
        ({"name": "synthetic_clips", "stride": 2}, "stride applies to ucf101 / hmdb51 only"),
        ({"name": "ucf101", "variant": "motion_only"}, "variant applies to synthetic_clips only"),
        ({"name": "ucf101", "source": "/v"}, "needs source (the video folder) and split_dir"),
        ({"name": "hmdb51", "source": "/v", "split_dir": "/s", "fold": 4}, "fold"),
    ],
)
def test_clip_keys_out_of_place_are_one_line_errors(data: dict, expected: str) -> None:
    values = {"data": data} if data["name"] == "cifar10" else {**_with(), "data": data}
    assert expected in _one_line_error(values)


def test_stems_are_checked_per_architecture() -> None:
    assert build_run_config(_with(model={"stem": "kinetics"})).model.stem == "kinetics"
    assert "unknown stem 'kinetics' for arch 'resnet18'" in _one_line_error(
        {"model": {"stem": "kinetics"}}
    )
    assert "unknown stem 'imagenet' for arch 'r3d_18'" in _one_line_error(
        _with(model={"stem": "imagenet"})
    )


def test_clip_keys_at_their_defaults_keep_image_run_ids() -> None:
    # The ids of every image run made before clip data existed (checked against the ids of
    # issue 16's bitwise check: supervised and simclr on 300 JPEG images, width 8, seed 0).
    cfg = build_run_config({})
    explicit = build_run_config(
        {"data": {"name": "cifar10", "eval_clips": 1, "frames": None, "skip_bad": False}}
    )
    assert cfg.run_id() == explicit.run_id() == "3d2fab66a8de"


def test_clip_keys_change_clip_run_ids() -> None:
    ids = {
        build_run_config(_with(data=d)).run_id()
        for d in ({}, {"frames": 6}, {"eval_clips": 2}, {"variant": "motion_only"})
    }
    assert len(ids) == 4


def test_cli_reports_a_layout_mismatch_in_one_line(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cslrobust",
            "train",
            "--set",
            "data.name=synthetic_clips",
            "--set",
            f"output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.arch 'resnet18' supports image samples" in lines[0]
