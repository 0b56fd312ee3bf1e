"""Adversarial finetuning: TRADES loss against a per-sample computation, the training attacks, the loop."""

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from cslrobust.seeding import make_generator
from cslrobust.training.adversarial import (
    adversarial_finetune,
    alf_loss,
    crop_flip,
    eval_mode,
    linf_project,
    pgd_ce,
    trades_attack,
    trades_loss,
    trades_step,
)

EPS = 8 / 255


def _naive_trades(logits_nat, logits_adv, labels, beta):
    """TRADES written out sample by sample: CE + beta * sum_k p_k (log p_k - log q_k), batch means."""
    ce, kl = 0.0, 0.0
    for i in range(labels.shape[0]):
        log_p = logits_nat[i] - torch.logsumexp(logits_nat[i], dim=0)
        log_q = logits_adv[i] - torch.logsumexp(logits_adv[i], dim=0)
        ce = ce - log_p[labels[i]]
        kl = kl + (log_p.exp() * (log_p - log_q)).sum()
    n = labels.shape[0]
    return ce / n + beta * kl / n


@pytest.mark.parametrize("beta", [0.0, 1.0, 6.0])
def test_trades_loss_matches_a_per_sample_computation(beta):
    g = torch.Generator().manual_seed(0)
    nat = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (7,), generator=g)
    loss = trades_loss(nat, adv, y, beta)
    naive = _naive_trades(nat, adv, y, beta)
    torch.testing.assert_close(loss, naive, rtol=1e-12, atol=1e-12)
    # gradients flow through both logits, as in TRADES
    g1 = torch.autograd.grad(loss, (nat, adv))
    g2 = torch.autograd.grad(naive, (nat, adv))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_trades_kl_term_vanishes_on_identical_logits():
    nat = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(trades_loss(nat, nat, y, 6.0), F.cross_entropy(nat, y))


class _Net(nn.Module):
    """Conv + BatchNorm + linear: small enough for tests, with running statistics to watch."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def _data(n=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("attack", ["pgd", "trades"])
def test_training_attacks_stay_in_the_ball_repeat_and_leave_the_model_alone(attack):
    torch.manual_seed(0)
    net = _Net().train()
    x, y = _data()
    state = copy.deepcopy(net.state_dict())

    def run():
        g = make_generator(0, "t")
        if attack == "pgd":
            return pgd_ce(net, x, y, eps=EPS, step_size=2 / 255, steps=5, generator=g)
        return trades_attack(net, x, eps=EPS, step_size=2 / 255, steps=5, generator=g)

    x_adv = run()
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any()
    torch.testing.assert_close(run(), x_adv, rtol=0, atol=0)  # same generator, same points
    assert net.training and net.bn.training  # mode restored
    for k, v in net.state_dict().items():  # eval mode inside: BatchNorm statistics untouched
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in net.parameters())  # input gradients only


def test_pgd_training_attack_raises_the_loss():
    torch.manual_seed(1)
    net = _Net().eval()
    x, y = _data()
    x_adv = pgd_ce(
        net, x, y, eps=EPS, step_size=2 / 255, steps=10, generator=make_generator(0, "t")
    )
    with torch.no_grad():
        assert F.cross_entropy(net(x_adv), y) > F.cross_entropy(net(x), y)


def test_linf_projection_clips_to_ball_and_box():
    x = torch.tensor([0.0, 0.5, 1.0])
    out = linf_project(torch.tensor([-1.0, 0.9, 1.5]), x, 0.1)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.6, 1.0]))


def test_crop_flip_without_padding_is_the_image_or_its_mirror():
    x = torch.rand(16, 3, 5, 5)
    out = crop_flip(x, make_generator(0, "aug"), padding=0)
    for a, b in zip(out, x, strict=True):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    flipped = sum(not torch.equal(a, b) for a, b in zip(out, x, strict=True))
    assert 0 < flipped < 16
    assert torch.equal(
        crop_flip(x, make_generator(0, "aug")), crop_flip(x, make_generator(0, "aug"))
    )


def test_alf_loss_is_eval_mode_and_trains_the_head_only():
    torch.manual_seed(2)
    net = _Net().eval()
    net.conv.requires_grad_(False)
    net.bn.requires_grad_(False)
    x, y = _data()
    before = copy.deepcopy(net.state_dict())
    loss = alf_loss(net, x, y, make_generator(0, "a"), eps=EPS, step_size=2 / 255, steps=3)
    loss.backward()
    assert net.fc.weight.grad is not None and net.conv.weight.grad is None
    for k in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert torch.equal(net.state_dict()[k], before[k])


def test_trades_step_computes_the_loss_in_train_mode():
    torch.manual_seed(3)
    net = _Net().eval()
    x, y = _data()
    mean_before = net.bn.running_mean.clone()
    loss = trades_step(
        net, x, y, make_generator(0, "a"), eps=EPS, step_size=2 / 255, steps=2, beta=6.0
    )
    assert net.training  # the loss forward ran in train mode ...
    assert not torch.equal(net.bn.running_mean, mean_before)  # ... and updated the BN statistics
    assert torch.isfinite(loss)


def test_eval_mode_restores_each_flag():
    net = _Net().train()
    net.bn.eval()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net.conv.training and not net.bn.training


def test_the_loop_keeps_the_best_validation_epoch_ties_to_the_earlier():
    torch.manual_seed(4)
    net = _Net()
    x, y = _data(n=16)
    images = (x * 255).to(torch.uint8)
    scores = iter([0.2, 0.5, 0.5, 0.3])
    states = []

    def validate():
        states.append(copy.deepcopy(net.state_dict()))
        return next(scores)

    result = adversarial_finetune(
        net,
        list(net.parameters()),
        net,
        lambda xb, yb, g: alf_loss(net, xb, yb, g, eps=EPS, step_size=2 / 255, steps=1),
        images,
        y,
        validate=validate,
        epochs=4,
        lr=0.1,
        weight_decay=0.0,
        batch_size=8,
        seed=0,
        stream="test",
        augment=True,
        device="cpu",
    )
    assert result.best_epoch == 2 and result.best_score == 0.5
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for k, v in net.state_dict().items():
        assert torch.equal(v, states[1][k]), k
    assert not torch.equal(states[0]["fc.weight"], states[1]["fc.weight"])


def test_the_loop_repeats_exactly_with_the_same_seed():
    def run():
        torch.manual_seed(5)
        net = _Net()
        x, y = _data(n=16)
        adversarial_finetune(
            net,
            list(net.parameters()),
            net,
            lambda xb, yb, g: trades_step(
                net, xb, yb, g, eps=EPS, step_size=2 / 255, steps=2, beta=6.0
            ),
            (x * 255).to(torch.uint8),
            y,
            validate=lambda: 0.0,
            epochs=2,
            lr=0.05,
            weight_decay=2e-4,
            batch_size=8,
            seed=3,
            stream="aff",
            augment=True,
            device="cpu",
        )
        return net.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_non_finite_loss_stops_the_loop():
    net = _Net()
    x, y = _data(n=8)
    with pytest.raises(FloatingPointError):
        adversarial_finetune(
            net,
            list(net.parameters()),
            net,
            lambda xb, yb, g: net(xb).sum() * float("nan"),
            (x * 255).to(torch.uint8),
            y,
            validate=lambda: 0.0,
            epochs=1,
            lr=0.1,
            weight_decay=0.0,
            batch_size=8,
            seed=0,
            stream="nan",
            augment=False,
            device="cpu",
        )
