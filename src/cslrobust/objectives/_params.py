"""Checking named parameters against a registered constructor before calling it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from cslrobust.errors import ConfigError


def check_params(
    factory: Callable[..., object], params: Mapping[str, object], *, what: str
) -> None:
    """Raise :class:`ConfigError` naming unknown or missing keyword parameters of ``factory``.

    Args:
        factory: The constructor that will be called as ``factory(**params)``.
        params: The keyword parameters.
        what: What is being built, for the message (e.g. ``"objective 'simclr'"``).

    Raises:
        ConfigError: If a key is not a parameter of ``factory`` or a required one is missing.
    """
    signature = inspect.signature(factory)
    accepted = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for {what}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    missing = [
        p.name
        for p in signature.parameters.values()
        if p.name in accepted and p.default is inspect.Parameter.empty and p.name not in params
    ]
    if missing:
        raise ConfigError(f"missing parameter(s) {', '.join(missing)} for {what}")
