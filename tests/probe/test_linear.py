import pytest
import torch
from torch import nn

from cslrobust.probe import accuracy, assert_frozen, fold_standardisation, state_snapshot
from cslrobust.probe.linear import train_linear_probe


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
