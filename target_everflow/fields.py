"""The Segment -> Everflow field table, as data.

``FIELDS`` is the seed's table row for row: the "All Sources" rows, then the "Mobile Sources"
rows. Each row says where the value is in a Segment event, which Everflow postback parameter it
becomes, the Everflow type(s) it accepts, whether it is required, and for which sources. The
mapper, its validation and the documented field table are all driven by it: adding a field is
adding a row.

Where a row departs from the seed (``order_id`` is text, the ``currency`` row the seed does not
have, the amount's fallbacks), the row says so in ``departures``: what the seed says, why we
differ and the source (a test checks every other row against the seed, and that every departure
is declared).

Two conventions keep the rows declarative:

- ``[i]`` marks a list: ``properties.products[i].quantity`` -> ``order_line_items[i].quantity``
  builds the JSON array parameter ``order_line_items`` from the list ``properties.products``.
- ``rule`` names a value rule from ``RULES`` for the three rows whose value is derived rather
  than copied (``limit_ad_tracking`` is the inverse of ``adTrackingEnabled``; ``connection_type``
  comes from two booleans). ``fallback`` lists further Segment paths tried when the first is
  absent (``amount``: ``properties.total``, else ``properties.revenue``, else
  ``properties.value``).
- ``convert`` names a converter from ``CONVERTERS`` for a parameter whose text is stricter than
  its type (``order_id``: text as given, an integral number as its digits; ``currency``: three
  letters, upper-cased).
"""

from __future__ import annotations

import enum
import json
import re
import typing as t
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from target_everflow.text import clip

MAX_VALUE_LENGTH = 2048
"""Longest value sent in one parameter; longer values are a type mismatch, not a 414."""


class FieldType(str, enum.Enum):
    """Everflow's parameter types, as the seed names them."""

    STRING = "String"
    NUMBER = "Number"
    BOOLEAN = "Boolean"


S, N, B = FieldType.STRING, FieldType.NUMBER, FieldType.BOOLEAN

ALL = "all"
MOBILE = "mobile"
PLATFORMS = {ALL: ("web", "mobile"), MOBILE: ("mobile",)}


@dataclass(frozen=True)
class Departure:
    """Where a row of ``FIELDS`` departs from the seed's table, and why."""

    aspect: str
    """What differs: ``type``, ``fallback`` or ``row`` (a row the seed does not have)."""
    seed: str
    """What the seed says (for a new row: that it has none)."""
    reason: str
    source: str
    """Where the reason comes from (Everflow's or Segment's documentation)."""


@dataclass(frozen=True)
class Field:
    """One row of the seed's table."""

    segment: str
    """Segment property path, e.g. ``context.userAgent`` or ``properties.products[i].sku``."""
    param: str
    """Everflow postback parameter, e.g. ``http_user_agent`` or ``order_line_items[i].sku``."""
    types: tuple[FieldType, ...]
    """Everflow types the parameter accepts (the seed's Type column)."""
    required: bool = False
    sources: str = ALL
    """``all`` (every source) or ``mobile`` (mobile sources only): the seed's two tables."""
    fallback: tuple[str, ...] = ()
    """More Segment paths, tried in order when ``segment`` is absent."""
    rule: str | None = None
    """A value rule from ``RULES`` for a derived value."""
    note: str = ""
    convert: str | None = None
    """A converter from ``CONVERTERS``, used instead of the type coercion."""
    departures: tuple[Departure, ...] = ()
    """Where this row departs from the seed's table (none: it is the seed's row as it is)."""

    @property
    def is_list_item(self) -> bool:
        return "[i]" in self.segment


