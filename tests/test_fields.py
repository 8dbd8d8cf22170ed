"""The field table (``fields.FIELDS``) against the seed's table, and the type coercions."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from target_everflow import fields
from target_everflow.fields import (
    ALL,
    FIELDS,
    MOBILE,
    B,
    FieldType,
    Mismatch,
    N,
    NumberText,
    S,
    as_boolean,
    as_number,
    as_string,
    coerce,
    render,
    render_json,
)

SEED = Path(__file__).parent / "fixtures" / "everflow-segment-integration.txt"
"""A verbatim copy of the seed (Everflow's "Segment Integration" help page, as text)."""
HEADER = "Segment Property Everflow Parameter Required Type"


# --- The table is the seed's table ---------------------------------------------------------


def parse_seed_table(text: str) -> dict[str, list[tuple[str, str, bool, tuple[str, ...]]]]:
    """The seed's two tables ("All Sources", "Mobile Sources") as rows.

    The seed is the help page's text, each table flattened to one line of words:
    ``<path> <param> <True|False> <Type>[, <Type>...]`` repeated.
    """
    start = text.index("Step 5: Event Mapping")
    body = text[start:]
    all_at = body.index("All Sources")
    mobile_at = body.index("Mobile Sources")
    sections = {ALL: body[all_at:mobile_at], MOBILE: body[mobile_at:]}
    tables = {}
    for source, section in sections.items():
        words = section[section.index(HEADER) + len(HEADER) :].split()
        rows = []
        i = 0
        while i < len(words):
            path, param, required = words[i], words[i + 1], words[i + 2]
            assert required in {"True", "False"}, (source, words[i : i + 4])
            i += 3
            types = []
            while True:
                word = words[i]
                i += 1
                # the page's last word may be glued to whatever follows the table
                name = re.match(r"(String|Number|Boolean)", word)
                assert name, (source, path, word)
                types.append(name.group(1))
                if not word.endswith(","):
                    break
            rows.append((path, param, required == "True", tuple(types)))
            if i < len(words) and not re.match(r"^[a-z]+\.", words[i]):
                break  # past the table
        tables[source] = rows
    return tables


def seed_tables() -> dict[str, list[tuple[str, str, bool, tuple[str, ...]]]]:
    return parse_seed_table(SEED.read_text(encoding="utf-8"))


def test_seed_parser_reads_both_tables() -> None:
    tables = seed_tables()
    # The page's tables: 15 rows for all sources, 13 for mobile sources.
    assert len(tables[ALL]) == 15
    assert len(tables[MOBILE]) == 13
    assert tables[ALL][0] == ("context.ip", "conversion_user_ip", False, ("String",))
    assert tables[ALL][3] == ("properties.adv1", "adv1", False, ("String", "Number", "Boolean"))
    assert tables[MOBILE][-1] == ("context.location.longitude", "longitude", False, ("Number",))


def aspects(f: fields.Field) -> set[str]:
    return {d.aspect for d in f.departures}


def as_seed_row(f: fields.Field) -> tuple[str, str, bool, tuple[str, ...]]:
    """The row as the seed would have it: a declared type departure put back to the seed's."""
    types = tuple(ft.value for ft in f.types)
    for d in f.departures:
        if d.aspect == "type":
            types = tuple(name.strip() for name in d.seed.split(","))
    return (f.segment, f.param, f.required, types)


@pytest.mark.parametrize("source", [ALL, MOBILE])
def test_fields_are_the_seed_table_row_for_row(source: str) -> None:
    """Every row is the seed's row, but for what it declares as a departure (a new row, the
    type): each undeclared difference fails here."""
    seed = seed_tables()[source]
    ours = [as_seed_row(f) for f in FIELDS if f.sources == source and "row" not in aspects(f)]
    assert len(ours) == len(seed)
    for i, (mine, theirs) in enumerate(zip(ours, seed)):
        assert mine == theirs, f"row {i} of the {source} table"
    declared_types = {f.param for f in FIELDS if "type" in aspects(f) and f.sources == source}
    real = {
        f.param
        for f, theirs in zip(
            (f for f in FIELDS if f.sources == source and "row" not in aspects(f)), seed
        )
        if tuple(ft.value for ft in f.types) != theirs[3]
    }
    assert real == declared_types  # a declared type departure really departs


def test_every_departure_is_declared_with_its_reason_and_source() -> None:
    declared = {(f.param, d.aspect) for f, d in fields.departures()}
    assert declared == {("order_id", "type"), ("amount", "fallback"), ("currency", "row")}
    for f, d in fields.departures():
        assert d.seed and d.reason and d.source, f.param
        assert d.aspect in {"type", "fallback", "row"}
    # a fallback path beyond the seed's one path is a departure, unless a rule derives the
    # value from both (connection_type reads wifi and cellular)
    for f in FIELDS:
        if f.fallback and f.rule is None:
            assert "fallback" in aspects(f), f.param
    order_id = next(f for f in FIELDS if f.param == "order_id")
    assert [d.seed for d in order_id.departures] == ["Number"]


def test_fields_order_is_all_sources_then_mobile() -> None:
    sources = [f.sources for f in FIELDS]
    assert sources == [ALL] * 16 + [MOBILE] * 13
    assert [f.param for f in FIELDS][14:16] == ["amount", "currency"]


def test_only_documented_extras_fallback_rules_and_converters() -> None:
    """Beyond the seed: amount falls back to revenue, then value; two rows are derived by a
    rule; order_id and currency have their converters."""
    extras = {f.param: (f.fallback, f.rule) for f in FIELDS if f.fallback or f.rule}
    assert extras == {
        "amount": (("properties.revenue", "properties.value"), None),
        "limit_ad_tracking": ((), "inverse"),
        "connection_type": (("context.network.cellular",), "connection_type"),
    }
    for f in FIELDS:
        if f.rule:
            assert f.rule in fields.RULES
    assert {f.param: f.convert for f in FIELDS if f.convert} == {
        "order_id": "order_id",
        "currency": "currency",
    }
    assert set(fields.CONVERTERS) == {"order_id", "currency"}


def test_list_rows_share_one_list() -> None:
    items = [f for f in FIELDS if f.is_list_item]
    assert [f.param for f in items] == [
        "order_line_items[i].quantity",
        "order_line_items[i].name",
        "order_line_items[i].sku",
    ]
    assert {f.segment.split("[i].")[0] for f in items} == {"properties.products"}


def test_markdown_table_has_a_row_per_field() -> None:
    table = fields.markdown_table().split("\n\n")[0].splitlines()
    assert len(table) == 2 + len(FIELDS)
    assert table[2].startswith("| `context.ip` | `conversion_user_ip` | String | no | all |")
    amount = next(line for line in table if "`amount`" in line)
    assert "`properties.total` / `properties.revenue` / `properties.value`" in amount
    departing = [line for line in table if "departs from the seed" in line]
    assert len(departing) == len({f.param for f, _ in fields.departures()})
    assert (
        "| `context.app.namespace` | `app_id` | String | yes | mobile |" in fields.markdown_table()
    )


def test_markdown_table_lists_the_departures() -> None:
    listed = fields.markdown_table().split("\n\n", 1)[1]
    for f, d in fields.departures():
        assert f"- `{f.param}` ({d.aspect}): the seed says {d.seed}." in listed
        assert d.source in listed


# --- as_number -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("76.0"), "76.0"),  # as given: the trailing zero stays
        (Decimal("27.50"), "27.50"),
        (Decimal("1E+2"), "100"),  # no exponent
        (Decimal("1.5E-3"), "0.0015"),
        (Decimal("-0.000001"), "-0.000001"),
        (Decimal("0E-7"), "0.0000000"),
        (
            Decimal("123456789012345678901234567890.123456789"),
            "123456789012345678901234567890.123456789",
        ),
        (0.1, "0.1"),  # a float's shortest repr, not 0.1000000000000000055511151231257827
        (1e20, "100000000000000000000"),
        (1e-07, "0.0000001"),
        (-74.006, "-74.006"),
        (0, "0"),
        (-5, "-5"),
        (50314, "50314"),
        (10**30, "1" + "0" * 30),  # a huge int, every digit
        (2**64 + 1, "18446744073709551617"),
        ("42", "42"),  # numeric strings
        ("-3.25", "-3.25"),
        ("0.10", "0.10"),
        (" 42 ", "42"),
        ("1e3", "1000"),  # exponent strings written out
        ("1E+2", "100"),
        ("2.5e-2", "0.025"),
        ("+5", "5"),  # normalised to a valid JSON number
        ("007", "7"),
        ("1.", "1"),
        (".5", "0.5"),
        ("-.5", "-0.5"),
    ],
)
def test_as_number(value: object, expected: str) -> None:
    result = as_number(value)
    assert result == expected
    assert isinstance(result, NumberText)
    assert type(result) is NumberText


