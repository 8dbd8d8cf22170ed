"""What Everflow reads, end to end (issue 19): order ids as text, the currency, the amount's
sources, and conversions too old to convert skipped (``too_old``) against a clock that tests,
the demo and pipelines can pin (``TARGET_EVERFLOW_CLOCK``).

Live runs go through the CLI in a subprocess against the test receiver (tests/receiver.py), as a
pipeline runs the target.
"""

from __future__ import annotations

import json
import sqlite3
import typing as t
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from target_everflow.clock import CLOCK_ENV, Clock, InvalidClock, from_environment, parse_time
from target_everflow.outcomes import TOO_OLD
from target_everflow.settings import ConfigError, Settings
from tests.conftest import (
    REPO,
    TEST_CLOCK,
    read_jsonl,
    run_in_process,
    run_target,
    singer_lines,
    track,
)
from tests.receiver import Receiver

DEMO_CONFIG = REPO / "samples" / "demo_config.json"
DEMO_INPUT = REPO / "samples" / "segment_events.singer"
DATA_DATE = datetime(2026, 11, 21, tzinfo=timezone.utc)
"""Just after the demo input's dates (2026-11-20 to 2026-11-22)."""


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def demo_lines() -> list[str]:
    return DEMO_INPUT.read_text(encoding="utf-8").splitlines()


def demo_config(tmp_path: Path, **overrides: t.Any) -> dict:
    """The demo's config, every file it writes under ``tmp_path``."""
    config = json.loads(DEMO_CONFIG.read_text(encoding="utf-8"))
    for name in ("dry_run_output", "dead_letter_path", "summary_path"):
        config[name] = str(tmp_path / Path(config[name]).name)
    return {**config, **overrides}


def live_demo_config(tmp_path: Path, url: str, **overrides: t.Any) -> dict:
    return demo_config(
        tmp_path,
        dry_run=False,
        postback_url=url,
        request_timeout=5,
        progress_interval=0,
        max_dead_letter_ratio=1,
        **overrides,
    )


def by_message(rx: Receiver, tmp_path: Path) -> dict[str, t.Any]:
    """The receiver's requests by the message id of the conversion they carry (read back from
    the ledger: transaction id -> key)."""
    ledger = sqlite3.connect(tmp_path / "ledger.sqlite3")
    try:
        keys = dict(ledger.execute("SELECT transaction_id, delivery_key FROM everflow_ledger"))
    finally:
        ledger.close()
    return {keys[r.transaction_id].removeprefix("m:"): r for r in rx.requests}


def ledger_rows(tmp_path: Path, columns: str) -> dict[str, tuple]:
    ledger = sqlite3.connect(tmp_path / "ledger.sqlite3")
    try:
        rows = ledger.execute(f"SELECT delivery_key, {columns} FROM everflow_ledger").fetchall()
    finally:
        ledger.close()
    return {row[0]: tuple(row[1:]) for row in rows}


# --- order ids, currency, amount: a live run of the demo input --------------------------------


def test_live_demo_input_sends_what_everflow_reads(tmp_path: Path) -> None:
    with Receiver() as rx:
        result = run_target(live_demo_config(tmp_path, rx.url), demo_lines(), tmp_path)
        assert result.code == 0, result.stderr
        sent = by_message(rx, tmp_path)

    ord_text = sent["ajs-008"]
    assert ord_text.query["order_id"] == "ORD-2026-0042"  # text, as given (Number dropped it)
    assert "order_id=ORD-2026-0042&" in ord_text.raw_query

    hashed = sent["ajs-010"]
    assert hashed.query["order_id"] == "#1001"  # arrived whole: the '#' was percent-encoded
    assert "order_id=%231001&" in hashed.raw_query
    assert hashed.query["currency"] == "EUR"  # "eur", upper-cased
    assert hashed.query["amount"] == "64.9"

    digits = sent["ajs-011"]
    assert digits.query["order_id"] == "12345678901234567890"  # every digit, no exponent
    assert "currency" not in digits.query  # "euro" is not a code: left out ...
    assert "Left out optional field currency" in result.stderr  # ... with the warning
    assert "ajs-011" in result.stderr
    assert digits.query["amount"] == "18.5"  # no total nor revenue: from value

    assert sent["ajs-001"].query["amount"] == "27.5"  # total before revenue
    assert sent["ios-002"].query["amount"] == "99.99"  # revenue when there is no total
    assert sent["ajs-001"].query["order_id"] == "50314"
    for r in rx.requests:  # no parameter twice
        assert len(r.params_list) == len({name for name, _ in r.params_list})

    # the ledger records what was sent: the order id as text, the currency
    rows = ledger_rows(tmp_path, "order_id, amount, currency")
    assert rows["m:ajs-010"] == ("#1001", 64.9, "EUR")
    assert rows["m:ajs-011"] == ("12345678901234567890", 18.5, None)
    assert rows["m:ajs-008"] == ("ORD-2026-0042", 41.0, None)
    assert rows["m:ajs-100"][2] == "USD"

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["streams"]["segment_archive"]["Order Completed"]["dropped_fields"] == {
        "currency": 1
    }


