"""Dataclasses checked when they are made, and built from mappings with every key required: the machinery of
:mod:`faceage.params`."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import typing
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from faceage.errors import FaceageError

T = TypeVar("T")
Range = tuple[typing.Callable[[Any], bool], str]

AT_LEAST_0: Range = (lambda v: v >= 0, ">= 0")
AT_LEAST_1: Range = (lambda v: v >= 1, ">= 1")
POSITIVE: Range = (lambda v: v > 0, "> 0")
PROBABILITY: Range = (lambda v: 0 <= v <= 1, "0..1")
FRACTION_BELOW_1: Range = (lambda v: 0 <= v < 1, "0 <= value < 1")
OPEN_UNIT: Range = (lambda v: 0 < v < 1, "0 < value < 1")
UP_TO_1: Range = (lambda v: 0 < v <= 1, "0 < value <= 1")
INCREASING: Range = (lambda v: len(v) > 0 and all(a < b for a, b in itertools.pairwise(v)), "increasing values")


def between(low: float, high: float) -> Range:
    """``low`` to ``high`` inclusive: the upper bound keeps a setting from exhausting the machine."""
    return (lambda v: low <= v <= high, f"{low}..{high}")


SEED: Range = between(0, 2**32 - 1)  # what numpy's and torch's generators accept
COUNT = 1_000_000  # the most images, resamples or gallery faces any setting asks for
MAX_BATCH = 65_536  # faces in one batch


def check(condition: bool, key: str, value: Any, allowed: object) -> None:
    """Raise a one-line :class:`FaceageError` naming ``key``, ``value`` and what is ``allowed`` unless ``condition``."""
    if not condition:
        raise FaceageError(f"{key}: {value!r} is not allowed; expected {allowed}")


def is_choice(value: Any, allowed: tuple) -> bool:
    """Whether ``value`` is one of ``allowed`` and of its type: ``1`` is not ``true``."""
    return any(value == choice and type(value) is type(choice) for choice in allowed)


def choices(allowed: tuple) -> str:
    """``allowed`` as params.yaml spells them."""
    return ", ".join(str(choice).lower() if isinstance(choice, bool) else choice for choice in allowed)


class Checked:
    """Checks every field when an instance is made: choices (``Literal`` types), finite floats, and the
    ranges in ``RANGES``; ``check_together`` adds rules that span several fields."""

    SECTION: ClassVar[str] = ""
    RANGES: ClassVar[dict[str, Range]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            key, value, hint = f"{self.SECTION}.{item.name}", getattr(self, item.name), hints[item.name]
            if typing.get_origin(hint) is Literal:
                check(is_choice(value, typing.get_args(hint)), key, value, f"one of {choices(typing.get_args(hint))}")
            numbers = value if isinstance(value, tuple) else (value,)
            check(all(not isinstance(v, float) or math.isfinite(v) for v in numbers), key, value, "finite numbers")
            if item.name in self.RANGES:
                allowed, description = self.RANGES[item.name]
                check(allowed(value), key, value, description)
        self.check_together()

    def check_together(self) -> None:
        """Rules over several fields; none by default."""


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown and missing keys and wrong types: every setting's
    value is written in ``params.yaml`` only, so no key has a default here."""
    if not isinstance(values, dict):
        raise FaceageError(f"{where or 'top level'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise FaceageError(
            f"{where or 'top level'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    required = {f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(values))
    if missing:
        raise FaceageError(f"{where or 'top level'}: missing key(s) {', '.join(missing)}")
    kwargs = {
        name: _convert(hints[name], value, f"{where}.{name}" if where else name) for name, value in values.items()
    }
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise FaceageError(f"{where}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(key): _convert(item, v, f"{where}.{key}") for key, v in value.items()}
    if origin is tuple:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # one value stands for a list of one, as `dvc exp run -S key=0.25` sets it
        if not isinstance(value, list | tuple):
            raise FaceageError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_convert(item, v, where) for v in value)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if not is_choice(value, allowed):
            raise FaceageError(f"{where}: {value!r} is not allowed; expected one of {choices(allowed)}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise FaceageError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


class ParamsLoader(yaml.SafeLoader):
    """YAML as DVC reads ``params.yaml`` (YAML 1.2): ``1e-4`` is a number, not the string PyYAML makes it."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)