@pytest.mark.parametrize(
    "value",
    [
        True,  # a bool is not a Number
        False,
        float("nan"),
        float("inf"),
        float("-inf"),
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        "",
        " ",
        "abc",
        "ORD-2026-0042",
        "1,000",
        "1_000",
        "0x10",
        "1e",
        "--1",
        "١٢٣",  # Arabic-Indic digits are not ASCII digits
        "１２３",  # full-width digits
        "true",
        None,
        [1],
        {"v": 1},
        datetime(2026, 1, 1),
        Decimal("1E+1000"),  # would be a thousand digits written out
        Decimal("1E-1000"),
        10**200,
        "1" * 200,
    ],
)
def test_as_number_rejects(value: object) -> None:
    with pytest.raises(Mismatch):
        as_number(value)


def test_as_number_rejects_an_int_python_will_not_print() -> None:
    with pytest.raises(Mismatch):
        as_number(10**5000)


@pytest.mark.parametrize("value", ["1.", ".5", "007", "+5", "1e3", Decimal("1E+2"), 1e20, "-0"])
def test_number_text_is_a_valid_json_number(value: object) -> None:
    text = as_number(value)
    assert json.loads(text) == json.loads(str(text))
    assert re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?", text), text


# --- as_string -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("com.example.shop", "com.example.shop"),
        ("", ""),
        ("  padded  ", "  padded  "),  # strings as given
        ("Ünïcødé ✓", "Ünïcødé ✓"),
        (2026, "2026"),  # numbers for String, losslessly
        (Decimal("17.10"), "17.10"),
        (Decimal("1E+2"), "100"),
        (4.2, "4.2"),
        (datetime(2026, 11, 20, 18, 14, 8, tzinfo=timezone.utc), "2026-11-20T18:14:08+00:00"),
    ],
)
def test_as_string(value: object, expected: str) -> None:
    assert as_string(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        {"v4": "1.2.3.4"},
        ["a"],
        float("nan"),
        Decimal("Infinity"),
        "x" * 2049,
        "\ud800",
    ],
)
def test_as_string_rejects(value: object) -> None:
    with pytest.raises(Mismatch):
        as_string(value)