def test_postback_url_currency_is_fixed_for_every_postback(tmp_path: Path) -> None:
    """Today's workaround for a one-currency shop keeps working: postback_url's currency=EUR is
    every postback's currency; a record's own currency never overrides it."""
    records = [
        track(1, currency="USD"),
        track(2, currency="euro"),
        track(3),
    ]
    with Receiver() as rx:
        url = rx.url + "?currency=EUR"
        config = {
            **json.loads(DEMO_CONFIG.read_text()),
            **live_demo_config(tmp_path, url),
        }
        result = run_target(config, singer_lines("orders", records), tmp_path)
        assert result.code == 0, result.stderr
        assert len(rx.requests) == 3
        for r in rx.requests:
            assert [v for k, v in r.params_list if k == "currency"] == ["EUR"]
    assert "postback_url fixes currency=EUR for every postback" in result.stderr
    assert "Left out optional field currency" not in result.stderr
    rows = ledger_rows(tmp_path, "currency")
    assert {key: row[0] for key, row in rows.items()} == {f"m:msg-{i}": "EUR" for i in (1, 2, 3)}


@pytest.mark.parametrize(
    "url",
    [
        "https://track.example.com/?currency=euro",
        "https://track.example.com/?currency=EUR&currency=USD",
        "https://track.example.com/?currency=",
    ],
)
def test_postback_url_currency_must_be_one_code(url: str) -> None:
    with pytest.raises(ConfigError, match="currency must be one three-letter ISO 4217 code"):
        Settings.from_config({"postback_url": url, "network_id": 1})


def test_postback_url_still_refuses_the_other_parameters() -> None:
    with pytest.raises(ConfigError, match="'order_id'"):
        Settings.from_config({"postback_url": "https://t.example.com/?order_id=1", "network_id": 1})
    settings = Settings.from_config(
        {"postback_url": "https://t.example.com/?currency=usd", "network_id": 1}
    )
    assert settings.fixed_currency == "USD"


# --- too_old ----------------------------------------------------------------------------------


def dated(i: int, days_before: float) -> dict:
    record = track(i)
    record["timestamp"] = iso(datetime.fromisoformat(TEST_CLOCK) - timedelta(days=days_before))
    return record


