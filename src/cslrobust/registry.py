"""A generic name -> constructor registry with duplicate detection.

Registries are the one sanctioned global state: append-only, keyed by snake_case names that are identical
to the values accepted in config files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from cslrobust.errors import ConfigError

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
