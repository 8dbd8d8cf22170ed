"""The mapper: one Segment event (any of the three shapes) -> the exact postback parameters.

Every event here is written once, as raw Segment JSON, and turned into the other two shapes by
small builders that follow Segment's and Singer taps' rules (``to_warehouse``: snake_case
columns, nested keys joined with ``_``, properties un-prefixed, ``event``=slug,
``event_text``=name, ``id``=messageId, arrays as JSON text; ``to_flat``: nested keys joined with
``__`` keeping their case, arrays as JSON text). The golden lists are written out by hand.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import typing as t
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import simplejson

from target_everflow import mapping as mapping_module
from target_everflow.clock import Clock
from target_everflow.fields import Mismatch
from target_everflow.mapping import (
    Conversion,
    Mapper,
    event_time,
)
from target_everflow.outcomes import (
    DEAD_LETTER,
    MISSING_REQUIRED_FIELD,
    NO_TRANSACTION_ID,
    NOT_TRACK,
    SKIPPED,
    TOO_OLD,
    TYPE_MISMATCH,
    UNMAPPED_EVENT,
    Outcome,
)
from target_everflow.records import MISSING, Reader, SegmentEvent, json_loads
from target_everflow.settings import Settings

TID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
TS = "2026-11-20T18:14:08.612Z"
TS_UNIX = "1795198448"
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Safari/605.1.15"

BASE_SETTINGS: dict[str, t.Any] = {
    "dry_run": True,
    "network_id": 1,
    "advertiser_id": 7,
    "event_mapping": {"Order Completed": 0, "Subscription Started": 24},
}

ALLOWED_PARAMS = {
    "nid", "transaction_id", "aid", "adv_event_id", "timestamp",
    "conversion_user_ip", "http_user_agent", "email", "adv1", "adv2", "adv3", "adv4", "adv5",
    "coupon_code", "order_id", "affiliate_id", "order_line_items", "amount", "currency",
    "app_id", "limit_ad_tracking", "app_name", "app_version", "device_make", "device_model",
    "carrier", "os", "os_version", "connection_type", "latitude", "longitude",
}  # fmt: skip
"""The only parameters a postback may carry (verification_token is added by the client)."""

ORDER = [
    "nid", "transaction_id", "aid", "adv_event_id", "timestamp",
    "conversion_user_ip", "http_user_agent", "email", "adv1", "adv2", "adv3", "adv4", "adv5",
    "coupon_code", "order_id", "affiliate_id", "order_line_items", "amount", "currency",
    "app_id", "limit_ad_tracking", "app_name", "app_version", "device_make", "device_model",
    "carrier", "os", "os_version", "connection_type", "latitude", "longitude",
]  # fmt: skip
"""The order parameters are produced in: identity, then the table's rows."""


# --- builders ---------------------------------------------------------------------------------


def mapper(**overrides: t.Any) -> Mapper:
    return Mapper(Settings.from_config({**BASE_SETTINGS, **overrides}))


def raw_event(
    event: str | None = "Order Completed",
    *,
    context: dict | None = None,
    properties: dict | None = None,
    tid: str | None = TID,
    message_id: str | None = "msg-0001",
    timestamp: t.Any = TS,
    **top: t.Any,
) -> dict:
    """A raw Segment track event; the transaction id travels in context.referrer."""
    ctx = copy.deepcopy(context or {})
    if tid is not None:
        ctx.setdefault("referrer", {"type": "everflow", "id": tid})
    record: dict[str, t.Any] = {"type": "track"}
    if event is not None:
        record["event"] = event
    if message_id is not None:
        record["messageId"] = message_id
    if timestamp is not None:
        record["timestamp"] = timestamp
    record["context"] = ctx
    record["properties"] = copy.deepcopy(properties or {})
    record.update(top)
    return record


def snake(name: str) -> str:
    """go-snakecase, as Segment's warehouses name columns: userAgent -> user_agent."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()


def dumps(value: t.Any) -> str:
    return simplejson.dumps(value, use_decimal=True)


def to_warehouse(raw: dict) -> dict:
    """The row Segment's warehouse loader writes for a raw track event."""
    row: dict[str, t.Any] = {}

    def flatten(prefix: str, obj: dict) -> None:
        for key, value in obj.items():
            name = f"{prefix}_{snake(key)}"
            if isinstance(value, dict):
                flatten(name, value)
            elif isinstance(value, list):
                row[name] = dumps(value)
            else:
                row[name] = value

    for key, value in raw.items():
        if key == "type":
            continue  # tracks tables have no type column
        if key == "messageId":
            row["id"] = value
        elif key == "event":
            row["event"] = snake(value)
            row["event_text"] = value
        elif key == "context":
            flatten("context", value)
        elif key == "properties":
            for prop, prop_value in value.items():
                column = snake(prop)
                row[column] = (
                    dumps(prop_value) if isinstance(prop_value, (list, dict)) else prop_value
                )
        else:
            row[snake(key)] = value
    return row


def to_flat(raw: dict) -> dict:
    """A Meltano SDK tap's flattened record: nested keys joined with ``__``, arrays as JSON."""
    out: dict[str, t.Any] = {}

    def walk(prefix: str, obj: dict) -> None:
        for key, value in obj.items():
            name = f"{prefix}__{key}" if prefix else key
            if isinstance(value, dict):
                walk(name, value)
            elif isinstance(value, list):
                out[name] = dumps(value)
            else:
                out[name] = value

    walk("", raw)
    return out


SHAPES: dict[str, t.Callable[[dict], dict]] = {
    "raw": lambda raw: copy.deepcopy(raw),
    "warehouse": to_warehouse,
    "flat": to_flat,
}
STREAMS = {"raw": "segment_archive", "warehouse": "segment_shop-tracks", "flat": "segment_flat"}


def test_builders_produce_the_documented_shapes() -> None:
    raw = raw_event(
        context={"userAgent": UA, "device": {"adTrackingEnabled": False}},
        properties={"orderId": 5, "products": [{"sku": "a"}]},
    )
    row = to_warehouse(raw)
    assert row["context_user_agent"] == UA
    assert row["context_device_ad_tracking_enabled"] is False
    assert row["context_referrer_id"] == TID
    assert row["order_id"] == 5
    assert row["products"] == '[{"sku": "a"}]'
    assert (row["event"], row["event_text"], row["id"]) == (
        "order_completed",
        "Order Completed",
        "msg-0001",
    )
    assert "type" not in row and "properties" not in row and "context" not in row
    flat = to_flat(raw)
    assert flat["context__userAgent"] == UA
    assert flat["context__referrer__type"] == "everflow"
    assert flat["properties__products"] == '[{"sku": "a"}]'
    assert flat["type"] == "track"


def conversion_of(record: dict, stream: str = "segment_archive", **settings: t.Any) -> Conversion:
    result = mapper(**settings).map(record, stream)
    assert isinstance(result, Conversion), result
    return result


def outcome_of(record: t.Any, stream: str = "segment_archive", **settings: t.Any) -> Outcome:
    result = mapper(**settings).map(record, stream)
    assert isinstance(result, Outcome), result
    return result


def head(event_id: int = 0) -> list[tuple[str, str]]:
    params = [("nid", "1"), ("transaction_id", TID), ("aid", "7")]
    if event_id:
        params.append(("adv_event_id", str(event_id)))
    params.append(("timestamp", TS_UNIX))
    return params


def assert_wellformed(conversion: Conversion) -> None:
    names = [name for name, _ in conversion.params]
    assert len(names) == len(set(names)), names
    assert set(names) <= ALLOWED_PARAMS, set(names) - ALLOWED_PARAMS
    assert all(isinstance(value, str) for _, value in conversion.params)
    assert names == sorted(names, key=ORDER.index)


# --- golden: a full web and a full mobile event, in the three shapes ---------------------------

WEB_CONTEXT = {
    "ip": "203.0.113.7",
    "userAgent": UA,
    "library": {"name": "analytics.js", "version": "npm:next-1.61.0"},
    "traits": {"email": "jane+vip@example.com", "name": "Jane"},
    "page": {"path": "/checkout"},
}
WEB_PROPERTIES = {
    "adv1": "spring",
    "adv2": 3,
    "adv3": True,
    "adv4": Decimal("4.50"),
    "adv5": False,
    "coupon": "HASBROS",
    "orderId": 50314,
    "affiliateId": "12",
    "products": [
        {
            "product_id": "507f",
            "sku": "45790-32",
            "name": "Monopoly: 3rd Edition",
            "price": 19,
            "quantity": 1,
        },
        {"sku": "46493-32", "name": "Uno Card Game", "quantity": 2},
    ],
    "total": Decimal("27.50"),
    "revenue": Decimal("22.50"),
    "currency": "USD",
}
WEB_GOLDEN = [
    ("nid", "1"),
    ("transaction_id", TID),
    ("aid", "7"),
    ("timestamp", TS_UNIX),
    ("conversion_user_ip", "203.0.113.7"),
    ("http_user_agent", UA),
    ("email", "jane+vip@example.com"),
    ("adv1", "spring"),
    ("adv2", "3"),
    ("adv3", "true"),
    ("adv4", "4.50"),
    ("adv5", "false"),
    ("coupon_code", "HASBROS"),
    ("order_id", "50314"),
    ("affiliate_id", "12"),
    (
        "order_line_items",
        '[{"quantity":1,"name":"Monopoly: 3rd Edition","sku":"45790-32"},'
        '{"quantity":2,"name":"Uno Card Game","sku":"46493-32"}]',
    ),
    ("amount", "27.50"),
    ("currency", "USD"),
]

