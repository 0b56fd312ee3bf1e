import pytest
import torch
from torch import nn

from cslrobust.probe import accuracy, assert_frozen, fold_standardisation, state_snapshot
from cslrobust.probe.linear import dead_feature_mask, train_linear_probe


def test_fold_standardisation_is_exact():
    torch.manual_seed(0)
    head = nn.Linear(5, 3)
    mean, std = torch.randn(5), torch.rand(5) + 0.5
    h = torch.randn(7, 5)
    folded = fold_standardisation(head, mean, std)
    torch.testing.assert_close(folded(h), head((h - mean) / std), atol=1e-5, rtol=1e-5)


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[8.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 8.0]]) * 100  # large scale
    labels = torch.arange(n) % 3
    return centers[labels] + 50 * torch.randn(n, 3, generator=g), labels


def test_probe_learns_separable_features_and_picks_best_val_epoch():
    x, y = _blobs(300, 0)
    xv, yv = _blobs(90, 1)
    xt, yt = _blobs(90, 2)
    res = train_linear_probe(
        x, y, xv, yv, num_classes=3, epochs=5, lr=0.1, weight_decay=0.0, batch_size=32, seed=0
    )
    assert accuracy(res.head, xt, yt) > 0.95
    best = max(h["val_accuracy"] for h in res.history)
    assert res.best_val_accuracy == best
    assert res.history[res.best_epoch - 1]["val_accuracy"] == best
    # Same seed -> same head.
    again = train_linear_probe(
        x, y, xv, yv, num_classes=3, epochs=5, lr=0.1, weight_decay=0.0, batch_size=32, seed=0
    )
    assert torch.equal(again.head.weight, res.head.weight)


def test_assert_frozen_catches_bn_buffer_change():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ref = state_snapshot(model)
    assert_frozen(model, ref)
    model.train()
    model(torch.randn(4, 3))  # updates running stats
    with pytest.raises(AssertionError, match="running_mean"):
        assert_frozen(model, ref)


def test_fold_with_dead_features_zeroes_their_weight_and_bias_share():
    torch.manual_seed(1)
    head = nn.Linear(4, 3)
    mean, std = torch.randn(4), torch.rand(4) + 0.5
    dead = torch.tensor([False, True, False, True])
    h = torch.randn(6, 4)
    folded = fold_standardisation(head, mean, std, dead=dead)
    z = ((h - mean) / std).masked_fill(dead, 0.0)
    torch.testing.assert_close(folded(h), head(z), atol=1e-5, rtol=1e-5)
    assert (folded.weight[:, dead] == 0).all()
    # Without a dead mask the fold is the plain one, bitwise.
    plain = fold_standardisation(head, mean, std)
    again = fold_standardisation(head, mean, std, dead=torch.zeros(4, dtype=torch.bool))
    assert torch.equal(plain.weight, again.weight) and torch.equal(plain.bias, again.bias)


def test_dead_feature_mask_relative_and_floor():
    std = torch.tensor([2.0, 2.5e-3, 2e-3, 0.0, 0.5])  # threshold 2e-3, inclusive
    assert dead_feature_mask(std).tolist() == [False, False, True, True, False]
    assert dead_feature_mask(std, relative=0.0).tolist() == [False, False, False, True, False]
    # All features below the absolute floor: all dead, whatever their relative spread.
    assert dead_feature_mask(torch.tensor([1e-7, 5e-7])).all()


def _with_dead_features(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Append a constant-zero feature (a ReLU that never fires) and a near-constant one."""
    g = torch.Generator().manual_seed(seed)
    near_constant = 1e-5 * torch.randn(x.shape[0], 1, generator=g)
    return torch.cat([x, torch.zeros(x.shape[0], 1), near_constant], dim=1)


def test_dead_features_get_zero_weight_and_cannot_move_predictions():
    x, y = _blobs(300, 0)
    xv, yv = _blobs(90, 1)
    xt, yt = _blobs(90, 2)
    x, xv, xt = _with_dead_features(x, 0), _with_dead_features(xv, 1), _with_dead_features(xt, 2)
    kwargs = dict(num_classes=3, epochs=5, lr=0.1, weight_decay=0.0, batch_size=32, seed=0)
    res = train_linear_probe(x, y, xv, yv, **kwargs)
    assert res.dead_features == 2
    weight = res.head.weight.detach()
    assert torch.isfinite(weight).all() and (weight[:, 3:] == 0).all()
    # Live features have std ~ 300: their folded weights are small; nothing is blown up.
    assert float(weight.abs().max()) < 1.0
    assert accuracy(res.head, xt, yt) > 0.95
    with torch.no_grad():
        logits = res.head(xt)
        for activation in (1e-3, 1.0, 1e3):
            shifted = xt.clone()
            shifted[:, 3:] = activation
            assert torch.equal(res.head(shifted).argmax(1), logits.argmax(1))
            torch.testing.assert_close(res.head(shifted), logits, rtol=0, atol=0)
    # Contrast: with only the absolute floor, the near-constant feature (std 1e-5) is live and
    # its folded weight is its standardised weight divided by 1e-5: unbounded in practice.
    floor_only = train_linear_probe(x, y, xv, yv, dead_std_relative=0.0, **kwargs)
    assert floor_only.dead_features == 1
    assert float(floor_only.head.weight.detach()[:, 4].abs().max()) > 100.0
