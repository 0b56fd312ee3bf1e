import pytest
import torch

from cslrobust.models import MODELS, BasicBlock, Bottleneck, ResNet, backbone_layouts
from cslrobust.registry import Registry

# Image backbones (clip backbones: test_video_resnet.py).
IMAGE_ARCHS = [a for a in MODELS.names() if "image" in backbone_layouts(a)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _expansion(model: ResNet) -> int:
    block = model.layer1[0]
    assert isinstance(block, BasicBlock | Bottleneck)
    return block.expansion


@pytest.mark.parametrize("name", IMAGE_ARCHS)
def test_forward_backward_contract(name: str) -> None:
    model = MODELS.get(name)(width=4)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.feature_dim)
    assert torch.isfinite(feats).all()
    torch.testing.assert_close(model(x), feats)
    feats.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", IMAGE_ARCHS)
@pytest.mark.parametrize("width", [4, 16])
def test_feature_dim(name: str, width: int) -> None:
    model = MODELS.get(name)(width=width)
    assert isinstance(model, ResNet)
    expected = 8 * width if _expansion(model) == 1 else 32 * width
    assert model.feature_dim == expected
    assert model.forward_features(torch.rand(2, 3, 32, 32)).shape == (2, expected)


@pytest.mark.parametrize("name", IMAGE_ARCHS)
def test_in_channels(name: str) -> None:
    model = MODELS.get(name)(width=4, in_channels=1)
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, model.feature_dim)


@pytest.mark.parametrize(
    ("name", "expected"),
    # Reference CIFAR ResNets (kuangliu/pytorch-cifar) without their 10-class fc.
    [("resnet18", 11_168_832), ("resnet34", 21_276_992), ("resnet50", 23_500_352)],
)
def test_param_count_width_64(name: str, expected: int) -> None:
    model = MODELS.get(name)(width=64)
    assert sum(p.numel() for p in model.parameters()) == expected
    with_fc = expected + model.feature_dim * 10 + 10
    if name == "resnet18":
        assert with_fc == 11_173_962


def test_cifar_stem_keeps_resolution() -> None:
    model = MODELS.get("resnet18")(width=4)
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    out = model.layer4(
        model.layer3(model.layer2(model.layer1(model.conv1(torch.rand(1, 3, 32, 32)))))
    )
    assert out.shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", IMAGE_ARCHS)
def test_zero_init_residual(name: str) -> None:
    model = MODELS.get(name)(width=4, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
    assert blocks and all(torch.count_nonzero(b.last_bn.weight) == 0 for b in blocks)
    default = MODELS.get(name)(width=4)
    assert all(
        torch.all(b.last_bn.weight == 1)
        for b in default.modules()
        if isinstance(b, BasicBlock | Bottleneck)
    )


def test_registry_is_a_registry() -> None:
    assert isinstance(MODELS, Registry)
    assert {"resnet18", "resnet34", "resnet50"} <= set(MODELS.names())