def test_too_old_never_reaches_the_receiver(tmp_path: Path, base_config: dict) -> None:
    """Dated 120 days before the clock: skipped (too_old), never claimed, sent nor
    dead-lettered, counted in the summary, the METRIC lines and the run history; 89 days: sent."""
    lines = singer_lines("orders", [dated(1, 120), dated(2, 89)])
    with Receiver() as rx:
        result = run_target({**base_config, "postback_url": rx.url}, lines, tmp_path)
        assert result.code == 0, result.stderr
        assert [r.transaction_id for r in rx.requests] == ["tx-2"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["delivered"] == 1
    assert summary["skipped"] == {TOO_OLD: 1}
    assert summary["dead_lettered"] == {}
    assert summary["streams"]["orders"]["Order Completed"]["skipped"] == {TOO_OLD: 1}
    assert not (tmp_path / "state" / "dead_letter.jsonl").exists() or not read_jsonl(
        tmp_path / "state" / "dead_letter.jsonl"
    )
    ledger = tmp_path / "state" / "ledger.sqlite3"
    rows = ledger_rows(ledger.parent, "status")
    assert set(rows) == {"m:msg-2"}  # the old one was never claimed
    metrics = [
        json.loads(line.split("METRIC: ", 1)[1])
        for line in result.stderr.splitlines()
        if "METRIC: " in line
    ]
    assert {
        "metric": "records_skipped",
        "value": 1,
        "reason": TOO_OLD,
    } in [
        {"metric": m["metric"], "value": m["value"], "reason": m["tags"].get("reason")}
        for m in metrics
    ]
    history = sqlite3.connect(ledger)
    try:
        ((skipped, recorded),) = history.execute(
            "SELECT skipped, summary FROM everflow_ledger_runs"
        )
    finally:
        history.close()
    assert skipped == 1
    assert json.loads(recorded)["skipped"] == {TOO_OLD: 1}


def test_too_old_off_sends_both(tmp_path: Path, base_config: dict) -> None:
    lines = singer_lines("orders", [dated(1, 120), dated(2, 89)])
    config = {**base_config, "max_conversion_age_days": 0}
    with Receiver() as rx:
        result = run_target({**config, "postback_url": rx.url}, lines, tmp_path)
        assert result.code == 0, result.stderr
        assert sorted(r.transaction_id for r in rx.requests) == ["tx-1", "tx-2"]


def test_too_old_is_no_threshold_failure(tmp_path: Path, base_config: dict) -> None:
    """Every record too old: nothing sent, exit 0 (skips are not failures)."""
    lines = singer_lines("orders", [dated(i, 200) for i in range(5)])
    code, target = run_in_process({**base_config, "dry_run": True, "max_dead_letters": 0}, lines)
    assert code == 0
    assert target.run.summary.as_dict()["skipped"] == {TOO_OLD: 5}


# --- the clock --------------------------------------------------------------------------------


def test_the_clock_is_pinned_for_every_test() -> None:
    assert from_environment() == Clock(parse_time(TEST_CLOCK))


def test_clock_from_the_environment() -> None:
    assert from_environment({}) == Clock()
    assert from_environment({CLOCK_ENV: " "}) == Clock()
    assert from_environment({CLOCK_ENV: "2026-11-21T00:00:00Z"}).now() == DATA_DATE.timestamp()
    assert from_environment({CLOCK_ENV: "2026-11-21T01:00:00+01:00"}).now() == (
        DATA_DATE.timestamp()
    )
    assert from_environment({CLOCK_ENV: "2026-11-21"}).now() == DATA_DATE.timestamp()  # UTC
    assert Clock(DATA_DATE.timestamp()).describe() == "2026-11-21T00:00:00Z"
    with pytest.raises(InvalidClock, match=CLOCK_ENV):
        from_environment({CLOCK_ENV: "tomorrow"})


def test_the_unpinned_clock_is_the_system_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLOCK_ENV)
    clock = Settings.from_config({"dry_run": True}).clock
    assert not clock.is_pinned
    assert abs(clock.now() - datetime.now(timezone.utc).timestamp()) < 60


@pytest.mark.parametrize("text", ["tomorrow", "2026-13-01", "1795198448"])
def test_an_invalid_clock_is_one_line_and_exit_1(
    tmp_path: Path, base_config: dict, text: str
) -> None:
    result = run_target(
        {**base_config, "dry_run": True},
        singer_lines("orders", [track(1)]),
        tmp_path,
        env={CLOCK_ENV: text},
    )
    assert result.code == 1
    errors = [line for line in result.stderr.splitlines() if CLOCK_ENV in line]
    assert len(errors) == 1, result.stderr
    assert "is not an ISO-8601 time" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "dry_run.jsonl").exists()


def test_a_pinned_clock_is_logged_at_start(tmp_path: Path, base_config: dict) -> None:
    result = run_target(
        {**base_config, "dry_run": True}, singer_lines("orders", [track(1)]), tmp_path
    )
    assert result.code == 0, result.stderr
    assert f"The clock is pinned by {CLOCK_ENV} at 2026-12-01T00:00:00Z" in result.stderr


