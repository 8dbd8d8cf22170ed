"""Map one Segment event to one Everflow conversion, or to the reason it is not one.

The mapper is driven by ``fields.FIELDS``: it compiles the table once per platform into a
list of parameter plans, and for each record walks that list. What is not in the table is the
conversion's identity: which event it is (``event_mapping``), whose click it is
(``transaction_id``), when it happened (``timestamp``) and its delivery key.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import typing as t
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal

from target_everflow.clock import CLOCK_ENV
from target_everflow.fields import (
    CONVERTERS,
    FIELDS,
    MOBILE,
    PLATFORMS,
    RULES,
    Field,
    FieldType,
    Mismatch,
    as_string,
    coerce,
    json_text_of,
    render,
    text_of,
)
from target_everflow.outcomes import (
    DEAD_LETTER,
    INVALID_RECORD,
    MISSING_REQUIRED_FIELD,
    NO_TRANSACTION_ID,
    NOT_TRACK,
    SKIPPED,
    TOO_OLD,
    TYPE_MISMATCH,
    UNMAPPED_EVENT,
    Outcome,
)
from target_everflow.records import (
    MISSING,
    NEEDS_LOOKUP,
    READER,
    Layout,
    SegmentEvent,
    SegmentObject,
    Shape,
    compile_path,
    fold,
    generated,
    id_text,
    json_loads,
    layout_of,
    slug,
    stream_event,
)

if t.TYPE_CHECKING:
    from target_everflow.settings import Settings

CURRENCY = "currency"
DAY = 86_400
"""Seconds in a day (``max_conversion_age_days``)."""

MOBILE_LIBRARIES = frozenset(
    fold(name)
    for name in (
        "analytics-ios",
        "analytics-android",
        "analytics-swift",
        "analytics-kotlin",
        "analytics-react-native",
        "analytics-flutter",
        "analytics-xamarin",
        "analytics-unity",
    )
)
MOBILE_OS = frozenset({"ios", "ipados", "android"})

_P = compile_path
REFERRER_TYPE = _P("context.referrer.type")
REFERRER_ID = _P("context.referrer.id")
PROPERTY_TRANSACTION_ID = _P("properties.transaction_id")
EVENT_TIME = (_P("timestamp"), _P("originalTimestamp"), _P("receivedAt"), _P("sentAt"))
OS_NAME = _P("context.os.name")
DEVICE_TYPE = _P("context.device.type")
LIBRARY_NAME = _P("context.library.name")
ORDER_ID = _P("properties.orderId")

_PATHS = tuple(
    {
        path.path: path
        for path in (
            REFERRER_TYPE,
            REFERRER_ID,
            PROPERTY_TRANSACTION_ID,
            OS_NAME,
            DEVICE_TYPE,
            LIBRARY_NAME,
            *EVENT_TIME,
            *(_P(p.split("[i].", 1)[0]) for row in FIELDS for p in (row.segment, *row.fallback)),
        )
    }.values()
)
"""Every path the mapping reads in a record, read together (``SegmentEvent.values``)."""
_AT = {path.path: i for i, path in enumerate(_PATHS)}
_GROUP = READER.group(_PATHS)
_REFERRER_TYPE, _REFERRER_ID, _PROPERTY_TRANSACTION_ID, _OS_NAME, _DEVICE_TYPE, _LIBRARY_NAME = (
    range(6)
)
_EVENT_TIME = tuple(_AT[p.path] for p in EVENT_TIME)


@dataclass(slots=True)
class Conversion:
    """One planned postback."""

    key: str
    stream: str
    event: str
    event_id: int
    transaction_id: str
    platform: str
    message_id: str | None
    params: list[tuple[str, str]]
    """Query parameters in order, without ``verification_token`` (the client adds it)."""
    record: dict = field(repr=False)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """Optional fields left out: (parameter, why)."""
    event_time: int | None = None
    """The event's time (Unix seconds), when it has one, whether sent as ``timestamp`` or not."""
    currency: str | None = None
    """The currency the postback carries: its ``currency`` parameter, or the one
    ``postback_url`` fixes; None when it carries none."""

    def ledger_metadata(self) -> dict[str, t.Any]:
        """What the ledger keeps about this conversion (``ledger.METADATA_COLUMNS``)."""
        sent = dict(self.params)
        amount: float | None = None
        if "amount" in sent:
            with contextlib.suppress(ValueError):
                amount = float(sent["amount"])
            if amount is not None and not math.isfinite(amount):
                amount = None
        return {
            "stream": _storable(self.stream),
            "event": _storable(self.event),
            "transaction_id": _storable(self.transaction_id),
            "message_id": _storable(self.message_id),
            "adv_event_id": self.event_id,
            "order_id": _storable(sent.get("order_id")),
            "amount": amount,
            "event_time": self.event_time,
            "currency": self.currency,
        }


