"""Realistic Singer input for the benchmarks: Segment events as taps hand them over.

Three streams, in the proportions a Segment-in-a-warehouse pipeline sees:

- ``segment_tracks`` (about 75%): raw Segment JSON (an archive tap): web events from
  analytics.js and mobile events from analytics-ios / analytics-kotlin, plus some ``page`` and
  ``identify`` calls;
- ``segment_shop-tracks`` (about 20%): Segment warehouse rows as tap-postgres emits them
  (snake_case ``context_*`` columns, un-prefixed properties, ``products`` as a JSON string, typed
  schema with ``date-time`` columns that the SDK parses);
- ``segment_flat`` (about 5%): tap-flattened records (``context__userAgent``).

Event names are mixed (two mapped, two not mapped) and about 70% of the events carry an
Everflow transaction id. A small share is unusual on purpose: an order id that is not a number
(a dropped optional field), a mobile event without an app namespace (a dead letter). Every
message id is unique, so nothing is a duplicate.

``--conversions`` makes the delivery input instead: every record a valid conversion (mapped
event, transaction id, web or mobile, every shape), so records/s there is postbacks/s.

Deterministic for a given ``--seed``. Writes to ``--out`` or stdout::

    python bench/generate.py --records 200000 --out /tmp/in.singer
    python bench/generate.py --records 1000000 | \
        TARGET_EVERFLOW_CLOCK=2026-11-29T00:00:00Z target-everflow --config c.json

The events are dated 2026-11-01 to 2026-11-28: a target judging their age
(``max_conversion_age_days``) runs with the clock pinned just after them (``CLOCK``), so the
benchmarks' outcomes never change as the calendar moves on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import typing as t

CLOCK = "2026-11-29T00:00:00Z"
"""Just after the generated events' dates. Importing this module pins ``TARGET_EVERFLOW_CLOCK``
to it (unless the environment pins one already), so every target a benchmark starts inherits
it."""
os.environ.setdefault("TARGET_EVERFLOW_CLOCK", CLOCK)

RAW = "segment_tracks"
WAREHOUSE = "segment_shop-tracks"
FLAT = "segment_flat"

EVENT_MAPPING = {"Order Completed": 0, "Subscription Started": 24}
MAPPED = ("Order Completed", "Subscription Started")
UNMAPPED = ("Product Viewed", "Checkout Started")

USER_AGENTS = tuple(
    # About 300 distinct user agents, as a day of real traffic has (browser builds x platforms).
    template.format(v=v, b=b)
    for v in range(100, 131)
    for b in (0, 1, 2)
    for template in (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/{v}.0.{b}.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.{b} Safari/605.1.15 Chrome/{v}",
        "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.{b}",
    )
)
PRODUCTS = (
    ("45790-32", "Monopoly: 3rd Edition", 19),
    ("46493-32", "Uno Card Game", 3),
    ("SKU-1", "Kettle", 76),
    ("SKU-77", "Tea Cups (set of 4)", 24.5),
    ("B-900", "Espresso Beans 1kg", 31.9),
)
COUPONS = ("SPRING", "HASBROS", "WELCOME10", 2026)

RAW_SCHEMA = {"type": "object", "properties": {}, "additionalProperties": True}
FLAT_SCHEMA = RAW_SCHEMA
_S = {"type": ["string", "null"]}
_N = {"type": ["number", "null"]}
_DT = {"type": ["string", "null"], "format": "date-time"}
WAREHOUSE_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "anonymous_id": _S,
        "user_id": _S,
        "event": _S,
        "event_text": _S,
        "context_ip": _S,
        "context_user_agent": _S,
        "context_library_name": _S,
        "context_library_version": _S,
        "context_page_url": _S,
        "context_referrer_type": _S,
        "context_referrer_id": _S,
        "context_traits_email": _S,
        "context_os_name": _S,
        "context_os_version": _S,
        "context_app_namespace": _S,
        "context_app_name": _S,
        "context_app_version": _S,
        "context_device_manufacturer": _S,
        "context_device_model": _S,
        "order_id": _S,
        "total": _N,
        "revenue": _N,
        "currency": _S,
        "coupon": _S,
        "products": _S,
        "timestamp": _DT,
        "original_timestamp": _DT,
        "sent_at": _DT,
        "received_at": _DT,
        "uuid_ts": _DT,
    },
}


class Generator:
    def __init__(self, seed: int = 7, *, conversions_only: bool = False) -> None:
        self.rng = random.Random(seed)
        self.conversions_only = conversions_only
        self.n = 0

    # -- pieces ------------------------------------------------------------------------------

    def _hex(self, n: int = 32) -> str:
        return f"{self.rng.getrandbits(n * 4):0{n}x}"

    def _time(self) -> str:
        s = self.rng.randrange(0, 28 * 86400)
        day, s = divmod(s, 86400)
        return f"2026-11-{day + 1:02d}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{self.rng.randrange(1000):03d}Z"

    def _has_tid(self) -> bool:
        return self.conversions_only or self.rng.random() < 0.70

    def _event(self) -> str:
        if self.conversions_only:
            return MAPPED[0] if self.rng.random() < 0.75 else MAPPED[1]
        r = self.rng.random()
        if r < 0.55:
            return MAPPED[0]
        if r < 0.70:
            return MAPPED[1]
        return UNMAPPED[0] if r < 0.88 else UNMAPPED[1]

    def _products(self) -> list[dict]:
        items = []
        for _ in range(self.rng.choice((1, 1, 2, 3))):
            sku, name, price = self.rng.choice(PRODUCTS)
            items.append(
                {
                    "product_id": self._hex(8),
                    "sku": sku,
                    "name": name,
                    "price": price,
                    "quantity": self.rng.choice((1, 1, 2)),
                }
            )
        return items

    def _order_id(self) -> t.Any:
        if not self.conversions_only and self.rng.random() < 0.02:
            return f"ORD-{self.rng.randrange(10**6)}"  # not a number: dropped with a warning
        return self.rng.randrange(10**5, 10**9)

    def _ip(self) -> str:
        return f"203.0.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"

    # -- shapes ------------------------------------------------------------------------------

    def raw_web(self, kind: str = "track") -> dict:
        ts = self._time()
        ctx: dict[str, t.Any] = {
            "ip": self._ip(),
            "userAgent": self.rng.choice(USER_AGENTS),
            "library": {"name": "analytics.js", "version": "npm:next-1.61.0"},
            "locale": "en-US",
            "page": {
                "path": "/checkout",
                "url": "https://shop.example.com/checkout",
                "referrer": "https://partner.example.net/",
                "title": "Checkout",
            },
            "traits": {"email": f"user{self.rng.randrange(10**6)}@example.com"},
        }
        record: dict[str, t.Any] = {
            "type": kind,
            "messageId": f"ajs-next-{self._hex(24)}",
            "anonymousId": self._hex(16),
            "userId": f"u-{self.rng.randrange(10**7)}",
            "context": ctx,
            "timestamp": ts,
            "originalTimestamp": ts,
            "sentAt": ts,
            "receivedAt": ts,
            "version": 2,
            "integrations": {},
        }
        if kind == "track":
            event = self._event()
            record["event"] = event
            props: dict[str, t.Any] = {"currency": "USD"}
            if event in (MAPPED[0], UNMAPPED[1]):
                products = self._products()
                total = round(sum(p["price"] * p["quantity"] for p in products), 2)
                props.update(
                    orderId=self._order_id(),
                    total=total,
                    revenue=round(total * 0.9, 2),
                    products=products,
                )
                if self.rng.random() < 0.3:
                    props["coupon"] = self.rng.choice(COUPONS)
            elif event == MAPPED[1]:
                props.update(plan="pro", total=9.99, adv1="monthly", adv2=self.rng.randrange(5))
            else:
                sku, name, price = self.rng.choice(PRODUCTS)
                props.update(sku=sku, name=name, price=price)
            if self._has_tid():
                if self.rng.random() < 0.8:
                    ctx["referrer"] = {"type": "everflow", "id": self._hex()}
                else:
                    props["transaction_id"] = self._hex()
            record["properties"] = props
        elif kind == "identify":
            record["traits"] = {"email": ctx["traits"]["email"], "plan": "pro"}
        else:
            record["name"] = "Checkout"
            record["properties"] = {"path": "/checkout", "url": "https://shop.example.com/checkout"}
        return record

    def raw_mobile(self) -> dict:
        record = self.raw_web()
        ios = self.rng.random() < 0.6
        ctx = record["context"]
        del ctx["page"], ctx["userAgent"], ctx["locale"]
        ctx.update(
            {
                "app": {
                    "name": "Shop",
                    "version": "4.2.0",
                    "build": "420",
                    "namespace": "com.example.shop",
                },
                "device": {
                    "manufacturer": "Apple" if ios else "Google",
                    "model": "iPhone15,2" if ios else "Pixel 8",
                    "type": "ios" if ios else "android",
                    "adTrackingEnabled": self.rng.random() < 0.7,
                    "id": self._hex(16),
                },
                "network": {
                    "carrier": "T-Mobile",
                    "wifi": self.rng.random() < 0.6,
                    "cellular": True,
                    "bluetooth": False,
                },
                "os": {"name": "iOS" if ios else "Android", "version": "17.1" if ios else "14"},
                "library": {
                    "name": "analytics-ios" if ios else "analytics-kotlin",
                    "version": "4.1.8",
                },
                "screen": {"width": 390, "height": 844},
                "timezone": "America/New_York",
            }
        )
        if self.rng.random() < 0.3:
            ctx["location"] = {"latitude": 40.7128, "longitude": -74.006}
        if not self.conversions_only and self.rng.random() < 0.01:
            del ctx["app"]["namespace"]  # a mobile conversion without app_id: dead letter
        return record

    def warehouse(self) -> dict:
        ts = self._time()[:19] + "+00:00"  # tap-postgres: ISO-8601 with offset
        event = self._event()
        products = self._products()
        total = round(sum(p["price"] * p["quantity"] for p in products), 2)
        row: dict[str, t.Any] = {
            "id": f"{self._hex(8)}-{self._hex(4)}-{self._hex(4)}-{self._hex(4)}-{self._hex(12)}",
            "anonymous_id": self._hex(16),
            "user_id": f"u-{self.rng.randrange(10**7)}",
            "event": event.lower().replace(" ", "_"),
            "event_text": event,
            "context_ip": self._ip(),
            "context_user_agent": self.rng.choice(USER_AGENTS),
            "context_library_name": "analytics.js",
            "context_library_version": "npm:next-1.61.0",
            "context_page_url": "https://shop.example.com/checkout",
            "context_referrer_type": None,
            "context_referrer_id": None,
            "context_traits_email": f"user{self.rng.randrange(10**6)}@example.com",
            "context_os_name": None,
            "context_os_version": None,
            "context_app_namespace": None,
            "context_app_name": None,
            "context_app_version": None,
            "context_device_manufacturer": None,
            "context_device_model": None,
            "order_id": str(self._order_id()),
            "total": total,
            "revenue": round(total * 0.9, 2),
            "currency": "USD",
            "coupon": None,
            "products": json.dumps(
                [{k: p[k] for k in ("sku", "name", "quantity", "price")} for p in products]
            ),
            "timestamp": ts,
            "original_timestamp": ts,
            "sent_at": ts,
            "received_at": ts,
            "uuid_ts": ts,
        }
        if self._has_tid():
            row["context_referrer_type"] = "everflow"
            row["context_referrer_id"] = self._hex()
        if self.rng.random() < 0.2:
            row.update(
                context_os_name="Android",
                context_os_version="14",
                context_app_namespace="com.example.shop",
                context_app_name="Shop",
                context_app_version="4.2.0",
                context_device_manufacturer="Google",
                context_device_model="Pixel 8",
                context_library_name="analytics-kotlin",
                context_user_agent=None,
            )
        return row

    def flat(self) -> dict:
        ts = self._time()
        event = self._event()
        record: dict[str, t.Any] = {
            "type": "track",
            "event": event,
            "messageId": f"flat-{self._hex(24)}",
            "userId": f"u-{self.rng.randrange(10**7)}",
            "context__ip": self._ip(),
            "context__userAgent": self.rng.choice(USER_AGENTS),
            "context__library__name": "analytics.js",
            "context__traits__email": "flat@example.com",
            "properties__orderId": self._order_id(),
            "properties__total": 19.0,
            "properties__adv5": False,
            "timestamp": ts,
            "receivedAt": ts,
        }
        if self._has_tid():
            record["context__referrer__type"] = "Everflow"
            record["context__referrer__id"] = self._hex()
        return record

    # -- messages ----------------------------------------------------------------------------

    def next_message(self) -> tuple[str, dict]:
        r = self.rng.random()
        if r < 0.75:
            if not self.conversions_only and r < 0.10:
                return RAW, self.raw_web("page" if r < 0.065 else "identify")
            return RAW, (self.raw_mobile() if self.rng.random() < 0.3 else self.raw_web())
        if r < 0.95:
            return WAREHOUSE, self.warehouse()
        return FLAT, self.flat()


def lines(records: int, seed: int = 7, *, conversions_only: bool = False) -> t.Iterator[str]:
    """The Singer lines: each stream's SCHEMA, the records, a STATE every 10,000 records."""
    gen = Generator(seed, conversions_only=conversions_only)
    schemas = {
        RAW: (RAW_SCHEMA, []),
        WAREHOUSE: (WAREHOUSE_SCHEMA, ["id"]),
        FLAT: (FLAT_SCHEMA, []),
    }
    for stream, (schema, keys) in schemas.items():
        yield json.dumps(
            {"type": "SCHEMA", "stream": stream, "schema": schema, "key_properties": keys}
        )
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for i in range(records):
        stream, record = gen.next_message()
        yield dumps({"type": "RECORD", "stream": stream, "record": record})
        if (i + 1) % 10_000 == 0:
            yield dumps({"type": "STATE", "value": {"bookmarks": {"position": i + 1}}})
    yield dumps({"type": "STATE", "value": {"bookmarks": {"position": records}}})


def write(path: str | None, records: int, seed: int = 7, *, conversions_only: bool = False) -> None:
    out = open(path, "w", encoding="utf-8") if path else sys.stdout
    try:
        buf: list[str] = []
        for line in lines(records, seed, conversions_only=conversions_only):
            buf.append(line)
            if len(buf) >= 1000:
                out.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            out.write("\n".join(buf) + "\n")
        out.flush()
    finally:
        if path:
            out.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--conversions",
        action="store_true",
        help="every record a valid conversion (the delivery input)",
    )
    parser.add_argument("--out", help="file to write (default: stdout)")
    args = parser.parse_args()
    try:
        write(args.out, args.records, args.seed, conversions_only=args.conversions)
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
