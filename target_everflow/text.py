"""The small text helpers every module shares: cutting a text short, an excerpt of a
response or message, the first line of an error, and what kind of JSON value a value is."""

from __future__ import annotations

import typing as t
from decimal import Decimal


def clip(text: str, limit: int) -> str:
    """``text``, cut to at most ``limit`` characters (the cut marked ``...``)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def excerpt(text: object, limit: int = 200) -> str:
    """A text on one line (runs of whitespace, newlines too, become one space), clipped."""
    return clip(" ".join(str(text).split()), limit)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An error's first line (its type's name when it says nothing), clipped."""
    lines = str(exc).strip().splitlines()
    return clip(lines[0] if lines else type(exc).__name__, limit)


def kind_of(value: t.Any) -> str:
    """What kind of JSON value ``value`` is, as a sentence says it: ``a number``, ``a list``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
