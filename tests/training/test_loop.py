"""The one training loop: every objective runs through it; resume is exact; divergence stops it."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tests.training.conftest import WrappedObjective, as_method, toy_setup

from cslrobust.attacks.ascent import ViewAttack
from cslrobust.augment import SimCLRAugmentSection, build_augment
from cslrobust.data import TensorImageDataset
from cslrobust.errors import TrainingDivergedError
from cslrobust.objectives import OBJECTIVES, LossOutput
from cslrobust.training import LoopSettings, latest_checkpoint, train, warmup_cosine


def _data(n: int = 48) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 4
    return TensorImageDataset(images, labels)


def _setup(objective_name: str, seed: int = 0):
    return toy_setup(objective_name, seed=seed)


def _run(tmp: Path, objective_name: str, epochs: int, *, resume=False, hooks=(), setup=None):
    objective, encoder, optimizer = setup or _setup(objective_name)
    data = _data()
    settings = LoopSettings(epochs=epochs, batch_size=16, seed=3, log_every=2, progress=False)
    steps = data.num_batches(16, True) * epochs
    schedule = warmup_cosine(0.05, steps, warmup_steps=2)
    method = as_method(objective, encoder)
    if hasattr(method, "set_total_epochs"):  # adversarial methods (the train stage does this)
        method.set_total_epochs(epochs)
    result = train(
        method,
        build_augment(SimCLRAugmentSection()),
        data,
        optimizer,
        schedule,
        tmp,
        settings,
        resume=resume,
        epoch_hooks=hooks,
        perturbation=ViewAttack(eps=8 / 255, step_size=2 / 255, steps=2),  # adversarial methods
    )
    return encoder, result


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_trains_through_the_one_loop(tmp_path: Path, name: str):
    encoder, result = _run(tmp_path, name, epochs=1)
    assert result.epochs_completed == 1
    assert torch.isfinite(torch.tensor(result.history[0]["loss"]))
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.epoch == 1


@pytest.mark.parametrize("name", ["simclr_fnr", "byol", "simsiam", "moco", "acl", "rocl", "dynacl"])
def test_resume_gives_the_same_weights_as_straight_training(tmp_path: Path, name: str):
    """Exact resume, the method's own state included (BYOL's target and momentum, predictors,
    MoCo's key encoder and queue)."""
    first = _setup(name)
    straight, _ = _run(tmp_path / "a", name, epochs=2, setup=first)

    class Interrupt(Exception):
        pass

    def stop_after_first(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(tmp_path / "b", name, epochs=2, hooks=[stop_after_first])
    assert latest_checkpoint(tmp_path / "b").epoch == 1
    # A fresh process would build a new model with a different init: resume must overwrite it.
    second = _setup(name, 9)
    resumed, result = _run(tmp_path / "b", name, epochs=2, resume=True, setup=second)
    assert result.resumed_from == 1 and result.epochs_completed == 2
    for (key, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    straight_state = as_method(first[0], first[1]).state_dict()
    resumed_state = as_method(second[0], second[1]).state_dict()
    assert straight_state.keys() == resumed_state.keys()
    assert bool(straight_state) == (name not in ("simclr_fnr", "rocl"))
    for key, value in straight_state.items():
        assert torch.equal(value, resumed_state[key]), key


@dataclass
class _ExplodesAtEpoch(WrappedObjective):
    epoch: int

    def __call__(self, outputs, index, labels, *, generator=None, epoch=0) -> LossOutput:
        out = self.inner(outputs, index, labels, generator=generator, epoch=epoch)
        if epoch >= self.epoch:
            return LossOutput(out.loss * float("nan"), out.metrics)
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path):
    objective, encoder, optimizer = _setup("simclr")
    setup = (_ExplodesAtEpoch(objective, epoch=1), encoder, optimizer)
    with pytest.raises(TrainingDivergedError, match="loss became nan in epoch 2.*epoch 1"):
        _run(tmp_path, "simclr", epochs=3, setup=setup)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.epoch == 1
    from safetensors.torch import load_file

    assert all(
        torch.isfinite(t).all()
        for t in load_file(ckpt.model_file).values()
        if t.is_floating_point()
    )
