"""Did Everflow count it? End to end: deliver, then ``target-everflow reconcile`` against the test
receiver's fake reporting endpoint, which reports what the postback endpoint actually received.

The issue's acceptance test: 200 conversions delivered (every postback answered 200); the report
then shows 7 of them rejected with scripted codes and leaves 3 out; ``reconcile`` reports
exactly those 10 with the right codes and exit code 6, the other 190 are confirmed; a second
``reconcile`` asks nothing for keys already confirmed or rejected.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
import typing as t
from pathlib import Path

from tests.conftest import (
    SECRET_API_KEY,
    RunResult,
    config_under,
    run_cli,
    run_target,
    singer_lines,
    track,
)
from tests.receiver import FakeReporting, Receiver, Verdict

REJECTED = {
    "tx-3": 8,
    "tx-30": 13,
    "tx-61": 21,
    "tx-99": 25,
    "tx-120": 8,
    "tx-150": 13,
    "tx-181": 25,
}
OMITTED = {"tx-7", "tx-77", "tx-177"}


def recent_track(i: int, now: float) -> dict:
    """Conversion ``i`` of the test: an event of the last day (the report covers 365 days);
    every fourth one a post-conversion event (Everflow event 24, 'Purchase')."""
    event = "Subscription Started" if i % 4 == 3 else "Order Completed"
    record = track(i, event=event)
    moment = dt.datetime.fromtimestamp(now - 3600 - 300 * i, dt.timezone.utc)
    record["timestamp"] = moment.isoformat().replace("+00:00", "Z")
    return record


def reconcile_cli(config: dict, tmp_path: Path, *, env: dict | None = None) -> RunResult:
    path = tmp_path / f"config-reconcile-{len(list(tmp_path.glob('config-reconcile-*')))}.json"
    path.write_text(json.dumps(config))
    return run_cli(["reconcile", "--config", str(path)], cwd=tmp_path, env=env)


def ledger_rows(path: Path) -> dict[str, tuple[t.Any, ...]]:
    con = sqlite3.connect(path)
    try:
        rows = con.execute(
            "SELECT transaction_id, recon_status, recon_error_code, recon_error_message, event,"
            " adv_event_id FROM everflow_ledger"
        ).fetchall()
    finally:
        con.close()
    return {r[0]: r[1:] for r in rows}


def test_reconcile_end_to_end_finds_exactly_the_rejected_and_missing(tmp_path: Path) -> None:
    now = time.time()
    records = [recent_track(i, now) for i in range(200)]
    reporting = FakeReporting(
        api_key=SECRET_API_KEY,
        verdicts={tid: Verdict.rejected(code) for tid, code in REJECTED.items()},
        omit=OMITTED,
    )
    with Receiver(reporting=reporting) as rx:
        config = {
            **config_under(tmp_path),
            "postback_url": rx.url, "api_url": rx.api_url, "api_key": SECRET_API_KEY,
            "advertiser_id": 7, "preflight": False, "request_timeout": 10,
            "reconcile_after_minutes": 0, "reconcile_not_found_after_hours": 0,
        }  # fmt: skip
        delivered = run_target(
            config, singer_lines("orders", records, state={"bookmark": 200}), tmp_path
        )
        assert delivered.code == 0, delivered.stderr[-3000:]
        assert len(rx.accepted) == 200 and all(r.status == 200 for r in rx.requests)
        assert reporting.requests == []  # a run without reconcile: true asks nothing

        first = reconcile_cli(config, tmp_path)
        assert first.code == 6, first.stderr[-3000:]
        asked_first = reporting.asked_transactions()
        requests_first = len(reporting.requests)

        second = reconcile_cli(config, tmp_path)
        assert second.code == 0, second.stderr[-3000:]
        assert len(reporting.requests) == requests_first  # nothing asked at all

    # Every delivered transaction was asked for exactly once, in one report request per day.
    assert asked_first == {f"tx-{i}": 1 for i in range(200)}
    days = {
        dt.datetime.fromtimestamp(now - 3600 - 300 * i, dt.timezone.utc).date() for i in range(200)
    }
    assert len(reporting.report_requests()) == len(days)
    assert requests_first == len(days) + 1  # and the advertiser's event names, once

    report = json.loads((tmp_path / "state" / "reconcile_report.json").read_text())
    listed = {
        c["transaction_id"]: (c["status"], c["error_code"]) for c in report["rejected_or_not_found"]
    }
    expected = {tid: ("rejected", code) for tid, code in REJECTED.items()}
    expected |= {tid: ("not_found", None) for tid in OMITTED}
    assert listed == expected
    for item in report["rejected_or_not_found"]:
        i = int(item["transaction_id"][3:])
        assert item["message_id"] == f"msg-{i}" and item["order_id"] == str(1000 + i)
        assert item["event"] == ("Subscription Started" if i % 4 == 3 else "Order Completed")
        if item["status"] == "rejected":
            assert item["error_message"]

    rows = ledger_rows(tmp_path / "state" / "ledger.sqlite3")
    assert len(rows) == 200
    confirmed = {tid for tid, row in rows.items() if row[0] == "confirmed"}
    assert confirmed == {f"tx-{i}" for i in range(200)} - set(REJECTED) - OMITTED
    for tid, code in REJECTED.items():
        assert rows[tid][:2] == ("rejected", code)

    # What the user sees: the summary per event, with amounts, and the report's place.
    out = first.stdout
    assert "Reconciled 200 delivered conversion(s) with Everflow's conversion report" in out
    assert "'Order Completed': " in out and "'Subscription Started': " in out
    assert "rejected, error 8 (duplicate): " in out
    assert "10 conversion(s) Everflow rejected or does not have, reported now" in out
    assert "none was due now" in second.stdout and "reported now" not in second.stdout
    # the report file still lists them; none found by the second run
    again = json.loads((tmp_path / "state" / "reconcile_report.json").read_text())
    assert len(again["rejected_or_not_found"]) == 10
    assert not any(c["found_in_this_run"] for c in again["rejected_or_not_found"])
    for text in (first.stdout, first.stderr, second.stdout, second.stderr,
                 (tmp_path / "state" / "reconcile_report.json").read_text()):  # fmt: skip
        assert SECRET_API_KEY not in text