MOBILE_CONTEXT = {
    "ip": "198.51.100.23",
    "userAgent": "Shop/420 CFNetwork/1410.0.3 Darwin/22.6.0",
    "traits": {"email": "sam@example.com"},
    "app": {"name": "Shop", "version": "4.2.0", "build": "420", "namespace": "com.example.shop"},
    "device": {
        "id": "B5372DB0",
        "manufacturer": "Apple",
        "model": "iPhone15,2",
        "type": "ios",
        "adTrackingEnabled": False,
    },
    "network": {"carrier": "T-Mobile", "wifi": True, "cellular": False, "bluetooth": False},
    "os": {"name": "iOS", "version": "17.1"},
    "library": {"name": "analytics-ios", "version": "4.1.8"},
    "location": {"latitude": Decimal("40.7128"), "longitude": Decimal("-74.0060")},
    "locale": "en-US",
}
MOBILE_PROPERTIES = {
    "orderId": "77001",
    "coupon": 2026,
    "products": [{"sku": "SKU-9", "quantity": "3"}],
    "revenue": Decimal("99.99"),
}
MOBILE_GOLDEN = [
    ("nid", "1"),
    ("transaction_id", TID),
    ("aid", "7"),
    ("adv_event_id", "24"),
    ("timestamp", TS_UNIX),
    ("conversion_user_ip", "198.51.100.23"),
    ("http_user_agent", "Shop/420 CFNetwork/1410.0.3 Darwin/22.6.0"),
    ("email", "sam@example.com"),
    ("coupon_code", "2026"),
    ("order_id", "77001"),
    ("order_line_items", '[{"quantity":3,"sku":"SKU-9"}]'),
    ("amount", "99.99"),
    ("app_id", "com.example.shop"),
    ("limit_ad_tracking", "true"),
    ("app_name", "Shop"),
    ("app_version", "4.2.0"),
    ("device_make", "Apple"),
    ("device_model", "iPhone15,2"),
    ("carrier", "T-Mobile"),
    ("os", "iOS"),
    ("os_version", "17.1"),
    ("connection_type", "wifi"),
    ("latitude", "40.7128"),
    ("longitude", "-74.0060"),
]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_golden_web(shape: str) -> None:
    record = SHAPES[shape](raw_event(context=WEB_CONTEXT, properties=WEB_PROPERTIES, userId="u-1"))
    conversion = conversion_of(record, STREAMS[shape])
    assert conversion.params == WEB_GOLDEN
    assert conversion.platform == "web"
    assert (conversion.event, conversion.event_id, conversion.transaction_id) == (
        "Order Completed",
        0,
        TID,
    )
    assert conversion.message_id == "msg-0001"
    assert conversion.key == "m:msg-0001"
    assert conversion.dropped == []
    assert conversion.record is record
    assert conversion.stream == STREAMS[shape]
    assert_wellformed(conversion)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_golden_mobile(shape: str) -> None:
    raw = raw_event("Subscription Started", context=MOBILE_CONTEXT, properties=MOBILE_PROPERTIES)
    conversion = conversion_of(SHAPES[shape](raw), STREAMS[shape])
    assert conversion.params == MOBILE_GOLDEN
    assert conversion.platform == "mobile"
    assert (conversion.event, conversion.event_id) == ("Subscription Started", 24)
    assert conversion.dropped == []
    assert_wellformed(conversion)


def test_golden_web_upper_case_warehouse_columns() -> None:
    """Snowflake hands column names back upper-case."""
    row = to_warehouse(raw_event(context=WEB_CONTEXT, properties=WEB_PROPERTIES))
    upper = {key.upper(): value for key, value in row.items()}
    assert conversion_of(upper, "SEGMENT-ORDER_COMPLETED").params == WEB_GOLDEN


def test_golden_web_lower_cased_top_level_keys() -> None:
    """Some file taps lower-case top-level keys and strip punctuation (messageid)."""
    flat = to_flat(raw_event(context=WEB_CONTEXT, properties=WEB_PROPERTIES))
    lowered = {re.sub(r"[^0-9a-z]", "", key.lower()): value for key, value in flat.items()}
    assert "contextuseragent" in lowered and "messageid" in lowered
    conversion = conversion_of(lowered)
    assert conversion.params == WEB_GOLDEN
    assert conversion.key == "m:msg-0001"


def test_golden_mixed_nesting() -> None:
    """Flattened at any depth: context_traits nested under a flat prefix, properties nested."""
    record = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "msg-0001",
        "timestamp": TS,
        "context_referrer": {"type": "everflow", "id": TID},
        "context": {"user_agent": UA, "IP": "203.0.113.7", "traits__email": "jane+vip@example.com"},
        "properties": {"order_id": 50314, "Total": Decimal("27.50")},
    }
    assert conversion_of(record).params == [
        *head(),
        ("conversion_user_ip", "203.0.113.7"),
        ("http_user_agent", UA),
        ("email", "jane+vip@example.com"),
        ("order_id", "50314"),
        ("amount", "27.50"),
    ]


def test_nested_objects_kept_as_json_strings() -> None:
    """Some flatteners keep a nested object as JSON text; several of them in one record."""
    record = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-json",
        "timestamp": TS,
        "context": json.dumps(
            {
                "ip": "198.51.100.23",
                "referrer": {"type": "everflow", "id": TID},
                "app": json.dumps({"name": "Shop", "namespace": "com.example.shop"}),
                "os": {"name": "Android", "version": "14"},
            }
        ),
        "properties": '{"orderId": 77, "total": 12.50, "coupon": "C"}',
    }
    assert conversion_of(record).params == [
        *head(),
        ("conversion_user_ip", "198.51.100.23"),
        ("coupon_code", "C"),
        ("order_id", "77"),
        ("amount", "12.50"),  # as written in the JSON text, not 12.5
        ("app_id", "com.example.shop"),
        ("app_name", "Shop"),
        ("os", "Android"),
        ("os_version", "14"),
    ]


READER_RECORDS: list[dict[str, t.Any]] = [
    {  # raw, nested
        "type": "track",
        "messageId": "m1",
        "context": {
            "ip": "IP",
            "userAgent": "",
            "user_agent": "UA",
            "referrer": {"type": "everflow", "id": None},
            "app": {"namespace": "NS", "Name": "APP"},
            "device": {"adTrackingEnabled": False},
        },
        "properties": {"orderId": 7, "products": [{"sku": "S"}], "total": None, "revenue": 5},
    },
    {  # a warehouse row: un-prefixed properties, snake_case context columns
        "id": "m2",
        "event_text": "Order Completed",
        "context_ip": "IP2",
        "context_referrer_type": "everflow",
        "context_referrer_id": "T2",
        "order_id": "O2",
        "total": "",
        "revenue": 9,
        "products": '[{"sku": "S2"}]',
    },
    {  # tap-flattened, spellings in several places, a JSON-text object on the way
        "messageId": "m3",
        "CONTEXT__IP": "IP3",
        "context": {"ip": "shadowed", "traits": '{"email": "E3"}', "os": {"name": None}},
        "context_os_name": "iOS",
        "properties__transaction_id": "T3",
        "properties": '{"orderId": "O3", "coupon": "C3"}',
    },
    {"type": None, "event": "", "messageId": 0, "context": None, "properties": []},
]


@pytest.mark.parametrize("record", READER_RECORDS, ids=["raw", "warehouse", "flattened", "odd"])
def test_generated_readers_find_what_get_finds(record: dict[str, t.Any]) -> None:
    """The code generated per record shape (records.Reader) reads, for every path the mapping
    reads, what SegmentObject.get finds; a record of the same shape read again, with other
    values, too (the code is per shape, not per record)."""
    paths = mapping_module._PATHS
    for values in (record, _blank_strings(record)):
        event = SegmentEvent(values, "s")
        assert event.values(mapping_module._GROUP) == tuple(event.get(p) for p in paths)


def test_a_group_registered_later_reads_shapes_found_before_it() -> None:
    """A shape found before a group going through keys it did not look at was registered is
    read by get(): no value is taken from the wrong key."""
    reader = Reader()
    reader.group(["type"])
    record = copy.deepcopy(READER_RECORDS[0])
    event = SegmentEvent(record, "s")
    before = reader.shape(record)  # looked at no key inside the record
    late = reader.group(["context.referrer.type", "context.app.Name", "properties.total"])
    expected = ("everflow", "APP", MISSING)
    assert reader.values(event, before, late) == expected
    assert reader.values(event, reader.shape(record), late) == expected


def assert_builder_matches_table(mapper: Mapper, record: dict, stream: str) -> None:
    """The parameter builder generated for the record's shape (one per platform) gives what
    walking the table's plans gives (the same parameters in order, the same fields dropped),
    and leaves a record to that walk only when the walk drops a field or fails the record."""
    event = mapper.view(record, stream)
    values = event.values(mapping_module._GROUP)
    for platform in ("web", "mobile"):
        built: tuple[list, list] = ([], [])
        by_table: tuple[list, list] = ([], [])
        failed = mapper.params_by_table(event, values, platform, *by_table)
        try:
            fits = mapper._builder(event, platform)(event, values, *built)
        except Mismatch:
            fits = False
        if fits:
            assert failed is None, platform
            assert built == by_table, platform
        else:
            assert failed is not None or by_table[1], platform


