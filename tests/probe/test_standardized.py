"""The standardised head: the probe's standardisation inside a trainable head, folded exactly."""

import torch

from cslrobust.probe.standardized import StandardizedLinear, init_linear, standardization


def test_the_folded_head_equals_the_standardised_head_and_ignores_dead_features():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 6, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 10.0, 0.1, 5.0, 1.0, 2.0], dtype=torch.float64
    )
    feats[:, 4] = 3.0  # a constant (dead) feature
    mean, std, dead = standardization(feats)
    assert dead.tolist() == [False, False, False, False, True, False]
    head = StandardizedLinear(mean, std, dead, 3, torch.Generator().manual_seed(1)).double()
    folded = head.folded().double()
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(folded(x), head(x))
    assert torch.all(folded.weight[:, 4] == 0)


def test_initialisation_is_the_probe_rule_and_repeats():
    a = init_linear(16, 4, torch.Generator().manual_seed(3))
    b = init_linear(16, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a.weight, b.weight) and torch.all(a.bias == 0)
    assert a.weight.abs().max() <= 1 / 16**0.5