FIELDS: tuple[Field, ...] = (
    # --- All sources ---------------------------------------------------------------------
    Field("context.ip", "conversion_user_ip", (S,)),
    Field("context.userAgent", "http_user_agent", (S,)),
    Field("context.traits.email", "email", (S,)),
    Field("properties.adv1", "adv1", (S, N, B)),
    Field("properties.adv2", "adv2", (S, N, B)),
    Field("properties.adv3", "adv3", (S, N, B)),
    Field("properties.adv4", "adv4", (S, N, B)),
    Field("properties.adv5", "adv5", (S, N, B)),
    Field("properties.coupon", "coupon_code", (S, N)),
    Field(
        "properties.orderId",
        "order_id",
        (S,),
        convert="order_id",
        note="text as given; a number as its digits",
        departures=(
            Departure(
                "type",
                "Number",
                "Everflow types order_id as a string everywhere it gives a type, and Segment "
                "sends order ids such as ORD-2026-0042: sent as Number, such ids were dropped",
                "developers.everflow.io/sdk/conversion-tracking (order_id: string); Segment "
                "Ecommerce v2 spec (order_id: String)",
            ),
        ),
    ),
    Field("properties.affiliateId", "affiliate_id", (N,)),
    Field("properties.products[i].quantity", "order_line_items[i].quantity", (N,)),
    Field("properties.products[i].name", "order_line_items[i].name", (S,)),
    Field("properties.products[i].sku", "order_line_items[i].sku", (S,)),
    Field(
        "properties.total",
        "amount",
        (N,),
        fallback=("properties.revenue", "properties.value"),
        note="total, else revenue, else value (each only when the ones before are absent)",
        departures=(
            Departure(
                "fallback",
                "properties.total only",
                "Order Completed events often carry revenue and no total, Checkout Started "
                "carries value: Segment's own destinations read revenue, then total; "
                "RudderStack revenue, total, value",
                "Segment Ecommerce v2 spec; Segment's and RudderStack's Everflow destinations",
            ),
        ),
    ),
    Field(
        "properties.currency",
        "currency",
        (S,),
        convert="currency",
        note="ISO 4217, upper-cased (eur -> EUR); setting send_currency",
        departures=(
            Departure(
                "row",
                "no currency row",
                "Everflow reads the amount in the offer's currency unless the postback says "
                "which it is (then it converts); Segment's Order Completed carries currency",
                "helpdesk.everflow.io/en/articles/6120678-currency-configurations",
            ),
        ),
    ),
    # --- Mobile sources ------------------------------------------------------------------
    Field("context.ip", "conversion_user_ip", (S,), required=True, sources=MOBILE),
    Field("context.app.namespace", "app_id", (S,), required=True, sources=MOBILE),
    Field(
        "context.device.adTrackingEnabled",
        "limit_ad_tracking",
        (B,),
        sources=MOBILE,
        rule="inverse",
        note="the inverse: true when ad tracking is disabled",
    ),
    Field("context.app.name", "app_name", (S,), sources=MOBILE),
    Field("context.app.version", "app_version", (S, N), sources=MOBILE),
    Field("context.device.manufacturer", "device_make", (S,), sources=MOBILE),
    Field("context.device.model", "device_model", (S,), sources=MOBILE),
    Field("context.network.carrier", "carrier", (S,), sources=MOBILE),
    Field("context.os.name", "os", (S,), sources=MOBILE),
    Field("context.os.version", "os_version", (S, N), sources=MOBILE),
    Field(
        "context.network.wifi",
        "connection_type",
        (S,),
        sources=MOBILE,
        fallback=("context.network.cellular",),
        rule="connection_type",
        note="wifi when context.network.wifi is true, else cellular when context.network.cellular is true",
    ),
    Field("context.location.latitude", "latitude", (N,), sources=MOBILE),
    Field("context.location.longitude", "longitude", (N,), sources=MOBILE),
)

IDENTITY_PARAMETERS = ("nid", "transaction_id", "aid", "adv_event_id", "timestamp")
"""The parameters that say which conversion a postback is (the field table adds the rest)."""
POSTBACK_PARAMETERS = frozenset(
    (*IDENTITY_PARAMETERS, "verification_token", *(f.param.split("[", 1)[0] for f in FIELDS))
)
"""Every parameter a postback may carry (``verification_token`` is added by the client)."""


