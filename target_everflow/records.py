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

    __slots__ = ("index", "_where", "unprefixed", "_leaf", "identity")

    def __init__(self, keys: tuple) -> None:
        index: dict[str, str] = {}
        for key in keys:
            if isinstance(key, str):
                index.setdefault(fold(key), key)
        self.index = index
        self._where: dict[_Tail, tuple[tuple[str, int], ...]] = {}
        self.unprefixed: dict[SegmentPath, str | None] = {}
        self._leaf: dict[SegmentPath, t.Any] = {}
        self.identity: t.Callable[[dict], tuple] | None = None
        """The reader of an event's identity in records of this layout (``SegmentEvent``)."""

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
"""In a record's shape (``Reader.shape``): an object kept as JSON text (a lookup may parse it)."""


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


class Shape:
    """A record's shape (``Reader.shape``), one object per distinct shape (hashed by
    identity): the group readers compiled for it hang on it."""

    __slots__ = ("parts", "hops", "compiled")

    def __init__(self, parts: tuple, hops: tuple[str, ...]) -> None:
        self.parts = parts
        """The layout, then for each hop of it: the object's shape part, ``JSON_TEXT`` or None."""
        self.hops = hops
        """The hops ``parts`` follows the layout with (the reader's when the shape was found)."""
        self.compiled: dict[int, _Compiled] = {}
        """Group number -> its reader for this shape."""


