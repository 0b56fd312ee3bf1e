from collections.abc import Callable
from typing import Any, Literal

import pytest
from pydantic import Field, ValidationError

from cslrobust.errors import ConfigError
from cslrobust.registry import ComponentRegistry, Registry
from cslrobust.sections import Section


def test_register_get_names_and_duplicates():
    reg: Registry[int] = Registry("thing")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1 and reg.names() == ["a", "b"] and "a" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(3)
    with pytest.raises(ConfigError, match="unknown thing 'c'; expected one of: a, b"):
        reg.get("c")


class _Thing(Section):
    """A section family for the tests: ``kind`` is the registry key."""

    kind: str


class _Round(_Thing):
    kind: Literal["round"] = "round"
    radius: float = Field(default=1.0, gt=0.0)


class _Square(_Thing):
    kind: Literal["square"] = "square"
    side: float = Field(gt=0.0)


def _registry() -> ComponentRegistry[_Thing, Callable[[Any], float]]:
    reg: ComponentRegistry[_Thing, Callable[[Any], float]] = ComponentRegistry(
        "shape", key="kind", base=_Thing
    )
    reg.register("round", _Round)(lambda s: 3.0 * s.radius**2)
    reg.register("square", _Square)(lambda s: s.side**2)
    return reg


def test_component_registry_builds_each_section_with_its_builder():
    reg = _registry()
    assert reg.names() == ["round", "square"] and "round" in reg
    for section, area in ((_Round(radius=2.0), 12.0), (_Square(side=3.0), 9.0)):
        assert reg.entry_for(section).build(section) == area
    assert reg.section("square", side=2.0) == _Square(side=2.0)
    assert reg.parse({}, default="round") == _Round()
    assert reg.parse(_Square(side=1.0), default="round") == _Square(side=1.0)


def test_component_registry_rejects_bad_registrations():
    reg = _registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("round", _Round)(lambda s: 0.0)
    with pytest.raises(ValueError, match="field 'kind' with default 'oval'"):
        reg.register("oval", _Round)
    with pytest.raises(ConfigError, match="_Thing is not the section of a registered shape"):
        reg.entry_for(_Thing(kind="round"))


def test_component_registry_errors_name_the_key_and_the_component():
    reg = _registry()
    with pytest.raises(ConfigError) as info:
        reg.section("round", side=2.0, radius=-1.0)
    assert str(info.value) == "invalid shape 'round': side is not a parameter of shape 'round'"
    with pytest.raises(ConfigError) as info:
        reg.section("round", radius=-1.0)
    assert str(info.value) == ("invalid shape 'round': radius=-1.0: Input should be greater than 0")
    with pytest.raises(ConfigError) as info:
        reg.section("square")
    assert str(info.value) == "invalid shape 'square': side: Field required"
    with pytest.raises(ConfigError) as info:
        reg.section("hexagon")
    assert str(info.value) == (
        "invalid shape 'hexagon': kind='hexagon': unknown shape 'hexagon'; "
        "expected one of ['round', 'square']"
    )
    with pytest.raises(ValidationError) as err:
        reg.parse({"kind": "square", "side": 1.0, "radius": 2.0}, default="round")
    assert [e["loc"] for e in err.value.errors()] == [("radius",)]
    with pytest.raises(ValueError, match="expected a mapping with 'kind', got int"):
        reg.parse(3, default="round")
