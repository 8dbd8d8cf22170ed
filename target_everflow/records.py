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


json_loads = json.JSONDecoder(parse_float=Decimal).decode
"""JSON text kept inside a record (a nested object or a list some flatteners store as a
string), numbers exactly as given; one decoder, not one per call as ``json.loads(...,
parse_float=...)`` builds."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: t.Any = _Missing()


class SegmentPath:
    """A Segment property path, compiled once: every folded join of its segments.

    ``probes[i]`` is what a lookup tries from segment ``i`` on: ``(j, name)`` pairs, where
    ``name`` is segments ``i..j-1`` folded and joined (what a record flattened at that point
    stores it under), longest flattened name first. ``tails[i]`` stands for the path from
    segment ``i`` on: a key layouts remember their answers by.
    """

    __slots__ = ("path", "segments", "probes", "tails", "unprefixed", "unprefixed_name")

    def __init__(self, path: str) -> None:
        self.path = path
        self.segments = tuple(fold(part) for part in path.split("."))
        n = len(self.segments)
        keys = [["".join(self.segments[i:j]) for j in range(n + 1)] for i in range(n + 1)]
        self.probes = tuple(tuple((j, keys[i][j]) for j in range(n, i, -1)) for i in range(n + 1))
        self.tails = tuple(_Tail(self, i) for i in range(n + 1))
        # Warehouses store properties un-prefixed: properties.orderId lands in order_id.
        self.unprefixed = self.segments[0] == "properties" and n > 1
        self.unprefixed_name = keys[1][n] if self.unprefixed else ""

    def __repr__(self) -> str:
        return f"SegmentPath({self.path!r})"


class _Tail:
    """A path from one of its segments on (``SegmentPath.tails``); hashed by identity."""

    __slots__ = ("path", "start", "n")

    def __init__(self, path: SegmentPath, start: int) -> None:
        self.path = path
        self.start = start
        self.n = len(path.segments)


@lru_cache(maxsize=512)
def compile_path(path: str) -> SegmentPath:
    return SegmentPath(path)


class Layout:
    """What one key layout (a dict's keys, in order) answers for the paths looked up in it.

    ``index``: folded name -> the dict's own key of that name (first spelling wins).
    ``where(tail)``: the ``(key, end)`` pairs a lookup of ``tail`` reads in such a dict, in
    order: computed on the first lookup, then one dict access. Records of one stream share a
    few layouts (one per schema for warehouse rows, one per library and event for raw events),
    so after the first records a lookup reads only the keys that hold the value: the lookup
    plan of each (stream, layout) is compiled once, lazily, path by path.
    """

    __slots__ = ("index", "_where", "unprefixed", "_leaf")

    def __init__(self, keys: tuple) -> None:
        index: dict[str, str] = {}
        for key in keys:
            if isinstance(key, str):
                index.setdefault(fold(key), key)
        self.index = index
        self._where: dict[_Tail, tuple[tuple[str, int], ...]] = {}
        self.unprefixed: dict[SegmentPath, str | None] = {}
        self._leaf: dict[SegmentPath, t.Any] = {}

    def where(self, tail: _Tail) -> tuple[tuple[str, int], ...]:
        found = self._where.get(tail)
        if found is None:
            index = self.index
            found = self._where[tail] = tuple(
                (index[name], end) for end, name in tail.path.probes[tail.start] if name in index
            )
        return found

    def leaf_key(self, path: SegmentPath) -> t.Any:
        """Where a record of this layout keeps ``path``, when that needs no lookup: the one key
        that can hold it (a value there that is null or empty means absent), ``None`` when no
        key can, ``NEEDS_LOOKUP`` otherwise (nested, several spellings, a warehouse column)."""
        try:
            return self._leaf[path]
        except KeyError:
            pass
        where = self.where(path.tails[0])
        if path.unprefixed:
            found: t.Any = NEEDS_LOOKUP
        elif not where:
            found = None
        elif len(where) == 1 and where[0][1] == len(path.segments):
            found = where[0][0]
        else:
            found = NEEDS_LOOKUP
        self._leaf[path] = found
        return found

    def unprefixed_key(self, path: SegmentPath) -> str | None:
        """The top-level column a warehouse stores ``properties.x`` under (``x``), if any."""
        try:
            return self.unprefixed[path]
        except KeyError:
            key = self.unprefixed[path] = self.index.get(path.unprefixed_name)
            return key


_LAYOUTS: dict[tuple, Layout] = {}
_MAX_LAYOUTS = 4096
"""Layouts remembered; the cache starts over when it holds this many."""


JSON_TEXT: t.Any = _Missing()
"""In ``child_layouts``: the value is an object kept as JSON text (a lookup may parse it)."""


def child_layouts(record: dict, keys: t.Iterable[str]) -> tuple:
    """What the record holds at each of ``keys`` (keys of its layout), as ``may_hold_in``
    reads it: the layout of an object, ``JSON_TEXT``, or None (nothing to look into)."""
    found: list[t.Any] = []
    for key in keys:
        value = record[key]
        if isinstance(value, dict):
            found.append(layout_of(value))
        elif _is_json_object_text(value):
            found.append(JSON_TEXT)
        else:
            found.append(None)
    return tuple(found)


def may_hold_in(top: Layout, children: t.Mapping[str, t.Any], path: SegmentPath) -> bool:
    """Whether a record of layout ``top`` whose objects at the top have the layouts
    ``children`` (key -> ``child_layouts``' answer; a key not there: not looked into) can hold
    a value at ``path``. False is certain: every lookup of ``path`` in it finds nothing."""
    if path.unprefixed and (top.unprefixed_key(path) is not None or top.where(path.tails[1])):
        return True
    n = len(path.segments)
    for key, end in top.where(path.tails[0]):
        if end == n or key not in children:
            return True
        child = children[key]
        if child is JSON_TEXT or (child is not None and child.where(path.tails[end])):
            return True
    return False


NEEDS_LOOKUP: t.Any = _Missing()
"""``Layout.leaf_key``'s answer when only a full lookup (``SegmentObject.get``) can tell."""


def layout_of(obj: dict) -> Layout:
    """The layout of a dict's keys (see ``Layout``), built once per distinct key order and
    shared by every dict with those keys (a bounded cache)."""
    keys = tuple(obj)
    layout = _LAYOUTS.get(keys)
    if layout is None:
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        layout = _LAYOUTS[keys] = Layout(keys)
    return layout


def _is_json_object_text(value: t.Any) -> bool:
    return isinstance(value, str) and value[:1] == "{"


class SegmentObject:
    """A JSON object looked up by Segment path, whatever its shape (a record, a product)."""

    __slots__ = ("record", "stream", "_top", "_nested", "_parsed", "_json_skipped")

    def __init__(self, record: dict, stream: str) -> None:
        self.record = record
        self.stream = stream
        self._top = layout_of(record)
        # Caches keyed by id(), made on first use: each entry keeps its object alive, so an id
        # is never reused for another object while this event lives (a nested object parsed
        # from a JSON string would otherwise be freed, and its id handed to the next one).
        self._nested: dict[int, tuple[dict, Layout]] | None = None
        self._parsed: dict[int, tuple[str, t.Any]] | None = None
        self._json_skipped = False

    @property
    def layout(self) -> Layout:
        """The record's key layout (shared by every record with the same keys, in order)."""
        return self._top

    def _layout_of(self, obj: dict) -> Layout:
        nested = self._nested
        if nested is None:
            nested = self._nested = {}
        entry = nested.get(id(obj))
        if entry is None or entry[0] is not obj:
            entry = nested[id(obj)] = (obj, layout_of(obj))
        return entry[1]

    def _json_object(self, text: str) -> t.Any:
        """A nested object some flatteners keep as a JSON string, parsed once."""
        parsed_texts = self._parsed
        if parsed_texts is None:
            parsed_texts = self._parsed = {}
        entry = parsed_texts.get(id(text))
        if entry is None or entry[0] is not text:
            try:
                parsed = json_loads(text)
            except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
                parsed = MISSING
            entry = parsed_texts[id(text)] = (text, parsed)
        return entry[1]

    def _resolve(self, obj: dict, layout: Layout, tail: _Tail, parse: bool) -> t.Any:
        """The value at ``tail`` in ``obj``: each spelling the layout has, longest flattened
        name first, descending into nested objects (and, when ``parse``, into objects kept
        as JSON strings; otherwise it notes that it skipped one)."""
        where = layout._where.get(
            tail
        )  # Layout.where inlined: a call per lookup level costs ~5% of mapping
        if where is None:
            where = layout.where(tail)
        n = tail.n
        for key, end in where:
            value = obj[key]
            if value is None:
                continue
            if end == n:
                if value == "":
                    continue
                return value
            if isinstance(value, dict):
                found = self._resolve(value, self._layout_of(value), tail.path.tails[end], parse)
            elif _is_json_object_text(value):
                if not parse:
                    self._json_skipped = True
                    continue
                # Some flatteners keep a nested object as a JSON string.
                parsed = self._json_object(value)
                if not isinstance(parsed, dict):
                    continue
                found = self._resolve(parsed, self._layout_of(parsed), tail.path.tails[end], parse)
            else:
                continue
            if found is not MISSING:
                return found
        return MISSING

    def get(self, path: SegmentPath | str) -> t.Any:
        """The value at a Segment path, or ``MISSING``.

        Every spelling in the record itself first (longest flattened name first), then, for a
        ``properties.*`` path, the un-prefixed top-level column; then, only when the record
        keeps some object on the way as a JSON string, the spellings inside it.
        """
        if isinstance(path, str):
            path = compile_path(path)
        record = self.record
        top = self._top
        self._json_skipped = False
        found = self._resolve(record, top, path.tails[0], False)
        if found is not MISSING:
            return found
        json_skipped = self._json_skipped
        if path.unprefixed:
            key = top.unprefixed_key(path)  # un-prefixed: top-level columns only
            if key is not None:
                value = record[key]
                if value is not None and value != "":
                    return value
        if json_skipped:
            found = self._resolve(record, top, path.tails[0], True)
            if found is MISSING and path.unprefixed:
                found = self._resolve(record, top, path.tails[1], True)
        return found

    def first(self, *paths: SegmentPath | str) -> t.Any:
        """The value at the first path that has one, or ``MISSING``."""
        for path in paths:
            found = self.get(path)
            if found is not MISSING:
                return found
        return MISSING


_TYPE = compile_path("type")
_EVENT_TEXT = compile_path("event_text")
_EVENT = compile_path("event")

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
        event_text = self.get(_EVENT_TEXT)
        if isinstance(call, str) and call.strip() and event_text is MISSING:
            self.call = call.strip().lower()
        else:
            self.call = "track"
        name = event_text if event_text is not MISSING else self.get(_EVENT)
        self.name: str = name if isinstance(name, str) and name.strip() else stream_event(stream)
        self.label = self.name if self.call == "track" else f"({self.call[:40]})"
        found = self.first(*MESSAGE_ID)
        self.message_id: str | None = None if found is MISSING else id_text(found)
