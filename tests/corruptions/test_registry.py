import numpy as np
import pytest

from cslrobust.corruptions import CORRUPTIONS
from cslrobust.corruptions.registry import (
    CORRUPTION_NAMES,
    FAMILIES,
    OFFICIAL_EXTRA_NAMES,
    family_of,
    unit_to_uint8,
)
from cslrobust.errors import ConfigError


def test_the_15_cifar_c_corruptions_are_registered_in_four_families():
    assert len(CORRUPTION_NAMES) == 15
    assert CORRUPTIONS.names() == sorted(CORRUPTION_NAMES)
    assert [len(names) for names in FAMILIES.values()] == [3, 4, 4, 4]
    assert not set(OFFICIAL_EXTRA_NAMES) & set(CORRUPTION_NAMES)


def test_family_of():
    assert family_of("shot_noise") == "noise"
    assert family_of("zoom_blur") == "blur"
    assert family_of("fog") == "weather"
    assert family_of("pixelate") == "digital"
    with pytest.raises(KeyError):
        family_of("spatter")


def test_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown corruption 'gausian_noise'"):
        CORRUPTIONS.get("gausian_noise")


def test_unit_to_uint8_clips_and_truncates_like_the_reference():
    x = np.array([-0.5, 0.0, 0.9999, 1.0, 2.0, 100.7 / 255])
    assert unit_to_uint8(x).tolist() == [0, 0, 254, 255, 255, 100]
