"""Writes samples/segment_events.singer: the demo input (run it again after editing).

Three streams, one per shape a tap hands over: raw Segment JSON (an archive), a Segment
warehouse table as tap-postgres emits it, and a tap-flattened stream. Web and mobile, several
event names, at least one record for every skip and dead-letter reason a dry run can show, and
a night of ordinary purchases around them (so the dead letters stay under 5%).
"""

import hashlib
import json
from pathlib import Path

RAW, WAREHOUSE, FLAT = "segment_archive", "segment_shop-order_completed", "segment_flat"

web_ctx = {
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Safari/605.1.15",
    "library": {"name": "analytics.js", "version": "npm:next-1.61.0"},
    "traits": {"email": "jane+vip@example.com"},
}
ios_ctx = {
    "ip": "198.51.100.23",
    "app": {"name": "Shop", "version": "4.2.0", "build": "420", "namespace": "com.example.shop"},
    "device": {
        "manufacturer": "Apple",
        "model": "iPhone15,2",
        "type": "ios",
        "adTrackingEnabled": False,
    },
    "network": {"carrier": "T-Mobile", "wifi": True, "cellular": False},
    "os": {"name": "iOS", "version": "17.1"},
    "library": {"name": "analytics-ios", "version": "4.1.8"},
    "location": {"latitude": 40.7128, "longitude": -74.006},
    "referrer": {"type": "everflow", "id": "ef1d2c3b4a5f60718293a4b5c6d7e8f9"},
}


def raw(mid, event, props, ctx, ts="2026-11-20T18:14:08.612Z", kind="track"):
    rec = {
        "type": kind,
        "messageId": mid,
        "userId": "u-" + mid[-3:],
        "context": ctx,
        "properties": props,
        "timestamp": ts,
        "receivedAt": ts,
        "sentAt": ts,
    }
    if event:
        rec["event"] = event
    return rec


def with_ref(ctx, tid):
    return {**ctx, "referrer": {"type": "everflow", "id": tid}}


raw_records = [
    # web purchase: the everyday case
    raw(
        "ajs-001",
        "Order Completed",
        {
            "orderId": 50314,
            "total": 27.5,
            "revenue": 22.5,
            "coupon": "HASBROS",
            "adv1": "spring",
            "adv2": 3,
            "adv3": True,
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
        },
        with_ref(web_ctx, "a1b2c3d4e5f60718293a4b5c6d7e8f90"),
    ),
    # mobile purchase (iOS): the mobile fields, limit_ad_tracking, connection_type
    raw("ios-002", "Order Completed", {"order_id": "77001", "revenue": 99.99}, ios_ctx),
    # a mapped non-base event (adv_event_id) with the transaction id in properties
    raw(
        "ajs-003",
        "Subscription Started",
        {"transaction_id": "b2c3d4e5f60718293a4b5c6d7e8f90a1", "total": 9.99},
        web_ctx,
    ),
    # the same message again (a tap re-emitting it): skipped as duplicate
    raw(
        "ajs-001",
        "Order Completed",
        {"orderId": 50314, "total": 27.5},
        with_ref(web_ctx, "a1b2c3d4e5f60718293a4b5c6d7e8f90"),
    ),
    # a page call: skipped (not_track)
    raw("ajs-004", None, {"path": "/checkout"}, web_ctx, kind="page"),
    # an event that is not mapped: skipped (unmapped_event)
    raw(
        "ajs-005",
        "Product Viewed",
        {"sku": "45790-32"},
        with_ref(web_ctx, "c3d4e5f60718293a4b5c6d7e8f90a1b2"),
    ),
    # a purchase nobody referred: skipped (no_transaction_id)
    raw("ajs-006", "Order Completed", {"orderId": 50315, "total": 12}, web_ctx),
    # mobile without an app namespace: dead-lettered (missing_required_field)
    raw(
        "and-007",
        "Order Completed",
        {"total": 5},
        {
            **ios_ctx,
            "app": {"name": "Shop"},
            "os": {"name": "Android", "version": "14"},
            "library": {"name": "analytics-kotlin"},
        },
    ),
    # web, an order id that is text: sent exactly as it is (order_id=ORD-2026-0042)
    raw(
        "ajs-008",
        "Order Completed",
        {"orderId": "ORD-2026-0042", "total": "41.00", "coupon": 2026},
        with_ref(web_ctx, "d4e5f60718293a4b5c6d7e8f90a1b2c3"),
    ),
    # mobile whose ip is an object: a required field of the wrong type, dead-lettered (type_mismatch)
    raw("ios-009", "Order Completed", {"total": 15}, {**ios_ctx, "ip": {"v4": "198.51.100.23"}}),
    # an order id with a '#' (percent-encoded, arrives as #1001) and a lower-case currency
    # (sent as currency=EUR)
    raw(
        "ajs-010",
        "Order Completed",
        {"orderId": "#1001", "total": 64.9, "currency": "eur"},
        with_ref(web_ctx, "18293a4b5c6d7e8f90a1b2c3d4e5f607"),
    ),
    # a 20-digit integer order id (every digit sent), a currency that is not a three-letter
    # code (left out with a warning), and no total nor revenue: the amount comes from value
    raw(
        "ajs-011",
        "Order Completed",
        {"orderId": 12345678901234567890, "value": 18.5, "currency": "euro"},
        with_ref(web_ctx, "293a4b5c6d7e8f90a1b2c3d4e5f60718"),
    ),
]

