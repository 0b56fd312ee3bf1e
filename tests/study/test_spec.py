from pathlib import Path

import pytest

from cslrobust.errors import ConfigError
from cslrobust.study.spec import deep_merge, expand_study, load_study, method_of

STUDY = """
name: tiny
output_dir: out
seeds: [0, 1]
base:
  data: {train_per_class: 10, source: data.tar.gz}
  train: {epochs: 2}
methods:
  supervised: {objective: {name: supervised}}
  simclr_oracle: {objective: {name: simclr_fnr, fn: {mode: attract}}}
"""


def test_expand_cells_resolve_paths_and_merge(tmp_path: Path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    spec = load_study(path)
    cells = expand_study(spec)
    # Folder names carry the cell id (first 8 hex digits of the training-config hash).
    assert [c.name for c in cells] == [
        f"{m}-s{s}-{c.run_id()[:8]}"
        for (m, s), c in zip(
            [("supervised", 0), ("supervised", 1), ("simclr_oracle", 0), ("simclr_oracle", 1)],
            cells,
            strict=True,
        )
    ]
    assert [method_of(c) for c in cells] == ["supervised"] * 2 + ["simclr_oracle"] * 2
    assert cells[1].seed == 1 and cells[2].objective.fn.mode == "attract"
    assert cells[0].output_dir == (tmp_path / "out").resolve()
    assert cells[0].data.source == tmp_path / "data.tar.gz"
    assert cells[0].train.epochs == 2 and cells[0].data.train_per_class == 10
    assert len({c.run_id() for c in cells}) == 4


def test_video_split_dir_resolves_like_the_source(tmp_path: Path):
    path = tmp_path / "study.yaml"
    path.write_text(
        STUDY.replace(
            "{train_per_class: 10, source: data.tar.gz}",
            "{name: ucf101, source: UCF-101, split_dir: lists}",
        ).replace(
            "  train: {epochs: 2}",
            "  train: {epochs: 2}\n  augment: {kind: simclr_clip}\n  model: {arch: r3d_18}",
        )
    )
    cell = expand_study(load_study(path))[0]
    assert (cell.data.source, cell.data.split_dir) == (tmp_path / "UCF-101", tmp_path / "lists")
    cell = expand_study(load_study(path, ["base.data.split_dir=/abs/lists"]))[0]
    assert cell.data.split_dir == Path("/abs/lists")


def test_overrides_and_errors_name_the_method_and_key(tmp_path: Path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    assert load_study(path, ["base.train.epochs=5"]).base["train"]["epochs"] == 5
    with pytest.raises(ConfigError, match="method 'supervised': .*train.lr=-1"):
        load_study(path, ["methods.supervised.train.lr=-1"])
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        load_study(path, ["colour=red"])
    with pytest.raises(ConfigError, match="methods"):
        load_study(path, ["methods={}"])


def test_deep_merge():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}}) == {
        "a": {"b": 3, "c": 2},
        "d": 1,
    }


def test_report_folder_defaults_to_output_dir_and_resolves_report_dir(tmp_path: Path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    assert load_study(path).report_folder == (tmp_path / "out").resolve()
    path.write_text(STUDY.replace("output_dir: out", "output_dir: out\nreport_dir: out/other"))
    spec = load_study(path)
    assert spec.report_folder == (tmp_path / "out" / "other").resolve()
    assert spec.output_dir == (tmp_path / "out").resolve()  # cells stay shared


def test_trajectory_stage_without_kept_checkpoints_is_an_error(synthetic_study):
    with pytest.raises(ConfigError, match="stage 'trajectory' keeps no checkpoint"):
        load_study(synthetic_study(), ["stages=[train,probe,attack,trajectory]"])
    spec = load_study(
        synthetic_study(), ["stages=[train,probe,attack,trajectory]", "trajectory_every=1"]
    )
    assert "trajectory" in spec.stages