class Reader:
    """Reads groups of paths from records by straight-line code, generated once per record
    shape: what ``SegmentObject.get`` finds, without its walk.

    A record's *shape* (``shape``) is its key layout and, for each key some registered path
    goes through (a "hop"), the shape of the object there, ``JSON_TEXT`` for an object kept as
    JSON text, or None (nothing to look into). In records of one shape every path's spellings
    lie at the same keys, so a group of paths (``group``) compiles, for that shape, into one
    function of the record: for each path, its spellings in ``get``'s order, each a chain of
    subscripts, the first that is neither null nor empty winning. A shape with JSON text on
    the way is read by ``get`` itself (``values`` falls back to it). Groups are registered
    when their modules are imported, before any record is read.
    """

    def __init__(self) -> None:
        self.groups: list[tuple[SegmentPath, ...]] = []
        self._flat: list[bool] = []
        self._tails: tuple[_Tail, ...] = ()
        self._hops: dict[Layout, tuple[str, ...]] = {}
        self._shapes: dict[tuple, Shape] = {}
        self._tops: dict[Layout, Shape] = {}
        self._parts: dict[tuple, Layout | t.Callable[[dict], Shape]] = {}

    def group(self, paths: t.Iterable[SegmentPath | str]) -> int:
        """Register a group of paths; its number, for ``values``."""
        compiled = tuple(compile_path(p) if isinstance(p, str) else p for p in paths)
        self.groups.append(compiled)
        self._flat.append(all(len(p.segments) == 1 and not p.unprefixed for p in compiled))
        tails = {id(tail): tail for group in self.groups for p in group for tail in p.tails}
        self._tails = tuple(tails.values())
        self._hops.clear()
        self._shapes.clear()
        self._tops.clear()
        self._parts.clear()
        return len(self.groups) - 1

    def hops(self, layout: Layout) -> tuple[str, ...]:
        """The keys of a layout that a registered path goes through to a nested object."""
        found = self._hops.get(layout)
        if found is None:
            keys: dict[str, None] = {}
            for tail in self._tails:
                for key, end in layout.where(tail):
                    if end < tail.n:
                        keys[key] = None
            if len(self._hops) >= _MAX_LAYOUTS:
                self._hops.clear()
            found = self._hops[layout] = tuple(keys)
        return found

    def shape(self, record: dict) -> Shape:
        """The shape of a record (see the class docstring)."""
        part = self._part(record)
        if isinstance(part, Shape):
            return part
        return self._interned((part,), ())

    def top(self, layout: Layout) -> Shape:
        """The shape that stands for every record of ``layout`` in reading a group of paths of
        one segment each (``flat``): those are read at the top only."""
        shape = self._tops.get(layout)
        if shape is None:
            if len(self._tops) >= _MAX_LAYOUTS:
                self._tops.clear()
            shape = self._tops[layout] = self._interned((layout,), ())
        return shape

    def flat(self, group: int) -> bool:
        """Whether every path of the group has one segment (and is read at the top only)."""
        return self._flat[group]

    def _part(self, obj: dict) -> Layout | Shape:
        """An object's shape: its layout alone when it has no hop."""
        keys = tuple(obj)
        part = self._parts.get(keys)
        if part is None:
            part = self._part_of(keys)
        return part if isinstance(part, Layout) else part(obj)

    def _part_of(self, keys: tuple) -> Layout | t.Callable[[dict], Shape]:
        """What ``_part`` does for objects with these keys: their layout (no hop), or code
        generated for them that reads each hop."""
        layout = layout_of(dict.fromkeys(keys))
        hops = self.hops(layout)
        found: Layout | t.Callable[[dict], Shape] = layout
        if hops:
            lines = ["def part(obj):"]
            for i, key in enumerate(hops):
                lines += [
                    f"    v{i} = obj[{key!r}]",
                    f"    if isinstance(v{i}, dict):",
                    f"        v{i} = PART(v{i})",
                    f'    elif isinstance(v{i}, str) and v{i}[:1] == "{{":',
                    f"        v{i} = JSON_TEXT",
                    "    else:",
                    f"        v{i} = None",
                ]
            parts = "".join(f", v{i}" for i in range(len(hops)))
            lines.append(f"    return INTERNED((LAYOUT{parts}), HOPS)")
            found = generated(
                lines,
                "part",
                PART=self._part,
                INTERNED=self._interned,
                JSON_TEXT=JSON_TEXT,
                LAYOUT=layout,
                HOPS=hops,
            )
        if len(self._parts) >= _MAX_LAYOUTS:
            self._parts.clear()
        self._parts[keys] = found
        return found

    def _interned(self, parts: tuple, hops: tuple[str, ...]) -> Shape:
        shape = self._shapes.get(parts)
        if shape is None:
            if len(self._shapes) >= _MAX_LAYOUTS:
                self._shapes.clear()
            shape = self._shapes[parts] = Shape(parts, hops)
        return shape

    def values(self, event: SegmentObject, shape: Shape, group: int) -> tuple:
        """The value at each path of ``group`` in the event's record (``MISSING`` where none)."""
        found = shape.compiled.get(group)
        if found is None:
            found = self.compiled(shape, group)
        if found.read is None:
            return tuple([event.get(path) for path in self.groups[group]])
        return found.read(event.record)

    def compiled(self, shape: Shape, group: int) -> _Compiled:
        """The group's reader for records of ``shape``, and the positions they can hold a
        value at (every other one is ``MISSING`` in every such record)."""
        found = shape.compiled.get(group)
        if found is None:
            found = shape.compiled[group] = self._compile(shape, self.groups[group])
        return found

    def _compile(self, shape: Shape, paths: tuple[SegmentPath, ...]) -> _Compiled:
        """The reader of ``paths`` in records of ``shape``; its ``read`` is None when only
        ``get`` can read it (JSON text on the way)."""
        lines: list[str] = []
        objects: dict[tuple[str, str], t.Any] = {}

        def tree(part: Layout | Shape) -> tuple[Layout, dict[str, t.Any]]:
            if isinstance(part, Layout):
                return part, {}
            return part.parts[0], dict(zip(part.hops, part.parts[1:]))

        def spellings(node: tuple[Layout, dict], var: str, tail: _Tail) -> list[tuple[str, str]]:
            """``_resolve``'s walk, on the shape: the (object, key) of each spelling in order."""
            layout, children = node
            found: list[tuple[str, str]] = []
            for key, end in layout.where(tail):
                if end == tail.n:
                    found.append((var, key))
                    continue
                part = children.get(key, _UNKNOWN)
                if part is JSON_TEXT or part is _UNKNOWN:
                    # get() would parse it on a second pass; or the shape was found before a
                    # group that goes through this key was registered
                    raise _NotStatic
                if part is None:  # null, or nothing to look into
                    continue
                inner = objects.get((var, key))
                if inner is None:
                    name = f"o{len(objects)}"
                    lines.append(f"    {name} = {var}[{key!r}]")
                    inner = objects[var, key] = (tree(part), name)
                found += spellings(inner[0], inner[1], tail.path.tails[end])
            return found

        held: set[int] = set()
        try:
            top = tree(shape)
            body: list[str] = []
            for i, path in enumerate(paths):
                found = spellings(top, "r", path.tails[0])
                if path.unprefixed:
                    key = top[0].unprefixed_key(path)
                    if key is not None:
                        found.append(("r", key))
                if not found:
                    body.append(f"    v{i} = MISSING")
                    continue
                held.add(i)
                indent = "    "
                for var, key in found:
                    body.append(f"{indent}v{i} = {var}[{key!r}]")
                    body.append(f'{indent}if v{i} is None or v{i} == "":')
                    indent += "    "
                body.append(f"{indent}v{i} = MISSING")
        except _NotStatic:
            return _Compiled(None, frozenset(range(len(paths))))
        returned = ", ".join(f"v{i}" for i in range(len(paths)))
        read = generated(
            ["def read(r):", *lines, *body, f"    return ({returned},)"], "read", MISSING=MISSING
        )
        return _Compiled(read, frozenset(held))


