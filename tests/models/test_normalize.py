import pytest
import torch

from cslrobust.errors import ConfigError
from cslrobust.models import Normalize

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def test_matches_formula() -> None:
    norm = Normalize(MEAN, STD)
    x = torch.rand(4, 3, 8, 8)
    expected = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)


def test_buffers() -> None:
    norm = Normalize(MEAN, STD)
    assert norm.mean.shape == (1, 3, 1, 1) and norm.std.shape == (1, 3, 1, 1)
    assert set(dict(norm.named_buffers())) == {"mean", "std"}
    assert not list(norm.parameters())
    assert set(norm.state_dict()) == {"mean", "std"}


@pytest.mark.parametrize(
    ("mean", "std"), [((0.5, 0.5), (0.2, 0.2, 0.2)), ((), ()), ((0.5,), (0.0,))]
)
def test_invalid(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError):
        Normalize(mean, std)