@dataclass(slots=True)
class _Plan:
    """One parameter, compiled from one or more rows of the table."""

    param: str
    paths: tuple  # SegmentPath, ...
    types: tuple[FieldType, ...]
    required: bool
    rule: t.Callable[[list[t.Any]], t.Any] | None
    items: tuple[tuple[str, t.Any, tuple[FieldType, ...], t.Callable[[t.Any], str]], ...] = ()
    """For a list parameter: (item key, path inside the item, types, the value's JSON text)."""
    convert: t.Callable[[t.Any], str] | None = None
    """The row's converter (``fields.CONVERTERS``), used instead of the type coercion."""
    at: tuple[int, ...] = ()
    """Where each of ``paths`` is in ``SegmentEvent.values(_GROUP)``."""
    text: t.Callable[[t.Any], str] | None = None
    """A plain parameter's text of the value found (its converter, else its types' coercion
    rendered); None for a rule or a list."""

    def __post_init__(self) -> None:
        self.at = tuple(_AT[p.path] for p in self.paths)
        if self.rule is None and not self.items:
            self.text = self.convert or text_of(self.types)


def _compile(platform: str) -> list[_Plan]:
    plans: dict[str, _Plan] = {}
    for row in FIELDS:
        if platform not in PLATFORMS[row.sources]:
            continue
        if row.is_list_item:
            _add_item(plans, row)
            continue
        plan = plans.get(row.param)
        if plan is None:
            plans[row.param] = _Plan(
                param=row.param,
                paths=tuple(_P(p) for p in (row.segment, *row.fallback)),
                types=row.types,
                required=row.required,
                rule=RULES[row.rule] if row.rule else None,
                convert=CONVERTERS[row.convert] if row.convert else None,
            )
        else:  # the same parameter in both of the seed's tables: required if either says so
            plan.required = plan.required or row.required
    return list(plans.values())


def _add_item(plans: dict[str, _Plan], row: Field) -> None:
    list_path, item_path = row.segment.split("[i].", 1)
    list_param, item_key = row.param.split("[i].", 1)
    plan = plans.get(list_param)
    if plan is None:
        plan = plans[list_param] = _Plan(list_param, (_P(list_path),), (), row.required, None)
    plan.items = (*plan.items, (item_key, _P(item_path), row.types, json_text_of(row.types)))
    plan.text = None  # a list: read by _line_items


_Build = t.Callable[[SegmentEvent, tuple, list[tuple[str, str]], list[tuple[str, str]]], bool]
"""A generated parameter builder (``_generate``): ``(event, values, params, dropped)``; appends
the parameters and returns True, or returns False (its appends to be undone) when the record
needs the table-driven walk: a value that does not fit, a required one absent."""


