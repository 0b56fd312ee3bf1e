import pytest

from cslrobust.errors import ConfigError
from cslrobust.registry import Registry


def test_register_get_names_and_duplicates():
    reg: Registry[int] = Registry("thing")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1 and reg.names() == ["a", "b"] and "a" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(3)
    with pytest.raises(ConfigError, match="unknown thing 'c'; expected one of: a, b"):
        reg.get("c")
