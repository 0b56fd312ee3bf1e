"""One validation layer for everything read back from a run folder.

Each reader states what this version writes as a small declarative spec (:class:`Record`,
:class:`ListOf`, :class:`MapOf`, :class:`Int`, :class:`TensorOf`, ...) and passes what it loaded through
:func:`validate`. A missing required field, a wrong type or an impossible value is one
:class:`~cslrobust.errors.CheckpointError` line naming the file and the field::

    state file '.../state.pt': field 'optimizer.param_groups' is a str 'abc'; expected a list

Keys a spec does not name are accepted: older versions wrote harmless extras. Torch files are read
only through :func:`load_torch_file` (``weights_only=True``); a pickle it refuses is reported as
unsafe, never with torch's own advice to switch the check off. :func:`non_finite_tensors` finds the
NaN/inf tensors that must never be written into, or evaluated from, a checkpoint.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from cslrobust.errors import CheckpointError

_MISSING = object()
_REPR_LIMIT = 40

TensorKind = Literal["float", "integer", "bool", "uint8"]


class Mismatch(Exception):
    """A value that does not fit its spec (turned into a CheckpointError by :func:`validate`)."""

    def __init__(self, field_path: str, got: str, expected: str) -> None:
        super().__init__(field_path, got, expected)
        self.field_path, self.got, self.expected = field_path, got, expected


def describe(value: Any) -> str:
    """A short one-line description of a value for an error message."""
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, bool | int | float | str):
        text = repr(value)
        if len(text) > _REPR_LIMIT:
            text = text[: _REPR_LIMIT - 3] + "..."
        return f"{_article(type(value).__name__)} {text}"
    return _article(type(value).__name__)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _join(parent: str, key: Any) -> str:
    return f"{parent}.{key}" if parent else str(key)


class Spec:
    """What one field must hold; :meth:`check` raises :class:`Mismatch` otherwise."""

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return "a value"

    def check(self, value: Any, path: str) -> None:
        """Raise :class:`Mismatch` if ``value`` (at field ``path``) does not fit."""
        raise NotImplementedError

    def fail(self, value: Any, path: str, expected: str | None = None) -> Mismatch:
        """The mismatch of ``value`` at ``path``."""
        return Mismatch(path, describe(value), expected or self.expected)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Int(Spec):
    """An integer (not a bool), at least ``minimum``."""

    minimum: int | None = None

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return "an integer" if self.minimum is None else f"an integer >= {self.minimum}"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        if not _is_int(value) or (self.minimum is not None and value < self.minimum):
            raise self.fail(value, path)


@dataclass(frozen=True)
class Float(Spec):
    """A number (int or float, not a bool); NaN allowed (metrics may be NaN)."""

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return "a number"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(value, path)


@dataclass(frozen=True)
class Str(Spec):
    """A string."""

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return "a string"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        if not isinstance(value, str):
            raise self.fail(value, path)


@dataclass(frozen=True)
class Bool(Spec):
    """A bool."""

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return "true or false"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        if not isinstance(value, bool):
            raise self.fail(value, path)


@dataclass(frozen=True)
class IntText(Spec):
    """A string holding a decimal integer at least ``minimum`` (safetensors header values)."""

    minimum: int = 0

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return f"an integer >= {self.minimum} written as text"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        text = value.strip() if isinstance(value, str) else ""
        digits = text[1:] if text.startswith("-") else text
        if not (digits.isascii() and digits.isdigit()) or int(text) < self.minimum:
            raise self.fail(value, path)


@dataclass(frozen=True)
class Choice(Spec):
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return "one of " + ", ".join(repr(v) for v in self.values)

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        if not isinstance(value, str | int | float) or value not in self.values:
            raise self.fail(value, path)


_TENSOR_KINDS: dict[TensorKind, str] = {
    "float": "a floating-point tensor",
    "integer": "an integer tensor",
    "bool": "a bool tensor",
    "uint8": "a uint8 tensor",
}


def _tensor_kind_ok(tensor: torch.Tensor, kind: TensorKind) -> bool:
    dtype = tensor.dtype
    if kind == "float":
        return dtype.is_floating_point
    if kind == "bool":
        return dtype == torch.bool
    if kind == "uint8":
        return dtype == torch.uint8
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


@dataclass(frozen=True)
class TensorOf(Spec):
    """A tensor, optionally of a dtype family (``kind``) and number of dimensions (``ndim``)."""

    kind: TensorKind | None = None
    ndim: int | None = None

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        text = _TENSOR_KINDS[self.kind] if self.kind else "a tensor"
        return text if self.ndim is None else f"{text} with {self.ndim} dimension(s)"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        ok = isinstance(value, torch.Tensor)
        ok = ok and (self.kind is None or _tensor_kind_ok(value, self.kind))
        ok = ok and (self.ndim is None or value.dim() == self.ndim)
        if not ok:
            raise self.fail(value, path)


@dataclass(frozen=True)
class Nullable(Spec):
    """``None`` or what ``inner`` accepts."""

    inner: Spec

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return f"null or {self.inner.expected}"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        if value is not None:
            self.inner.check(value, path)


@dataclass(frozen=True)
class AnyOf(Spec):
    """What any of ``options`` accepts (each option a scalar spec)."""

    options: tuple[Spec, ...]

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return " or ".join(o.expected for o in self.options)

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        for option in self.options:
            try:
                option.check(value, path)
                return
            except Mismatch:
                continue
        raise self.fail(value, path)


@dataclass(frozen=True)
class ListOf(Spec):
    """A list (or tuple) whose every item fits ``item``."""

    item: Spec

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return "a list"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        if not isinstance(value, list | tuple):
            raise self.fail(value, path)
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]")


@dataclass(frozen=True)
class MapOf(Spec):
    """A mapping whose keys are of type ``keys`` and whose values fit ``value``."""

    value: Spec
    keys: type = str

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return f"an object with {self.keys.__name__} keys"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        if not isinstance(value, Mapping):
            raise self.fail(value, path)
        for key, item in value.items():
            if not isinstance(key, self.keys) or isinstance(key, bool):
                raise Mismatch(
                    _join(path, key), f"a key of type {type(key).__name__}", self.expected
                )
            self.value.check(item, _join(path, key))


@dataclass(frozen=True)
class Record(Spec):
    """An object with ``required`` and ``optional`` fields; other keys are accepted as they are."""

    required: Mapping[str, Spec] = field(default_factory=dict)
    optional: Mapping[str, Spec] = field(default_factory=dict)

    @property
    def expected(self) -> str:
        """What this spec accepts, for messages."""
        return "an object"

    def check(self, value: Any, path: str) -> None:
        """See :meth:`Spec.check`."""
        if not isinstance(value, Mapping):
            raise self.fail(value, path)
        for name, spec in self.required.items():
            if name not in value:
                raise Mismatch(_join(path, name), "missing", spec.expected)
            spec.check(value[name], _join(path, name))
        for name, spec in self.optional.items():
            if name in value:
                spec.check(value[name], _join(path, name))


def field_error(
    what: str, path: Path | str, field_path: str, got: str, expected: str
) -> CheckpointError:
    """The one-line error for a field of a file: ``<what> '<file>': field 'x' is ...; expected ...``."""
    where = f"{what} {str(path)!r}"
    if not field_path:
        return CheckpointError(f"{where} holds {got}; expected {expected}")
    return CheckpointError(f"{where}: field {field_path!r} is {got}; expected {expected}")


def validate(value: Any, spec: Spec, path: Path | str, *, what: str) -> Any:
    """Check ``value`` loaded from the file ``path`` against ``spec``; return it unchanged.

    Args:
        value: What was read (a JSON value, a torch state, a header mapping).
        spec: What this version writes.
        path: The file it was read from (named in the error).
        what: What the file is, e.g. ``"state file"``.

    Raises:
        CheckpointError: One line naming the file, the field, what it holds and what was expected.
    """
    try:
        spec.check(value, "")
    except Mismatch as err:
        raise field_error(what, path, err.field_path, err.got, err.expected) from None
    return value


def _refused_by_safe_loader(err: Exception) -> bool:
    """Whether torch's restricted unpickler refused the pickle (older torch: a RuntimeError).

    Any pickle it refuses is treated as unsafe: a reference to a Python object outside its
    allowlist looks, to it, like an unsupported opcode as often as like a blocked global.
    """
    return isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in str(err)


def load_torch_file(path: Path, *, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU with one-line errors.

    A pickle that references any Python object other than tensors and plain containers is refused
    before anything in it runs; the message says so and gives no advice to disable the check.
    Torch's own text is never repeated (it suggests ``weights_only=False``).

    Raises:
        CheckpointError: If the file is missing, refused as unsafe, or not a readable torch file.
    """
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        # Torch warns about unusual pickle protocols: the outcome is reported here instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    # A damaged file can make torch raise almost anything (zip, pickle, struct, EOF, ...): the
    # file is user input, so every failure is reported as one line about the file.
    except Exception as err:
        if _refused_by_safe_loader(err):
            raise CheckpointError(
                f"{what} {str(path)!r} refused as unsafe: it holds Python objects other than "
                "tensors and plain containers (or is no torch file); it was not loaded"
            ) from None
        raise CheckpointError(
            f"{what} {str(path)!r} is damaged: not a complete file written by this tool "
            f"({type(err).__name__}); it was not loaded"
        ) from None


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding NaN or inf (in order).

    Values that are not floating-point tensors (integer counters, non-tensors) are skipped.
    """
    return [
        name
        for name, value in tensors.items()
        if isinstance(value, torch.Tensor)
        and (value.is_floating_point() or value.is_complex())
        and not bool(torch.isfinite(value).all())
    ]


def flatten_tensors(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested mappings and lists, keyed by its dotted field path."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    found: dict[str, torch.Tensor] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():
            found.update(flatten_tensors(item, _join(prefix, key)))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found.update(flatten_tensors(item, f"{prefix}[{i}]"))
    return found
