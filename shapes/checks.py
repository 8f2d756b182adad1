"""Strict type and value checks for the hot models (plain dataclasses, no pydantic).

The quote path must start in the time Python itself takes, so its models check their own
fields. Each check returns None when the value is fine, else a phrase saying what is wrong
(``"must be an integer, got a string ("16")"``), so callers can collect every problem
before refusing. Types are strict: no string is a number, ``True`` is not an integer, and
NaN and infinities are never valid numbers.
"""

from __future__ import annotations

import math
from typing import Any


def describe(value: object) -> str:
    """Name a value's type for a message, e.g. 'a string ("16")'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f'a string ("{shown}")'
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


_NUMBERS = (int, float)
_SEQUENCES = (list, tuple)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, _NUMBERS) and not isinstance(value, bool)


def integer(value: object, low: int | None = None, high: int | None = None) -> str | None:
    if not is_int(value):
        return f"must be an integer, got {describe(value)}"
    assert isinstance(value, int)
    if low is not None and value < low:
        return f"must be >= {low}, got {value}"
    if high is not None and value > high:
        return f"must be <= {high}, got {value}"
    return None


def positive(value: object) -> str | None:
    """A finite number > 0 (prices, hours, sizes)."""
    if not is_number(value):
        return f"must be a number, got {describe(value)}"
    assert isinstance(value, _NUMBERS)
    if not math.isfinite(value) or not value > 0:
        return f"must be > 0 and finite, got {value}"
    return None


def string(value: object, *, empty: bool = False) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {describe(value)}"
    if not empty and not value:
        return "must not be empty"
    return None


def strings(value: object) -> str | None:
    """A list or tuple of strings."""
    if not isinstance(value, _SEQUENCES):
        return f"must be a list of strings, got {describe(value)}"
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return f"item {i} must be a string, got {describe(item)}"
    return None


def boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {describe(value)}"


def unknown_keys(doc: dict[str, Any], known: frozenset[str]) -> str | None:
    extra = sorted(set(doc) - known)
    return f"unknown field(s) {', '.join(extra)}" if extra else None