HOSTILE_VALUES: list[t.Any] = [
    None, "", " ", "true", "FALSE", "007", "1e3", "1.", "ORD-42", "eur", "x" * 3000, "\ud800",
    "jürgen@exämple.com", 0, -1, 10**150, True, False, 12.5, 1e300, math.inf, Decimal("1E+400"),
    Decimal("NaN"), Decimal("-0.00"), [1, "a"], {"a": 1}, '{"a": 1}', "[{",
]  # fmt: skip


def _with_leaves(record: t.Any, value: t.Any) -> t.Any:
    """The same keys, every value that is not an object replaced by ``value``."""
    if isinstance(record, dict):
        return {k: _with_leaves(v, value) for k, v in record.items()}
    return value


@pytest.mark.parametrize(
    "overrides",
    [{}, {"strict_types": True}, {"send_currency": False}, {"platform": "mobile"}],
    ids=["default", "strict", "no-currency", "mobile"],
)
def test_generated_parameter_builders_match_the_table(overrides: dict[str, t.Any]) -> None:
    """Each builder generated per (record shape, platform) from the field table builds what
    the table-driven walk builds: for the bench's mixed records (every shape it writes, each
    shape seen again with other values), for the reader's test records, and for each of them
    with every value replaced by a hostile one (absent, too long, not a number, not Unicode,
    an object where a value is expected...): the same keys, so mostly the same shapes, read by
    builders made for other values."""
    from bench import generate

    checked = mapper(**overrides)
    records = [
        (json_loads(line)["record"], json_loads(line)["stream"])
        for line in generate.lines(600)
        if line.startswith('{"type":"RECORD"')
    ]
    records += [(record, "s") for record in READER_RECORDS]
    for record, stream in records:
        assert_builder_matches_table(checked, record, stream)
    for value in HOSTILE_VALUES:
        for record, stream in records[::7] + records[-len(READER_RECORDS) :]:
            assert_builder_matches_table(checked, _with_leaves(record, value), stream)
            assert_builder_matches_table(checked, _blank_strings(record), stream)


def test_a_generated_builder_is_made_once_per_shape_and_platform() -> None:
    """Records of one shape share their builder; another shape or platform has its own."""
    m = mapper()
    first, second = (SegmentEvent(copy.deepcopy(READER_RECORDS[0]), "s") for _ in range(2))
    assert m._builder(first, "web") is m._builder(second, "web")
    assert m._builder(first, "web") is not m._builder(first, "mobile")
    other = SegmentEvent(READER_RECORDS[1], "s")
    assert m._builder(other, "web") is not m._builder(first, "web")


def _blank_strings(record: t.Any) -> t.Any:
    """The same keys, every string value emptied (absent to a lookup) but JSON text."""
    if isinstance(record, dict):
        return {k: _blank_strings(v) for k, v in record.items()}
    if isinstance(record, str) and not record.startswith(("{", "[")):
        return ""
    return record


def test_lookup_of_json_string_objects_does_not_depend_on_order() -> None:
    """Regression: parsed JSON objects were cached by id() and freed, so a later object could
    reuse the id and be read through the earlier object's index."""
    record = {
        "context": json.dumps({"ip": "IP", "app": json.dumps({"name": "APP", "namespace": "NS"})}),
        "properties": json.dumps({"total": 5, "coupon": "C"}),
    }
    expected = {
        "context.ip": "IP",
        "context.app.name": "APP",
        "context.app.namespace": "NS",
        "properties.total": 5,
        "properties.coupon": "C",
    }
    paths = list(expected)
    for first in paths:
        for second in paths:
            for third in paths:
                event = SegmentEvent(record, "s")
                for path in (first, second, third):
                    assert event.get(path) == expected[path], (first, second, third, path)


# --- golden: every row of the table, alone, web and mobile, three shapes ----------------------

MOBILE_BASE_CONTEXT = {
    "ip": "198.51.100.23",
    "app": {"namespace": "com.example.shop"},
    "library": {"name": "analytics-kotlin"},  # mobile, without a field the table sends
}
WEB_BASE_CONTEXT = {"library": {"name": "analytics.js"}}

# (Segment path, parameter, value set, parameter text): one case per row of the seed's tables.
ROWS: list[tuple[str, str, t.Any, str]] = [
    ("context.ip", "conversion_user_ip", "192.0.2.44", "192.0.2.44"),
    ("context.userAgent", "http_user_agent", UA, UA),
    ("context.traits.email", "email", "ana@example.org", "ana@example.org"),
    ("properties.adv1", "adv1", "spring", "spring"),
    ("properties.adv2", "adv2", 3, "3"),
    ("properties.adv3", "adv3", True, "true"),
    ("properties.adv4", "adv4", Decimal("4.50"), "4.50"),
    ("properties.adv5", "adv5", False, "false"),
    ("properties.coupon", "coupon_code", "HASBROS", "HASBROS"),
    ("properties.orderId", "order_id", 50314, "50314"),
    ("properties.affiliateId", "affiliate_id", "12", "12"),
    ("properties.products[i].quantity", "order_line_items", 2, '[{"quantity":2}]'),
    (
        "properties.products[i].name",
        "order_line_items",
        "Uno Card Game",
        '[{"name":"Uno Card Game"}]',
    ),
    ("properties.products[i].sku", "order_line_items", "46493-32", '[{"sku":"46493-32"}]'),
    ("properties.total", "amount", Decimal("27.50"), "27.50"),
    ("properties.currency", "currency", "eur", "EUR"),
    ("context.app.namespace", "app_id", "com.example.other", "com.example.other"),
    ("context.device.adTrackingEnabled", "limit_ad_tracking", False, "true"),
    ("context.app.name", "app_name", "Shop", "Shop"),
    ("context.app.version", "app_version", "4.2.0", "4.2.0"),
    ("context.device.manufacturer", "device_make", "Apple", "Apple"),
    ("context.device.model", "device_model", "iPhone15,2", "iPhone15,2"),
    ("context.network.carrier", "carrier", "T-Mobile", "T-Mobile"),
    ("context.os.name", "os", "Android", "Android"),
    ("context.os.version", "os_version", "17.1", "17.1"),
    ("context.network.wifi", "connection_type", True, "wifi"),
    ("context.location.latitude", "latitude", Decimal("40.7128"), "40.7128"),
    ("context.location.longitude", "longitude", Decimal("-74.0060"), "-74.0060"),
]
MOBILE_ONLY = {
    "app_id", "limit_ad_tracking", "app_name", "app_version", "device_make", "device_model",
    "carrier", "os", "os_version", "connection_type", "latitude", "longitude",
}  # fmt: skip


def test_rows_cover_the_table() -> None:
    from target_everflow.fields import FIELDS

    assert sorted({(path, param.split("[")[0]) for path, param, _, _ in ROWS}) == sorted(
        {(f.segment, f.param.split("[")[0]) for f in FIELDS}
    )


def set_path(record: dict, path: str, value: t.Any) -> None:
    if "[i]." in path:
        list_path, key = path.split("[i].")
        set_path(record, list_path, [{key: value}])
        return
    *parents, last = path.split(".")
    node = record
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("platform", ["web", "mobile"])
@pytest.mark.parametrize(("path", "param", "value", "text"), ROWS, ids=[f"{r[0]}" for r in ROWS])
def test_golden_row(
    path: str, param: str, value: t.Any, text: str, platform: str, shape: str
) -> None:
    raw = raw_event(context=MOBILE_BASE_CONTEXT if platform == "mobile" else WEB_BASE_CONTEXT)
    if platform == "web" and path == "context.os.name":
        value, text = "Mac OS X", "Mac OS X"  # an Android os.name would make the event mobile
    set_path(raw, path, value)
    conversion = conversion_of(SHAPES[shape](raw), STREAMS[shape])
    assert conversion.platform == platform
    expected = dict(head())
    if platform == "mobile":
        expected["conversion_user_ip"] = "198.51.100.23"
        expected["app_id"] = "com.example.shop"
    if platform == "mobile" or param not in MOBILE_ONLY:
        expected[param] = text
    assert conversion.params == sorted(expected.items(), key=lambda item: ORDER.index(item[0]))
    assert conversion.dropped == []


# --- names match case- and punctuation-insensitively ------------------------------------------


@pytest.mark.parametrize(
    "spelling", ["orderId", "order_id", "OrderID", "ORDER_ID", "order-id", "Order Id"]
)
def test_property_spellings(spelling: str) -> None:
    conversion = conversion_of(raw_event(properties={spelling: 50314}))
    assert conversion.params == [*head(), ("order_id", "50314")]


@pytest.mark.parametrize("spelling", ["userAgent", "user_agent", "USERAGENT", "User-Agent"])
def test_context_spellings(spelling: str) -> None:
    conversion = conversion_of(raw_event(context={spelling: UA}))
    assert conversion.params == [*head(), ("http_user_agent", UA)]


def test_first_spelling_wins_within_an_object() -> None:
    conversion = conversion_of(raw_event(properties={"orderId": 1, "order_id": 2}))
    assert ("order_id", "1") in conversion.params


@pytest.mark.parametrize("value", [None, ""])
def test_null_and_empty_are_absent(value: t.Any) -> None:
    conversion = conversion_of(
        raw_event(
            context={"ip": value, "userAgent": value}, properties={"orderId": value, "adv1": value}
        )
    )
    assert conversion.params == head()
    assert conversion.dropped == []


def test_null_nested_object_is_absent() -> None:
    conversion = conversion_of(raw_event(context={"traits": None, "app": None}))
    assert conversion.params == head()