def _generate(
    plans: list[_Plan],
    held: frozenset[int],
    *,
    value: t.Callable[[SegmentObject, tuple, _Plan, list[tuple[str, str]]], str | None],
    items: t.Callable[[SegmentObject, _Plan, t.Any, list[tuple[str, str]]], str | None],
) -> _Build:
    """The parameters of records of one shape on one platform, as straight-line code made
    from ``plans`` (the table's, compiled), for records whose values all fit: for each plan
    in order, its paths that records of the shape can hold (``held``; every other one is
    ``MISSING`` in all of them), the first one found turned into text by the plan's own
    function (a list by ``items``); a rule, which judges absence itself, by ``value``. What
    ``Mapper.params_by_table`` does by walking the plans, without the walk; a record it does
    not fit (a ``Mismatch``, a required value absent) is left to that walk. A line per
    parameter: compiling the code is most of what a new shape costs."""
    lines = ["def build(event, values, params, dropped):", "    append = params.append"]
    names: dict[str, t.Any] = {"MISSING": MISSING, "VALUE": value, "ITEMS": items}
    for k, plan in enumerate(plans):
        if plan.rule is not None:
            names[f"P{k}"] = plan
            lines += [
                f"    if (v := VALUE(event, values, P{k}, dropped)) is not None:",
                f"        append(({plan.param!r}, v))",
            ]
            if plan.required:
                lines.append("    else:\n        return False")
            continue
        at = [i for i in plan.at if i in held]
        if not at:
            if plan.required:
                lines.append("    return False")
            continue
        found = " or ".join(f"(v := values[{i}]) is not MISSING" for i in at)
        if plan.text is None:  # a list: its items' JSON, None when no item has a value
            names[f"P{k}"] = plan
            lines += [
                f"    if ({found}) and (v := ITEMS(event, P{k}, v, dropped)) is not None:",
                f"        append(({plan.param!r}, v))",
            ]
        else:
            names[f"T{k}"] = plan.text
            lines.append(f"    if {found}:\n        append(({plan.param!r}, T{k}(v)))")
        if plan.required:
            lines.append("    else:\n        return False")
    lines.append("    return True")
    build: _Build = generated(lines, "build", **names)
    return build


