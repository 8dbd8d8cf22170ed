"""The small text helpers every module shares: cutting a text short, an excerpt of a
response or message, the first line of an error, what kind of JSON value a value is, a UTC
time and how long something took."""

from __future__ import annotations

import math
import typing as t
from datetime import datetime, timezone
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


def utc_time(epoch: t.Any) -> str:
    """Epoch seconds as a UTC time to the second (``2026-11-20 18:14:08``); ``""`` for None
    or a value that is not a time."""
    if epoch is None:
        return ""
    try:
        return datetime.fromtimestamp(float(epoch), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def took(start: t.Any, end: t.Any) -> str:
    """How long from ``start`` to ``end`` (epoch seconds): ``4.2 s``, ``3m 07s``, ``2h 05m``;
    ``""`` when either is unknown or no time (not a finite number, negative, over ten years)."""
    try:
        seconds = float(end) - float(start)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(seconds) or seconds < 0 or seconds > 10 * 365 * 86400:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"