# A night of ordinary web purchases: what most of a real run is. They keep the demo's two
# deliberate dead letters under the default max_dead_letter_ratio (5%), so `make demo` exits 0
# with no threshold set (README, "Failure thresholds").
ORDINARY = 40
for n in range(ORDINARY):
    minute = 19 * 60 + n * 7  # from 19:00, one every 7 minutes
    raw_records.append(
        raw(
            f"ajs-{100 + n:03d}",
            "Order Completed",
            {
                "orderId": 50400 + n,
                "total": round(12 + (n * 7919) % 90 + 0.99, 2),
                "currency": "USD",
            },
            with_ref(web_ctx, hashlib.md5(f"demo-click-{n}".encode()).hexdigest()),
            ts=f"2026-11-20T{minute // 60 % 24:02d}:{minute % 60:02d}:00.000Z",
        )
    )

wh_schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "event": {"type": ["string", "null"]},
        "event_text": {"type": ["string", "null"]},
        "context_ip": {"type": ["string", "null"]},
        "context_user_agent": {"type": ["string", "null"]},
        "context_referrer_type": {"type": ["string", "null"]},
        "context_referrer_id": {"type": ["string", "null"]},
        "context_library_name": {"type": ["string", "null"]},
        "context_traits_email": {"type": ["string", "null"]},
        "order_id": {"type": ["string", "null"]},
        "total": {"type": ["number", "null"]},
        "products": {"type": ["string", "null"]},
        "adv1": {"type": ["string", "null"]},
        "received_at": {"type": ["string", "null"], "format": "date-time"},
        "timestamp": {"type": ["string", "null"], "format": "date-time"},
    },
}
wh_records = [
    {
        "id": "wh-101",
        "event": "order_completed",
        "event_text": "Order Completed",
        "context_ip": "192.0.2.44",
        "context_user_agent": "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0",
        "context_referrer_type": "everflow",
        "context_referrer_id": "e5f60718293a4b5c6d7e8f90a1b2c3d4",
        "context_library_name": "analytics.js",
        "context_traits_email": "ana@example.org",
        "order_id": "123456789",
        "total": 76.0,
        "products": '[{"sku":"SKU-1","name":"Kettle","quantity":1,"price":76}]',
        "adv1": "adv1test",
        "received_at": "2026-11-21T09:00:00+00:00",
        "timestamp": "2026-11-21T08:59:58+00:00",
    },
    {
        "id": "wh-102",
        "event": "order_completed",
        "event_text": "Order Completed",
        "context_ip": "192.0.2.45",
        "context_referrer_type": "everflow",
        "context_referrer_id": "f60718293a4b5c6d7e8f90a1b2c3d4e5",
        "order_id": "123456790",
        "total": 12.5,
        "products": "not json",
        "received_at": "2026-11-21T09:05:00+00:00",
        "timestamp": "2026-11-21T09:04:59+00:00",
    },
]

flat_schema = {"type": "object", "properties": {}, "additionalProperties": True}
flat_records = [
    {
        "type": "track",
        "event": "Subscription Started",
        "messageId": "flat-201",
        "context__ip": "203.0.113.90",
        "context__userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
        "context__referrer__type": "Everflow",
        "context__referrer__id": "0718293a4b5c6d7e8f90a1b2c3d4e5f6",
        "properties__total": 19.0,
        "properties__adv5": False,
        "timestamp": "2026-11-22T10:00:00.000Z",
    },
]

lines = []
lines.append(
    {
        "type": "SCHEMA",
        "stream": RAW,
        "schema": {"type": "object", "properties": {}, "additionalProperties": True},
        "key_properties": [],
    }
)
lines += [{"type": "RECORD", "stream": RAW, "record": r} for r in raw_records]
lines.append(
    {"type": "STATE", "value": {"bookmarks": {RAW: {"file": "2026/11/20/part-0001.jsonl.gz"}}}}
)
lines.append(
    {
        "type": "SCHEMA",
        "stream": WAREHOUSE,
        "schema": wh_schema,
        "key_properties": ["id"],
        "bookmark_properties": ["received_at"],
    }
)
lines += [{"type": "RECORD", "stream": WAREHOUSE, "record": r} for r in wh_records]
lines.append({"type": "SCHEMA", "stream": FLAT, "schema": flat_schema, "key_properties": []})
lines += [{"type": "RECORD", "stream": FLAT, "record": r} for r in flat_records]
lines.append(
    {
        "type": "STATE",
        "value": {
            "bookmarks": {
                RAW: {"file": "2026/11/20/part-0001.jsonl.gz"},
                WAREHOUSE: {
                    "replication_key": "received_at",
                    "replication_key_value": "2026-11-21T09:05:00+00:00",
                },
            }
        },
    }
)

out = Path(__file__).with_name("segment_events.singer")
out.write_text("".join(json.dumps(line) + "\n" for line in lines))
print(f"wrote {out} ({len(lines)} lines)")