def test_flattened_key_is_preferred_to_a_shorter_prefix() -> None:
    """Longest flattened name first: context_user_agent beats context.user."""
    record = raw_event()
    record["context_user_agent"] = "flat"
    record["context"]["user"] = {"agent": "nested"}
    assert ("http_user_agent", "flat") in conversion_of(record).params


# --- event mapping ----------------------------------------------------------------------------


def test_base_conversion_has_no_adv_event_id() -> None:
    conversion = conversion_of(raw_event("Order Completed"))
    assert conversion.event_id == 0
    assert "adv_event_id" not in dict(conversion.params)


def test_mapped_event_id_is_sent_as_adv_event_id_after_aid() -> None:
    conversion = conversion_of(raw_event("Subscription Started"))
    assert conversion.params == [
        ("nid", "1"), ("transaction_id", TID), ("aid", "7"), ("adv_event_id", "24"), ("timestamp", TS_UNIX),
    ]  # fmt: skip


def test_no_advertiser_id_no_aid() -> None:
    settings = {**BASE_SETTINGS}
    del settings["advertiser_id"]
    conversion = Mapper(Settings.from_config(settings)).map(raw_event("Subscription Started"), "s")
    assert isinstance(conversion, Conversion)
    assert conversion.params == [
        ("nid", "1"), ("transaction_id", TID), ("adv_event_id", "24"), ("timestamp", TS_UNIX),
    ]  # fmt: skip


def test_no_network_id_in_dry_run_no_nid() -> None:
    settings = {**BASE_SETTINGS}
    del settings["network_id"]
    conversion = Mapper(Settings.from_config(settings)).map(raw_event(), "s")
    assert isinstance(conversion, Conversion)
    assert conversion.params == [("transaction_id", TID), ("aid", "7"), ("timestamp", TS_UNIX)]


@pytest.mark.parametrize(
    "name",
    [
        "Order Completed",
        "order_completed",
        "ORDER COMPLETED",
        "Order-Completed",
        "orderCompleted",
        " Order Completed ",
    ],
)
def test_event_matches_exactly_or_by_slug(name: str) -> None:
    conversion = conversion_of(raw_event(name))
    assert conversion.event_id == 0
    assert conversion.event == name


def test_event_mapping_key_given_as_slug() -> None:
    conversion = conversion_of(raw_event("Purchase Made"), event_mapping={"purchase_made": 9})
    assert ("adv_event_id", "9") in conversion.params


def test_exact_match_beats_slug_match() -> None:
    conversion = conversion_of(
        raw_event("order_completed"), event_mapping={"Order Completed": 5, "order_completed": 6}
    )
    assert conversion.event_id == 6


@pytest.mark.parametrize(
    "name", ["Order Completed 2", "Order", "Product Viewed", "Completed Order"]
)
def test_unmapped_event_is_skipped(name: str) -> None:
    outcome = outcome_of(raw_event(name))
    assert (outcome.kind, outcome.reason, outcome.event) == (SKIPPED, UNMAPPED_EVENT, name)
    assert name in outcome.message


def test_warehouse_event_text_is_the_name() -> None:
    row = to_warehouse(raw_event("Subscription Started"))
    assert row["event"] == "subscription_started"
    conversion = conversion_of(row, "segment_shop-tracks")
    assert (conversion.event, conversion.event_id) == ("Subscription Started", 24)


def test_warehouse_event_slug_alone() -> None:
    row = to_warehouse(raw_event("Subscription Started"))
    del row["event_text"]
    conversion = conversion_of(row, "segment_shop-tracks")
    assert (conversion.event, conversion.event_id) == ("subscription_started", 24)


@pytest.mark.parametrize(
    ("stream", "event", "event_id"),
    [
        ("segment_shop-order_completed", "order_completed", 0),
        ("public-subscription_started", "subscription_started", 24),
        ("order_completed", "order_completed", 0),
        ("my-data-set-subscription_started", "subscription_started", 24),  # schema with dashes
        ("ORDER_COMPLETED", "ORDER_COMPLETED", 0),
    ],
)
@pytest.mark.parametrize("shape", ["raw", "warehouse"])
def test_stream_name_stands_for_a_missing_event(
    stream: str, event: str, event_id: int, shape: str
) -> None:
    record = SHAPES[shape](raw_event(None))
    assert "event" not in record and "event_text" not in record
    conversion = conversion_of(record, stream)
    assert (conversion.event, conversion.event_id) == (event, event_id)


@pytest.mark.parametrize("missing", ["", "   ", None, 42])
def test_blank_or_non_text_event_falls_back_to_the_stream(missing: t.Any) -> None:
    conversion = conversion_of(raw_event(missing), "segment_shop-order_completed")
    assert conversion.event == "order_completed"
    if missing is not None:
        outcome = outcome_of(raw_event(missing), "segment_archive")
        assert (outcome.reason, outcome.event) == (UNMAPPED_EVENT, "segment_archive")


def test_stream_of_an_unmapped_table_is_unmapped() -> None:
    outcome = outcome_of(to_warehouse(raw_event(None)), "segment_shop-product_viewed")
    assert (outcome.kind, outcome.reason, outcome.event) == (
        SKIPPED,
        UNMAPPED_EVENT,
        "product_viewed",
    )


# --- skip reasons -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call", ["identify", "page", "screen", "group", "alias", "Page", " IDENTIFY ", "batch"]
)
@pytest.mark.parametrize("shape", ["raw", "flat"])
def test_not_track(call: str, shape: str) -> None:
    record = SHAPES[shape](raw_event(properties={"transaction_id": TID}, type=call))
    outcome = outcome_of(record)
    assert (outcome.kind, outcome.reason) == (SKIPPED, NOT_TRACK)
    assert outcome.event == f"({call.strip().lower()})"


@pytest.mark.parametrize("call", ["track", "Track", "TRACK"])
def test_track_in_any_case(call: str) -> None:
    assert conversion_of(raw_event(type=call)).params == head()


def test_no_type_is_a_track() -> None:
    record = raw_event()
    del record["type"]
    assert conversion_of(record).params == head()


def test_a_warehouse_type_column_is_a_property_not_the_call() -> None:
    """properties.type lands un-prefixed in a `type` column of a warehouse row."""
    row = to_warehouse(raw_event(properties={"type": "page"}))
    assert row["type"] == "page"
    assert conversion_of(row, "segment_shop-order_completed").params == head()


def test_not_track_comes_before_the_event_mapping() -> None:
    outcome = outcome_of(raw_event("Unmapped Thing", type="identify"))
    assert outcome.reason == NOT_TRACK


def test_unmapped_comes_before_the_transaction_id() -> None:
    outcome = outcome_of(raw_event("Product Viewed", tid=None))
    assert outcome.reason == UNMAPPED_EVENT


@pytest.mark.parametrize("shape", list(SHAPES))
def test_no_transaction_id(shape: str) -> None:
    outcome = outcome_of(SHAPES[shape](raw_event(tid=None)))
    assert (outcome.kind, outcome.reason, outcome.field, outcome.event) == (
        SKIPPED, NO_TRANSACTION_ID, "transaction_id", "Order Completed",
    )  # fmt: skip


@pytest.mark.parametrize("referrer_type", ["everflow", "Everflow", "EVERFLOW", " everflow "])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_transaction_id_from_an_everflow_referrer(referrer_type: str, shape: str) -> None:
    raw = raw_event(tid=None, context={"referrer": {"type": referrer_type, "id": "ref-tid"}})
    assert conversion_of(SHAPES[shape](raw)).transaction_id == "ref-tid"


@pytest.mark.parametrize(
    "spelling", ["transaction_id", "transactionId", "TransactionID", "transaction-id"]
)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_transaction_id_from_properties(spelling: str, shape: str) -> None:
    raw = raw_event(tid=None, properties={spelling: "prop-tid"})
    conversion = conversion_of(SHAPES[shape](raw))
    assert conversion.transaction_id == "prop-tid"
    assert conversion.params[1] == ("transaction_id", "prop-tid")


def test_everflow_referrer_beats_the_property() -> None:
    raw = raw_event(tid="ref-tid", properties={"transaction_id": "prop-tid"})
    assert conversion_of(raw).transaction_id == "ref-tid"


@pytest.mark.parametrize("referrer_type", ["dataxu", "millennial-media", None, ""])
def test_another_partners_referrer_id_is_not_a_transaction_id(referrer_type: t.Any) -> None:
    context = {"referrer": {"type": referrer_type, "id": "their-id"}}
    assert outcome_of(raw_event(tid=None, context=context)).reason == NO_TRANSACTION_ID
    raw = raw_event(tid=None, context=context, properties={"transaction_id": "prop-tid"})
    assert conversion_of(raw).transaction_id == "prop-tid"


@pytest.mark.parametrize("ref_id", [None, "", "   "])
def test_everflow_referrer_without_an_id_falls_back_to_the_property(ref_id: t.Any) -> None:
    context = {"referrer": {"type": "everflow", "id": ref_id}}
    raw = raw_event(tid=None, context=context, properties={"transaction_id": "prop-tid"})
    assert conversion_of(raw).transaction_id == "prop-tid"
    assert outcome_of(raw_event(tid=None, context=context)).reason == NO_TRANSACTION_ID


@pytest.mark.parametrize("blank", ["", " ", "\t"])
def test_blank_transaction_id_property_is_no_transaction_id(blank: str) -> None:
    assert (
        outcome_of(raw_event(tid=None, properties={"transaction_id": blank})).reason
        == NO_TRANSACTION_ID
    )