def test_as_string_length_limit_is_inclusive() -> None:
    assert as_string("x" * fields.MAX_VALUE_LENGTH) == "x" * fields.MAX_VALUE_LENGTH


# --- as_boolean ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("TRUE", True),
        ("True", True),
        (" true ", True),
        ("false", False),
        ("FALSE", False),
        ("False", False),
    ],
)
def test_as_boolean(value: object, expected: bool) -> None:
    assert as_boolean(value) is expected


@pytest.mark.parametrize(
    "value", [1, 0, "1", "0", "yes", "no", "t", "", None, Decimal("1"), 1.0, [True]]
)
def test_as_boolean_rejects(value: object) -> None:
    with pytest.raises(Mismatch):
        as_boolean(value)


# --- coerce / render -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "types", "expected"),
    [
        # the value's own type wins when the field takes it
        (True, (S, N, B), True),
        (False, (S, N, B), False),
        (3, (S, N, B), "3"),
        (Decimal("4.50"), (S, N, B), "4.50"),
        ("true", (S, N, B), "true"),  # a string stays a string
        ("spring", (S, N, B), "spring"),
        (2026, (S, N), "2026"),
        ("HASBROS", (S, N), "HASBROS"),
        # lossless coercions in the table's order
        ("50314", (N,), "50314"),
        ("1e2", (N,), "100"),
        (50314, (S,), "50314"),
        (Decimal("17.1"), (S,), "17.1"),
        ("true", (B,), True),
        ("TRUE", (B,), True),
        ("False", (B,), False),
    ],
)
def test_coerce(value: object, types: tuple[FieldType, ...], expected: object) -> None:
    result = coerce(value, types)
    assert result == expected
    assert type(result) is type(expected) or (isinstance(expected, str) and isinstance(result, str))


def test_coerce_keeps_number_text_for_numbers() -> None:
    assert isinstance(coerce(Decimal("1.0"), (S, N)), NumberText)
    assert isinstance(coerce("12", (N,)), NumberText)
    assert not isinstance(coerce("12", (S, N)), NumberText)  # a string stays a string
    assert not isinstance(coerce(12, (S,)), NumberText)  # a number sent as a String


@pytest.mark.parametrize(
    ("value", "types"),
    [
        ("ORD-2026-0042", (N,)),
        (True, (N,)),  # bool is not a Number
        (True, (S,)),  # nor a String
        (True, (S, N)),
        (1, (B,)),
        ("yes", (B,)),
        ({"v4": "1.2.3.4"}, (S,)),
        ([1, 2], (S, N, B)),
        (None, (S, N, B)),
    ],
)
def test_coerce_rejects(value: object, types: tuple[FieldType, ...]) -> None:
    with pytest.raises(Mismatch) as info:
        coerce(value, types)
    assert " or ".join(t.value for t in types) in str(info.value)


@pytest.mark.parametrize("types", [(N,), (S, N), (S, N, B)])
@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), Decimal("NaN"), Decimal("-Infinity")]
)
def test_coerce_rejects_non_finite_numbers(value: object, types: tuple[FieldType, ...]) -> None:
    with pytest.raises(Mismatch, match="finite"):
        coerce(value, types)


