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


def test_views_option_builds_a_two_view_objective_and_keeps_old_run_ids():
    from cslrobust.config import build_run_config
    from cslrobust.objectives import build_objective

    one = build_run_config({"objective": {"name": "supervised"}})
    explicit = build_run_config({"objective": {"name": "supervised", "views": 1}})
    two = build_run_config({"objective": {"name": "supervised", "views": 2}})
    assert build_objective(one.objective).n_views == 1
    assert build_objective(two.objective).n_views == 2
    # the key added later counts in the run id only when changed from its default
    assert explicit.run_id() == one.run_id() != two.run_id()


def test_two_view_loss_is_cross_entropy_over_both_views():
    from cslrobust.objectives.supervised import SupervisedObjective

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 1, 0])
    out = SupervisedObjective(n_views=2)(logits, torch.arange(5), labels)
    expected = (
        torch.nn.functional.cross_entropy(logits[0], labels)
        + torch.nn.functional.cross_entropy(logits[1], labels)
    ) / 2
    torch.testing.assert_close(out.loss, expected)
