import pytest
import torch

from cslrobust.errors import ConfigError
from cslrobust.models import (
    MODELS,
    Classifier,
    Conv2Plus1d,
    LinearHead,
    Normalize,
    VideoResNet,
    backbone_layouts,
    build_encoder,
    r2plus1d_mid_channels,
)

CLIP_ARCHS = [a for a in MODELS.names() if "clip" in backbone_layouts(a)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_the_clip_archs() -> None:
    assert CLIP_ARCHS == ["r2plus1d_18", "r3d_18"]


@pytest.mark.parametrize("arch", CLIP_ARCHS)
@pytest.mark.parametrize(
    ("stem", "size", "last"),
    # (T, H, W) at the last stage: time halves in stages 2-4, space too (and in the kinetics stem)
    [("cifar", 32, (1, 4, 4)), ("kinetics", 112, (1, 7, 7))],
)
def test_shapes_for_8_frames(arch: str, stem: str, size: int, last: tuple[int, int, int]) -> None:
    model = MODELS.get(arch)(width=4, stem=stem)
    assert isinstance(model, VideoResNet) and model.feature_dim == 32
    x = torch.rand(2, 3, 8, size, size)
    trunk = model.layer4(model.layer3(model.layer2(model.layer1(model.stem(x)))))
    assert trunk.shape == (2, 32, *last)
    feats = model.forward_features(x)
    assert feats.shape == (2, 32) and torch.isfinite(feats).all()


@pytest.mark.parametrize("arch", CLIP_ARCHS)
def test_16_frames_at_112_reach_2x7x7(arch: str) -> None:
    model = MODELS.get(arch)(width=2, stem="kinetics")
    x = torch.rand(1, 3, 16, 112, 112)
    trunk = model.layer4(model.layer3(model.layer2(model.layer1(model.stem(x)))))
    assert trunk.shape == (1, 16, 2, 7, 7)


@pytest.mark.parametrize("arch", CLIP_ARCHS)
def test_gradient_flows_to_every_parameter_and_the_input(arch: str) -> None:
    model = MODELS.get(arch)(width=4)
    x = torch.rand(2, 3, 4, 16, 16, requires_grad=True)
    model(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("arch", "expected"),
    # torchvision.models.video r3d_18 / r2plus1d_18 with their 400-class fc: 33,371,472 and
    # 31,505,325 parameters (the num_params of their model cards, docs.pytorch.org/vision; the
    # paper's Table 2 rounds R3D-18 to 33.4M). Ours has no fc: + 512 * 400 + 400.
    [("r3d_18", 33_371_472), ("r2plus1d_18", 31_505_325)],
)
def test_param_count_width_64_against_torchvision(arch: str, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no 33M-parameter initialisation
        model = MODELS.get(arch)(width=64, stem="kinetics")
    count = sum(p.numel() for p in model.parameters())
    assert count + model.feature_dim * 400 + 400 == expected


def test_mid_channels_formula() -> None:
    # M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)), Tran et al. 2018 Sec. 3.5
    assert r2plus1d_mid_channels(64, 64) == 144  # 27*64*64 / (9*64 + 3*64) = 144
    assert r2plus1d_mid_channels(64, 128) == 230  # 221184 / 960 = 230.4
    assert r2plus1d_mid_channels(3, 64, t=3, d=7) == 83
    conv = Conv2Plus1d(64, 128, r2plus1d_mid_channels(64, 128), (2, 2))
    spatial, temporal = conv[0], conv[3]
    assert spatial.weight.shape == (230, 64, 1, 3, 3) and spatial.stride == (1, 2, 2)
    assert temporal.weight.shape == (128, 230, 3, 1, 1) and temporal.stride == (2, 1, 1)
    # about the parameters of the 3x3x3 convolution it replaces
    factorised = spatial.weight.numel() + temporal.weight.numel()
    assert abs(factorised - 27 * 64 * 128) / (27 * 64 * 128) < 0.01


def test_invalid_settings() -> None:
    with pytest.raises(ConfigError, match="unknown video stem 'imagenet'"):
        MODELS.get("r3d_18")(width=4, stem="imagenet")
    with pytest.raises(ConfigError, match="width"):
        MODELS.get("r3d_18")(width=0)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        MODELS.get("r3d_18")(width=2)(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("arch", CLIP_ARCHS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_build_encoder_for_clips(arch: str, channels_last: bool) -> None:
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    enc = build_encoder(
        arch,
        width=8,
        head_kind="projector",
        num_classes=4,
        proj_hidden_dim=16,
        proj_dim=8,
        mean=mean,
        std=std,
        channels_last=channels_last,
    )
    assert isinstance(enc.normalize, Normalize) and enc.normalize.layout == "clip"
    assert enc.normalize.mean.shape == (1, 3, 1, 1, 1)
    x = torch.rand(2, 3, 4, 16, 16)
    assert enc(x).shape == (2, 8)
    clf = Classifier(enc, LinearHead(enc.feature_dim, 4)).eval()
    assert clf(x).shape == (2, 4)
    with (
        pytest.raises(ConfigError, match="model.arch 'r3d_18' supports clip samples")
        if arch == "r3d_18"
        else pytest.raises(ConfigError)
    ):
        build_encoder(
            arch,
            width=4,
            head_kind="none",
            num_classes=1,
            proj_hidden_dim=1,
            proj_dim=1,
            mean=mean,
            std=std,
            layout="image",
        )
