"""Argument checks shared by the built-in plugins, run when a plugin is built.

Each check raises ``ValueError("<keyword> must be <what is allowed>, got <value>")``, so a bad value in
params.yaml fails at build time naming the keyword, instead of giving NaNs (or nothing) during training.
Bools are refused where a number is expected (YAML reads ``yes`` as true), and so are NaN and infinity.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def _fail(name: str, allowed: str, value: Any) -> None:
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def is_number(value: Any) -> bool:
    """A finite real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    unit: str = "",
) -> float:
    """``value`` as a float: a finite number within the bounds given (closed unless ``*_open``); ``unit``
    is named in the message."""
    if low is not None and high is not None:
        allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_open else '>='} {low}"
    elif high is not None:
        allowed = f"{'<' if high_open else '<='} {high}"
    else:
        allowed = ""
    if unit:
        allowed = f"{allowed} ({unit})".lstrip()
    if not is_number(value):
        _fail(name, f"a finite number {allowed}".rstrip(), value)
    v = float(value)
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if too_low or too_high:
        _fail(name, allowed, value)
    return v


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool: ``true`` or ``false`` only (not 0/1 or a string, which YAML may have meant
    otherwise)."""
    if not isinstance(value, bool):
        _fail(name, "true or false", value)
    return value


def integer(name: str, value: Any, low: int | None = None) -> int:
    """``value`` as an int: a whole number (``3.0`` is accepted), at least ``low``."""
    allowed = "an integer" if low is None else f"an integer >= {low}"
    if not is_number(value) or int(value) != value or (low is not None and value < low):
        _fail(name, allowed, value)
    return int(value)


def positive_integers(name: str, value: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    """``value`` as a tuple of ints, each >= 1 (and at least one unless ``allow_empty``)."""
    allowed = f"a {'' if allow_empty else 'non-empty '}list of positive integers"
    if isinstance(value, str) or not isinstance(value, Sequence) or (not value and not allow_empty):
        _fail(name, allowed, value)
    if not all(is_number(v) and int(v) == v and v >= 1 for v in value):
        _fail(name, allowed, list(value))
    return tuple(int(v) for v in value)