def generated(lines: list[str], name: str, **names: t.Any) -> t.Any:
    """The function ``name`` defined by ``lines``, with ``names`` as its globals. The code is
    generated from a shape's keys or the field table's parameter names, each written as its
    ``repr()``: a literal, never code."""
    namespace = dict(names)
    exec(compile("\n".join(lines), f"<target_everflow generated {name}>", "exec"), namespace)
    return namespace[name]


class _Compiled(t.NamedTuple):
    """A group's reader for one shape (None: ``get`` reads it) and the positions it can hold."""

    read: t.Callable[[dict], tuple] | None
    held: frozenset[int]


_UNKNOWN: t.Any = _Missing()
"""What a shape says of a key it did not look at."""


class _NotStatic(Exception):
    """A shape with JSON text on the way: only ``SegmentObject.get`` reads it."""


READER = Reader()
"""The one reader of registered path groups (identity here, the field table's in mapping)."""

_TYPE = compile_path("type")
_EVENT_TEXT = compile_path("event_text")
_EVENT = compile_path("event")

MESSAGE_ID = (compile_path("messageId"), compile_path("id"))
_IDENTITY = READER.group((_TYPE, _EVENT_TEXT, _EVENT, *MESSAGE_ID))
assert READER.flat(_IDENTITY)  # read at the top: a record's shape is found only when needed


def _identity_reader(layout: Layout) -> t.Callable[[dict], tuple]:
    """``READER.values`` of the identity group for records of ``layout``: the group is flat,
    so read at the top by generated code, never by ``get``."""
    read = READER.compiled(READER.top(layout), _IDENTITY).read
    assert read is not None  # no hop, so no JSON text on the way
    return read


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

    __slots__ = ("call", "name", "label", "message_id", "_shape")

    def __init__(self, record: dict, stream: str) -> None:
        super().__init__(record, stream)
        self._shape: Shape | None = None
        read = self._top.identity  # the layout's reader: one attribute, not three calls
        if read is None:
            read = self._top.identity = _identity_reader(self._top)
        call, event_text, event, message_id, row_id = read(record)
        if isinstance(call, str) and call.strip() and event_text is MISSING:
            self.call = call.strip().lower()
        else:
            self.call = "track"
        name = event_text if event_text is not MISSING else event
        self.name: str = name if isinstance(name, str) and name.strip() else stream_event(stream)
        self.label = self.name if self.call == "track" else f"({self.call[:40]})"
        found = message_id if message_id is not MISSING else row_id
        self.message_id: str | None = None if found is MISSING else id_text(found)

    @property
    def shape(self) -> Shape:
        """The record's shape (``Reader.shape``), found when first asked for."""
        shape = self._shape
        if shape is None:
            shape = self._shape = READER.shape(self.record)
        return shape

    def values(self, group: int) -> tuple:
        """The value at each path of a registered group (``READER.group``), ``MISSING`` where
        there is none: what ``get`` would find for each."""
        shape = READER.top(self._top) if READER.flat(group) else self.shape
        return READER.values(self, shape, group)

    def held(self, group: int) -> frozenset[int]:
        """The positions in a registered group of the paths a record of this shape can hold."""
        return READER.compiled(self.shape, group).held
