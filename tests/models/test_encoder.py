import pytest
import torch

from cslrobust.errors import ConfigError
from cslrobust.models import (
    MODELS,
    BasicBlock,
    Classifier,
    Encoder,
    LinearHead,
    Normalize,
    ProjectionHead,
    ResNet,
    backbone_layouts,
    build_encoder,
)

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# Image backbones (clip encoders: test_video_resnet.py).
IMAGE_ARCHS = [a for a in MODELS.names() if "image" in backbone_layouts(a)]


def _build(arch: str = "resnet18", head_kind: str = "projector", **kwargs: bool) -> Encoder:
    return build_encoder(
        arch,
        width=4,
        head_kind=head_kind,  # type: ignore[arg-type]
        num_classes=10,
        proj_hidden_dim=32,
        proj_dim=16,
        mean=MEAN,
        std=STD,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_build_encoder_contract(arch: str) -> None:
    enc = _build(arch)
    assert isinstance(enc.normalize, Normalize)
    assert isinstance(enc.head, ProjectionHead)
    x = torch.rand(2, 3, 32, 32)
    assert enc.features(x).shape == (2, enc.feature_dim)
    out = enc(x)
    assert out.shape == (2, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_classifier_head_kind() -> None:
    enc = _build(head_kind="classifier")
    assert isinstance(enc.head, LinearHead)
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_features_normalise_inside() -> None:
    enc = _build().eval()
    x = torch.rand(3, 3, 32, 32)
    manual = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(enc.features(x), enc.backbone.forward_features(manual))
    torch.testing.assert_close(enc(x), enc.head(enc.backbone(enc.normalize(x))))


def test_classifier_composition() -> None:
    enc = _build().eval()
    head = LinearHead(enc.feature_dim, 10)
    clf = Classifier(enc, head).eval()
    x = torch.rand(3, 3, 32, 32)
    logits = clf(x)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(logits, head(enc.features(x)))
    # The encoder's own (projector) head is not part of the composite.
    assert not torch.allclose(enc(x)[:, :10], logits)


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_channels_last_matches_contiguous(arch: str) -> None:
    torch.manual_seed(1)
    ref = _build(arch).eval()
    torch.manual_seed(1)
    cl = _build(arch, channels_last=True).eval()
    assert isinstance(cl.backbone, ResNet)
    assert cl.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref.features(x)
        torch.testing.assert_close(cl.features(x), expected, atol=1e-5, rtol=1e-5)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cl.features(x_cl), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cl(x), ref(x), atol=1e-5, rtol=1e-5)


def test_unknown_arch() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        _build("resnet1000")


def test_unknown_head_kind() -> None:
    with pytest.raises(ConfigError):
        _build(head_kind="mlp")


def test_zero_init_residual_flag() -> None:
    enc = _build(zero_init_residual=True)
    blocks = [m for m in enc.backbone.modules() if isinstance(m, BasicBlock)]
    assert blocks and all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)


def test_clip_encoder_averages_features_over_whole_clips() -> None:
    from cslrobust.models import build_encoder

    torch.manual_seed(0)
    common = {
        "width": 4,
        "head_kind": "classifier",
        "num_classes": 3,
        "proj_hidden_dim": 8,
        "proj_dim": 4,
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.2, 0.2),
    }
    encoder = build_encoder("r3d_18", clip_frames=2, **common).eval()
    x = torch.rand(3, 3, 6, 16, 16)  # three clips of 2 frames per sample
    with torch.no_grad():
        averaged = encoder.features(x)
        per_clip = [encoder.features(x[:, :, 2 * k : 2 * k + 2]) for k in range(3)]
    torch.testing.assert_close(averaged, torch.stack(per_clip).mean(0), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # a sample of exactly one clip is the plain forward
        plain = build_encoder("r3d_18", **common).eval()
        plain.load_state_dict(encoder.state_dict())
        assert torch.equal(encoder.features(x[:, :, :2]), plain.features(x[:, :, :2]))
    assert set(encoder.state_dict()) == set(plain.state_dict())  # nothing new in checkpoints
    # 5 frames: ceil(5/2) = 3 clips starting at frames 0, 2 (rounded from 1.5) and 3.
    with torch.no_grad():
        y = x[:1, :, :5]
        odd = encoder.features(y)
        clips = [encoder.features(y[:, :, s : s + 2]) for s in (0, 2, 3)]
    torch.testing.assert_close(odd, torch.stack(clips).mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1 frames is shorter than the model's 2"):
        encoder.features(torch.rand(1, 3, 1, 16, 16))
