"""Reading a Segment event in whatever shape a Singer tap hands it over.

Three shapes reach the target (see docs in README): raw nested Segment JSON
(``context.userAgent``), Segment warehouse rows (``context_user_agent``, properties un-prefixed:
``order_id``), and tap-flattened records (``context__userAgent``). Segment matches names without
regard to case or punctuation (obj-case), so this module does too: every name is *folded*
(lower-cased, non-alphanumerics dropped) and a path such as ``context.userAgent`` is found

- nested: ``record["context"]["userAgent"]``,
- flattened at any depth: ``record["context_user_agent"]``, ``record["CONTEXT__USERAGENT"]``,
  ``record["context"]["user_agent"]``,
- and, for ``properties.*`` paths, un-prefixed as warehouses store them: ``record["order_id"]``.

No configuration says which shape a record is in; each lookup simply tries them, longest
flattened name first. ``None`` and empty strings count as absent.
"""

from __future__ import annotations

import json
import re
import typing as t
from decimal import Decimal
from functools import lru_cache

_NON_ALNUM = re.compile(r"[^0-9a-z]")
_FOLDED: dict[str, str] = {}


def fold(name: str) -> str:
    """Segment's name folding: ``orderId`` = ``order_id`` = ``OrderID`` -> ``orderid``."""
    folded = _FOLDED.get(name)
    if folded is None:
        folded = _NON_ALNUM.sub("", name.lower())
        if len(_FOLDED) < 100_000:
            _FOLDED[name] = folded
    return folded


def slug(name: str) -> str:
    """Segment's warehouse slug of an event name: ``Order Completed`` -> ``order_completed``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.strip())
    return re.sub(r"[^0-9a-z]+", "_", spaced.lower()).strip("_")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: t.Any = _Missing()


class SegmentPath:
    """A Segment property path, compiled once: every folded join of its segments.

    ``keys[i][j]`` is the folded name of segments ``i..j-1`` joined, which is what a record
    flattened at that point stores it under.
    """

    __slots__ = ("path", "segments", "keys", "probes", "unprefixed")

    def __init__(self, path: str) -> None:
        self.path = path
        self.segments = tuple(fold(part) for part in path.split("."))
        n = len(self.segments)
        self.keys = [
            ["".join(self.segments[i:j]) for j in range(n + 1)] for i in range(n + 1)
        ]
        # What _resolve tries from segment i on: (j, keys[i][j]), longest flattened name first.
        self.probes = [tuple((j, self.keys[i][j]) for j in range(n, i, -1)) for i in range(n + 1)]
        # Warehouses store properties un-prefixed: properties.orderId lands in order_id.
        self.unprefixed = self.segments[0] == "properties" and n > 1

    def __repr__(self) -> str:
        return f"SegmentPath({self.path!r})"


@lru_cache(maxsize=512)
def compile_path(path: str) -> SegmentPath:
    return SegmentPath(path)


_LAYOUTS: dict[tuple, dict[str, str]] = {}
_MAX_LAYOUTS = 4096


def _index(obj: dict) -> dict[str, str]:
    """Folded name -> the dict's own key of that name (first spelling wins).

    It depends only on the dict's keys, in order, so it is computed once per key layout (once
    per schema for warehouse rows, once per library and event for raw events), not per record.
    The cache is bounded: it starts over when it holds ``_MAX_LAYOUTS`` layouts.
    """
    keys = tuple(obj)
    layout = _LAYOUTS.get(keys)
    if layout is None:
        layout = {}
        for key in keys:
            if isinstance(key, str):
                layout.setdefault(fold(key), key)
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        _LAYOUTS[keys] = layout
    return layout


class SegmentEvent:
    """One Singer record viewed as a Segment event."""

    __slots__ = ("record", "stream", "_top", "_nested", "_parsed")

    def __init__(self, record: dict, stream: str) -> None:
        self.record = record
        self.stream = stream
        self._top = _index(record)
        # Caches keyed by id(): each entry keeps its object alive, so an id is never reused
        # for another object while this event lives (a nested object parsed from a JSON
        # string would otherwise be freed, and its id handed to the next one parsed).
        self._nested: dict[int, tuple[dict, dict[str, str]]] = {}
        self._parsed: dict[int, tuple[str, t.Any]] = {}

    def _index_of(self, obj: dict) -> dict[str, str]:
        entry = self._nested.get(id(obj))
        if entry is None or entry[0] is not obj:
            entry = self._nested[id(obj)] = (obj, _index(obj))
        return entry[1]

    def _json_object(self, text: str) -> t.Any:
        """A nested object some flatteners keep as a JSON string, parsed once."""
        entry = self._parsed.get(id(text))
        if entry is None or entry[0] is not text:
            try:
                parsed = json.loads(text, parse_float=Decimal)  # numbers exactly as given
            except ValueError:
                parsed = MISSING
            entry = self._parsed[id(text)] = (text, parsed)
        return entry[1]

    def _resolve(self, obj: dict, index: dict[str, str], path: SegmentPath, start: int) -> t.Any:
        n = len(path.segments)
        for end, name in path.probes[start]:
            key = index.get(name)
            if key is None:
                continue
            value = obj[key]
            if value is None:
                continue
            if end == n:
                if value == "":
                    continue
                return value
            if isinstance(value, str) and value[:1] == "{":
                # Some flatteners keep a nested object as a JSON string.
                value = self._json_object(value)
            if isinstance(value, dict):
                found = self._resolve(value, self._index_of(value), path, end)
                if found is not MISSING:
                    return found
        return MISSING

    def get(self, path: SegmentPath | str) -> t.Any:
        """The value at a Segment path, or ``MISSING``."""
        if isinstance(path, str):
            path = compile_path(path)
        found = self._resolve(self.record, self._top, path, 0)
        if found is MISSING and path.unprefixed:
            found = self._resolve(self.record, self._top, path, 1)
        return found

    def first(self, *paths: SegmentPath | str) -> t.Any:
        """The value at the first path that has one, or ``MISSING``."""
        for path in paths:
            found = self.get(path)
            if found is not MISSING:
                return found
        return MISSING

    def has_top(self, name: str) -> bool:
        return fold(name) in self._top
