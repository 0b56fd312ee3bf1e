import pytest
from pydantic import Field, ValidationError

from cslrobust.sections import Section, describe_errors, section_errors


class _Box(Section):
    side: float = Field(default=1.0, gt=0.0)
    count: int


def test_sections_are_frozen_and_reject_unknown_keys():
    box = _Box(count=2)
    with pytest.raises(ValidationError):
        box.count = 3  # type: ignore[misc]
    with pytest.raises(ValidationError) as info:
        _Box(count=1, colour="red")  # type: ignore[call-arg]
    assert describe_errors(info.value) == "unknown key 'colour'"


def test_describe_errors_is_one_line_per_key():
    with pytest.raises(ValidationError) as info:
        _Box.model_validate({"side": -1})
    assert describe_errors(info.value) == (
        "side=-1: Input should be greater than 0; count: Field required"
    )


def test_section_errors_keep_key_value_and_message():
    error = section_errors(
        "_Box", [("colour", "red", "not_a_parameter", "is not a parameter of box 'plain'")]
    )
    assert error.errors()[0]["loc"] == ("colour",) and error.errors()[0]["input"] == "red"
    assert describe_errors(error) == "colour is not a parameter of box 'plain'"
