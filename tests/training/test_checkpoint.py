from pathlib import Path

import pytest
import torch
from torch import nn

from cslrobust.errors import CheckpointError
from cslrobust.training.checkpoint import (
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_state,
    load_weights,
    read_metadata,
    save_checkpoint,
    save_weights,
)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_save_load_roundtrip_with_metadata_and_pruning(tmp_path: Path):
    model = _model()
    for epoch in range(1, 6):
        save_checkpoint(
            tmp_path,
            epoch,
            model,
            {"epoch": epoch, "optimizer": {"state": {}, "param_groups": []}, "x": torch.arange(3)},
            {"m": epoch},
            {"config": "{}"},
            keep_last=2,
            keep_every=2,
        )
    assert [c.epoch for c in list_checkpoints(tmp_path)] == [2, 4, 5]
    last = latest_checkpoint(tmp_path)
    assert last is not None and last.epoch == 5 and last.meta()["m"] == 5
    other = _model()
    meta = load_weights(other, last.model_file)
    assert meta["epoch"] == "5" and meta["config"] == "{}"
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(load_state(last)["x"], torch.arange(3))
    with pytest.raises(CheckpointError, match="available: \\[2, 4, 5\\]"):
        find_checkpoint(tmp_path, 3)


def test_unfinished_checkpoint_is_ignored(tmp_path: Path):
    model = _model()
    save_checkpoint(tmp_path, 1, model, {}, {}, {}, keep_last=5)
    (tmp_path / "epoch-0002.tmp").mkdir()  # a crash in the middle of writing epoch 2
    assert latest_checkpoint(tmp_path).epoch == 1


def test_mismatch_and_corrupt_files_raise_checkpoint_error(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    save_weights(nn.Linear(3, 4), path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_weights(nn.Linear(5, 4), path)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not valid safetensors"):
        read_metadata(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(nn.Linear(3, 4), tmp_path / "none.safetensors")


def test_state_loading_refuses_arbitrary_pickles(tmp_path: Path):
    model = _model()
    ckpt = save_checkpoint(tmp_path, 1, model, {}, {}, {}, keep_last=1)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"evil": Evil()}, ckpt.state_file)
    with pytest.raises(CheckpointError, match="refused as unsafe") as info:
        load_state(ckpt)
    assert "weights_only" not in str(info.value)
