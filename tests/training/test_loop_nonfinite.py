"""A checkpoint on disk is always finite: a diverging run stops and names the last finite one."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.training.conftest import WrappedObjective, as_method, toy_setup

from cslrobust.augment import SimCLRAugmentSection, build_augment
from cslrobust.data import TensorImageDataset
from cslrobust.errors import CheckpointError, TrainingDivergedError
from cslrobust.objectives import LossOutput
from cslrobust.training import LoopSettings, list_checkpoints, train, warmup_cosine
from cslrobust.training.checkpoint import save_checkpoint

STEPS_PER_EPOCH = 2  # 32 images, batch 16


def _setup(lr: float):
    return toy_setup("supervised", lr=lr)


def _train(tmp: Path, epochs: int, *, lr: float = 0.05, objective=None, resume=False, setup=None):
    base, encoder, optimizer = setup or _setup(lr)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=g)
    data = TensorImageDataset(images, torch.arange(32) % 4)
    settings = LoopSettings(epochs=epochs, batch_size=16, seed=3, log_every=2, progress=False)
    schedule = warmup_cosine(lr, STEPS_PER_EPOCH * epochs, warmup_steps=0)
    return train(
        as_method(objective or base, encoder),
        build_augment(SimCLRAugmentSection()),
        data,
        optimizer,
        schedule,
        tmp,
        settings,
        resume=resume,
    )


def _finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(path).values() if t.is_floating_point())


@dataclass
class _NaNGradientAtStep(WrappedObjective):
    """Finite loss values, but the gradient of call ``step`` (1-based) is NaN: weights turn NaN
    after the last loss check of the epoch."""

    step: int
    calls: int = 0

    def __call__(self, outputs, index, labels, *, generator=None, epoch=0) -> LossOutput:
        self.calls += 1
        out = self.inner(outputs, index, labels, generator=generator, epoch=epoch)
        if self.calls == self.step:
            # Value 0, gradient 0 * inf = NaN.
            out = LossOutput(
                out.loss + 0.0 * (outputs - outputs.detach()).abs().sqrt().sum(), out.metrics
            )
        return out


def test_weights_turning_nan_after_the_last_loss_check_write_no_checkpoint(tmp_path: Path):
    objective, encoder, optimizer = _setup(0.05)
    nan_at_end_of_epoch_2 = _NaNGradientAtStep(objective, step=2 * STEPS_PER_EPOCH)
    with pytest.raises(TrainingDivergedError) as info:
        _train(tmp_path, 3, objective=nan_at_end_of_epoch_2, setup=(objective, encoder, optimizer))
    message = str(info.value)
    assert "weights became NaN or inf in epoch 2" in message
    assert "last finite checkpoint kept: epoch 1" in message and "\n" not in message
    checkpoints = list_checkpoints(tmp_path)
    assert [c.epoch for c in checkpoints] == [1] and _finite(checkpoints[0].model_file)
    assert not list(tmp_path.glob("*.tmp"))


def test_huge_learning_rate_leaves_no_non_finite_checkpoint(tmp_path: Path):
    with pytest.raises(TrainingDivergedError) as info:
        _train(tmp_path, 3, lr=1e6)
    message = str(info.value)
    checkpoints = list_checkpoints(tmp_path)
    assert all(_finite(c.model_file) for c in checkpoints)
    if checkpoints:
        assert f"last finite checkpoint kept: epoch {checkpoints[-1].epoch} at" in message
    else:
        assert "no finite checkpoint was written; lower train.lr" in message
    assert "last good checkpoint" not in message


def test_save_checkpoint_refuses_non_finite_weights_and_writes_nothing(tmp_path: Path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        model[1].running_var[2] = float("inf")
    with pytest.raises(TrainingDivergedError, match=r"1 tensor\(s\).*'1.running_var'"):
        save_checkpoint(tmp_path, 1, model, {}, {}, {}, keep_last=1)
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_a_non_finite_checkpoint_of_an_older_version(tmp_path: Path):
    _train(tmp_path, 1)
    [checkpoint] = list_checkpoints(tmp_path)
    tensors = load_file(checkpoint.model_file)
    tensors["backbone.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(tensors, str(checkpoint.model_file), metadata={"epoch": "1"})
    before = checkpoint.model_file.read_bytes()
    with pytest.raises(CheckpointError, match=r"NaN or inf in 1 tensor\(s\), first 'backbone"):
        _train(tmp_path, 2, resume=True)
    assert checkpoint.model_file.read_bytes() == before
