"""A damaged run file anywhere is one line naming the file and the field, exit code 2, nothing changed.

The damage cases are small reusable functions and tables (``STATE_DAMAGE``, ``CONFIG_DAMAGE``,
``HEADER_DAMAGE``, ...): each takes what a file holds and returns it damaged, with the field the error
must name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file
from typer.testing import CliRunner

from cslrobust.attacks import autoattack
from cslrobust.cli.main import app
from cslrobust.config import build_run_config
from cslrobust.errors import CheckpointError
from cslrobust.records import read_json_record
from cslrobust.study.attack import ATTACK_RECORD
from cslrobust.study.gates import run_gates_stage
from cslrobust.study.probe import run_probe
from cslrobust.study.train import run_train
from cslrobust.training import latest_checkpoint

runner = CliRunner()

# ---------------------------------------------------------------- damage helpers (reusable)


class RunsCodeWhenUnpickled:
    """A pickle payload whose unpickling would create ``marker`` (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def write_unsafe_pickle(path: Path, marker: Path) -> None:
    """Replace a torch file with a pickle that would run code when loaded."""
    torch.save({"epoch": 1, "payload": RunsCodeWhenUnpickled(marker)}, path)


def rewrite_torch(path: Path, damage: Callable[[Any], Any]) -> None:
    """Load a torch file (safely), apply ``damage`` to what it holds, and save the result."""
    torch.save(damage(torch.load(path, map_location="cpu", weights_only=True)), path)


def rewrite_json(path: Path, damage: Callable[[Any], Any]) -> None:
    """Apply ``damage`` to a JSON file's value."""
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))


def rewrite_weights(
    path: Path,
    *,
    tensors: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = dict,
    header: Callable[[dict[str, str]], dict[str, str]] = dict,
) -> None:
    """Rewrite a safetensors file with damaged ``tensors`` and/or ``header`` metadata."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    save_file(tensors(load_file(path)), str(path), metadata=header(metadata))


def with_nan(name: str) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Tensors with one NaN written into ``name``."""

    def damage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors[name].view(-1)[0] = float("nan")
        return tensors

    return damage


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


