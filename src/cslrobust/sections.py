"""Typed config sections of registered components, and how their validation errors read.

Every registered component (an objective, a false-negative detector, a view augmentation, an
optimiser) declares its parameters as a frozen pydantic :class:`Section` subclass and registers it
beside its builder (:class:`~cslrobust.registry.ComponentRegistry`). A config sub-mapping is
validated against the section of the name it selects (``objective.name``, ``objective.fn.detector``,
``augment.kind``, ``train.optimizer.name``), so a key the chosen component does not take is an error
naming the component.

This module imports nothing from cslrobust: the config and every component package build on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "BARE_LINF_MAX",
    "AugmentSection",
    "LinfRadius",
    "HeadKind",
    "Layout",
    "ObjectiveSection",
    "OptimizerSection",
    "Section",
    "describe_errors",
    "format_linf_radius",
    "parse_linf_radius",
    "section_errors",
]

#: Largest L-inf radius accepted as a bare number. Radii used to be written in units of 1/255
#: (``eps_linf: [0.5, 1, 2, 4]``); such values are all above this bound, so an old file is rejected
#: with a hint instead of being read as fractions 127x too large.
BARE_LINF_MAX = 0.1


def parse_linf_radius(value: object) -> float:
    """An L-inf radius as a fraction of the [0,1] pixel range, from ``"8/255"`` or a number.

    A bare number is a fraction (``0.0314``) and must not exceed :data:`BARE_LINF_MAX`; larger radii
    are written as ``"k/255"``, computed as ``k / 255`` (the same float as ``k / 255.0``).

    Raises:
        ValueError: If ``value`` is neither, or the radius lies outside [0, 1].
    """
    if isinstance(value, bool):
        raise ValueError(f"expected an L-inf radius such as '8/255' or 0.0314, got {value!r}")
    if isinstance(value, int | float):
        eps, slash = float(value), ""
    elif isinstance(value, str):
        num, slash, den = value.strip().partition("/")
        try:
            eps = float(num) / float(den) if slash else float(num)
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"expected an L-inf radius such as '8/255' or 0.0314, got {value!r}"
            ) from None
    else:
        raise ValueError(f"expected an L-inf radius such as '8/255' or 0.0314, got {value!r}")
    if not slash and eps > BARE_LINF_MAX:
        raise ValueError(
            f"bare radius {value!r} is above {BARE_LINF_MAX}; radii are fractions of the [0,1] "
            f"range: write '{eps:g}/255' if you meant units of 1/255"
        )
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"L-inf radius {value!r} = {eps:g} lies outside [0, 1]")
    return eps


def format_linf_radius(eps: float) -> str:
    """``"8/255"`` when that string parses back to exactly ``eps``, else the fraction (``"0.0314"``)."""
    for text in (f"{round(eps * 255, 6):g}/255", repr(float(eps)), f"{eps * 255!r}/255"):
        with contextlib.suppress(ValueError):
            if parse_linf_radius(text) == eps:
                return text
    return f"{eps * 255!r}/255"  # off the grid above BARE_LINF_MAX: within one float rounding


#: An L-inf radius: parsed once at the edge into a fraction; saved configs write it back as "k/255".
LinfRadius = Annotated[
    float,
    BeforeValidator(parse_linf_radius),
    PlainSerializer(format_linf_radius, return_type=str, when_used="json"),
]


HeadKind = Literal["projector", "classifier", "none"]
"""The head an objective trains on: an MLP projector (contrastive) or a linear classifier; ``"none"``
for an encoder trained elsewhere (``cslrobust audit``), which has no training head of ours."""


Layout = Literal["image", "clip"]
"""Sample layout: ``"image"`` samples are ``(C, H, W)`` (batches ``(B, C, H, W)``), ``"clip"`` samples
``(C, T, H, W)`` (batches ``(B, C, T, H, W)``); see :mod:`cslrobust.layouts`."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable.

    Attributes:
        later_defaults: Keys added to the section after results were made with it, with their
            default; a key at that default stays out of the hashes that name those results (run ids,
            stage keys), so earlier ids and keys stay valid.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    later_defaults: ClassVar[dict[str, object]] = {}


class ObjectiveSection(Section):
    """Base of the ``objective`` sections; ``name`` is the objective's registry key.

    Attributes:
        name: Registry key of the objective (each subclass fixes it).
        head_kind: The head the objective trains on, known without building the objective (loading
            a trained encoder needs it).
        family: The method family the report groups it in (``supervised``, ``contrastive``,
            ``fn_removal``, ``negative_free``: ``cslrobust.objectives.FAMILIES``).
        later_defaults: Keys added to the section after runs were made with it, with their
            default; a key at that default stays out of the run id, so earlier ids stay valid.
    """

    name: str
    head_kind: ClassVar[HeadKind]
    family: ClassVar[str] = "contrastive"


class AugmentSection(Section):
    """Base of the ``augment`` sections; ``kind`` is the view preset's registry key.

    Attributes:
        layouts: The sample layouts the preset takes (``("image",)`` unless a preset says otherwise).
    """

    kind: str
    layouts: ClassVar[tuple[Layout, ...]] = ("image",)


class OptimizerSection(Section):
    """Base of the ``train.optimizer`` sections; ``name`` is the optimiser's registry key.

    The learning rate, its schedule and ``train.weight_decay`` apply to every optimiser; the section
    holds what only its optimiser takes.

    Attributes:
        name: Registry key of the optimiser (each subclass fixes it).
        train_keys: The ``train`` keys beside ``lr`` and ``weight_decay`` that the optimiser reads
            (``momentum``, ``nesterov``); any other such key must keep its default.
    """

    name: str
    train_keys: ClassVar[frozenset[str]] = frozenset()


def section_errors(title: str, errors: Sequence[tuple[str, object, str, str]]) -> ValidationError:
    """A pydantic ``ValidationError`` with one line error per ``(key, value, type, message)``.

    Raised inside a field validator, its errors keep their keys below the field's location, so the
    config error names the full key (``objective.fn.k``).

    Args:
        title: The model being validated (pydantic's error title).
        errors: ``(key, its value, error type, message)`` per error.

    Returns:
        The error, to be raised.
    """
    details: list[InitErrorDetails] = [
        {
            # Without a context pydantic leaves the (already formatted) message as it is.
            "type": PydanticCustomError(kind, message),
            "loc": (key,),
            "input": value,
        }
        for key, value, kind, message in errors
    ]
    return ValidationError.from_exception_data(title, details)


def describe_errors(error: ValidationError) -> str:
    """One line naming every offending key, its value and what was expected.

    Args:
        error: A validation error of a section or of a whole config.

    Returns:
        The errors joined by ``"; "``, e.g. ``"objective.fn.k is not a parameter of detector
        'oracle'; train.lr=-1: Input should be greater than 0"``.
    """
    parts = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r}")
        elif item["type"] == "not_a_parameter":
            parts.append(f"{key} {message}")
        elif "input" in item and item["type"] != "missing":
            parts.append(f"{key}={item['input']!r}: {message}")
        else:
            parts.append(f"{key}: {message}")
    return "; ".join(parts)
