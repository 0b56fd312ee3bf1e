"""Key maps of external checkpoint formats onto our ResNet backbone."""

import pytest
import torch

from cslrobust.errors import CheckpointError
from cslrobust.models import build_encoder
from cslrobust.models.external_weights import (
    FORMATS,
    KEY_MAPS,
    check_backbone_weights,
    map_state_dict,
)


def _backbone(arch: str = "resnet18", stem: str = "cifar"):
    return build_encoder(
        arch,
        width=4,
        head_kind="none",
        num_classes=2,
        proj_hidden_dim=4,
        proj_dim=4,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        stem=stem,
    ).backbone


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_key_map_round_trips(fmt: str, arch: str):
    state = _backbone(arch).state_dict()
    key_map = KEY_MAPS[fmt]
    theirs = {key_map.to_theirs(k): v for k, v in state.items()}
    assert len(theirs) == len(state)
    assert all(key_map.to_ours(k) == ours for k, ours in zip(theirs, state, strict=True))
    mapped = map_state_dict(theirs, fmt)
    assert mapped.dropped == [] and mapped.unexpected == []
    loaded = check_backbone_weights(state, mapped, "test")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_known_layouts():
    assert KEY_MAPS["torchvision"].to_theirs("layer2.0.shortcut.0.weight") == (
        "layer2.0.downsample.0.weight"
    )
    assert KEY_MAPS["timm"].to_ours("conv1.weight") == "conv1.weight"
    assert KEY_MAPS["solo-learn"].to_theirs("layer1.0.bn2.running_var") == (
        "backbone.layer1.0.bn2.running_var"
    )
    assert KEY_MAPS["lightly"].to_ours("backbone.5.0.downsample.1.weight") == (
        "layer2.0.shortcut.1.weight"
    )
    assert KEY_MAPS["lightly"].to_ours("backbone.0.weight") == "conv1.weight"
    assert KEY_MAPS["cslrobust"].to_ours("backbone.layer4.1.conv2.weight") == (
        "layer4.1.conv2.weight"
    )


def test_heads_dropped_and_unknown_keys_unexpected():
    state = {"fc.weight": torch.zeros(2, 2), "conv1.weight": torch.zeros(1), "extra": torch.ones(1)}
    mapped = map_state_dict(state, "torchvision")
    assert mapped.dropped == ["fc.weight"]
    mapped = map_state_dict(
        {"backbone.conv1.weight": torch.zeros(1), "x.y": torch.ones(1)}, "lightly"
    )
    assert mapped.unexpected == ["x.y"] and list(mapped.backbone) == ["conv1.weight"]
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        map_state_dict(state, "keras")


def test_missing_batch_counters_are_filled_and_mismatches_are_one_line():
    state = _backbone().state_dict()
    theirs = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert set(check_backbone_weights(state, map_state_dict(theirs, "timm"), "f")) == set(state)
    theirs["conv1.weight"] = torch.zeros(4, 3, 7, 7)
    del theirs["layer1.0.conv1.weight"]
    with pytest.raises(CheckpointError) as err:
        check_backbone_weights(state, map_state_dict(theirs, "timm"), "checkpoint 'f'")
    message = str(err.value)
    assert "\n" not in message
    assert "1 missing (layer1.0.conv1.weight)" in message
    assert "conv1.weight (4, 3, 7, 7) vs (4, 3, 3, 3)" in message


def test_imagenet_stem_matches_torchvision_layout():
    cifar, imagenet = _backbone(), _backbone(stem="imagenet")
    assert list(cifar.state_dict()) == list(imagenet.state_dict())
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    x = torch.rand(2, 3, 32, 32)
    assert imagenet.eval()(x).shape == cifar.eval()(x).shape == (2, 32)