def test_transaction_id_is_trimmed() -> None:
    assert conversion_of(raw_event(tid="  abc  ")).transaction_id == "abc"


@pytest.mark.parametrize(("value", "text"), [(12345, "12345"), (Decimal("12345"), "12345")])
def test_numeric_transaction_id(value: t.Any, text: str) -> None:
    conversion = conversion_of(raw_event(tid=None, properties={"transaction_id": value}))
    assert conversion.params[1] == ("transaction_id", text)


@pytest.mark.parametrize("value", [{"id": "x"}, ["x"], True])
def test_transaction_id_of_the_wrong_type_is_dead_lettered(value: t.Any) -> None:
    outcome = outcome_of(raw_event(tid=None, properties={"transaction_id": value}))
    assert (outcome.kind, outcome.reason, outcome.field) == (
        DEAD_LETTER,
        TYPE_MISMATCH,
        "transaction_id",
    )
    assert "transaction_id" in outcome.message


def test_a_record_that_is_not_an_object_is_invalid() -> None:
    outcome = outcome_of(["not", "an", "object"])
    assert (outcome.kind, outcome.reason) == (DEAD_LETTER, "invalid_record")


# --- required fields and type mismatches ------------------------------------------------------


def mobile_event(**context_changes: t.Any) -> dict:
    context = copy.deepcopy(MOBILE_BASE_CONTEXT)
    for key, value in context_changes.items():
        if value is MISSING:
            context.pop(key, None)
        else:
            context[key] = value
    return raw_event(context=context)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize(
    ("changes", "field", "path"),
    [
        ({"ip": MISSING}, "conversion_user_ip", "context.ip"),
        ({"ip": None}, "conversion_user_ip", "context.ip"),
        ({"ip": ""}, "conversion_user_ip", "context.ip"),
        ({"app": {"name": "Shop"}}, "app_id", "context.app.namespace"),
        ({"app": MISSING}, "app_id", "context.app.namespace"),
        ({"ip": MISSING, "app": MISSING}, "conversion_user_ip", "context.ip"),  # the first one
    ],
)
def test_mobile_missing_required_field(changes: dict, field: str, path: str, shape: str) -> None:
    outcome = outcome_of(SHAPES[shape](mobile_event(**changes)))
    assert (outcome.kind, outcome.reason, outcome.field) == (
        DEAD_LETTER,
        MISSING_REQUIRED_FIELD,
        field,
    )
    assert field in outcome.message and path in outcome.message and "mobile" in outcome.message
    assert outcome.event == "Order Completed"


def test_web_needs_no_ip_nor_app_id() -> None:
    conversion = conversion_of(raw_event(context={"library": {"name": "analytics.js"}}))
    assert conversion.params == head()


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ip": {"v4": "198.51.100.23"}}, "conversion_user_ip"),
        ({"ip": True}, "conversion_user_ip"),
        ({"app": {"namespace": ["com.example.shop"]}}, "app_id"),
        ({"app": {"namespace": False}}, "app_id"),
    ],
)
def test_required_field_of_the_wrong_type_is_dead_lettered(
    changes: dict, field: str, strict: bool
) -> None:
    outcome = outcome_of(mobile_event(**changes), strict_types=strict)
    assert (outcome.kind, outcome.reason, outcome.field) == (DEAD_LETTER, TYPE_MISMATCH, field)
    assert field in outcome.message


def test_required_field_coerced_losslessly() -> None:
    conversion = conversion_of(mobile_event(app={"namespace": 12345}))
    assert ("app_id", "12345") in conversion.params


# (where, value, parameter): optional fields whose value cannot be sent as the field's type
BAD_OPTIONAL = [
    ("properties", {"orderId": {"id": "ORD-2026-0042"}}, "order_id"),
    ("properties", {"orderId": True}, "order_id"),
    ("properties", {"currency": "euro"}, "currency"),
    ("properties", {"currency": 978}, "currency"),
    ("properties", {"affiliateId": "aff-7"}, "affiliate_id"),
    ("properties", {"total": "about ten"}, "amount"),
    ("properties", {"adv1": {"k": "v"}}, "adv1"),
    ("properties", {"coupon": True}, "coupon_code"),
    ("context", {"traits": {"email": ["a@b.example"]}}, "email"),
    ("context", {"userAgent": False}, "http_user_agent"),
    ("context", {"ip": {"v4": "203.0.113.7"}}, "conversion_user_ip"),  # optional on web
]


@pytest.mark.parametrize(("where", "value", "param"), BAD_OPTIONAL)
def test_optional_field_that_cannot_be_coerced_is_dropped(
    where: str, value: dict, param: str
) -> None:
    conversion = conversion_of(raw_event(**{where: value}))
    assert conversion.params == head()
    assert [p for p, _ in conversion.dropped] == [param]
    why = conversion.dropped[0][1]
    assert "cannot be sent as" in why


@pytest.mark.parametrize(("where", "value", "param"), BAD_OPTIONAL)
def test_optional_field_that_cannot_be_coerced_under_strict_types(
    where: str, value: dict, param: str
) -> None:
    raw = raw_event(**{where: value})
    outcome = outcome_of(raw, strict_types=True)
    assert (outcome.kind, outcome.reason, outcome.field) == (DEAD_LETTER, TYPE_MISMATCH, param)
    assert param in outcome.message


def test_the_other_fields_still_go_when_one_is_dropped() -> None:
    conversion = conversion_of(
        raw_event(
            context={"ip": "203.0.113.7"},
            properties={"orderId": ["ORD-1"], "coupon": 2026, "total": "41.00"},
        )
    )
    assert conversion.params == [
        *head(), ("conversion_user_ip", "203.0.113.7"), ("coupon_code", "2026"), ("amount", "41.00"),
    ]  # fmt: skip
    assert conversion.dropped == [
        ("order_id", "a list cannot be sent as an order id (text or a number)")
    ]


def test_every_dropped_field_is_accounted_in_order() -> None:
    conversion = conversion_of(
        raw_event(
            context={"traits": {"email": True}},
            properties={
                "adv2": [1],
                "orderId": {"x": 1},
                "products": [{"quantity": "two", "sku": "S"}, "not a product"],
                "total": "y",
            },
        )
    )
    assert [p for p, _ in conversion.dropped] == [
        "email", "adv2", "order_id", "order_line_items[0].quantity", "order_line_items[1]", "amount",
    ]  # fmt: skip
    assert conversion.params == [*head(), ("order_line_items", '[{"sku":"S"}]')]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("50314", "50314"),  # numeric string for a Number
        ("1e3", "1000"),
        (Decimal("1E+2"), "100"),
        (Decimal("76.0"), "76.0"),
        (0.1, "0.1"),
        (10**25, "10000000000000000000000000"),
    ],
)
def test_number_fields_are_plain_decimals_as_given(value: t.Any, text: str) -> None:
    conversion = conversion_of(raw_event(properties={"affiliateId": value}))
    assert conversion.params == [*head(), ("affiliate_id", text)]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("ORD-2026-0042", "ORD-2026-0042"),  # text, exactly as given
        ("007", "007"),  # never a number: no "007" -> 7
        (" 42 ", " 42 "),  # no trimming
        ("1e3", "1e3"),
        ("#1001", "#1001"),
        ("Ünïcødé ✓", "Ünïcødé ✓"),
        (1001, "1001"),  # a number as its JSON text, an integral one as its digits
        (1001.0, "1001"),
        (Decimal("1001.00"), "1001"),
        (Decimal("76.50"), "76.50"),
        (0.1, "0.1"),
        (-3, "-3"),
        (-0.0, "0"),
        (1e21, "1000000000000000000000"),  # never 1e+21
        (Decimal("1E+2"), "100"),
        (12345678901234567890, "12345678901234567890"),
        (10**25, "10000000000000000000000000"),
    ],
)
def test_order_id_is_text(value: t.Any, text: str) -> None:
    conversion = conversion_of(raw_event(properties={"orderId": value}))
    assert conversion.params == [*head(), ("order_id", text)]
    assert conversion.dropped == []
    assert conversion.ledger_metadata()["order_id"] == text


@pytest.mark.parametrize(("value", "text"), [("true", "true"), ("FALSE", "false"), (True, "true")])
def test_boolean_field_from_text(value: t.Any, text: str) -> None:
    conversion = conversion_of(mobile_event(device={"adTrackingEnabled": value}))
    expected = {"true": "false", "false": "true"}[text]  # limit_ad_tracking is the inverse
    assert ("limit_ad_tracking", expected) in conversion.params


def test_string_field_from_a_number() -> None:
    conversion = conversion_of(
        mobile_event(os={"version": Decimal("17.10")}, app={"namespace": "n", "version": 4})
    )
    params = dict(conversion.params)
    assert params["os_version"] == "17.10"
    assert params["app_version"] == "4"


def test_adv_fields_keep_their_own_type() -> None:
    conversion = conversion_of(
        raw_event(properties={"adv1": "true", "adv2": True, "adv3": "3", "adv4": 3})
    )
    assert conversion.params[len(head()) :] == [
        ("adv1", "true"),
        ("adv2", "true"),
        ("adv3", "3"),
        ("adv4", "3"),
    ]


# --- order_line_items -------------------------------------------------------------------------


def line_items(products: t.Any, **settings: t.Any) -> tuple[str | None, list[tuple[str, str]]]:
    conversion = conversion_of(raw_event(properties={"products": products}), **settings)
    return dict(conversion.params).get("order_line_items"), conversion.dropped