def _group(state: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    change(state["optimizer"]["param_groups"][0])
    return state


def _first_momentum(state: dict[str, Any]) -> dict[str, Any]:
    entry = next(iter(state["optimizer"]["state"].values()))
    entry["momentum_buffer"] = torch.zeros(2, 2)
    return state


Damage = tuple[str, Callable[[Any], Any], str]

#: (case, damage of the value of state.pt, fragment of the one-line error)
STATE_DAMAGE: list[Damage] = [
    ("a list", lambda s: [1, 2], "holds a list; expected an object"),
    ("no optimizer", lambda s: _without(s, "optimizer"), "field 'optimizer' is missing"),
    ("epoch as text", lambda s: {**s, "epoch": "1"}, "field 'epoch' is a str '1'"),
    ("epoch of another folder", lambda s: {**s, "epoch": 7}, "the epoch of its checkpoint"),
    ("history as text", lambda s: {**s, "history": "abc"}, "field 'history'"),
    ("momentum of another shape", _first_momentum, "field 'optimizer.state.0.momentum_buffer'"),
    (
        "a parameter missing from its group",
        lambda s: _group(s, lambda g: g["params"].pop()),
        "field 'optimizer.param_groups[0].params'",
    ),
    (
        "learning rate as text",
        lambda s: _group(s, lambda g: g.__setitem__("lr", "fast")),
        "field 'optimizer.param_groups[0].lr'",
    ),
    (
        "momentum missing",
        lambda s: _group(s, lambda g: g.pop("momentum")),
        "field 'optimizer.param_groups[0].momentum' is missing",
    ),
    (
        "another objective's state",
        lambda s: {**s, "objective": {"detector.centroids": torch.zeros(2, 2)}},
        "field 'objective' is unusable",
    ),
    ("objective state not tensors", lambda s: {**s, "objective": {"x": 1}}, "'objective.x'"),
]

#: (case, damage of the value of config.json, fragment of the one-line error)
CONFIG_DAMAGE: list[Damage] = [
    ("a list", lambda c: [c], "holds a list; expected an object"),
    ("an empty object", lambda c: {}, "field 'name' is missing"),
    ("a section that is a list", lambda c: {**c, "train": [1]}, "field 'train' is a list"),
    ("seed as text", lambda c: {**c, "seed": "zero"}, "field 'seed' is a str 'zero'"),
    (
        "an impossible value",
        lambda c: {**c, "train": {**c["train"], "epochs": -1}},
        "invalid config: train.epochs=-1",
    ),
]

#: (case, damage of the header of a checkpoint's model.safetensors, fragment of the error)
HEADER_DAMAGE: list[Damage] = [
    ("feature_dim not a number", lambda h: {**h, "feature_dim": "abc"}, "field 'feature_dim'"),
    ("unknown head kind", lambda h: {**h, "head_kind": "banana"}, "field 'head_kind'"),
    ("n_views negative", lambda h: {**h, "n_views": "-1"}, "field 'n_views'"),
    ("epoch a fraction", lambda h: {**h, "epoch": "1.5"}, "field 'epoch'"),
]

# ---------------------------------------------------------------- a tiny trained and probed run


@pytest.fixture(scope="module")
def trained_run(synthetic_archive: Path, tmp_path_factory) -> Path:
    """A supervised run trained 1 epoch and probed, at ``<base>/out/run`` (config output_dir 'out')."""
    base = tmp_path_factory.mktemp("trained")
    cfg = build_run_config(
        {
            "name": "run",
            "output_dir": "out",
            "data": {
                "name": "image_folder",
                "source": str(synthetic_archive),
                "root": str(base / "cache"),
                "val_per_class": 4,
            },
            "model": {"width": 8, "proj_hidden_dim": 32, "proj_dim": 16, "channels_last": False},
            "objective": {"name": "supervised"},
            "train": {"epochs": 1, "batch_size": 32, "tensorboard": False, "log_every": 1},
            "probe": {"epochs": 2, "batch_size": 32},
            "attack": {"eps_linf": [0, "2/255"], "steps": 1, "n_images": 8, "batch_size": 8},
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        run_train(cfg, progress=False)
        run_probe(cfg.run_dir, progress=False)
    return base / "out" / "run"


@pytest.fixture
def run(trained_run: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of the trained run at ``out/run`` under the current directory ``tmp_path``."""
    copy = tmp_path / "out" / "run"
    shutil.copytree(trained_run, copy)
    monkeypatch.chdir(tmp_path)
    return copy


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_one_line_error(result: Any, *fragments: str) -> str:
    """Exit code 2, exactly one non-empty line on stderr starting 'error:', no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _as_shown(path: Path) -> str:
    """``path`` as a resumed run names it: relative to the current folder (config output_dir 'out')."""
    return str(path.relative_to(Path.cwd()))


def _state_file(run_dir: Path) -> Path:
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None
    return checkpoint.state_file


def _model_file(run_dir: Path) -> Path:
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None
    return checkpoint.model_file


def _resume(run_dir: Path) -> Any:
    return runner.invoke(app, ["train", str(run_dir / "config.json"), "--resume", "--no-progress"])


def _probe(run_dir: Path) -> Any:
    return runner.invoke(app, ["probe", str(run_dir), "--no-progress"])


def _attack(run_dir: Path) -> Any:
    return runner.invoke(app, ["attack", str(run_dir), "--no-progress"])


# ---------------------------------------------------------------- state.pt (train --resume)


@pytest.mark.parametrize(
    ("case", "damage", "fragment"), STATE_DAMAGE, ids=[c[0] for c in STATE_DAMAGE]
)
def test_damaged_state_is_one_line_on_resume(run: Path, case, damage, fragment):
    path = _state_file(run)
    rewrite_torch(path, damage)
    before = snapshot(run)
    line = assert_one_line_error(_resume(run), f"state file {_as_shown(path)!r}", fragment)
    assert "Traceback" not in line
    assert snapshot(run) == before


def test_unsafe_state_is_refused_without_running_it_or_advising_to_disable_the_check(
    run: Path, tmp_path: Path
):
    path, marker = _state_file(run), tmp_path / "code-ran"
    write_unsafe_pickle(path, marker)
    before = snapshot(run)
    line = assert_one_line_error(_resume(run), f"state file {_as_shown(path)!r} refused as unsafe")
    assert not marker.exists()
    assert "weights_only" not in line and "trusted" not in line
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"garbage", "refused as unsafe"), (b"PK\x03\x04truncated", "is damaged")],
    ids=["garbage", "truncated zip"],
)
def test_unreadable_state_is_one_line(run: Path, content: bytes, fragment: str):
    path = _state_file(run)
    path.write_bytes(content)
    assert_one_line_error(_resume(run), _as_shown(path), fragment)
    assert path.read_bytes() == content


# ---------------------------------------------------------------- config.json (probe)


@pytest.mark.parametrize(
    ("case", "damage", "fragment"), CONFIG_DAMAGE, ids=[c[0] for c in CONFIG_DAMAGE]
)
def test_damaged_saved_config_is_one_line(run: Path, case, damage, fragment):
    rewrite_json(run / "config.json", damage)
    before = snapshot(run)
    assert_one_line_error(_probe(run), "saved config", str(run / "config.json"), fragment)
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("content", "fragment"), [(b"\xff\xfe{}", "not UTF-8"), (b"{", "not valid JSON")]
)
def test_saved_config_that_is_not_json_is_one_line(run: Path, content: bytes, fragment: str):
    (run / "config.json").write_bytes(content)
    assert_one_line_error(_probe(run), str(run / "config.json"), fragment)
    assert (run / "config.json").read_bytes() == content