@pytest.mark.parametrize("value", [-1, 3651, 1.5, "ninety", True])
def test_max_conversion_age_days_is_validated(
    tmp_path: Path, base_config: dict, value: t.Any
) -> None:
    result = run_target(
        {**base_config, "dry_run": True, "max_conversion_age_days": value}, [], tmp_path
    )
    assert result.code == 1
    assert "max_conversion_age_days" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_summary_is_the_same_whatever_the_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo input under the clock at its data's date, one year and three years later,
    with the demo config as it is: the same summary (the demo's outcomes never depend on the
    date it runs on)."""
    summaries = []
    for years in (0, 1, 3):
        clock = DATA_DATE + timedelta(days=365 * years)
        monkeypatch.setenv(CLOCK_ENV, iso(clock))
        out = tmp_path / iso(clock).replace(":", "")
        out.mkdir()
        code, target = run_in_process(demo_config(out), demo_lines())
        assert code == 0
        summary = target.run.summary.as_dict(dry_run=True)
        for moving in ("wall_seconds", "requests_per_second"):
            summary.pop(moving)
        summaries.append(summary)
        assert (out / "everflow_dry_run.jsonl").read_text().count("\n") == summary["delivered"]
    assert summaries[0] == summaries[1] == summaries[2]
    # at the data's date, the default max_conversion_age_days gives that summary too
    monkeypatch.setenv(CLOCK_ENV, iso(DATA_DATE))
    config = demo_config(tmp_path)
    del config["max_conversion_age_days"]
    code, target = run_in_process(config, demo_lines())
    assert code == 0
    summary = target.run.summary.as_dict(dry_run=True)
    summary.pop("wall_seconds")
    summary.pop("requests_per_second")
    assert summary == summaries[0]
    assert TOO_OLD not in summaries[0]["skipped"]
    assert summaries[0]["delivered"] >= 45


# --- the ledger records the currency sent, on both backends -----------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_claim_writes_the_currency(tmp_path: Path, backend: str) -> None:
    import contextlib
    import uuid

    from target_everflow.ledger import open_ledger
    from tests.conftest import pg_execute, postgres_url

    table = f"tmoney_{uuid.uuid4().hex[:12]}"
    if backend == "postgres":
        base = postgres_url()
        url = f"{base}{'&' if '?' in base else '?'}table={table}"
    else:
        url = f"sqlite:///{tmp_path / 'l.db'}?table={table}"
    meta = {
        "eur": {"transaction_id": "tx-1", "order_id": "#1001", "amount": 64.9, "currency": "EUR"},
        "none": {"transaction_id": "tx-2", "order_id": "12345678901234567890", "currency": None},
    }
    try:
        with contextlib.closing(
            open_ledger(url, default_dir=tmp_path, lease_seconds=30, retention_days=400)
        ) as ledger:
            ledger.claim(["eur", "none"], meta)
        query = f"SELECT delivery_key, order_id, currency FROM {table} ORDER BY 1"
        if backend == "postgres":
            rows = pg_execute(query)
        else:
            con = sqlite3.connect(tmp_path / "l.db")
            try:
                rows = con.execute(query).fetchall()
            finally:
                con.close()
        assert [tuple(r) for r in rows] == [
            ("eur", "#1001", "EUR"),
            ("none", "12345678901234567890", None),
        ]
    finally:
        if backend == "postgres":
            pg_execute(f"DROP TABLE IF EXISTS {table}")
            pg_execute(f"DROP TABLE IF EXISTS {table}_runs")


@pytest.mark.parametrize("years", [1, 3])
def test_the_tests_pinned_clock_holds_when_the_calendar_moves_on(
    monkeypatch: pytest.MonkeyPatch, years: int
) -> None:
    """The system clock one or three years after the tests' data: a mapping under the tests'
    pinned clock gives what it gives today; without the pin the same record would be too old."""
    from target_everflow import clock as clock_module
    from target_everflow.mapping import Conversion, Mapper
    from target_everflow.outcomes import Outcome

    later = DATA_DATE.timestamp() + years * 365 * 86_400
    monkeypatch.setattr(clock_module.time, "time", lambda: later)
    config = {"dry_run": True, "event_mapping": {"Order Completed": 0}}
    record = track(1)
    assert isinstance(Mapper(Settings.from_config(config)).map(record, "orders"), Conversion)
    monkeypatch.delenv(CLOCK_ENV)
    result = Mapper(Settings.from_config(config)).map(record, "orders")
    assert isinstance(result, Outcome) and result.reason == TOO_OLD
