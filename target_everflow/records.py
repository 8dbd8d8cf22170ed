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


@lru_cache(maxsize=100_000)
def fold(name: str) -> str:
    """Segment's name folding: ``orderId`` = ``order_id`` = ``OrderID`` -> ``orderid``."""
    return _NON_ALNUM.sub("", name.lower())


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

    __slots__ = (
        "path",
        "segments",
        "keys",
        "probes",
        "unprefixed",
        "full",
        "top",
        "unprefixed_name",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self.segments = tuple(fold(part) for part in path.split("."))
        n = len(self.segments)
        self.keys = [["".join(self.segments[i:j]) for j in range(n + 1)] for i in range(n + 1)]
        # What _resolve tries from segment i on: (j, keys[i][j]), longest flattened name first.
        self.probes = [tuple((j, self.keys[i][j]) for j in range(n, i, -1)) for i in range(n + 1)]
        # Warehouses store properties un-prefixed: properties.orderId lands in order_id.
        self.unprefixed = self.segments[0] == "properties" and n > 1
        self.full = self.keys[0][n]
        self.top = self.full if n == 1 else None
        self.unprefixed_name = self.keys[1][n] if self.unprefixed else ""

    def __repr__(self) -> str:
        return f"SegmentPath({self.path!r})"


@lru_cache(maxsize=512)
def compile_path(path: str) -> SegmentPath:
    return SegmentPath(path)


_MAX_DEPTH = 16
"""Nested objects deeper than this are not indexed (Segment's deepest path has 4 levels)."""
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


class SegmentObject:
    """A JSON object looked up by Segment path, whatever its shape (a record, a product)."""

    __slots__ = ("record", "stream", "_top", "_nested", "_parsed", "_flat", "_has_json")

    def __init__(self, record: dict, stream: str) -> None:
        self.record = record
        self.stream = stream
        self._top = _index(record)
        # Caches keyed by id(): each entry keeps its object alive, so an id is never reused
        # for another object while this event lives (a nested object parsed from a JSON
        # string would otherwise be freed, and its id handed to the next one parsed).
        self._nested: dict[int, tuple[dict, dict[str, str]]] = {}
        self._parsed: dict[int, tuple[str, t.Any]] = {}
        self._flat: dict[str, t.Any] | None = None
        self._has_json = False

    def _flat_index(self) -> dict[str, t.Any]:
        """Every value of the record under its folded, joined path, built once per record.

        ``{"context": {"userAgent": ...}}``, ``{"context_user_agent": ...}`` and
        ``{"context": {"user_agent": ...}}`` all land under ``contextuseragent``, so a lookup is
        one dict access. Shallower spellings win (a level is indexed before the objects in it),
        as in ``_resolve``; absent, null and empty values are left out. Objects kept as JSON
        strings are not parsed here: when the record has any, a miss falls back to ``_resolve``.
        """
        flat = self._flat
        if flat is None:
            flat = self._flat = {}
            pending: list[tuple[dict, str, int]] = [(self.record, "", 0)]
            while pending:
                obj, prefix, depth = pending.pop(0)
                for folded, key in _index(obj).items():
                    value = obj[key]
                    if value is None or value == "":
                        continue
                    name = prefix + folded
                    if name not in flat:
                        flat[name] = value
                    if isinstance(value, dict):
                        if depth < _MAX_DEPTH:
                            pending.append((value, name, depth + 1))
                    elif isinstance(value, str) and value[:1] == "{":
                        self._has_json = True
        return flat

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
            except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
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
        if path.top is not None:  # one segment: a top-level key, no index to build
            key = self._top.get(path.top)
            if key is not None:
                value = self.record[key]
                if value is not None and value != "":
                    return value
            return MISSING
        flat = self._flat
        if flat is None:
            flat = self._flat_index()
        found = flat.get(path.full, MISSING)
        if found is MISSING and path.unprefixed:
            key = self._top.get(path.unprefixed_name)  # un-prefixed: top-level columns only
            if key is not None:
                value = self.record[key]
                if value is not None and value != "":
                    found = value
        if found is MISSING and self._has_json:
            found = self._resolve(self.record, self._top, path, 0)
            if found is MISSING and path.unprefixed:
                found = self._resolve(self.record, self._top, path, 1)
        return found

    @property
    def flat(self) -> dict[str, t.Any]:
        """The folded-path index (see ``_flat_index``)."""
        flat = self._flat
        return flat if flat is not None else self._flat_index()

    @property
    def has_json(self) -> bool:
        """Whether some nested object is kept as a JSON string (lookups then need ``get``)."""
        if self._flat is None:
            self._flat_index()
        return self._has_json

    def first(self, *paths: SegmentPath | str) -> t.Any:
        """The value at the first path that has one, or ``MISSING``."""
        for path in paths:
            found = self.get(path)
            if found is not MISSING:
                return found
        return MISSING


_TYPE = compile_path("type")
_EVENT_TEXT = compile_path("event_text")
EVENT_NAME = (_EVENT_TEXT, compile_path("event"))
MESSAGE_ID = (compile_path("messageId"), compile_path("id"))


def stream_event(stream: str) -> str:
    """A database tap's stream ``schema-table`` stands for the event ``table``."""
    return stream.rsplit("-", 1)[-1]


def id_text(value: t.Any) -> str:
    """A record value (an id) as text, also an int with more digits than Python will print."""
    try:
        return str(value)
    except ValueError:
        return hex(value) if isinstance(value, int) else type(value).__name__


class SegmentEvent(SegmentObject):
    """One Singer record viewed as a Segment event: built once per record, at the door
    (``Mapper.view``); what says which event it is is read here, once.

    - ``call``: the call type, lower-cased (``track``, ``identify``, ...). A raw or
      tap-flattened event says it; a warehouse row (it has ``event_text``) is a track by
      construction and a ``type`` column there is a property.
    - ``name``: ``event_text`` or ``event``; without one, the stream stands for the event.
    - ``label``: the event as the run summary and log lines name it (``(identify)`` for a call
      that is not a track).
    - ``message_id``: ``messageId`` (or a warehouse row's ``id``) as text, or None.
    """

    __slots__ = ("call", "name", "label", "message_id")

    def __init__(self, record: dict, stream: str) -> None:
        super().__init__(record, stream)
        call = self.get(_TYPE)
        if isinstance(call, str) and call.strip() and self.get(_EVENT_TEXT) is MISSING:
            self.call = call.strip().lower()
        else:
            self.call = "track"
        name = self.first(*EVENT_NAME)
        self.name: str = name if isinstance(name, str) and name.strip() else stream_event(stream)
        self.label = self.name if self.call == "track" else f"({self.call[:40]})"
        found = self.first(*MESSAGE_ID)
        self.message_id: str | None = None if found is MISSING else id_text(found)
