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


class _OldNormalize(torch.nn.Module):
    """The image path before layouts existed (the code of main at d188bf7), for the bitwise check."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_image_layout_is_bitwise_the_old_code(dtype: torch.dtype) -> None:
    new, old = Normalize(MEAN, STD), _OldNormalize(MEAN, STD)
    assert new.layout == "image"
    for name in ("mean", "std"):
        assert torch.equal(new.state_dict()[name], old.state_dict()[name])
        assert new.state_dict()[name].shape == (1, 3, 1, 1)
    x = torch.rand(5, 3, 9, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(new(x), old(x))
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(new(xc), old(xc))


def test_clip_layout_broadcasts_over_channels_not_time() -> None:
    norm = Normalize(MEAN, STD, "clip")
    assert norm.mean.shape == (1, 3, 1, 1, 1)
    clip = torch.rand(2, 3, 4, 6, 6)
    out = norm(clip)
    for t in range(4):  # every frame normalised as an image
        torch.testing.assert_close(
            out[:, :, t], Normalize(MEAN, STD)(clip[:, :, t]), rtol=0, atol=0
        )


def test_wrong_rank_for_the_layout() -> None:
    with pytest.raises(ValueError, match="Normalize for image samples expects a 4-D batch"):
        Normalize(MEAN, STD)(torch.rand(2, 3, 4, 6, 6))
    with pytest.raises(ValueError, match="Normalize for clip samples expects a 5-D batch"):
        Normalize(MEAN, STD, "clip")(torch.rand(2, 3, 6, 6))
    with pytest.raises(ConfigError, match="unknown sample layout"):
        Normalize(MEAN, STD, "video")  # type: ignore[arg-type]