def test_products_as_a_json_string() -> None:
    text = '[{"sku":"SKU-1","name":"Kettle","quantity":1,"price":76.00}, {"quantity": 2.50}]'
    value, dropped = line_items(text)
    assert value == '[{"quantity":1,"name":"Kettle","sku":"SKU-1"},{"quantity":2.50}]'
    assert dropped == []


@pytest.mark.parametrize("text", ["not json", '[{"sku": "SKU-1"', "[1, 2", "{", "nul"])
def test_products_malformed_json_is_dropped(text: str) -> None:
    value, dropped = line_items(text)
    assert value is None
    assert [p for p, _ in dropped] == ["order_line_items"]
    assert "not valid JSON" in dropped[0][1]


@pytest.mark.parametrize(
    "products", [{"sku": "SKU-1"}, 5, Decimal("1.5"), True, '{"sku": "SKU-1"}', '"text"']
)
def test_products_not_a_list_is_dropped(products: t.Any) -> None:
    value, dropped = line_items(products)
    assert value is None
    assert [p for p, _ in dropped] == ["order_line_items"]
    assert "not a list" in dropped[0][1]


def test_products_malformed_under_strict_types() -> None:
    outcome = outcome_of(raw_event(properties={"products": "not json"}), strict_types=True)
    assert (outcome.reason, outcome.field) == (TYPE_MISMATCH, "order_line_items")


def test_product_keys_present_only_in_table_order() -> None:
    value, dropped = line_items(
        [
            {"sku": "A", "price": 3, "quantity": 1},  # no name
            {"name": "B only"},
            {"quantity": 4},
            {"SKU": "C", "Quantity": 2, "NAME": "Upper"},  # any spelling
            {"product_id": "no table key"},  # nothing to send for it
            {},
        ]
    )
    assert (
        value
        == '[{"quantity":1,"sku":"A"},{"name":"B only"},{"quantity":4},{"quantity":2,"name":"Upper","sku":"C"}]'
    )
    assert dropped == []


def test_product_that_is_not_an_object_is_dropped_alone() -> None:
    value, dropped = line_items([{"sku": "A"}, "B", None, {"sku": "D"}])
    assert value == '[{"sku":"A"},{"sku":"D"}]'
    assert [p for p, _ in dropped] == ["order_line_items[1]", "order_line_items[2]"]


def test_product_key_of_the_wrong_type_is_dropped_alone() -> None:
    value, dropped = line_items([{"quantity": "two", "name": "Uno", "sku": {"id": 1}}])
    assert value == '[{"name":"Uno"}]'
    assert [p for p, _ in dropped] == ["order_line_items[0].quantity", "order_line_items[0].sku"]


def test_product_key_of_the_wrong_type_under_strict_types() -> None:
    outcome = outcome_of(
        raw_event(properties={"products": [{"quantity": "two"}]}), strict_types=True
    )
    assert (outcome.kind, outcome.reason, outcome.field) == (
        DEAD_LETTER,
        TYPE_MISMATCH,
        "order_line_items[0].quantity",
    )


@pytest.mark.parametrize("products", [[], "[]", [{}], [{"price": 1}]])
def test_no_products_to_send_no_parameter(products: t.Any) -> None:
    value, dropped = line_items(products)
    assert value is None
    assert dropped == []


def test_product_values_are_typed_json() -> None:
    value, _ = line_items(
        [
            {"quantity": "3", "name": 123, "sku": 45790},
            {"quantity": Decimal("1.0"), "name": 'Say "hi" ✓ \\ /'},
        ]
    )
    assert (
        value
        == '[{"quantity":3,"name":"123","sku":"45790"},{"quantity":1.0,"name":"Say \\"hi\\" ✓ \\\\ /"}]'
    )
    assert json.loads(value) == [
        {"quantity": 3, "name": "123", "sku": "45790"},
        {"quantity": 1.0, "name": 'Say "hi" ✓ \\ /'},
    ]


@pytest.mark.parametrize("quantity", ["007", "1.", ".5", "+2", "1e2"])
def test_product_quantity_is_always_valid_json(quantity: str) -> None:
    value, dropped = line_items([{"quantity": quantity}])
    assert dropped == []
    assert value is not None
    assert json.loads(value) == [
        {"quantity": json.loads(str(Decimal(quantity)) if "e" not in quantity else "100")}
    ]


# --- amount -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "amount"),
    [
        ({"total": Decimal("27.50"), "revenue": Decimal("22.50")}, "27.50"),
        ({"revenue": Decimal("22.50")}, "22.50"),
        ({"total": None, "revenue": Decimal("22.50")}, "22.50"),
        ({"total": "", "revenue": "22.50"}, "22.50"),
        ({"total": 0, "revenue": 5}, "0"),  # a zero total is a total
        ({"value": Decimal("9.90")}, "9.90"),  # value, when total and revenue are absent
        ({"revenue": 5, "value": 7}, "5"),
        ({"total": 4, "revenue": 5, "value": 7}, "4"),
        ({"total": None, "revenue": "", "value": 7}, "7"),
        ({"revenue": 0, "value": 7}, "0"),
        ({}, None),
        ({"subtotal": 10, "price": 3}, None),
    ],
)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_amount_is_total_else_revenue_else_value(
    properties: dict, amount: str | None, shape: str
) -> None:
    conversion = conversion_of(SHAPES[shape](raw_event(properties=properties)))
    assert dict(conversion.params).get("amount") == amount


def test_a_total_that_is_not_a_number_is_dropped_not_replaced_by_revenue() -> None:
    conversion = conversion_of(raw_event(properties={"total": "n/a", "revenue": 5}))
    assert "amount" not in dict(conversion.params)
    assert [p for p, _ in conversion.dropped] == ["amount"]


def test_a_revenue_that_is_not_a_number_is_dropped_not_replaced_by_value() -> None:
    conversion = conversion_of(raw_event(properties={"revenue": "n/a", "value": 5}))
    assert "amount" not in dict(conversion.params)
    assert [p for p, _ in conversion.dropped] == ["amount"]


# --- currency ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "sent"), [("eur", "EUR"), ("EUR", "EUR"), ("Usd", "USD"), (None, None), ("", None)]
)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_currency_is_sent_upper_cased(currency: t.Any, sent: str | None, shape: str) -> None:
    raw = raw_event(properties={"total": 10, "currency": currency})
    conversion = conversion_of(SHAPES[shape](raw))
    assert dict(conversion.params).get("currency") == sent
    assert conversion.dropped == []
    assert conversion.currency == sent
    assert conversion.ledger_metadata()["currency"] == sent


def test_no_currency_in_the_record_no_parameter() -> None:
    conversion = conversion_of(raw_event(properties={"total": 10}))
    assert "currency" not in dict(conversion.params)
    assert conversion.ledger_metadata()["currency"] is None


@pytest.mark.parametrize("currency", ["euro", "€", "E U", 978, True, {"code": "EUR"}])
def test_a_currency_that_is_not_three_letters_is_left_out(currency: t.Any) -> None:
    conversion = conversion_of(raw_event(properties={"total": 10, "currency": currency}))
    assert conversion.params == [*head(), ("amount", "10")]
    assert [p for p, _ in conversion.dropped] == ["currency"]
    outcome = outcome_of(raw_event(properties={"currency": currency}), strict_types=True)
    assert (outcome.kind, outcome.reason, outcome.field) == (DEAD_LETTER, TYPE_MISMATCH, "currency")


def test_send_currency_false_sends_none() -> None:
    for currency in ("eur", "euro"):
        raw = raw_event(properties={"total": 10, "currency": currency})
        conversion = conversion_of(raw, send_currency=False)
        assert conversion.params == [*head(), ("amount", "10")]
        assert conversion.dropped == []
        assert conversion.currency is None
        assert isinstance(mapper(send_currency=False, strict_types=True).map(raw), Conversion)


def test_postback_url_currency_is_the_fixed_currency() -> None:
    """A one-currency shop's postback_url carries currency=EUR: a record's currency never
    overrides it (nor is it sent twice), and the ledger records the fixed one."""
    url = "https://track.example.com/?currency=eur"
    for currency in ("USD", "euro", None):
        raw = raw_event(properties={"total": 10, "currency": currency})
        conversion = conversion_of(raw, postback_url=url)
        assert conversion.params == [*head(), ("amount", "10")]
        assert conversion.dropped == []
        assert conversion.currency == "EUR"
        assert conversion.ledger_metadata()["currency"] == "EUR"


def test_a_fixed_currency_is_said_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        mapper(postback_url="https://track.example.com/?currency=EUR")
    assert "postback_url fixes currency=EUR for every postback" in caplog.text


# --- too_old: the conversion's age ------------------------------------------------------------

DATA_TIME = 1795198448  # TS


def aged_mapper(now: float, **overrides: t.Any) -> Mapper:
    settings = Settings.from_config({**BASE_SETTINGS, **overrides})
    return Mapper(dataclasses.replace(settings, clock=Clock(now)))


@pytest.mark.parametrize(
    ("days", "old"), [(120, True), (90.01, True), (90, False), (89, False), (0, False), (-3, False)]
)
def test_too_old_is_skipped_at_mapping(days: float, old: bool) -> None:
    result = aged_mapper(DATA_TIME + days * 86_400).map(raw_event(properties={"total": 5}))
    if old:
        assert isinstance(result, Outcome)
        assert (result.kind, result.reason, result.event) == (SKIPPED, TOO_OLD, "Order Completed")
        assert "max_conversion_age_days (90)" in result.message
    else:
        assert isinstance(result, Conversion)


