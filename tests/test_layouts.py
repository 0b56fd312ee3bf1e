import pytest

from cslrobust.augment import AUGMENTATIONS, check_augment_layout
from cslrobust.errors import ConfigError
from cslrobust.layouts import LAYOUTS, batch_ndim, require_layout
from cslrobust.models import (
    MODELS,
    Backbone,
    backbone_class,
    backbone_layouts,
    check_backbone_layout,
)


def test_layouts_and_ndims() -> None:
    assert LAYOUTS == ("image", "clip")
    assert batch_ndim("image") == 4 and batch_ndim("clip") == 5
    with pytest.raises(ConfigError, match="unknown sample layout 'audio'"):
        batch_ndim("audio")  # type: ignore[arg-type]


def test_require_layout_passes_and_fails_in_one_line() -> None:
    require_layout("augment.kind", "simclr", ("image",), data="cifar10", layout="image")
    with pytest.raises(ConfigError) as info:
        require_layout(
            "augment.kind",
            "simclr",
            ("image",),
            data="synthetic_clips",
            layout="clip",
            alternatives=["simclr_clip", "x"],
        )
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "augment.kind 'simclr' supports image samples, data 'synthetic_clips' gives clip samples; "
        "expected one of augment.kind: ['simclr_clip', 'x']"
    )


@pytest.mark.parametrize("kind", ["simclr", "simclr_fast", "crop_flip", "none"])
def test_image_augmentations_refuse_clips(kind: str) -> None:
    section = AUGMENTATIONS.section(kind)
    check_augment_layout(section, data="cifar10", layout="image")
    with pytest.raises(
        ConfigError,
        match=rf"augment.kind '{kind}' supports image samples, data 'synthetic_clips' gives clip samples; expected one of augment.kind: \['simclr_clip'\]",
    ):
        check_augment_layout(section, data="synthetic_clips", layout="clip")


def test_every_augmentation_declares_layouts() -> None:
    for kind in AUGMENTATIONS.names():
        layouts = AUGMENTATIONS.get(kind).section.layouts
        assert layouts and set(layouts) <= set(LAYOUTS)


def test_every_backbone_declares_layouts() -> None:
    for arch in MODELS.names():
        assert issubclass(backbone_class(arch), Backbone)
        assert set(backbone_layouts(arch)) <= set(LAYOUTS)
    assert backbone_layouts("resnet18") == ("image",)
    assert backbone_layouts("r3d_18") == ("clip",)


def test_backbone_layout_mismatch_is_one_line() -> None:
    check_backbone_layout("r3d_18", data="synthetic_clips", layout="clip")
    with pytest.raises(ConfigError) as info:
        check_backbone_layout("resnet18", data="synthetic_clips", layout="clip")
    assert str(info.value) == (
        "model.arch 'resnet18' supports image samples, data 'synthetic_clips' gives clip samples; "
        "expected one of model.arch: ['r2plus1d_18', 'r3d_18']"
    )
    with pytest.raises(
        ConfigError,
        match="model.arch 'r3d_18' supports clip samples, data 'cifar10' gives image samples",
    ):
        check_backbone_layout("r3d_18", data="cifar10", layout="image")