# --- Type coercion ----------------------------------------------------------------------


class Mismatch(ValueError):
    """A value that cannot be coerced losslessly to the field's type(s)."""


# ASCII digits only: ``\d`` alone would also take Arabic-Indic or full-width digits.
_NUMERIC = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$", re.ASCII)
_JSON_NUMBER = re.compile(r"^-?(?:0|[1-9]\d*)(?:\.\d+)?$", re.ASCII)
"""A plain decimal that is also a valid JSON number (no ``007``, ``1.``, ``.5``, ``+5``)."""
MAX_NUMBER_DIGITS = 100
"""Longest plain-decimal text of a number; beyond it a value is not a plausible amount or id."""
_PLAIN_INT = 10**MAX_NUMBER_DIGITS
"""Integers strictly between minus and plus this have at most ``MAX_NUMBER_DIGITS`` digits."""


def _describe(value: t.Any) -> str:
    try:
        return _describe_unsafe(value)
    except ValueError:  # e.g. an int with more digits than Python will print
        return f"a {type(value).__name__}"


def _describe_unsafe(value: t.Any) -> str:
    if isinstance(value, str):
        return f"the string {clip(value, 40)!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (dict, list)):
        return f"a{'n object' if isinstance(value, dict) else ' list'}"
    return f"{type(value).__name__} {value!r}"[:60]


class NumberText(str):
    """Plain-decimal text of a number: a string that remembers it is a number."""

    __slots__ = ()


def plain_decimal(value: Decimal) -> str | None:
    """A ``Decimal``'s text when it is ``_number_text``'s already (at once: most amounts are),
    else None: plain (no exponent, finite), a JSON number, at most ``MAX_NUMBER_DIGITS``
    characters, so within the digit bounds ``_written_out`` checks."""
    text = str(value)
    if len(text) <= MAX_NUMBER_DIGITS and _JSON_NUMBER.match(text):
        return text
    return None


def _number_text(value: Decimal) -> NumberText:
    plain = plain_decimal(value)
    return NumberText(plain if plain is not None else _written_out(value))


def _written_out(value: Decimal) -> str:
    """A ``Decimal``'s plain-decimal text, checked: finite, within the digit bounds, its
    exponent written out."""
    if not value.is_finite():
        raise Mismatch(f"{value} is not a finite number")
    exponent = value.as_tuple().exponent
    if value.adjusted() >= MAX_NUMBER_DIGITS or (
        isinstance(exponent, int) and exponent < -MAX_NUMBER_DIGITS
    ):
        raise Mismatch(f"the number has more than {MAX_NUMBER_DIGITS} digits")
    text = str(value)
    if "E" in text or "e" in text:
        text = format(value, "f")
    if len(text) > MAX_NUMBER_DIGITS + 2:
        raise Mismatch(f"the number has more than {MAX_NUMBER_DIGITS} digits")
    return text


def as_number(value: t.Any) -> NumberText:
    """Plain-decimal text of a number (as given: no exponent, no float rounding).

    The text is always a valid JSON number too (``order_line_items`` embeds it as one): a
    numeric string is kept as written when it already is one, else normalised losslessly
    (``"007"`` -> ``7``, ``"1."`` -> ``1``, ``".5"`` -> ``0.5``, ``"1e3"`` -> ``1000``).
    """
    if isinstance(value, bool):
        raise Mismatch(f"{_describe(value)} is not a number")
    if isinstance(value, int):
        try:
            text = str(int(value))
        except ValueError:  # more digits than Python will print
            raise Mismatch("the integer is too large") from None
        if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
            raise Mismatch(f"the number has more than {MAX_NUMBER_DIGITS} digits")
        return NumberText(text)
    if isinstance(value, Decimal):
        return _number_text(value)
    if isinstance(value, float):
        text = repr(value)  # the shortest text that reads back as this float
        if _JSON_NUMBER.match(text):  # plain already (no exponent, not inf or nan): as is
            return NumberText(text)
        return _number_text(Decimal(text))
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= MAX_NUMBER_DIGITS + 2 and _JSON_NUMBER.match(text):
            return NumberText(text)
        if len(text) <= MAX_NUMBER_DIGITS + 2 and _NUMERIC.match(text):
            try:
                return _number_text(Decimal(text))
            except InvalidOperation:
                pass
    raise Mismatch(f"{_describe(value)} is not a number")