def test_max_conversion_age_days_zero_turns_it_off() -> None:
    result = aged_mapper(DATA_TIME + 3 * 365 * 86_400, max_conversion_age_days=0).map(raw_event())
    assert isinstance(result, Conversion)


def test_max_conversion_age_days_is_a_setting() -> None:
    m = aged_mapper(DATA_TIME + 8 * 86_400, max_conversion_age_days=7)
    assert isinstance(m.map(raw_event()), Outcome)
    assert isinstance(m.map(raw_event(timestamp="2026-11-21T18:14:08Z")), Conversion)


@pytest.mark.parametrize("timestamp", [None, "yesterday", "", {"at": 1}])
def test_an_event_without_a_usable_time_is_never_too_old(timestamp: t.Any) -> None:
    result = aged_mapper(DATA_TIME + 3 * 365 * 86_400).map(raw_event(timestamp=timestamp))
    assert isinstance(result, Conversion)


def test_too_old_whatever_the_time_field_and_shape() -> None:
    m = aged_mapper(DATA_TIME + 120 * 86_400, send_timestamp=False)
    for shape, make in SHAPES.items():
        raw = raw_event(timestamp=None, receivedAt=TS)
        result = m.map(make(raw), STREAMS[shape])
        assert isinstance(result, Outcome) and result.reason == TOO_OLD, shape


def test_too_old_comes_after_the_event_mapping_and_the_transaction_id() -> None:
    m = aged_mapper(DATA_TIME + 120 * 86_400)
    assert t.cast(Outcome, m.map(raw_event("Product Viewed"))).reason == UNMAPPED_EVENT
    assert t.cast(Outcome, m.map(raw_event(tid=None))).reason == NO_TRANSACTION_ID
    # before the fields: an old event is not dead-lettered for a field it lacks
    old_mobile = raw_event(context={"os": {"name": "iOS"}})
    assert t.cast(Outcome, m.map(old_mobile)).reason == TOO_OLD


def test_the_clock_is_read_per_record() -> None:
    """A streaming run lasts weeks: the same mapper judges each record against the time it is
    mapped at, not the time the run started."""
    now = [float(DATA_TIME)]

    class Ticking(Clock):
        def now(self) -> float:
            return now[0]

    settings = Settings.from_config(BASE_SETTINGS)
    m = Mapper(dataclasses.replace(settings, clock=Ticking()))
    assert isinstance(m.map(raw_event()), Conversion)
    now[0] += 91 * 86_400
    assert t.cast(Outcome, m.map(raw_event())).reason == TOO_OLD


# --- timestamp --------------------------------------------------------------------------------

T1, T2, T3, T4 = (
    "2026-11-01T00:00:01Z",
    "2026-11-01T00:00:02Z",
    "2026-11-01T00:00:03Z",
    "2026-11-01T00:00:04Z",
)
U = 1793491200  # 2026-11-01T00:00:00Z


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"timestamp": T1, "originalTimestamp": T2, "receivedAt": T3, "sentAt": T4}, U + 1),
        ({"originalTimestamp": T2, "receivedAt": T3, "sentAt": T4}, U + 2),
        ({"receivedAt": T3, "sentAt": T4}, U + 3),
        ({"sentAt": T4}, U + 4),
        ({"sentAt": T4, "receivedAt": T3}, U + 3),  # precedence, not key order
        ({"timestamp": None, "originalTimestamp": T2}, U + 2),
        ({"timestamp": "", "receivedAt": T3}, U + 3),
    ],
)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_timestamp_precedence(fields: dict, expected: int, shape: str) -> None:
    raw = raw_event(**{"timestamp": None, **fields})
    conversion = conversion_of(SHAPES[shape](raw))
    assert dict(conversion.params)["timestamp"] == str(expected)


def test_warehouse_timestamp_columns() -> None:
    row = to_warehouse(raw_event(timestamp=None, originalTimestamp=T2, receivedAt=T3))
    assert "original_timestamp" in row and "received_at" in row
    assert dict(conversion_of(row).params)["timestamp"] == str(U + 2)


def test_no_time_no_timestamp() -> None:
    conversion = conversion_of(raw_event(timestamp=None))
    assert "timestamp" not in dict(conversion.params)
    assert conversion.dropped == []


def test_send_timestamp_false() -> None:
    conversion = conversion_of(raw_event(), send_timestamp=False)
    assert conversion.params == [("nid", "1"), ("transaction_id", TID), ("aid", "7")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-01T00:00:00Z", U),
        ("2026-11-01T00:00:00z", U),
        ("2026-11-01T00:00:00+00:00", U),
        ("2026-11-01T00:00:00.000Z", U),
        ("2026-11-01T00:00:00.999Z", U),  # fractional seconds are cut, not rounded
        ("2026-11-01T00:00:00.5Z", U),
        ("2026-11-01T00:00:00.1234567Z", U),  # 7 fraction digits (.NET)
        ("2026-11-01T00:00:00.123456789+00:00", U),  # 9 fraction digits
        ("2026-10-31T20:00:00-0400", U),  # offset without a colon
        ("2026-10-31T20:00:00.250-0400", U),
        ("2026-10-31T20:00:00-04:00", U),
        ("2026-11-01T05:30:00+05:30", U),
        ("2026-11-01T05:30:00+0530", U),
        ("2026-11-01 00:00:00", U),  # no zone: UTC
        ("2026-11-01T00:00:00", U),
        (" 2026-11-01T00:00:00Z ", U),
        (datetime(2026, 11, 1, tzinfo=timezone.utc), U),
        (datetime(2026, 11, 1), U),  # naive: UTC
        (datetime(2026, 10, 31, 19, 0, tzinfo=timezone(timedelta(hours=-5))), U),
        (datetime(2026, 11, 1, 0, 0, 0, 999999, tzinfo=timezone.utc), U),
        (U, U),  # epoch seconds
        (U * 1000 + 999, U),  # epoch milliseconds
        (Decimal("1793491200.75"), U),
    ],
)
def test_timestamp_formats(value: t.Any, expected: int) -> None:
    assert event_time(value) == expected
    conversion = conversion_of(raw_event(timestamp=value))
    assert dict(conversion.params)["timestamp"] == str(expected)


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2026-13-01T00:00:00Z", "2026-11-01T25:00:00Z", True, {"at": 1}, ["2026"],
     float("nan"), float("inf"), Decimal("Infinity"), 10**400, "9999999-01-01"],
)  # fmt: skip
def test_unparseable_timestamp(value: t.Any) -> None:
    with pytest.raises(Mismatch):
        event_time(value)
    conversion = conversion_of(raw_event(timestamp=value))
    assert "timestamp" not in dict(conversion.params)
    assert [p for p, _ in conversion.dropped] == ["timestamp"]
    outcome = outcome_of(raw_event(timestamp=value), strict_types=True)
    assert (outcome.kind, outcome.reason, outcome.field) == (
        DEAD_LETTER,
        TYPE_MISMATCH,
        "timestamp",
    )


def test_unparseable_timestamp_not_sent_does_not_matter() -> None:
    for strict in (False, True):
        conversion = conversion_of(
            raw_event(timestamp="yesterday"), send_timestamp=False, strict_types=strict
        )
        assert conversion.dropped == []
        assert "timestamp" not in dict(conversion.params)


def test_a_bad_timestamp_does_not_fall_back_to_the_next_field() -> None:
    conversion = conversion_of(raw_event(timestamp="yesterday", receivedAt=T3))
    assert "timestamp" not in dict(conversion.params)


# --- mobile-only derived fields ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "expected", "dropped"),
    [
        ({"wifi": True, "cellular": False}, "wifi", []),
        ({"wifi": True, "cellular": True}, "wifi", []),
        ({"wifi": False, "cellular": True}, "cellular", []),
        ({"cellular": True}, "cellular", []),
        ({"wifi": None, "cellular": True}, "cellular", []),
        ({"wifi": "true"}, "wifi", []),
        ({"wifi": "FALSE", "cellular": "True"}, "cellular", []),
        ({"wifi": False, "cellular": False}, None, []),
        ({"wifi": False}, None, []),
        ({"carrier": "T-Mobile"}, None, []),
        ({"wifi": "sometimes"}, None, ["connection_type"]),
        ({"wifi": 1}, None, ["connection_type"]),
    ],
)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_connection_type(
    network: dict, expected: str | None, dropped: list[str], shape: str
) -> None:
    conversion = conversion_of(SHAPES[shape](mobile_event(network=network)))
    assert dict(conversion.params).get("connection_type") == expected
    assert [p for p, _ in conversion.dropped] == dropped


@pytest.mark.parametrize(
    ("enabled", "expected", "dropped"),
    [
        (True, "false", []),
        (False, "true", []),
        ("true", "false", []),
        ("False", "true", []),
        (None, None, []),
        ("yes", None, ["limit_ad_tracking"]),
        (0, None, ["limit_ad_tracking"]),
    ],
)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_limit_ad_tracking_is_the_inverse(
    enabled: t.Any, expected: str | None, dropped: list[str], shape: str
) -> None:
    conversion = conversion_of(SHAPES[shape](mobile_event(device={"adTrackingEnabled": enabled})))
    assert dict(conversion.params).get("limit_ad_tracking") == expected
    assert [p for p, _ in conversion.dropped] == dropped


def test_derived_field_mismatch_under_strict_types() -> None:
    outcome = outcome_of(mobile_event(device={"adTrackingEnabled": "yes"}), strict_types=True)
    assert (outcome.reason, outcome.field) == (TYPE_MISMATCH, "limit_ad_tracking")


