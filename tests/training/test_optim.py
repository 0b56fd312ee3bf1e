"""The optimiser registry: SGD (the default, unchanged), hand-written LARS, AdamW; exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tests.training.conftest import as_method, toy_setup
from torch import nn

from cslrobust.augment import SimCLRAugmentSection, build_augment
from cslrobust.config import (
    RunConfig,
    TrainConfig,
    build_run_config,
    load_saved_config,
    save_config,
)
from cslrobust.data import TensorImageDataset
from cslrobust.errors import ConfigError
from cslrobust.training import LoopSettings, latest_checkpoint, train, warmup_cosine
from cslrobust.training.optim import (
    LARS,
    OPTIMIZERS,
    AdamWSection,
    LARSSection,
    SGDSection,
    build_optimizer,
    build_sgd,
    set_lr,
)

#: The run id of the default config before the optimiser registry existed.
DEFAULT_RUN_ID = "3d2fab66a8de"


def _toy_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _small_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))


def _train(name: str, **params: object) -> TrainConfig:
    return TrainConfig(optimizer=OPTIMIZERS.section(name, **params), lr=0.1, weight_decay=0.01)


def test_registry_names() -> None:
    assert OPTIMIZERS.names() == ["adamw", "lars", "sgd"]
    assert OPTIMIZERS.get("lars").section is LARSSection


def test_unknown_optimizer_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_run_config({"train": {"optimizer": {"name": "rmsprop"}}})
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "invalid config: train.optimizer.name='rmsprop': unknown optimizer 'rmsprop'; "
        "expected one of ['adamw', 'lars', 'sgd']"
    )
    with pytest.raises(ConfigError, match=r"unknown optimizer 'rmsprop'.*adamw, lars, sgd"):
        OPTIMIZERS.get("rmsprop")


def test_a_key_the_optimizer_does_not_take_is_an_error() -> None:
    with pytest.raises(
        ConfigError, match=r"train.optimizer.eta is not a parameter of optimizer 'sgd'"
    ):
        build_run_config({"train": {"optimizer": {"eta": 0.01}}})
    with pytest.raises(
        ConfigError, match=r"train.momentum is not a parameter of optimizer 'adamw'"
    ):
        build_run_config({"train": {"momentum": 0.5, "optimizer": {"name": "adamw"}}})
    # At their defaults the SGD keys do not stand in the way (presets write them out).
    cfg = build_run_config({"train": {"momentum": 0.9, "optimizer": {"name": "adamw"}}})
    assert isinstance(cfg.train.optimizer, AdamWSection)
    with pytest.raises(ConfigError, match=r"train.optimizer.betas=\[0.9, 1.0\]"):
        build_run_config({"train": {"optimizer": {"name": "adamw", "betas": [0.9, 1.0]}}})


def test_default_is_sgd_and_the_run_id_is_unchanged() -> None:
    base = RunConfig()
    assert base.train.optimizer == SGDSection()
    assert base.run_id() == DEFAULT_RUN_ID
    assert RunConfig(train={"optimizer": {"name": "sgd"}}).run_id() == DEFAULT_RUN_ID
    lars = RunConfig(train={"optimizer": {"name": "lars"}})
    assert lars.run_id() != DEFAULT_RUN_ID
    assert lars.training_identity()["train"]["optimizer"] == {
        "name": "lars",
        "eta": 0.001,
        "exclude_bias_n_norm": True,
    }
    assert RunConfig(train={"optimizer": {"name": "lars", "eta": 0.02}}).run_id() != lars.run_id()
    assert RunConfig(train={"optimizer": {"name": "adamw"}}).run_id() not in {
        DEFAULT_RUN_ID,
        lars.run_id(),
    }


def test_default_builds_the_same_sgd_as_before() -> None:
    tr = TrainConfig(lr=0.2, weight_decay=1e-3, nesterov=True)
    built = build_optimizer(_small_module(), tr)
    before = build_sgd(_small_module(), lr=0.2, momentum=0.9, weight_decay=1e-3, nesterov=True)
    assert type(built) is torch.optim.SGD
    assert built.state_dict() == before.state_dict()


@pytest.mark.parametrize("name", ["lars", "adamw"])
def test_saved_config_keeps_the_optimizer_and_run_id(tmp_path: Path, name: str) -> None:
    cfg = build_run_config({"train": {"optimizer": {"name": name}}})
    save_config(cfg, tmp_path / "config.json")
    loaded = load_saved_config(tmp_path / "config.json")
    assert loaded == cfg and loaded.run_id() == cfg.run_id()


def _lars_by_hand(
    w: list[float],
    grads: list[list[float]],
    lrs: list[float],
    *,
    wd: float,
    eta: float,
    momentum: float,
    adapt: bool,
    nesterov: bool = False,
) -> list[float]:
    """LARS on a flat list of floats, step by step (You et al. 2017, momentum as torch SGD)."""
    buf: list[float] | None = None
    for g, lr in zip(grads, lrs, strict=True):
        d = [gi + wd * wi for gi, wi in zip(g, w, strict=True)]
        if adapt:
            w_norm = math.sqrt(sum(x * x for x in w))
            g_norm = math.sqrt(sum(x * x for x in g))
            ratio = eta * w_norm / (g_norm + wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
            d = [ratio * x for x in d]
        buf = d if buf is None else [momentum * b + x for b, x in zip(buf, d, strict=True)]
        step = [x + momentum * b for x, b in zip(d, buf, strict=True)] if nesterov else buf
        w = [wi - lr * s for wi, s in zip(w, step, strict=True)]
    return w


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_step_equals_a_hand_computation(nesterov: bool) -> None:
    weight = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    grads_w = [[0.1, 0.4, -0.3, 0.2], [-0.05, 0.3, 0.1, -0.6], [0.2, 0.2, 0.2, 0.2]]
    grads_b = [[1.0, -2.0], [0.5, 0.5], [-1.0, 0.25]]
    lrs = [2.0, 1.5, 0.5]  # the schedule changes the rate between steps
    wd, eta, momentum = 0.01, 0.02, 0.9
    expected_w = _lars_by_hand(
        weight.detach().flatten().tolist(),
        grads_w,
        lrs,
        wd=wd,
        eta=eta,
        momentum=momentum,
        adapt=True,
        nesterov=nesterov,
    )
    expected_b = _lars_by_hand(
        bias.detach().tolist(),
        grads_b,
        lrs,
        wd=0.0,
        eta=eta,
        momentum=momentum,
        adapt=False,
        nesterov=nesterov,
    )
    optimizer = LARS(
        [
            {"params": [weight], "weight_decay": wd},
            {"params": [bias], "weight_decay": 0.0, "trust_adaptation": False},
        ],
        lr=1.0,
        momentum=momentum,
        eta=eta,
        nesterov=nesterov,
    )
    for gw, gb, lr in zip(grads_w, grads_b, lrs, strict=True):
        weight.grad = torch.tensor(gw, dtype=torch.float64).view(2, 2)
        bias.grad = torch.tensor(gb, dtype=torch.float64)
        set_lr(optimizer, lr)
        optimizer.step()
    torch.testing.assert_close(weight.detach().flatten().tolist(), expected_w, rtol=1e-12, atol=0)
    torch.testing.assert_close(bias.detach().tolist(), expected_b, rtol=1e-12, atol=0)
    # The trust ratio matters here: plain SGD would have moved the weight far more.
    plain = _lars_by_hand(
        [0.5, -1.0, 2.0, 0.25], grads_w, lrs, wd=wd, eta=eta, momentum=momentum, adapt=False
    )
    assert max(abs(a - b) for a, b in zip(plain, expected_w, strict=True)) > 0.1


def test_lars_leaves_a_zero_weight_to_plain_sgd() -> None:
    zero = torch.zeros(3, requires_grad=True)
    optimizer = LARS([zero], lr=0.5, momentum=0.0, eta=0.001)
    zero.grad = torch.tensor([1.0, -2.0, 0.5])
    optimizer.step()
    assert torch.equal(zero.detach(), torch.tensor([-0.5, 1.0, -0.25]))


@pytest.mark.parametrize("exclude", [True, False])
def test_lars_groups_keep_bias_and_norm_out_of_decay_and_adaptation(exclude: bool) -> None:
    module = _toy_module()
    module(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer
    optimizer = build_optimizer(module, _train("lars", exclude_bias_n_norm=exclude))
    assert isinstance(optimizer, LARS)
    decay, no_decay = optimizer.param_groups
    conv, bn, _, linear = module
    assert {id(p) for p in decay["params"]} == {id(conv.weight), id(linear.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(conv.bias),
        id(bn.weight),
        id(bn.bias),
        id(linear.bias),
    }
    assert decay["weight_decay"] == 0.01 and decay["trust_adaptation"]
    assert no_decay["weight_decay"] == 0.0
    assert no_decay["trust_adaptation"] is (not exclude)
    assert decay["eta"] == no_decay["eta"] == 0.001


def test_excluded_lars_parameters_move_as_plain_sgd() -> None:
    lars_model, sgd_model = _small_module(), _small_module()
    lars = build_optimizer(lars_model, _train("lars"))
    sgd = build_optimizer(sgd_model, _train("sgd"))
    g = torch.Generator().manual_seed(1)
    for lr in (0.1, 0.05):
        grads = [torch.randn(p.shape, generator=g) for p in lars_model.parameters()]
        for model, optimizer in ((lars_model, lars), (sgd_model, sgd)):
            for p, grad in zip(model.parameters(), grads, strict=True):
                p.grad = grad.clone()
            set_lr(optimizer, lr)
            optimizer.step()
    for (name, a), b in zip(lars_model.named_parameters(), sgd_model.parameters(), strict=True):
        if a.ndim <= 1:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
        else:
            assert not torch.allclose(a, b), name  # adapted: much smaller steps


def test_adamw_has_decoupled_decay_groups() -> None:
    module = _small_module()
    optimizer = build_optimizer(module, _train("adamw", betas=(0.8, 0.99), eps=1e-6))
    assert type(optimizer) is torch.optim.AdamW
    decay, no_decay = optimizer.param_groups
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    assert decay["betas"] == (0.8, 0.99) and decay["eps"] == 1e-6
    # With zero gradients the Adam update is 0: only the decoupled decay lr * wd * w moves weights.
    before = [p.detach().clone() for p in module.parameters()]
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    set_lr(optimizer, 0.5)
    optimizer.step()
    for old, new in zip(before, module.parameters(), strict=True):
        expected = old * (1 - 0.5 * 0.01) if old.ndim > 1 else old
        torch.testing.assert_close(new.detach(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_set_lr_reaches_every_group(name: str) -> None:
    optimizer = build_optimizer(_small_module(), _train(name))
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.1]
    set_lr(optimizer, 0.037)
    assert [group["lr"] for group in optimizer.param_groups] == [0.037, 0.037]


def _data(n: int = 48) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    return TensorImageDataset(images, torch.arange(n) % 4)


def _run(tmp: Path, name: str, *, seed: int = 0, resume: bool = False, hooks=()) -> nn.Module:
    objective, encoder, _ = toy_setup("supervised", seed=seed)
    # LARS with eta 0.001 needs a large global rate to move (as in SimCLR: lr 4.8 at batch 4096).
    lr = 5.0 if name == "lars" else 0.05
    optimizer = build_optimizer(encoder, TrainConfig(optimizer={"name": name}, lr=lr))
    data = _data()
    epochs = 2
    settings = LoopSettings(epochs=epochs, batch_size=16, seed=3, log_every=2, progress=False)
    schedule = warmup_cosine(lr, data.num_batches(16, True) * epochs, warmup_steps=2)
    train(
        as_method(objective, encoder),
        build_augment(SimCLRAugmentSection()),
        data,
        optimizer,
        schedule,
        tmp,
        settings,
        resume=resume,
        epoch_hooks=hooks,
    )
    return encoder


class _Interrupt(Exception):
    pass


def _stop_after_first(epoch: int, metrics: dict[str, float]) -> None:
    if epoch == 1:
        raise _Interrupt


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_resume_gives_the_same_weights_as_straight_training(tmp_path: Path, name: str) -> None:
    straight = _run(tmp_path / "a", name)
    _, initial, _ = toy_setup("supervised", seed=0)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(initial.parameters(), straight.parameters(), strict=True)
    ]
    assert all(moved)
    with pytest.raises(_Interrupt):
        _run(tmp_path / "b", name, hooks=[_stop_after_first])
    assert latest_checkpoint(tmp_path / "b").epoch == 1
    # A fresh process builds a new model with a different init: resume must overwrite it.
    resumed = _run(tmp_path / "b", name, seed=9, resume=True)
    for (key, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