def as_string(value: t.Any) -> str:
    """Text of a string, or of a number (lossless)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        text = str(as_number(value))
    elif isinstance(value, (datetime, date)):
        text = value.isoformat()
    else:
        raise Mismatch(f"{_describe(value)} is not a string")
    if len(text) > MAX_VALUE_LENGTH:
        raise Mismatch(f"the string is {len(text)} characters long (at most {MAX_VALUE_LENGTH})")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise Mismatch("the string is not valid Unicode") from None
    return text


def as_boolean(value: t.Any) -> bool:
    """A boolean, or the strings "true"/"false" (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise Mismatch(f"{_describe(value)} is not a boolean")


def as_order_id(value: t.Any) -> str:
    """An order id as Everflow reads it, text: a string exactly as given (``"007"`` stays
    ``007``, spaces stay), a number as its JSON text, an integral one as its digits (``1001``
    and ``1001.0`` -> ``1001``, ``1e21`` -> 21 digits, never an exponent)."""
    if isinstance(value, str):
        return as_string(value)
    if type(value) is int and -_PLAIN_INT < value < _PLAIN_INT:
        return str(value)  # as_number's text: an integer's digits
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        text = str(as_number(value))
        whole, dot, fraction = text.partition(".")
        if dot and not fraction.strip("0"):
            text = "0" if whole == "-0" else whole
        return text
    raise Mismatch(f"{_describe(value)} cannot be sent as an order id (text or a number)")


_CURRENCY_CODE = re.compile(r"[A-Za-z]{3}", re.ASCII)


def as_currency(value: t.Any) -> str:
    """An ISO 4217 currency code: three ASCII letters, upper-cased (``eur`` -> ``EUR``)."""
    if isinstance(value, str) and _CURRENCY_CODE.fullmatch(value):
        return value.upper()
    raise Mismatch(
        f"{_describe(value)} cannot be sent as a currency (three letters of ISO 4217, e.g. EUR)"
    )


CONVERTERS: dict[str, t.Callable[[t.Any], str]] = {
    "order_id": as_order_id,
    "currency": as_currency,
}
"""Converters named by ``Field.convert``: the value's text, or ``Mismatch``."""


_NATIVE: dict[type, FieldType] = {bool: B, int: N, float: N, Decimal: N, str: S}
_CONVERT: dict[FieldType, t.Callable[[t.Any], t.Any]] = {S: as_string, N: as_number, B: as_boolean}


def coerce(value: t.Any, types: tuple[FieldType, ...]) -> str | bool:
    """Coerce a value to the first of ``types`` it fits losslessly.

    The value's own type wins when the field accepts it (a boolean ``adv1`` stays a boolean);
    otherwise the lossless coercions are tried in the table's order. Numbers come back as
    plain-decimal text, strings as text, booleans as ``bool``.
    """
    native = _NATIVE.get(type(value))
    if native in types:
        return _CONVERT[native](value)
    for field_type in types:
        try:
            return _CONVERT[field_type](value)
        except Mismatch:
            continue
    names = " or ".join(ft.value for ft in types)
    raise Mismatch(f"{_describe(value)} cannot be sent as {names}")


def render(value: str | bool) -> str:
    """The query-string text of a coerced value."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def text_of(types: tuple[FieldType, ...]) -> t.Callable[[t.Any], str]:
    """``render(coerce(value, types))`` for a field of ``types``, built once per field: a plain
    ASCII string that a String field takes as it is, or a number a Number field takes that is
    plain already (an integer, a float or ``Decimal`` without exponent), comes back at once."""
    return _text_function(types, None, render)


def json_text_of(types: tuple[FieldType, ...]) -> t.Callable[[t.Any], str]:
    """``render_json(coerce(value, types))`` for a field of ``types``, built once per field,
    with the same shortcuts as ``text_of``."""
    return _text_function(types, _json_string, render_json)


def _text_function(
    types: tuple[FieldType, ...],
    quoted: t.Callable[[str], str] | None,
    rendered: t.Callable[[str | bool], str],
) -> t.Callable[[t.Any], str]:
    """``rendered(coerce(value, types))``, with the shortcuts of ``text_of``: a plain ASCII
    string as it is (through ``quoted`` if given), a plain number as its digits."""
    strings, numbers = S in types, N in types

    def text(value: t.Any) -> str:
        kind = type(value)
        if kind is str:
            if strings and value.isascii() and len(value) <= MAX_VALUE_LENGTH:
                return value if quoted is None else quoted(value)
        elif kind is int and numbers and -_PLAIN_INT < value < _PLAIN_INT:
            return str(value)
        elif kind is float and numbers:
            text = repr(value)  # as_number's text of a float that is plain already
            if _JSON_NUMBER.match(text):
                return text
        elif kind is Decimal and numbers:
            plain = plain_decimal(value)
            if plain is not None:
                return plain
        return rendered(coerce(value, types))

    return text


_json_string: t.Callable[[str], str] = json.encoder.encode_basestring
"""``json.dumps(s, ensure_ascii=False)`` for a str, without building an encoder (the C function)."""


def render_json(value: str | bool) -> str:
    """The JSON text of a coerced value (numbers stay numbers, exactly as given)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, NumberText):
        return str(value)
    return _json_string(value)


