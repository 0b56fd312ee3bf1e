"""A generic name -> constructor registry with duplicate detection.

Registries are the one sanctioned global state: append-only, keyed by snake_case names that are identical
to the values accepted in config files. A :class:`ComponentRegistry` also stores each component's typed
config section beside its builder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import ValidationError

from cslrobust.errors import ConfigError
from cslrobust.sections import Section, describe_errors, section_errors

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factory functions).

    Args:
        kind: What is registered ("model", "objective", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``.

        Raises:
            ValueError: If ``name`` is already registered (a programming error, not a user error).
        """

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry registered under ``name``.

        Raises:
            ConfigError: If ``name`` is unknown; the message lists the known names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


S = TypeVar("S", bound=Section)
B = TypeVar("B")


@dataclass(frozen=True)
class Component(Generic[S, B]):
    """A registered component: the typed config section it is built from, and its builder.

    Attributes:
        section: The component's frozen config section (its registry key is a field default).
        build: The builder; it receives an instance of ``section``.
    """

    section: type[S]
    build: B


class ComponentRegistry(Generic[S, B]):
    """Maps names to components that each own a typed config section.

    The section's ``key`` field holds the registry name (``name`` for objectives, ``detector`` for
    false-negative detectors, ``kind`` for view presets), so a config sub-mapping is validated
    against the section of the component it names (:meth:`parse`) and dumps back with its name.

    Args:
        kind: What is registered, for messages (``"objective"``, ``"detector"``, ...).
        key: The section field holding the registry name.
        base: Base class of every registered section.
    """

    def __init__(self, kind: str, *, key: str, base: type[S]) -> None:
        self.kind = kind
        self.key = key
        self.base = base
        self._entries: Registry[Component[S, B]] = Registry(kind)

    def register(self, name: str, section: type[S]) -> Callable[[B], B]:
        """Decorator that registers a builder under ``name`` together with its section.

        Raises:
            ValueError: If ``name`` is taken or ``section``'s ``key`` field does not default to
                ``name`` (programming errors).
        """
        field = section.model_fields.get(self.key)
        if field is None or field.default != name:
            raise ValueError(
                f"section {section.__name__} of {self.kind} {name!r} must have the field "
                f"{self.key!r} with default {name!r}"
            )

        def decorator(build: B) -> B:
            self._entries.register(name)(Component(section, build))
            return build

        return decorator

    def get(self, name: str) -> Component[S, B]:
        """The component registered under ``name``.

        Raises:
            ConfigError: If ``name`` is unknown; the message lists the known names.
        """
        return self._entries.get(name)

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return self._entries.names()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry_for(self, section: Section) -> Component[S, B]:
        """The component that ``section`` configures.

        Raises:
            ConfigError: If ``section`` is not an instance of a registered section class.
        """
        name = getattr(section, self.key, None)
        if isinstance(name, str) and name in self:
            entry = self.get(name)
            if isinstance(section, entry.section):
                return entry
        raise ConfigError(
            f"{type(section).__name__} is not the section of a registered {self.kind}; "
            f"expected one of: {', '.join(self.names())}"
        )

    def parse(self, value: object, *, default: str) -> S:
        """Validate a config value into the section of the component it names.

        Meant for pydantic ``mode="before"`` validators: errors are pydantic errors located at the
        offending key. A mapping selects its component by its ``key`` entry (``default`` when
        absent); every other entry must be a field of that component's section.

        Args:
            value: A mapping from a config file, or an already validated section.
            default: The component used when the mapping has no ``key`` entry.

        Returns:
            The validated section (an instance of the registered subclass).

        Raises:
            ValidationError: On an unknown name (``"unknown <kind> 'x'; expected one of [...]"``),
                a key the component does not take (``"<key> is not a parameter of <kind> 'x'"``)
                or an invalid value.
            ValueError: If ``value`` is neither a mapping nor a registered section.
        """
        if isinstance(value, Section):
            try:
                return self.entry_for(value).section.model_validate(value)
            except ConfigError as err:  # pydantic reports ValueErrors only
                raise ValueError(str(err)) from None
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping with {self.key!r}, got {type(value).__name__}")
        name = value.get(self.key, default)
        if not isinstance(name, str) or name not in self:
            message = f"unknown {self.kind} {name!r}; expected one of {self.names()}"
            raise section_errors(self.base.__name__, [(self.key, name, "unknown_name", message)])
        section = self.get(name).section
        unknown = [key for key in value if key not in section.model_fields]
        if unknown:
            message = f"is not a parameter of {self.kind} {name!r}"
            errors = [(str(key), value[key], "not_a_parameter", message) for key in unknown]
            raise section_errors(section.__name__, errors)
        return section.model_validate(dict(value))

    def section(self, name: str, /, **params: object) -> S:
        """The validated section of component ``name`` with ``params`` (the rest at defaults).

        Raises:
            ConfigError: On an unknown name, a parameter the component does not take or an invalid
                value; one line naming each offending key.
        """
        try:
            return self.parse({**params, self.key: name}, default=name)
        except ValidationError as err:
            raise ConfigError(f"invalid {self.kind} {name!r}: {describe_errors(err)}") from None