def test_render() -> None:
    assert render(True) == "true"
    assert render(False) == "false"
    assert render(NumberText("1.50")) == "1.50"
    assert render("x y") == "x y"


def test_render_json() -> None:
    assert render_json(True) == "true"
    assert render_json(False) == "false"
    assert render_json(NumberText("1.50")) == "1.50"  # a number, exactly as given
    assert render_json("12") == '"12"'  # a string that looks like a number stays a string
    assert render_json('Say "hi" ✓') == '"Say \\"hi\\" ✓"'


def test_rules() -> None:
    inverse = fields.RULES["inverse"]
    assert inverse([True]) is False
    assert inverse([False]) is True
    assert inverse(["false"]) is True
    assert inverse([None]) is None
    with pytest.raises(Mismatch):
        inverse(["maybe"])
    connection = fields.RULES["connection_type"]
    assert connection([True, None]) == "wifi"
    assert connection([True, True]) == "wifi"
    assert connection([False, True]) == "cellular"
    assert connection([None, "true"]) == "cellular"
    assert connection([False, False]) is None
    assert connection([None, None]) is None
    with pytest.raises(Mismatch):
        connection(["sometimes", None])


def test_no_float_rounding_anywhere() -> None:
    # A float whose exact binary value has many digits: we send its shortest repr.
    assert as_number(0.1 + 0.2) == "0.30000000000000004"
    assert as_number(Decimal("0.1") + Decimal("0.2")) == "0.3"


# --- converters: order_id, currency ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ORD-2026-0042", "ORD-2026-0042"),
        ("007", "007"),
        (" 7 ", " 7 "),
        ("#1001", "#1001"),
        (1001, "1001"),
        (1001.0, "1001"),
        (Decimal("1001.000"), "1001"),
        (Decimal("10.50"), "10.50"),
        (1e21, "1000000000000000000000"),
        (1.5e-7, "0.00000015"),
        (12345678901234567890, "12345678901234567890"),
        (-0.0, "0"),
    ],
)
def test_as_order_id(value: object, expected: str) -> None:
    assert fields.as_order_id(value) == expected


@pytest.mark.parametrize(
    "value", [True, False, None, {"id": 1}, [1], float("nan"), "x" * 2049, datetime(2026, 1, 1)]
)
def test_as_order_id_rejects(value: object) -> None:
    with pytest.raises(Mismatch):
        fields.as_order_id(value)


@pytest.mark.parametrize(
    ("value", "expected"), [("eur", "EUR"), ("EUR", "EUR"), ("uSd", "USD"), ("XAU", "XAU")]
)
def test_as_currency(value: object, expected: str) -> None:
    assert fields.as_currency(value) == expected


@pytest.mark.parametrize(
    "value", ["euro", "EU", "", " eur", "eur ", "€", "ÉUR", "E1R", 978, True, None, ["EUR"]]
)
def test_as_currency_rejects(value: object) -> None:
    with pytest.raises(Mismatch, match="currency"):
        fields.as_currency(value)


@pytest.mark.parametrize(
    "value",
    [
        Decimal("31.9"),
        Decimal("-0"),
        Decimal("0E-7"),
        Decimal("76.0"),
        Decimal("1E+2"),  # an exponent: the full check writes it out
        Decimal("1" + "0" * 99),  # 100 digits: the most a shortcut takes
        Decimal("1" + "0" * 100),  # 101 digits: refused, shortcut or not
        Decimal("0." + "0" * 97 + "1"),  # 100 characters, 98 decimals
        Decimal("0." + "0" * 98 + "1"),  # one more
        Decimal("-" + "9" * 99),
        Decimal("NaN"),
        Decimal("-Infinity"),
        Decimal("1E-1000"),
    ],
)
def test_a_decimal_plain_already_is_read_at_once_as_the_full_check_reads_it(value: Decimal) -> None:
    """``plain_decimal`` (the shortcut most amounts take) gives what the full check gives: the
    same text, or nothing where the full check writes an exponent out or refuses the number;
    and a Number field's text (``text_of``, ``json_text_of``) is ``as_number``'s either way."""
    plain = fields.plain_decimal(value)
    try:
        full = fields._written_out(value)
    except Mismatch:
        assert plain is None
        for text in (as_number, fields.text_of((N,)), fields.json_text_of((N,))):
            with pytest.raises(Mismatch):
                text(value)
        return
    assert plain is None or plain == full
    if plain is None:
        assert str(value) != full or len(full) > fields.MAX_NUMBER_DIGITS
    assert as_number(value) == fields.text_of((N,))(value) == full
    assert fields.json_text_of((N,))(value) == full