# ---------------------------------------------------------------- model.safetensors (probe)


@pytest.mark.parametrize(
    ("case", "damage", "fragment"), HEADER_DAMAGE, ids=[c[0] for c in HEADER_DAMAGE]
)
def test_damaged_weights_header_is_one_line(run: Path, case, damage, fragment):
    path = _model_file(run)
    rewrite_weights(path, header=damage)
    before = snapshot(run)
    assert_one_line_error(_probe(run), f"weights header {str(path)!r}", fragment)
    assert snapshot(run) == before


#: (case, damage of a checkpoint's tensors given the name of one, fragment of the error)
TENSOR_DAMAGE: list[tuple[str, Callable[[dict[str, torch.Tensor], str], Any], str]] = [
    ("wrong shape", lambda t, name: {**t, name: torch.zeros(1, 1)}, "has shape (1, 1), expected"),
    ("missing", lambda t, name: _without(t, name), "is missing (1 missing)"),
    ("extra", lambda t, name: {**t, "extra": torch.zeros(1)}, "tensor 'extra' is not in the model"),
]


@pytest.mark.parametrize(
    ("case", "damage", "fragment"), TENSOR_DAMAGE, ids=[c[0] for c in TENSOR_DAMAGE]
)
def test_weights_that_do_not_fit_the_model_are_one_line(run: Path, case, damage, fragment):
    path = _model_file(run)
    name = sorted(load_file(path))[0]
    rewrite_weights(path, tensors=lambda t: damage(t, name))
    before = snapshot(run)
    assert_one_line_error(_probe(run), str(path), "does not match the model: tensor", fragment)
    assert snapshot(run) == before


def test_probe_refuses_a_checkpoint_with_a_nan(run: Path):
    path = _model_file(run)
    name = sorted(load_file(path))[-1]
    rewrite_weights(path, tensors=with_nan(name))
    before = snapshot(run)
    assert_one_line_error(_probe(run), str(path), f"NaN or inf in 1 tensor(s), first {name!r}")
    assert snapshot(run) == before


# ---------------------------------------------------------------- probe.safetensors (attack)


def test_damaged_probe_header_is_one_line(run: Path):
    path = run / "probe.safetensors"
    rewrite_weights(path, header=lambda h: {**h, "checkpoint_epoch": "abc"})
    before = snapshot(run)
    assert_one_line_error(_attack(run), f"weights header {str(path)!r}", "'checkpoint_epoch'")
    assert snapshot(run) == before


def test_attack_refuses_a_probe_with_a_nan(run: Path):
    path = run / "probe.safetensors"
    rewrite_weights(path, tensors=with_nan("weight"))
    before = snapshot(run)
    assert_one_line_error(_attack(run), str(path), "first 'weight'")
    assert snapshot(run) == before


def test_attack_refuses_a_checkpoint_with_a_nan(run: Path):
    path = _model_file(run)
    rewrite_weights(path, tensors=with_nan(sorted(load_file(path))[0]))
    assert_one_line_error(_attack(run), str(path), "NaN or inf")