def test_mobile_only_fields_are_not_sent_for_web() -> None:
    context = {**copy.deepcopy(MOBILE_CONTEXT), "library": {"name": "analytics.js"}}
    context["os"] = {"name": "Mac OS X", "version": "14.1"}
    context["device"] = {**context["device"], "type": "desktop"}
    conversion = conversion_of(raw_event(context=context))
    assert conversion.platform == "web"
    assert conversion.params == [
        *head(),
        ("conversion_user_ip", "198.51.100.23"),
        ("http_user_agent", "Shop/420 CFNetwork/1410.0.3 Darwin/22.6.0"),
        ("email", "sam@example.com"),
    ]


# --- platform ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "platform"),
    [
        ({"os": {"name": "iOS"}}, "mobile"),
        ({"os": {"name": "iPadOS"}}, "mobile"),
        ({"os": {"name": "Android"}}, "mobile"),
        ({"os": {"name": "ANDROID"}}, "mobile"),
        ({"device": {"type": "ios"}}, "mobile"),
        ({"device": {"type": "android"}}, "mobile"),
        ({"device": {"type": "Android"}}, "mobile"),
        ({"library": {"name": "analytics-ios"}}, "mobile"),
        ({"library": {"name": "analytics-android"}}, "mobile"),
        ({"library": {"name": "analytics-swift"}}, "mobile"),
        ({"library": {"name": "analytics-kotlin"}}, "mobile"),
        ({"library": {"name": "analytics-react-native"}}, "mobile"),
        ({"library": {"name": "analytics-flutter"}}, "mobile"),
        ({"library": {"name": "analytics.js"}}, "web"),
        ({"library": {"name": "analytics-node"}}, "web"),
        ({"library": {"name": "analytics-python"}}, "web"),
        ({"os": {"name": "Mac OS X"}}, "web"),
        ({"os": {"name": "Windows"}}, "web"),
        ({"device": {"type": "desktop"}}, "web"),
        (
            {"userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X)"},
            "web",
        ),  # not sniffed
        ({}, "web"),
    ],
)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_platform_auto(context: dict, platform: str, shape: str) -> None:
    context = {**context, "ip": "198.51.100.23", "app": {"namespace": "com.example.shop"}}
    conversion = conversion_of(SHAPES[shape](raw_event(context=context)))
    assert conversion.platform == platform
    assert ("app_id" in dict(conversion.params)) is (platform == "mobile")


def test_platform_web_setting_ignores_mobile_context() -> None:
    conversion = conversion_of(raw_event(context=MOBILE_CONTEXT), platform="web")
    assert conversion.platform == "web"
    assert [name for name, _ in conversion.params] == [
        "nid", "transaction_id", "aid", "timestamp", "conversion_user_ip", "http_user_agent", "email",
    ]  # fmt: skip


def test_platform_web_setting_needs_no_required_fields() -> None:
    conversion = conversion_of(raw_event(context={"os": {"name": "iOS"}}), platform="web")
    assert conversion.params == head()


def test_platform_mobile_setting_makes_every_event_mobile() -> None:
    outcome = outcome_of(
        raw_event(context={"ip": "203.0.113.7", "library": {"name": "analytics.js"}}),
        platform="mobile",
    )
    assert (outcome.reason, outcome.field) == (MISSING_REQUIRED_FIELD, "app_id")
    conversion = conversion_of(
        raw_event(
            context={
                "ip": "203.0.113.7",
                "app": {"namespace": "n"},
                "library": {"name": "analytics.js"},
            }
        ),
        platform="mobile",
    )
    assert conversion.platform == "mobile"
    assert dict(conversion.params)["app_id"] == "n"


# --- delivery key -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
def test_key_is_the_message_id(shape: str) -> None:
    conversion = conversion_of(SHAPES[shape](raw_event(message_id="ajs-42")))
    assert conversion.key == "m:ajs-42"
    assert conversion.message_id == "ajs-42"


def test_warehouse_id_is_the_message_id() -> None:
    row = to_warehouse(raw_event(message_id="wh-101"))
    assert row["id"] == "wh-101"
    conversion = conversion_of(row)
    assert (conversion.key, conversion.message_id) == ("m:wh-101", "wh-101")


def test_message_id_beats_id() -> None:
    conversion = conversion_of(raw_event(message_id="mid", id="other"))
    assert conversion.key == "m:mid"


def key_of(*, tid: str = TID, event: str = "Order Completed", order_id: t.Any = 50314, timestamp: t.Any = TS,
           shape: str = "raw", **extra: t.Any) -> str:  # fmt: skip
    properties = {} if order_id is None else {"orderId": order_id}
    raw = raw_event(
        event, tid=tid, message_id=None, timestamp=timestamp, properties=properties, **extra
    )
    conversion = conversion_of(SHAPES[shape](raw))
    assert conversion.message_id is None
    return conversion.key


def test_key_without_a_message_id_is_a_stable_hash() -> None:
    key = key_of()
    assert re.fullmatch(r"h:[0-9a-f]{32}", key)
    assert key_of() == key  # stable across calls
    assert key_of(shape="warehouse") == key  # and across shapes
    assert key_of(shape="flat") == key
    # the fields that do not identify the conversion do not change it
    assert key_of(context={"ip": "192.0.2.1"}, userId="someone-else") == key


@pytest.mark.parametrize(
    "change",
    [
        {"tid": "another-transaction"},
        {"event": "Subscription Started"},  # another event id
        {"order_id": 50315},
        {"order_id": None},
        {"timestamp": "2026-11-20T18:14:09.000Z"},
        {"timestamp": None},
    ],
)
def test_key_hash_is_sensitive_to_its_inputs(change: dict) -> None:
    assert key_of(**change) != key_of()


def test_same_message_twice_has_the_same_key() -> None:
    first = conversion_of(raw_event(message_id="dup"))
    second = conversion_of(raw_event(message_id="dup", properties={"total": 1}))
    assert first.key == second.key


# --- the mapper never raises ------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"type": None},
        {"type": 5, "event": "Order Completed"},
        {"event": ["Order Completed"]},
        {"event": "Order Completed", "context": "{not json", "properties": "[1,2]"},
        {
            "event": "Order Completed",
            "properties": {"transaction_id": "t", "products": [[], {}, 3]},
        },
        {
            "event": "Order Completed",
            "context": {"referrer": "everflow"},
            "properties": {"transaction_id": "t"},
        },
        {"event": "Order Completed", "context": {"referrer": {"type": ["everflow"], "id": "x"}}},
        {"event": "Order Completed", "properties": {"transaction_id": "t"}, "timestamp": {"x": 1}},
        {"event": "Order Completed", "properties": {"transaction_id": "t", "orderId": 10**5000}},
        {
            "event": "Order Completed",
            "properties": {"transaction_id": "t"},
            "context": {"traits": {"email": 10**5000}},
        },
        {
            "event": "Order Completed",
            "properties": {"transaction_id": "t", "total": Decimal("1E+999999999")},
        },
        {"event": "Order Completed", "properties": {"transaction_id": "t", "adv1": "\ud800"}},
        {"event": "Order Completed", "properties": {"transaction_id": "t", 5: "non-string key"}},
    ],
)
def test_map_never_raises(record: dict) -> None:
    for settings in ({}, {"strict_types": True}, {"platform": "mobile"}):
        result = mapper(**settings).map(record, "segment_shop-order_completed")
        assert isinstance(result, (Conversion, Outcome))
        if isinstance(result, Conversion):
            assert_wellformed(result)


def test_product_keys_in_any_spelling_each_product_on_its_own() -> None:
    """Products of one list may spell their keys differently (obj-case); each product is read
    by its own keys (of two spellings of one key, the first one counts, as for a record)."""
    value, dropped = line_items(
        [
            {"Quantity": 2, "SKU": "A-1", "product_name": "x", "Name": "Kettle"},
            {"quantity": None, "qty": 3, "Sku": "B-2", "sku": "", "name": "Cups"},
            {"QUANTITY": "4", "sku": "C-3", "name": None},
        ]
    )
    assert value == (
        '[{"quantity":2,"name":"Kettle","sku":"A-1"},{"name":"Cups","sku":"B-2"},'
        '{"quantity":4,"sku":"C-3"}]'
    )
    assert dropped == []


def test_one_mapper_reads_each_record_by_its_own_keys_whatever_came_before() -> None:
    """Plans are compiled per record shape (its keys and those of its top-level objects): a
    record whose ``properties`` hold a field the previous ones lacked still sends it, and one
    that keeps ``properties`` as JSON text is parsed."""
    m = mapper()
    plain = raw_event(properties={"orderId": 5})
    with_adv = raw_event(properties={"orderId": 5, "adv1": "x"})
    as_text = raw_event()
    as_text["properties"] = '{"orderId": 6, "adv2": "y", "transaction_id": "' + TID + '"}'
    renamed = raw_event(properties={"order_id": 7, "ADV3": "z"})
    sent = []
    for record in (plain, with_adv, plain, as_text, renamed, with_adv):
        result = m.map(record, "segment_archive")
        assert isinstance(result, Conversion), result
        params = dict(result.params)
        sent.append((params.get("order_id"), params.get("adv1"), params.get("adv2"),
                     params.get("adv3")))  # fmt: skip
    assert sent == [
        ("5", None, None, None),
        ("5", "x", None, None),
        ("5", None, None, None),
        ("6", None, "y", None),
        ("7", None, None, "z"),
        ("5", "x", None, None),
    ]
