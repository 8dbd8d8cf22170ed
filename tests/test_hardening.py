"""Bad input, abused on purpose: property-based tests of the normaliser and the mapper, and the
nasty values a real Segment source produces sooner or later.

Property-based (hypothesis): arbitrary JSON and Segment-like records with a random type in every
mapped field (in the three record shapes) never make the normaliser or the mapper raise; every
record gets exactly one outcome; every parameter the mapper emits has a type the field table
allows for it. The examples are derandomized (the same every run: the suite never flakes);
``TARGET_EVERFLOW_HYPOTHESIS=explore`` draws fresh random examples, many more of them.

Nasty values: 1 MB strings, deep nesting, NaN/Infinity, non-UTF-8 bytes, huge integers, negative
and zero amounts, unicode in emails and coupon codes, ``products`` that is not a list or is broken
JSON, ``context.referrer`` that is a string. Each either goes through as documented or ends as a
dropped field / dead letter / skip that names the record and the field; the other records of the
run are unaffected. docs/hardening.md lists what happens to each.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import typing as t
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import simplejson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target_everflow.fields import FIELDS, MAX_VALUE_LENGTH, FieldType, Mismatch, coerce
from target_everflow.mapping import (
    Conversion,
    Mapper,
)
from target_everflow.outcomes import (
    DEAD_LETTER,
    DUPLICATE,
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
from target_everflow.records import MISSING, SegmentEvent, compile_path
from target_everflow.settings import Settings
from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    dead_letter_records,
    read_jsonl,
    run_in_process,
    singer_lines,
    track,
)
from tests.receiver import Receiver
from tests.test_mapping import (
    ALLOWED_PARAMS,
    ORDER,
    assert_builder_matches_table,
    set_path,
    to_flat,
    to_warehouse,
)

EXPLORE = os.environ.get("TARGET_EVERFLOW_HYPOTHESIS") == "explore"
PROPERTIES = settings(
    max_examples=5000 if EXPLORE else 300,
    derandomize=not EXPLORE,
    database=None,
    deadline=None,  # a shared, noisy machine: no per-example time limit
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEGMENT_LIKE = settings(PROPERTIES, max_examples=5000 if EXPLORE else 200)  # slower to draw
RUNS = settings(PROPERTIES, max_examples=300 if EXPLORE else 25)

# --- what JSON can hold -------------------------------------------------------------------------

TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from([
        "", " ", "\t", "true", "FALSE", "null", "NaN", "-Infinity", "1e5", "1E-7", "007", "1.",
        ".5", "+5", "-0", "0.10", "12abc", "٣", "１２", "0x1F", "[1, 2]", '{"a": 1}', "[{",
        "jürgen+vip@exämple.com", "ÉTÉ-20%", "优惠券", "🎉&=?#", "\x00", "a\nb", "\ud800",
    ]),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Zs", "So"]), max_size=4),
)  # fmt: skip
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**130), max_value=10**130),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            Decimal("NaN"),
            Decimal("Infinity"),
            Decimal("-0.00"),
            Decimal("1E+400"),
            Decimal("1E-400"),
        ]
    ),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
JSON_OBJECTS = st.dictionaries(TEXT, JSON_VALUES, max_size=6)

# --- Segment-like records -----------------------------------------------------------------------

MAPPING = {"Order Completed": 0, "Subscription Started": 24}
TABLE_PATHS = sorted(
    {f.segment for f in FIELDS if not f.is_list_item} | {p for f in FIELDS for p in f.fallback}
)
IDENTITY_PATHS = [
    "type", "event", "messageId", "timestamp", "originalTimestamp", "context.referrer.type",
    "context.referrer.id", "properties.transaction_id", "context.device.type", "context.library.name",
]  # fmt: skip
GOOD: dict[str, st.SearchStrategy[t.Any]] = {
    "type": st.sampled_from(["track", "TRACK", "identify", "page", "Track "]),
    "event": st.sampled_from(["Order Completed", "order_completed", "Subscription Started", "Product Viewed", ""]),
    "messageId": st.text(min_size=1, max_size=10) | st.integers(),
    "timestamp": st.sampled_from(["2026-11-20T18:14:08.612Z", "2013-12-17T15:38:32-0400", 1795198448, 1795198448612]),
    "context.referrer.type": st.sampled_from(["everflow", "EVERFLOW", "impact", ""]),
    "context.referrer.id": st.text(min_size=1, max_size=10),
    "properties.transaction_id": st.text(max_size=10) | st.integers(),
    "context.os.name": st.sampled_from(["iOS", "Android", "Mac OS X"]),
    "context.device.type": st.sampled_from(["ios", "android", "desktop"]),
    "context.library.name": st.sampled_from(["analytics.js", "analytics-ios", "analytics-kotlin"]),
    "context.device.adTrackingEnabled": st.booleans() | st.sampled_from(["true", "False"]),
    "context.network.wifi": st.booleans(),
    "context.network.cellular": st.booleans(),
    "context.ip": st.sampled_from(["203.0.113.7", "2001:db8::1"]),
    "context.app.namespace": st.sampled_from(["com.example.shop"]),
    "properties.total": NUMBERS | st.sampled_from(["27.50", "-5", "0"]),
    "properties.revenue": NUMBERS,
    "properties.orderId": st.integers() | st.sampled_from(["50314", "ORD-42"]),
}  # fmt: skip
PRODUCT = st.dictionaries(
    st.sampled_from(["quantity", "name", "sku", "Quantity", "SKU", "price"]),
    JSON_VALUES,
    max_size=4,
)


def jdumps(value: t.Any) -> str:
    """JSON text as a tap writes it (Python's json writes NaN as NaN)."""
    return simplejson.dumps(value, use_decimal=True, allow_nan=True)


@st.composite
def products(draw: st.DrawFn) -> t.Any:
    """properties.products: a list of products, the JSON text of one, broken JSON, or anything."""
    items = draw(st.lists(PRODUCT | JSON_VALUES, max_size=3))
    kind = draw(st.sampled_from(["list", "json_text", "broken_json", "anything"]))
    if kind == "list":
        return items
    if kind == "json_text":
        return jdumps(items)
    if kind == "broken_json":
        return jdumps(items)[:-1] or "["
    return draw(JSON_VALUES)


@st.composite
def segment_like(draw: st.DrawFn) -> tuple[dict, str]:
    """A Segment-like track event (raw, warehouse or tap-flattened) with random values, and its
    stream. Every mapped field is absent, a plausible value or any JSON value at all."""
    raw: dict[str, t.Any] = {}
    for path in [*IDENTITY_PATHS, *TABLE_PATHS]:
        choice = draw(st.sampled_from(["absent", "good", "any"]))
        if choice == "absent" or (choice == "good" and path not in GOOD):
            continue
        set_path(raw, path, draw(GOOD[path] if choice == "good" else JSON_VALUES))
    if draw(st.booleans()):
        set_path(raw, "properties.products", draw(products()))
    # Sometimes a whole container is something else: a string referrer, a list of properties...
    for container in ("context.referrer", "context.traits", "context.app", "properties", "context"):
        if draw(st.integers(0, 9)) == 0:
            set_path(raw, container, draw(JSON_VALUES))
    shape = draw(st.sampled_from(["raw", "warehouse", "flat"]))
    dict_containers = isinstance(raw.get("context", {}), dict) and isinstance(
        raw.get("properties", {}), dict
    )
    try:  # (the shape builders write nested lists as JSON text, which cannot hold a NaN)
        if shape == "warehouse" and dict_containers and isinstance(raw.get("event", ""), str):
            return to_warehouse(raw), "segment_shop-order_completed"
        if shape == "flat":
            return to_flat(raw), "segment_flat"
    except ValueError:
        pass
    return raw, "segment_archive"


SETTINGS = st.fixed_dictionaries({
    "strict_types": st.booleans(),
    "platform": st.sampled_from(["auto", "web", "mobile"]),
    "send_timestamp": st.booleans(),
})  # fmt: skip


def mapper_with(changes: dict) -> Mapper:
    return Mapper(Settings.from_config({"dry_run": True, "network_id": 1, "advertiser_id": 7,
                                        "event_mapping": MAPPING, **changes}))  # fmt: skip


# --- what a well-formed result is ---------------------------------------------------------------

NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?", re.ASCII)
INTEGER_TEXT = re.compile(r"-?[0-9]+", re.ASCII)
FIELD_TYPES: dict[str, tuple[FieldType, ...]] = {
    f.param: f.types for f in FIELDS if not f.is_list_item
}
ITEM_TYPES = {f.param.split("[i].")[1]: f.types for f in FIELDS if f.is_list_item}
OUTCOMES = {
    SKIPPED: {NOT_TRACK, UNMAPPED_EVENT, NO_TRANSACTION_ID, DUPLICATE, TOO_OLD},
    DEAD_LETTER: {MISSING_REQUIRED_FIELD, TYPE_MISMATCH, INVALID_RECORD},
}


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def value_fits(value: str, types: tuple[FieldType, ...]) -> bool:
    """The query-string text fits one of the Everflow types the table allows."""
    if FieldType.STRING in types and len(value) <= MAX_VALUE_LENGTH and is_utf8(value):
        return True
    if FieldType.NUMBER in types and NUMBER_TEXT.fullmatch(value) and len(value) <= 102:
        return True
    return FieldType.BOOLEAN in types and value in {"true", "false"}


def item_fits(value: t.Any, types: tuple[FieldType, ...]) -> bool:
    if (
        FieldType.NUMBER in types
        and isinstance(value, (int, Decimal))
        and not isinstance(value, bool)
    ):
        return True
    return FieldType.STRING in types and isinstance(value, str) and len(value) <= MAX_VALUE_LENGTH


def assert_well_formed(result: Conversion | Outcome, record: t.Any) -> None:
    """Exactly one outcome, of a known kind; a conversion's every parameter of an allowed type."""
    if isinstance(result, Outcome):
        assert result.reason in OUTCOMES.get(result.kind, set()), result
        assert isinstance(result.message, str) and result.message
        if result.reason in (MISSING_REQUIRED_FIELD, TYPE_MISMATCH):  # names the field
            assert isinstance(result.field, str) and result.field, result
            assert result.field in result.message, result
        return
    assert isinstance(result, Conversion), result
    names = [name for name, _ in result.params]
    assert len(names) == len(set(names)), names
    assert set(names) <= ALLOWED_PARAMS
    assert names == sorted(names, key=ORDER.index)
    params = dict(result.params)
    assert all(isinstance(v, str) and v != "" for v in params.values()), params
    assert params["nid"] == "1" and params["aid"] == "7"
    tid = params["transaction_id"]
    assert tid == tid.strip() and tid and len(tid) <= MAX_VALUE_LENGTH and is_utf8(tid)
    assert params.get("adv_event_id", "24") == "24"
    if "timestamp" in params:
        assert INTEGER_TEXT.fullmatch(params["timestamp"]), params["timestamp"]
    for name, value in params.items():
        if name in FIELD_TYPES:
            assert value_fits(value, FIELD_TYPES[name]), (name, value[:80])
    assert params.get("connection_type", "wifi") in {"wifi", "cellular"}
    if "order_line_items" in params:
        items = json.loads(params["order_line_items"], parse_float=Decimal)
        assert isinstance(items, list) and items
        for item in items:
            assert isinstance(item, dict) and item
            assert list(item) == [k for k in ITEM_TYPES if k in item], item
            for key, value in item.items():
                assert item_fits(value, ITEM_TYPES[key]), (key, value)
    # The delivery key is bounded and storable in any ledger (PostgreSQL: no NUL, valid UTF-8).
    assert isinstance(result.key, str) and 2 < len(result.key) <= 300
    assert is_utf8(result.key) and "\x00" not in result.key
    assert result.record is record
    for param, why in result.dropped:
        assert isinstance(param, str) and isinstance(why, str) and why


# --- the normaliser -----------------------------------------------------------------------------

LOOKUP_PATHS = [*TABLE_PATHS, *IDENTITY_PATHS, "properties.products", "event_text", "id"]


@PROPERTIES
@given(record=JSON_OBJECTS, path=st.sampled_from(LOOKUP_PATHS) | st.text(min_size=1, max_size=20))
def test_normaliser_never_raises_and_never_returns_an_absent_value(record: dict, path: str) -> None:
    found = SegmentEvent(record, "stream").get(path)
    assert found is MISSING or (found is not None and found != "")


@SEGMENT_LIKE
@given(record=segment_like(), path=st.sampled_from(LOOKUP_PATHS))
def test_normaliser_on_segment_like_records(record: tuple[dict, str], path: str) -> None:
    found = SegmentEvent(record[0], record[1]).get(compile_path(path))
    assert found is MISSING or (found is not None and found != "")


@PROPERTIES
@given(value=JSON_VALUES, types=st.sampled_from(sorted({f.types for f in FIELDS}, key=str)))
def test_coercion_gives_an_allowed_type_or_a_mismatch(
    value: t.Any, types: tuple[FieldType, ...]
) -> None:
    try:
        coerced = coerce(value, types)
    except Mismatch as exc:
        assert str(exc)
        return
    if isinstance(coerced, bool):
        assert FieldType.BOOLEAN in types
    else:
        assert value_fits(str(coerced), types), (value, coerced)


# --- the mapper ---------------------------------------------------------------------------------


@PROPERTIES
@given(record=JSON_VALUES | JSON_OBJECTS, changes=SETTINGS)
def test_mapper_never_raises_on_arbitrary_json(record: t.Any, changes: dict) -> None:
    result = mapper_with(changes).map(record, "segment_archive")
    assert_well_formed(result, record)


@SEGMENT_LIKE
@given(record=segment_like(), changes=SETTINGS)
def test_mapper_never_raises_on_segment_like_records(
    record: tuple[dict, str], changes: dict
) -> None:
    data, stream = record
    before = copy.deepcopy(data) if _deepcopyable(data) else None
    result = mapper_with(changes).map(data, stream)
    assert_well_formed(result, data)
    if before is not None:
        assert _same(data, before), "the mapper changed the record"


@SEGMENT_LIKE
@given(record=segment_like(), changes=SETTINGS)
def test_generated_parameter_builders_match_the_table_on_segment_like_records(
    record: tuple[dict, str], changes: dict
) -> None:
    """The builder generated per (record shape, platform) from the field table gives what the
    table-driven walk gives: the same parameters, dropped fields and failure."""
    data, stream = record
    assert_builder_matches_table(mapper_with(changes), data, stream)


def _deepcopyable(value: t.Any) -> bool:
    return not _has_nan(value)


def _has_nan(value: t.Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, Decimal):
        return value.is_nan()
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


def _same(a: t.Any, b: t.Any) -> bool:
    return jdumps(a) == jdumps(b)


@RUNS
@given(records=st.lists(segment_like(), min_size=1, max_size=8), changes=SETTINGS)
def test_every_record_of_a_run_has_exactly_one_outcome(
    records: list[tuple[dict, str]], changes: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Through the whole target (dry run, in process): records read = outcomes counted; each
    dead letter is in the file once; each planned postback is in the dry-run output once."""
    tmp = tmp_path_factory.mktemp("run")
    config = {
        "dry_run": True, "network_id": 1, "advertiser_id": 7, "event_mapping": MAPPING,
        "dead_letter_path": str(tmp / "dl.jsonl"), "dry_run_output": str(tmp / "dry.jsonl"),
        "summary_path": str(tmp / "summary.json"), "progress_interval": 0,
        **DEAD_LETTERS_ON_PURPOSE, **changes,
    }  # fmt: skip
    lines = []
    for record, stream in records:
        lines += singer_lines(stream, [])[:1]
        lines.append(jdumps({"type": "RECORD", "stream": stream, "record": record}))
    code, target = run_in_process(config, lines)
    assert code == 0
    summary = json.loads((tmp / "summary.json").read_text())
    assert summary["records_read"] == len(records) == target.run.summary.accounted()
    assert len(dead_letter_records(tmp / "dl.jsonl")) == sum(summary["dead_lettered"].values())
    assert len(read_jsonl(tmp / "dry.jsonl")) == summary["delivered"]


# --- nasty values, one by one (dry run, in process) ----------------------------------------------

MB = 1024 * 1024


def dry(tmp_path: Path, **changes: t.Any) -> dict:
    """A dry run's settings; these runs dead-letter nasty values on purpose (thresholds off)."""
    return {
        "dry_run": True, "network_id": 1, "event_mapping": {"Order Completed": 0},
        "dead_letter_path": str(tmp_path / "dl.jsonl"), "dry_run_output": str(tmp_path / "dry.jsonl"),
        "summary_path": str(tmp_path / "summary.json"), "progress_interval": 0,
        **DEAD_LETTERS_ON_PURPOSE, **changes,
    }  # fmt: skip


def planned(tmp_path: Path) -> dict[str, dict]:
    """message id -> planned parameters (the dry-run output)."""
    return {line["message_id"]: line["params"] for line in read_jsonl(tmp_path / "dry.jsonl")}


def dead(tmp_path: Path) -> dict[str, dict]:
    return {
        str(line["record"].get("messageId")): line
        for line in dead_letter_records(tmp_path / "dl.jsonl")
    }


def run_records(tmp_path: Path, records: list[dict], **changes: t.Any) -> tuple[int, dict]:
    """The records and a good one before and after each; returns the exit code and summary."""
    lines = singer_lines("orders", [], state=None)
    lines += [
        jdumps({"type": "RECORD", "stream": "orders", "record": r})
        for r in [track(900), *records, track(901)]
    ]
    code, _ = run_in_process(dry(tmp_path, **changes), lines)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"msg-900", "msg-901"} <= set(planned(tmp_path)), "a good record was affected"
    return code, summary


@pytest.mark.parametrize(
    ("where", "param"),
    [("context.userAgent", "http_user_agent"), ("context.traits.email", "email"),
     ("properties.coupon", "coupon_code"), ("properties.adv1", "adv1")],
)  # fmt: skip
def test_a_1mb_string_in_an_optional_field_is_left_out_naming_the_field(
    tmp_path: Path, where: str, param: str
) -> None:
    record = track(1)
    set_path(record, where, "x" * MB)
    code, summary = run_records(tmp_path, [record])
    assert code == 0
    assert param not in planned(tmp_path)["msg-1"]
    assert summary["streams"]["orders"]["Order Completed"]["dropped_fields"] == {param: 1}
    # with strict_types it is a dead letter naming the field instead
    strict = tmp_path / "strict"
    code, summary = run_records(strict, [record], strict_types=True)
    assert code == 0 and summary["dead_lettered"] == {"type_mismatch": 1}
    line = dead(strict)["msg-1"]
    assert line["field"] == param and "1048576 characters" in line["message"]


def test_1mb_identity_values(tmp_path: Path) -> None:
    """A 1 MB transaction id is dead-lettered; a 1 MB event name is an unmapped event (counted
    under a shortened name); a 1 MB message id still makes a bounded delivery key."""
    long_tid, long_event, long_id = track(1, tid="t" * MB), track(2, event="E" * MB), track(3)
    long_id["messageId"] = "m" * MB
    code, summary = run_records(tmp_path, [long_tid, long_event, long_id])
    assert code == 0
    assert dead(tmp_path)["msg-1"]["reason"] == "type_mismatch"
    assert dead(tmp_path)["msg-1"]["field"] == "transaction_id"
    assert summary["skipped"] == {"unmapped_event": 1}
    assert max(len(event) for event in summary["streams"]["orders"]) <= 200
    (line,) = [
        p for p in read_jsonl(tmp_path / "dry.jsonl") if p["params"]["transaction_id"] == "tx-3"
    ]
    assert len(line["key"]) <= 300
    assert summary["delivered"] == 3  # msg-900, the long message id, msg-901


def test_deep_nesting_inside_a_record(tmp_path: Path) -> None:
    deep: t.Any = "bottom"
    for _ in range(400):
        deep = {"a": [deep]}
    record = track(1, nested=deep)
    record["context"]["traits"] = {"email": deep}
    code, summary = run_records(tmp_path, [record])
    assert code == 0
    assert "email" not in planned(tmp_path)["msg-1"]
    assert summary["streams"]["orders"]["Order Completed"]["dropped_fields"] == {"email": 1}


def test_deep_nesting_in_a_json_string_property(tmp_path: Path) -> None:
    """Warehouses keep nested objects as JSON text; text nested past what Python parses is
    simply not an object (the product list, here, is left out)."""
    record = track(1, products="[" * 5000 + "]" * 5000)
    record["context"] = '{"referrer": ' * 3000 + "1" + "}" * 3000
    record["properties"]["transaction_id"] = "tx-1"
    code, summary = run_records(tmp_path, [record])
    assert code == 0
    assert "order_line_items" not in planned(tmp_path)["msg-1"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens(tmp_path: Path, token: str) -> None:
    """Python's json.dumps writes them; they are not numbers Everflow can take: left out."""
    base = json.dumps({"type": "RECORD", "stream": "orders", "record": track(1)})
    line = base.replace('"total": 11', f'"total": {token}').replace(
        '"orderId": 1001', f'"orderId": {token}'
    )
    line = line.replace('"timestamp": "2026-11-20T18:14:08.612Z"', f'"timestamp": {token}')
    assert token in line
    lines = [*singer_lines("orders", [track(900)]), line, *singer_lines("orders", [track(901)])[1:]]
    code, _ = run_in_process(dry(tmp_path), lines)
    assert code == 0
    params = planned(tmp_path)["msg-1"]
    assert not {"amount", "order_id", "timestamp"} & set(params)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["streams"]["orders"]["Order Completed"]["dropped_fields"] == {
        "amount": 1,
        "order_id": 1,
        "timestamp": 1,
    }


@pytest.mark.parametrize(
    ("value", "sent"),
    [(10**30, "1" + "0" * 30), (-(10**30), "-1" + "0" * 30), (Decimal("1E+99"), "1" + "0" * 99),
     (10**101, None), (Decimal("1E+400"), None), (Decimal("-1E-400"), None)],
)  # fmt: skip
def test_huge_numbers_are_exact_or_left_out(tmp_path: Path, value: t.Any, sent: str | None) -> None:
    code, summary = run_records(tmp_path, [track(1, orderId=value, total=value)])
    assert code == 0
    params = planned(tmp_path)["msg-1"]
    assert params.get("order_id") == sent and params.get("amount") == sent
    if sent is None:
        assert summary["dropped_fields"] == 2


def test_an_integer_of_5000_digits_in_the_singer_input(tmp_path: Path) -> None:
    """More digits than Python parses by default: read as a number, left out as too long."""
    line = json.dumps({"type": "RECORD", "stream": "orders", "record": track(1)}).replace(
        "1001", "9" * 5000
    )
    lines = [*singer_lines("orders", [track(900)]), line, *singer_lines("orders", [track(901)])[1:]]
    code, _ = run_in_process(dry(tmp_path), lines)
    assert code == 0
    assert "order_id" not in planned(tmp_path)["msg-1"]


@pytest.mark.parametrize(
    ("total", "amount"), [(0, "0"), (-5, "-5"), (Decimal("-0.00"), "-0.00"), ("-12.50", "-12.50")]
)
def test_zero_and_negative_amounts_are_sent_as_given(
    tmp_path: Path, total: t.Any, amount: str
) -> None:
    """Amounts are sent as Segment has them: a free conversion is 0, a negative total is the
    source's to explain (Segment's own Everflow destination sends it the same)."""
    code, _ = run_records(tmp_path, [track(1, total=total)])
    assert code == 0
    assert planned(tmp_path)["msg-1"]["amount"] == amount


def test_products_that_are_not_a_list(tmp_path: Path) -> None:
    records = [
        track(1, products=42),
        track(2, products={"sku": "A"}),
        track(3, products='[{"sku": "A", "quantity": 1}'),  # broken JSON
        track(4, products="not json at all"),
        track(5, products='{"sku": "A"}'),
        track(6, products='[{"sku": "A", "quantity": 2}]'),  # JSON text of a list: fine
        track(7, products=[1, "two", None, {"sku": "B"}]),  # some items are not products
    ]
    code, summary = run_records(tmp_path, records)
    assert code == 0
    params = planned(tmp_path)
    for i in range(1, 6):
        assert "order_line_items" not in params[f"msg-{i}"]
        assert params[f"msg-{i}"]["amount"] == str(10 + i)  # the rest of the conversion is sent
    assert params["msg-6"]["order_line_items"] == '[{"quantity":2,"sku":"A"}]'
    assert params["msg-7"]["order_line_items"] == '[{"sku":"B"}]'
    dropped = summary["streams"]["orders"]["Order Completed"]["dropped_fields"]
    assert dropped["order_line_items"] == 5
    # strict: each of the five is a dead letter naming the field
    strict = tmp_path / "strict"
    code, summary = run_records(strict, records[:5], strict_types=True)
    assert code == 0 and summary["dead_lettered"] == {"type_mismatch": 5}
    for line in dead(strict).values():
        assert line["field"] == "order_line_items" and "properties.products" in line["message"]


@pytest.mark.parametrize(
    "referrer", ["https://www.google.com/", "everflow", "", 42, ["everflow", "tx"]]
)
def test_context_referrer_that_is_not_an_object(tmp_path: Path, referrer: t.Any) -> None:
    """No Everflow referrer: the transaction id comes from properties, or the record is skipped."""
    with_property, without = track(1, tid=None, transaction_id="tx-prop"), track(2, tid=None)
    for record in (with_property, without):
        record["context"]["referrer"] = referrer
    code, summary = run_records(tmp_path, [with_property, without])
    assert code == 0
    assert planned(tmp_path)["msg-1"]["transaction_id"] == "tx-prop"
    assert summary["skipped"] == {"no_transaction_id": 1}


@pytest.mark.parametrize("container", ["context", "properties"])
@pytest.mark.parametrize("value", ["a string", [1, 2], 7, True])
def test_context_or_properties_that_is_not_an_object(
    tmp_path: Path, container: str, value: t.Any
) -> None:
    record = track(1)
    if container == "context":
        record["properties"]["transaction_id"] = "tx-1"
    record[container] = value
    code, summary = run_records(tmp_path, [record])
    assert code == 0
    params = planned(tmp_path)["msg-1"]  # what can be found is sent; the rest is absent
    assert params["transaction_id"] == "tx-1"
    absent = (
        {"conversion_user_ip", "http_user_agent"}
        if container == "context"
        else {"amount", "order_id"}
    )
    assert not absent & set(params)
    assert summary["dropped_fields"] == 0


def test_unicode_is_percent_encoded_as_utf8_on_the_wire(base_config: dict) -> None:
    record = track(1, coupon="ÉTÉ-20% 🎉", adv1="优惠&券=1", adv2="a+b c")
    record["context"]["traits"] = {"email": "jürgen+vip@exämple.com"}
    record["context"]["userAgent"] = "Mozilla/5.0 (ñ; \u2028) Ünïcödé"
    with Receiver() as rx:
        code, _ = run_in_process(
            {**base_config, "postback_url": rx.url}, singer_lines("orders", [record])
        )
        (received,) = rx.requests
    assert code == 0
    raw = received.raw_query
    assert "email=j%C3%BCrgen%2Bvip%40ex%C3%A4mple.com" in raw
    assert "coupon_code=%C3%89T%C3%89-20%25%20%F0%9F%8E%89" in raw
    assert "adv1=%E4%BC%98%E6%83%A0%26%E5%88%B8%3D1" in raw
    assert "adv2=a%2Bb%20c" in raw
    assert raw.isascii() and " " not in raw
    decoded = dict(parse_qsl(raw, keep_blank_values=True, strict_parsing=True))
    assert decoded["email"] == "jürgen+vip@exämple.com"
    assert decoded["coupon_code"] == "ÉTÉ-20% 🎉"
    assert decoded["adv1"] == "优惠&券=1" and decoded["adv2"] == "a+b c"
    assert decoded["http_user_agent"] == "Mozilla/5.0 (ñ; \u2028) Ünïcödé"


def test_lone_surrogates_from_json_escapes(tmp_path: Path) -> None:
    """``"\\ud800"`` is valid JSON syntax but no Unicode text: such a value is not sent (a String
    must be Unicode); a record holding one is kept exactly in the dead-letter file; a message id
    holding one still makes a storable delivery key."""
    first = json.dumps({"type": "RECORD", "stream": "orders", "record": track(1, coupon="\ud800x")})
    assert "\\ud800" in first  # the JSON escape, as a tap writes it
    mobile = track(2, coupon="\udfff")
    mobile["context"]["os"] = {"name": "iOS"}  # no app namespace: dead-lettered
    mobile["event"] = "Order Completed\udc80"  # matches Order Completed by its slug
    second = json.dumps({"type": "RECORD", "stream": "orders", "record": mobile})
    odd_id = track(3)
    odd_id["messageId"] = "id-\ud83d"
    third = json.dumps({"type": "RECORD", "stream": "orders", "record": odd_id})
    lines = [
        *singer_lines("orders", [track(900)]),
        first,
        second,
        third,
        *singer_lines("orders", [track(901)])[1:],
    ]
    code, _ = run_in_process(dry(tmp_path), lines)
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert (summary["records_read"], summary["delivered"]) == (5, 4)
    assert summary["dead_lettered"] == {"missing_required_field": 1}
    out = planned(tmp_path)
    assert "coupon_code" not in out["msg-1"] and out["msg-1"]["amount"] == "11"
    (line,) = [x for x in read_jsonl(tmp_path / "dry.jsonl") if x["message_id"] == "id-\ud83d"]
    assert line["key"].startswith("m#")
    (kept,) = dead_letter_records(tmp_path / "dl.jsonl")
    assert kept["record"] == mobile  # exactly as received
    assert kept["field"] == "app_id"
    (tmp_path / "dl.jsonl").read_bytes().decode("utf-8")  # and the file is valid UTF-8


# --- nasty bytes through the real CLI ----------------------------------------------------------


def cli_run(tmp_path: Path, payload: bytes) -> tuple[int, str, str, dict]:
    from tests.conftest import bytes_of, run_cli

    config = dry(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_cli(["--config", str(tmp_path / "config.json")], stdin=payload, cwd=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    stderr = bytes_of(result.stderr).decode("utf-8", "replace")
    return result.code, result.stdout, stderr, summary


def test_non_utf8_bytes_stop_the_run_at_that_line(tmp_path: Path) -> None:
    """A Latin-1 byte in a line: the tap's encoding is wrong, every such value would be garbled.
    The run stops at that line (exit 2, naming it and the byte); the records before it were
    delivered and their STATE emitted."""
    head = "\n".join(singer_lines("orders", [track(1), track(2)], state={"upto": 2})) + "\n"
    latin1 = json.dumps(
        {"type": "RECORD", "stream": "orders", "record": track(3, coupon="ÉTÉ")}, ensure_ascii=False
    )
    payload = (
        head.encode() + latin1.encode("latin-1") + b"\n" + json.dumps(track(4)).encode() + b"\n"
    )
    code, stdout, stderr, summary = cli_run(tmp_path, payload)
    assert code == 2
    assert "line 5" in stderr and "not UTF-8" in stderr and "0xc9" in stderr
    assert "Traceback" not in stderr
    assert [json.loads(s) for s in stdout.splitlines()] == [{"upto": 2}]
    assert set(planned(tmp_path)) == {"msg-1", "msg-2"} and summary["records_read"] == 2


def test_a_line_nested_too_deeply_to_parse_stops_the_run_at_that_line(tmp_path: Path) -> None:
    head = "\n".join(singer_lines("orders", [track(1)], state={"upto": 1})) + "\n"
    record = track(2)
    line = json.dumps({"type": "RECORD", "stream": "orders", "record": record})
    line = line.replace('"total": 12', '"total": 12, "deep": ' + "[" * 20000 + "]" * 20000)
    code, stdout, stderr, summary = cli_run(tmp_path, (head + line + "\n").encode())
    assert code == 2
    assert "line 4" in stderr and "nested too deeply" in stderr and "Traceback" not in stderr
    assert [json.loads(s) for s in stdout.splitlines()] == [{"upto": 1}]
    assert set(planned(tmp_path)) == {"msg-1"}


def test_a_utf8_byte_order_mark_and_blank_lines_are_harmless(tmp_path: Path) -> None:
    lines = singer_lines("orders", [track(1), track(2)], state={"upto": 2})
    payload = (
        "\ufeff" + lines[0] + "\n\n" + lines[1] + "\r\n   \n" + "\n".join(lines[2:]) + "\n\n"
    ).encode()
    code, stdout, stderr, summary = cli_run(tmp_path, payload)
    assert code == 0, stderr
    assert set(planned(tmp_path)) == {"msg-1", "msg-2"}
    assert [json.loads(s) for s in stdout.splitlines()] == [{"upto": 2}]
