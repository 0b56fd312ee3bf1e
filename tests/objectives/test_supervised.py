import pytest
import torch
import torch.nn.functional as F

from cslrobust.errors import ConfigError
from cslrobust.objectives import SupervisedObjective


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_supervised_equals_cross_entropy(label_smoothing: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 16, 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (16,), generator=g)
    out = SupervisedObjective(label_smoothing=label_smoothing)(logits, torch.arange(16), labels)
    expected = F.cross_entropy(logits[0], labels, label_smoothing=label_smoothing)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.metrics["loss"], expected)
    accuracy = (logits[0].argmax(1) == labels).double().mean().float()
    torch.testing.assert_close(out.metrics["accuracy"], accuracy)


def test_supervised_averages_over_views() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 8, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (8,), generator=g)
    out = SupervisedObjective(n_views=3)(logits, torch.arange(8), labels)
    expected = torch.stack([F.cross_entropy(logits[v], labels) for v in range(3)]).mean()
    torch.testing.assert_close(out.loss, expected)


def test_supervised_rejects_bad_config_and_shapes() -> None:
    with pytest.raises(ConfigError):
        SupervisedObjective(label_smoothing=1.0)
    with pytest.raises(ConfigError):
        SupervisedObjective(n_views=0)
    with pytest.raises(ValueError):
        SupervisedObjective()(
            torch.randn(2, 4, 3), torch.arange(4), torch.zeros(4, dtype=torch.long)
        )