# --- Value rules for derived fields -------------------------------------------------------


def _inverse(values: list[t.Any]) -> str | bool | None:
    enabled = values[0]
    if enabled is None:
        return None
    return not as_boolean(enabled)


def _connection_type(values: list[t.Any]) -> str | bool | None:
    wifi, cellular = (values + [None, None])[:2]
    if wifi is not None and as_boolean(wifi):
        return "wifi"
    if cellular is not None and as_boolean(cellular):
        return "cellular"
    return None


RULES: dict[str, t.Callable[[list[t.Any]], str | bool | None]] = {
    "inverse": _inverse,
    "connection_type": _connection_type,
}
"""A rule takes the values at ``segment`` and each ``fallback`` path (None when absent)."""


# --- The documented table -------------------------------------------------------------------


def departures() -> list[tuple[Field, Departure]]:
    """Every declared departure from the seed's table, in table order."""
    return [(f, d) for f in FIELDS for d in f.departures]


def departures_markdown() -> str:
    """The departures from the seed, as a Markdown list (under the field table)."""
    lines = ["Where this table departs from Everflow's Segment integration page (the seed):", ""]
    for f, d in departures():
        lines.append(
            f"- `{f.param}` ({d.aspect}): the seed says {d.seed}. {d.reason}. Source: {d.source}."
        )
    return "\n".join(lines)


def markdown_table() -> str:
    """The documented field table, generated from ``FIELDS`` (a test keeps the docs in step),
    followed by the departures from the seed."""
    lines = [
        "| Segment property | Everflow parameter | Type | Required | Sources | Notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in FIELDS:
        segment = f"`{f.segment}`" + "".join(f" / `{p}`" for p in f.fallback)
        types = ", ".join(ft.value for ft in f.types)
        departs = " (departs from the seed: see below)" if f.departures else ""
        lines.append(
            f"| {segment} | `{f.param}` | {types} | {'yes' if f.required else 'no'} "
            f"| {f.sources} | {f.note}{departs} |"
        )
    return "\n".join(lines) + "\n\n" + departures_markdown()