# ---------------------------------------------------------------- JSON records


def test_checkpoint_meta_with_a_field_of_the_wrong_type_names_it(run: Path):
    checkpoint = latest_checkpoint(run / "checkpoints")
    assert checkpoint is not None
    rewrite_json(checkpoint.path / "meta.json", lambda m: {**m, "epoch": "one"})
    with pytest.raises(CheckpointError, match=r"meta.json': field 'epoch' is a str 'one'"):
        checkpoint.meta()


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ([], "holds a list; expected an object"),
        ({"results": "none"}, "field 'results' is a str"),
        ({"results": [{"attack": "pgd"}]}, "field 'results[0].norm' is missing"),
        (
            {"results": [{"attack": "pgd", "norm": "linf", "eps": "big", "n": 1}]},
            "field 'results[0].eps' is a str 'big'; expected a number",
        ),
    ],
)
def test_attack_record_read_back_by_the_gates_stage(tmp_path: Path, record, fragment):
    path = tmp_path / "attack.json"
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="attack record") as info:
        read_json_record(path, what="attack record", spec=ATTACK_RECORD)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_gates_stage_reads_the_attack_record_through_its_spec(run: Path):
    (run / "attack.json").write_text(json.dumps({"results": [{"attack": "pgd"}]}))
    with pytest.raises(CheckpointError, match=r"attack.json': field 'results\[0\].norm'"):
        run_gates_stage(run, progress=False)


# ---------------------------------------------------------------- AutoAttack state folder


def _state_folder(root: Path) -> tuple[autoattack._StateFolder, dict[str, Any], torch.Tensor]:
    folder = autoattack._StateFolder(root)
    manifest = {"format": 1, "n": 4}
    clean = torch.tensor([True, False, True, True])
    folder.open(manifest, clean)  # writes the manifest and clean.pt
    return folder, manifest, clean


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda r: {"clean_correct": r["clean_correct"].float()}, "a bool tensor"),
        (lambda r: {"clean_correct": r["clean_correct"][:2]}, "shape (4,), one entry per image"),
        (lambda r: {}, "field 'clean_correct' is missing"),
    ],
    ids=["float", "short", "missing"],
)
def test_damaged_autoattack_clean_record_names_the_field(tmp_path: Path, damage, fragment):
    folder, manifest, clean = _state_folder(tmp_path / "aa")
    rewrite_torch(tmp_path / "aa" / "clean.pt", damage)
    with pytest.raises(CheckpointError, match="AutoAttack state record") as info:
        folder.open(manifest, clean)
    assert fragment in str(info.value)


def test_unsafe_autoattack_record_is_refused(tmp_path: Path):
    folder, manifest, clean = _state_folder(tmp_path / "aa")
    marker = tmp_path / "code-ran"
    write_unsafe_pickle(tmp_path / "aa" / "clean.pt", marker)
    with pytest.raises(CheckpointError, match="refused as unsafe") as info:
        folder.open(manifest, clean)
    assert not marker.exists() and "weights_only" not in str(info.value)


def test_autoattack_manifest_that_is_not_json_is_one_line(tmp_path: Path):
    folder, manifest, clean = _state_folder(tmp_path / "aa")
    (tmp_path / "aa" / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError, match="AutoAttack manifest .* is not valid JSON"):
        folder.open(manifest, clean)


def test_autoattack_batch_record_with_images_of_the_wrong_shape(tmp_path: Path):
    path = tmp_path / "00-apgd-ce-00000.pt"
    record = {
        "indices": torch.tensor([0, 2]),
        "fooled": torch.tensor([True, False]),
        "x_adv": torch.zeros(1, 3, 8, 8),
        "seconds": 0.1,
        "flags": [],
    }
    torch.save(record, path)
    loaded = autoattack._load(path, autoattack._BATCH_RECORD)
    with pytest.raises(CheckpointError, match=r"field 'x_adv' is a tensor of shape \(1, 3, 8, 8\)"):
        autoattack._check_batch_record(loaded, path, torch.zeros(4, 3, 16, 16))
    torch.save({**record, "seconds": "slow"}, path)
    with pytest.raises(CheckpointError, match="field 'seconds' is a str 'slow'"):
        autoattack._load(path, autoattack._BATCH_RECORD)