def event_time(value: t.Any) -> int:
    """Unix seconds of a Segment timestamp (ISO-8601 text, datetime, or epoch number)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds) or abs(seconds) > 1e16:
            raise Mismatch(f"{str(value)[:40]} is not a Unix time")
        if seconds > 1e11:  # epoch milliseconds
            seconds /= 1000
        return int(seconds)
    elif isinstance(value, str):
        moment = _parse_iso(value)
    else:
        raise Mismatch(f"{type(value).__name__} is not a timestamp")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return int(moment.timestamp())
    except (OverflowError, ValueError, OSError):
        raise Mismatch(f"{moment.isoformat()[:40]} is out of range") from None


def _parse_iso(text: str) -> datetime:
    text = text.strip()
    candidate = text[:-1] + "+00:00" if text[-1:] in {"Z", "z"} else text
    # Segment libraries also write offsets without a colon: 2013-12-17T15:38:32-0400
    if len(candidate) > 5 and candidate[-5] in "+-" and candidate[-4:].isdigit():
        candidate = f"{candidate[:-2]}:{candidate[-2:]}"
    try:
        return datetime.fromisoformat(candidate.replace(" ", "T", 1))
    except ValueError:
        pass
    # Python < 3.11 fromisoformat takes only 0, 3 or 6 fraction digits.
    head, dot, rest = candidate.partition(".")
    if dot:
        digits = "".join(ch for ch in rest if ch.isdigit())
        tail = rest[len(digits) :]
        try:
            return datetime.fromisoformat(f"{head}.{(digits + '000000')[:6]}{tail}")
        except ValueError:
            pass
    raise Mismatch(f"{text[:40]!r} is not an ISO-8601 timestamp")


class Mapper:
    """Turns records into ``Conversion``s or ``Outcome``s, per the settings and the table."""

    def __init__(self, settings: Settings, logger: logging.Logger | None = None) -> None:
        self.settings = settings
        self.logger = logger or logging.getLogger("target-everflow")
        self._plans = {"web": _compile("web"), "mobile": _compile(MOBILE)}
        self.fixed_currency = settings.fixed_currency
        if self.fixed_currency or not settings.send_currency:
            # A record's currency is never sent: postback_url fixes it, or it is turned off.
            for platform, plans in self._plans.items():
                self._plans[platform] = [p for p in plans if p.param != CURRENCY]
        self.clock = settings.clock
        self._max_age = settings.max_conversion_age_days * DAY
        for line in self.start_lines():
            self.logger.info("%s", line)
        self._by_shape: dict[tuple[Shape, str], _Build] = {}
        self._items: dict[
            Layout, tuple[tuple[str, str, t.Any, t.Any, t.Callable[[t.Any], str]], ...]
        ] = {}
        """A product layout -> for each item key a product of it can hold: the key, its JSON
        member's start (``"key":``), where (``Layout.leaf_key``), its path, its JSON text."""
        self._events = dict(settings.event_mapping)
        self._event_slugs = {slug(name): eid for name, eid in settings.event_mapping.items()}
        self._slug_names: dict[str, str] = {}
        for name in settings.event_mapping:
            self._slug_names.setdefault(slug(name), name)
        self._slugged: dict[str, int | None] = {}
        self._rows: dict[str, str] = {}
        self._head: list[tuple[str, str]] = []
        if settings.network_id is not None:
            self._head.append(("nid", str(settings.network_id)))
        aid = () if settings.advertiser_id is None else (("aid", str(settings.advertiser_id)),)
        self._tail = {
            event_id: (*aid, *((("adv_event_id", str(event_id)),) if event_id else ()))
            for event_id in settings.event_mapping.values()
        }
        """An event id -> the parameters after ``transaction_id``: ``aid``, ``adv_event_id``."""

    def start_lines(self) -> list[str]:
        """What the mapping does that a person should know at start-up (logged once a run)."""
        lines = []
        if self.clock.is_pinned:
            lines.append(
                f"The clock is pinned by {CLOCK_ENV} at {self.clock.describe()}: conversion "
                "ages are judged against that time, not the system clock"
            )
        if self.fixed_currency:
            lines.append(
                f"postback_url fixes currency={self.fixed_currency} for every postback: a "
                "record's own currency is never sent"
            )
        return lines

    # -- identity ------------------------------------------------------------------------

    def event_id_for(self, name: str) -> int | None:
        found = self._events.get(name)
        if found is None:
            # By slug; remembered per name (a few names repeat millions of times), bounded.
            found = self._slugged.get(name, MISSING)
            if found is MISSING:
                found = self._event_slugs.get(slug(name))
                if len(self._slugged) >= 10_000:
                    self._slugged.clear()
                self._slugged[name] = found
        return found

    def summary_event(self, name: str) -> str | None:
        """The run summary's row for a mapped event name, None for a name that is not mapped.

        An ``event_mapping`` name, or its slug (a warehouse table's name), is its own row; any
        other spelling that maps (``ORDER COMPLETED``) counts under the ``event_mapping`` name it
        matches, so mapped rows stay as few as the mapping's names, whatever the input spells.
        """
        if name in self._events:
            return name
        if self.event_id_for(name) is None:
            return None
        row = self._rows.get(name)
        if row is None:
            slugged = slug(name)
            row = name if name == slugged else self._slug_names[slugged]
            if len(self._rows) < 1_000:
                self._rows[name] = row
        return row

    @staticmethod
    def view(record: dict, stream: str) -> SegmentEvent:
        """The door: the one view of a record, built once; everything downstream reads it."""
        return SegmentEvent(record, stream)

    @staticmethod
    def stream_event(stream: str) -> str:
        """A database tap's stream ``schema-table`` stands for the event ``table``."""
        return stream_event(stream)

    def _platform(self, values: tuple) -> str:
        if self.settings.platform != "auto":
            return self.settings.platform
        os_name = values[_OS_NAME]
        if isinstance(os_name, str) and fold(os_name) in MOBILE_OS:
            return "mobile"
        device_type = values[_DEVICE_TYPE]
        if isinstance(device_type, str) and fold(device_type) in MOBILE_OS:
            return "mobile"
        library = values[_LIBRARY_NAME]
        if isinstance(library, str) and fold(library) in MOBILE_LIBRARIES:
            return "mobile"
        return "web"

    @staticmethod
    def _transaction_id(values: tuple) -> t.Any:
        """The referrer id (when the referrer is Everflow), else properties.transaction_id.

        A blank id (only whitespace) counts as absent.
        """
        referrer_type = values[_REFERRER_TYPE]
        if isinstance(referrer_type, str) and referrer_type.strip().lower() == "everflow":
            found = values[_REFERRER_ID]
            if found is not MISSING and not (isinstance(found, str) and not found.strip()):
                return found
        found = values[_PROPERTY_TRANSACTION_ID]
        if isinstance(found, str) and not found.strip():
            return MISSING
        return found

    # -- the mapping -----------------------------------------------------------------------

    def map(
        self, event: SegmentEvent | t.Any, stream: str = ""
    ) -> Conversion | Outcome:  # the seed's rules, in the seed's order
        """Map one record's view (``view``; a record given as it is is viewed here). Never
        raises for bad input: that is an ``Outcome`` too."""
        if not isinstance(event, SegmentEvent):
            if not isinstance(event, dict):
                return Outcome(DEAD_LETTER, INVALID_RECORD, "the record is not a JSON object")
            event = self.view(event, stream)
        stream, record, name, message_id = event.stream, event.record, event.name, event.message_id

        if event.call != "track":
            shown = event.call[:40]
            return Outcome(
                SKIPPED,
                NOT_TRACK,
                f"a {shown} call, not a track",
                event=event.label,
                message_id=message_id,
            )

        event_id = self.event_id_for(name)
        if event_id is None:
            return Outcome(
                SKIPPED,
                UNMAPPED_EVENT,
                f"event {name!r} is not in event_mapping",
                event=name,
                message_id=message_id,
            )

        values = event.values(_GROUP)
        raw_tid = self._transaction_id(values)
        if raw_tid is MISSING:
            return Outcome(
                SKIPPED,
                NO_TRANSACTION_ID,
                "no Everflow transaction id (context.referrer.id with referrer type everflow, "
                "or properties.transaction_id)",
                "transaction_id",
                event=name,
                message_id=message_id,
            )
        try:
            transaction_id = as_string(raw_tid).strip()
        except Mismatch as exc:
            return Outcome(
                DEAD_LETTER,
                TYPE_MISMATCH,
                f"transaction_id: {exc}",
                "transaction_id",
                event=name,
                message_id=message_id,
            )

        platform = self._platform(values)
        strict = self.settings.strict_types
        params = [*self._head, ("transaction_id", transaction_id), *self._tail[event_id]]
        dropped: list[tuple[str, str]] = []

        when: int | None = None
        raw_time = MISSING
        for i in _EVENT_TIME:
            raw_time = values[i]
            if raw_time is not MISSING:
                break
        if raw_time is not MISSING:
            try:
                when = event_time(raw_time)
            except Mismatch as exc:
                if not self.settings.send_timestamp:
                    pass  # not sent: its type does not matter
                elif strict:
                    return Outcome(
                        DEAD_LETTER,
                        TYPE_MISMATCH,
                        f"timestamp: {exc}",
                        "timestamp",
                        event=name,
                        message_id=message_id,
                    )
                else:
                    dropped.append(("timestamp", str(exc)))
        if when is not None and self._max_age:
            age = self.clock.now() - when  # read per record: a streaming run lasts weeks
            if age > self._max_age:
                return Outcome(
                    SKIPPED,
                    TOO_OLD,
                    f"the event is {age / DAY:.1f} days old, older than max_conversion_age_days "
                    f"({self.settings.max_conversion_age_days}): its click can no longer convert",
                    "timestamp",
                    event=name,
                    message_id=message_id,
                )
        if when is not None and self.settings.send_timestamp:
            params.append(("timestamp", str(when)))

        start, dropped_start = len(params), len(dropped)
        try:
            built = self._builder(event, platform)(event, values, params, dropped)
        except Mismatch:
            built = False
        if not built:  # a value that does not fit, a required one absent: walk the table
            del params[start:], dropped[dropped_start:]
            failed = self.params_by_table(event, values, platform, params, dropped)
            if failed is not None:
                plan, mismatch = failed
                if mismatch is None:
                    return Outcome(
                        DEAD_LETTER,
                        MISSING_REQUIRED_FIELD,
                        f"{plan.param} ({plan.paths[0].path}) is required for {platform} "
                        "conversions",
                        plan.param,
                        event=name,
                        message_id=message_id,
                    )
                return Outcome(
                    DEAD_LETTER,
                    TYPE_MISMATCH,
                    f"{plan.param} ({plan.paths[0].path}): {mismatch}",
                    plan.param,
                    event=name,
                    message_id=message_id,
                )

        if strict and dropped:
            param, why = dropped[0]
            return Outcome(
                DEAD_LETTER,
                TYPE_MISMATCH,
                f"{param}: {why}",
                param,
                event=name,
                message_id=message_id,
            )

        return Conversion(
            key=self._key(message_id, transaction_id, event_id, event, when),
            stream=stream,
            event=name,
            event_id=event_id,
            transaction_id=transaction_id,
            platform=platform,
            message_id=message_id,
            params=params,
            record=record,
            dropped=dropped,
            event_time=when,
            currency=self.fixed_currency or _sent(params, CURRENCY),
        )

    def _plans_for(self, event: SegmentEvent, platform: str) -> list[_Plan]:
        """The platform's plans that a record of the event's shape can give a value (or must:
        a required one, and a rule, which judges absence itself)."""
        held = event.held(_GROUP)
        return [
            plan
            for plan in self._plans[platform]
            if plan.required or plan.rule is not None or not held.isdisjoint(plan.at)
        ]

    def _builder(self, event: SegmentEvent, platform: str) -> _Build:
        """The parameter builder of records of the event's shape on ``platform``, generated
        from the table's plans once per (shape, platform) (``_generate``)."""
        key = (event.shape, platform)
        build = self._by_shape.get(key)
        if build is None:
            if len(self._by_shape) >= 4096:  # bounded, as the shapes are
                self._by_shape.clear()
            build = self._by_shape[key] = _generate(
                self._plans_for(event, platform),
                event.held(_GROUP),
                value=self._value,
                items=self._line_items,
            )
        return build

    def params_by_table(
        self,
        event: SegmentEvent,
        values: tuple,
        platform: str,
        params: list[tuple[str, str]],
        dropped: list[tuple[str, str]],
    ) -> tuple[_Plan, Mismatch | None] | None:
        """What the generated builder does (``_generate``), by walking the plans: appends each
        parameter found to ``params`` and each optional one left out to ``dropped``; returns
        the plan that fails the record (with its ``Mismatch``, or None when a required one is
        absent), else None. It maps the records a builder leaves (a value that does not fit, a
        required one absent), and is the reference the builders are tested against."""
        strict = self.settings.strict_types
        for plan in self._plans_for(event, platform):
            try:
                text = plan.text
                if text is None:
                    value = self._value(event, values, plan, dropped)
                else:
                    for i in plan.at:
                        found = values[i]
                        if found is not MISSING:
                            value = text(found)
                            break
                    else:
                        value = None
            except Mismatch as exc:
                if plan.required or strict:
                    return plan, exc
                dropped.append((plan.param, str(exc)))
                continue
            if value is None:
                if plan.required:
                    return plan, None
                continue
            params.append((plan.param, value))
        return None

    def _value(
        self, event: SegmentObject, values: tuple, plan: _Plan, dropped: list[tuple[str, str]]
    ) -> str | None:
        if plan.rule is not None:
            result = plan.rule([None if (v := values[i]) is MISSING else v for i in plan.at])
            return None if result is None else render(result)
        found = MISSING
        for i in plan.at:
            found = values[i]
            if found is not MISSING:
                break
        if found is MISSING:
            return None
        if plan.items:
            return self._line_items(event, plan, found, dropped)
        if plan.convert is not None:
            return plan.convert(found)
        return render(coerce(found, plan.types))

    def _line_items(
        self, event: SegmentObject, plan: _Plan, found: t.Any, dropped: list[tuple[str, str]]
    ) -> str | None:
        """``order_line_items``: a JSON array of the item keys the table names, from the list
        ``found`` at the plan's path."""
        if isinstance(found, str):
            try:
                found = json_loads(found)
            except (ValueError, RecursionError):
                raise Mismatch("properties.products is not valid JSON") from None
        if not isinstance(found, list):
            raise Mismatch("properties.products is not a list")
        items: list[str] = []
        for i, product in enumerate(found):
            if not isinstance(product, dict):
                dropped.append((f"{plan.param}[{i}]", "the product is not an object"))
                continue
            layout = layout_of(product)
            wheres = self._items.get(layout)
            if wheres is None:  # where a product of this layout keeps each item key, once
                if len(self._items) >= 4096:  # bounded, as the layouts are
                    self._items.clear()
                wheres = self._items[layout] = tuple(
                    (key, f'"{key}":', where, path, json_text)
                    for key, path, _types, json_text in plan.items
                    if (where := layout.leaf_key(path)) is not None  # (None: no key can hold it)
                )
            item: SegmentObject | None = None
            parts: list[str] = []
            for key, member, where, path, json_text in wheres:
                if where is NEEDS_LOOKUP:
                    if item is None:
                        item = SegmentObject(product, event.stream)
                    value = item.get(path)
                    if value is MISSING:
                        continue
                else:  # the one key that can hold it, read directly
                    value = product[where]
                    if value is None or value == "":
                        continue
                try:
                    parts.append(member + json_text(value))
                except Mismatch as exc:
                    dropped.append((f"{plan.param}[{i}].{key}", str(exc)))
            if parts:
                items.append("{" + ",".join(parts) + "}")
        if not items:
            return None
        return "[" + ",".join(items) + "]"

    @staticmethod
    def _key(
        message_id: str | None,
        transaction_id: str,
        event_id: int,
        event: SegmentEvent,
        when: int | None,
    ) -> str:
        """The delivery key: the Segment message id, else a stable hash of the conversion.

        A message id that no ledger could store as it is (longer than ``MAX_KEY_ID`` characters,
        or holding control characters, NUL or lone surrogates, which PostgreSQL text refuses) is
        keyed by its hash instead: ``m#<sha256 prefix>``.
        """
        if message_id:
            if len(message_id) <= MAX_KEY_ID and message_id.isprintable():
                return f"m:{message_id}"
            digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
            return "m#" + digest[:32]
        order_id = event.get(ORDER_ID)
        basis = "\x1f".join((transaction_id, str(event_id), _key_part(order_id), str(when)))
        return "h:" + hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _sent(params: list[tuple[str, str]], name: str) -> str | None:
    """The value of parameter ``name`` in ``params`` (the last one), or None."""
    for param, value in reversed(params):
        if param == name:
            return value
    return None


MAX_KEY_ID = 200
"""Longest message id used in a delivery key as it is (Segment's are about 40 characters)."""


MAX_STORED_TEXT = 1000
"""Longest record-derived text the ledger keeps about a conversion (longer ones are cut)."""


def _storable(text: str | None) -> str | None:
    """``text`` as every ledger can store it: no NUL, no lone surrogate (PostgreSQL refuses
    both; they become escapes), at most ``MAX_STORED_TEXT`` characters."""
    if text is None:
        return None
    if "\x00" in text or not text.isprintable():
        text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:MAX_STORED_TEXT]


def _key_part(value: t.Any) -> str:
    return "" if value is MISSING else id_text(value)
