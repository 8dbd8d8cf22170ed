"""Reconcile against Everflow's Conversion Report, replayed from hand-built vcrpy cassettes.

The cassettes in tests/cassettes/reconcile/ are built by hand from Everflow's documented request
and answer formats (docs/everflow-reporting.md, developers.everflow.io "Get Conversion Report",
"API Filters", "Paging"); they were NOT recorded from a live account. Requests match on method,
URL (pages are query parameters) and the JSON body, except its ``from``/``to`` window: the keys
are seeded relative to the clock, so the window moves with the day the tests run (the window
rule itself is tested in tests/test_reconcile.py). A request a cassette does not hold fails the
test; every recorded interaction must be played exactly once.

Re-recording against a real account (never needed for CI; see docs/reconcile.md)::

    EVERFLOW_RECORD_MODE=once EVERFLOW_CASSETTE_DIR=/tmp/everflow-cassettes \\
    EVERFLOW_API_KEY=... EVERFLOW_APPROVED_TRANSACTION_ID=... EVERFLOW_APPROVED_EVENT_TIME=... \\
    .venv/bin/python -m pytest tests/test_reconcile_cassettes.py -q

In record mode only the cases a real account can produce on demand run (an approved
conversion you name, and the 401 of an invalid key); the others stay hand-built.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import typing as t
from pathlib import Path
from typing import Any

import pytest
import vcr
import yaml

from target_everflow.delivery.engine import RateLimiter
from target_everflow.errors import EXIT_CONFIG
from target_everflow.everflow import api as everflow_api
from target_everflow.ledger import open_ledger
from target_everflow.reconcile import reconciler
from target_everflow.reconcile.reconciler import ReconcileError, Reconciler
from target_everflow.settings import Settings
from tests.test_api_check import (
    LIVE,
    RECORD_MODE,
    TEST_KEY,
    _no_key_in_logs,  # noqa: F401 - autouse: no key in any log line
    _scrub_request,
    _scrub_response,
)
from tests.test_api_check import cassette as api_check_cassette

HERE = Path(__file__).parent
COMMITTED = HERE / "cassettes" / "reconcile"
CASSETTE_DIR = Path(os.environ.get("EVERFLOW_CASSETTE_DIR") or COMMITTED)

# The replayed cassettes' key is TEST_KEY (also the invalid key when recording). The API check's
# scrubbers (cookies, the key's value anywhere in a request URL or a response body) serve here too.
if LIVE:
    API_KEY = os.environ.get("EVERFLOW_API_KEY", "")
    API_URL = (os.environ.get("EVERFLOW_API_URL") or everflow_api.DEFAULT_API_URL).rstrip("/")
    APPROVED_TID = os.environ.get("EVERFLOW_APPROVED_TRANSACTION_ID", "")
    APPROVED_TIME = float(os.environ.get("EVERFLOW_APPROVED_EVENT_TIME") or 0)
else:
    API_KEY = TEST_KEY
    API_URL = "https://api.eflow.team/v1"
    APPROVED_TID = "9f2c1e7a4b6d48e0a3c5f1d2e8b7a601"
    APPROVED_TIME = 0.0
ALL_KEYS = [k for k in {TEST_KEY, API_KEY} if k]

replay_only = pytest.mark.skipif(
    LIVE, reason="hand-built cassette: Everflow cannot be made to answer this on demand"
)


def _body_but_window(r1: Any, r2: Any) -> None:
    """The JSON bodies are equal, but for ``from``/``to`` (which move with the clock)."""

    def parsed(request: Any) -> Any:
        raw = request.body
        if not raw:
            return None
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        if isinstance(data, dict):
            data.pop("from", None)
            data.pop("to", None)
        return data

    assert parsed(r1) == parsed(r2)


VCR = vcr.VCR(
    cassette_library_dir=str(CASSETTE_DIR),
    record_mode=RECORD_MODE,
    match_on=["method", "scheme", "host", "port", "path", "query", "body_but_window"],
    filter_headers=[everflow_api.API_KEY_HEADER],
    before_record_request=_scrub_request,
    before_record_response=_scrub_response,
    decode_compressed_response=True,
)
VCR.register_matcher("body_but_window", _body_but_window)


def cassette(name: str) -> t.ContextManager[Any]:
    """Every interaction played exactly once, as for the API check's cassettes."""
    return api_check_cassette(name, VCR)


class FakeTime:
    """A clock and a sleep that only pretend (the limiter and the retries use them)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    config = {
        "dry_run": False, "postback_url": "https://t.example.com/", "network_id": 1,
        "advertiser_id": 7, "event_mapping": {"Order Completed": 0, "Subscription Started": 24},
        "api_key": API_KEY, "api_url": API_URL, "preflight": False, "request_timeout": 30,
        "dead_letter_path": str(tmp_path / "state" / "dead_letter.jsonl"),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "reconcile_after_minutes": 0, "reconcile_not_found_after_hours": 24,
        **overrides,
    }  # fmt: skip
    return Settings.from_config(config)


def seed(tmp_path: Path, conversions: list[dict[str, Any]]) -> Any:
    """A ledger holding these conversions, delivered (sent now; the event an hour earlier)."""
    ledger = open_ledger(
        f"sqlite:///{tmp_path / 'ledger.sqlite3'}", default_dir=tmp_path, lease_seconds=60,
        retention_days=400,
    )  # fmt: skip
    meta = {}
    for c in conversions:
        meta[c["key"]] = {
            "stream": "orders", "event": c.get("event", "Order Completed"),
            "transaction_id": c["tid"], "message_id": f"msg-{c['key']}",
            "adv_event_id": c.get("adv_event_id", 0), "order_id": c.get("order_id"),
            "amount": c.get("amount", 10.0), "event_time": c.get("event_time", time.time() - 3600),
        }  # fmt: skip
    ledger.claim(list(meta), meta)
    for key in meta:
        ledger.mark_delivered(key, 200)
    ledger.flush()
    ledger.close()
    return open_ledger(
        f"sqlite:///{tmp_path / 'ledger.sqlite3'}", default_dir=tmp_path, lease_seconds=60,
        retention_days=400,
    )  # fmt: skip


def statuses(tmp_path: Path) -> dict[str, tuple[Any, ...]]:
    con = sqlite3.connect(tmp_path / "ledger.sqlite3")
    try:
        rows = con.execute(
            "SELECT delivery_key, recon_status, recon_error_code, recon_error_message,"
            " recon_checked_at IS NOT NULL, recon_owner FROM everflow_ledger"
        ).fetchall()
    finally:
        con.close()
    return {r[0]: r[1:] for r in rows}


def reconcile(tmp_path: Path, ledger: Any, fake: FakeTime, **overrides: Any) -> Any:
    s = settings(tmp_path, **overrides)
    limiter = RateLimiter(s.api_requests_per_second, clock=fake.clock)
    try:
        return Reconciler(s, ledger, sleep=fake.sleep, limiter=limiter).run()
    finally:
        ledger.close()


# --- the verdicts ---------------------------------------------------------------------------------


@pytest.mark.skipif(LIVE and not (API_KEY and APPROVED_TID and APPROVED_TIME),
                    reason="recording needs EVERFLOW_API_KEY, EVERFLOW_APPROVED_TRANSACTION_ID "
                           "and EVERFLOW_APPROVED_EVENT_TIME")  # fmt: skip
def test_approved_is_confirmed(tmp_path: Path) -> None:
    event_time = APPROVED_TIME or time.time() - 3600
    ledger = seed(
        tmp_path, [{"key": "k1", "tid": APPROVED_TID, "event_time": event_time, "order_id": "1042"}]
    )
    with cassette("approved"):
        result = reconcile(tmp_path, ledger, FakeTime())
    assert statuses(tmp_path)["k1"] == ("confirmed", None, None, True, None)
    assert result.exit_code == 0 and result.requests == 1
    assert result.as_dict()["by_event"]["Order Completed"]["confirmed"] == {
        "count": 1,
        "amount": 10.0,
    }


@replay_only
def test_pending_stays_due(tmp_path: Path) -> None:
    ledger = seed(tmp_path, [{"key": "k1", "tid": "5d0e4c2b9a8f47d1b6e3a0c9f8d7e6b5"}])
    with cassette("pending"):
        result = reconcile(tmp_path, ledger, FakeTime())
    assert statuses(tmp_path)["k1"] == ("pending", None, None, True, None)
    assert result.exit_code == 0
    # Due again once reconcile_after_minutes have passed since this check (here: 0).
    again = open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", default_dir=tmp_path,
                        lease_seconds=60, retention_days=400)  # fmt: skip
    store = reconciler.ReconcileStore(again, lease_seconds=60)
    try:
        _, due = store.claim_due(after_seconds=0, limit=10)
        assert [k.key for k in due] == ["k1"]
        store.release()
        store.run_started = 0.0  # a later run, 30 minutes on: not yet due again
        _, due = store.claim_due(after_seconds=1800, limit=10)
        assert due == []
    finally:
        again.close()


REJECTED_TIDS = {
    "r8": ("1a2b3c4d5e6f47a8b9c0d1e2f3a4b5c6", 8, "Duplicate Transaction ID"),
    "r13": ("2b3c4d5e6f7a48b9c0d1e2f3a4b5c6d7", 13, "Click Not Found"),
    "r21": ("3c4d5e6f7a8b49c0d1e2f3a4b5c6d7e8", 21, "Invalid Verification Token"),
    "r25": ("4d5e6f7a8b9c40d1e2f3a4b5c6d7e8f9", 25, "Event Not Found On Offer"),
}


@replay_only
def test_rejected_with_codes_8_13_21_25(tmp_path: Path) -> None:
    ledger = seed(
        tmp_path,
        [{"key": k, "tid": tid, "amount": 20.0} for k, (tid, _, _) in REJECTED_TIDS.items()],
    )
    with cassette("rejected"):
        result = reconcile(tmp_path, ledger, FakeTime())
    got = statuses(tmp_path)
    for key, (_, code, message) in REJECTED_TIDS.items():
        assert got[key] == ("rejected", code, message, True, None)
    assert result.exit_code == 6
    codes = result.as_dict()["by_event"]["Order Completed"]["rejected_by_error_code"]
    assert {c: v["count"] for c, v in codes.items()} == {"8": 1, "13": 1, "21": 1, "25": 1}
    assert codes["13"]["meaning"] == "click not found"
    report = json.loads((tmp_path / "state" / "reconcile_report.json").read_text())
    assert {(c["transaction_id"], c["error_code"], c["error_message"], c["message_id"])
            for c in report["rejected_or_not_found"]} == {
        (tid, code, message, f"msg-{key}") for key, (tid, code, message) in REJECTED_TIDS.items()
    }  # fmt: skip


@replay_only
def test_a_row_for_another_transaction_is_not_ours(tmp_path: Path) -> None:
    """The answer also holds a row for a transaction we did not ask about (and Everflow's
    filter should have left out): it confirms nothing; our missing key stays missing."""
    ledger = seed(tmp_path, [
        {"key": "ours", "tid": "6f7a8b9c0d1e42f3a4b5c6d7e8f9a0b1"},
        {"key": "missing", "tid": "7a8b9c0d1e2f43a4b5c6d7e8f9a0b1c2"},
    ])  # fmt: skip
    with cassette("other_transaction"):
        result = reconcile(tmp_path, ledger, FakeTime())
    got = statuses(tmp_path)
    assert got["ours"][0] == "confirmed"
    assert got["missing"] == (None, None, None, True, None)  # asked again next time
    assert (
        result.exit_code == 0
        and result.as_dict()["by_event"]["Order Completed"]["missing"]["count"] == 1
    )


@replay_only
def test_an_event_row_and_a_base_row_of_one_transaction(tmp_path: Path) -> None:
    """One transaction, two conversions: the base one (rejected as a duplicate) and event 24
    ('Purchase', approved). Each key gets its own row, by base vs event name."""
    tid = "8b9c0d1e2f3a44b5c6d7e8f9a0b1c2d3"
    ledger = seed(tmp_path, [
        {"key": "base", "tid": tid, "order_id": "5001"},
        {"key": "purchase", "tid": tid, "adv_event_id": 24, "event": "Subscription Started"},
    ])  # fmt: skip
    with cassette("event_vs_base"):
        result = reconcile(tmp_path, ledger, FakeTime())
    got = statuses(tmp_path)
    assert got["base"][:2] == ("rejected", 8)
    assert got["purchase"][:2] == ("confirmed", None)
    assert result.requests == 2  # the advertiser's event names, then the report


@replay_only
def test_several_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler, "PAGE_SIZE", 2)  # 5 rows: pages of 2, 2 and 1
    tids = [f"9c0d1e2f3a4b45c6d7e8f9a0b1c2d3e{i}" for i in range(5)]
    ledger = seed(tmp_path, [{"key": f"p{i}", "tid": tid} for i, tid in enumerate(tids)])
    with cassette("several_pages"):
        result = reconcile(tmp_path, ledger, FakeTime())
    assert {k: v[0] for k, v in statuses(tmp_path).items()} == {
        f"p{i}": "confirmed" for i in range(5)
    }
    assert result.requests == 3


@replay_only
def test_429_then_200_waits_for_retry_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = seed(tmp_path, [{"key": "k1", "tid": "0d1e2f3a4b5c46d7e8f9a0b1c2d3e4f5"}])
    fake = FakeTime()
    with cassette("rate_limited_then_ok"):
        result = reconcile(tmp_path, ledger, fake)
    assert fake.sleeps == [2.0]
    assert result.requests == 2
    assert statuses(tmp_path)["k1"][0] == "confirmed"
    assert any("HTTP 429" in m and "retrying in 2.0s" in m for m in caplog.messages)


def test_401_stops_with_one_line_and_leaves_the_keys_due(tmp_path: Path) -> None:
    ledger = seed(
        tmp_path,
        [{"key": "k1", "tid": APPROVED_TID if LIVE else "e2f3a4b5c6d747e8f9a0b1c2d3e4f5a6"}],
    )
    with cassette("unauthorized"), pytest.raises(ReconcileError) as info:
        reconcile(tmp_path, ledger, FakeTime(), api_key=TEST_KEY)
    message = str(info.value)
    assert info.value.exit_code == EXIT_CONFIG
    assert "\n" not in message and TEST_KEY not in message
    assert message.startswith(
        "Everflow's conversion report could not be read: Everflow rejected the API key: POST "
        f"{API_URL}/networks/reporting/conversions?page=1&page_size=2000 answered HTTP 401"
    )
    assert statuses(tmp_path)["k1"] == (None, None, None, False, None)  # unchecked, not held


# --- the cassettes themselves ---------------------------------------------------------------------


def test_the_requests_have_the_documented_shape() -> None:
    """Every report request in the cassettes: POST, pages as query parameters, the transaction
    ids as filters, conversions and events both, UTC. (Where each cassette comes from is checked
    by tests/test_api_check.py, and that none holds the key by tests/test_secrets.py.)"""
    assert len(list(COMMITTED.glob("*.yaml"))) == 8
    for path in sorted(COMMITTED.glob("*.yaml")):
        for interaction in yaml.safe_load(path.read_text())["interactions"]:
            request = interaction["request"]
            if "/reporting/conversions" not in request["uri"]:
                continue
            assert request["method"] == "POST"
            assert "page=" in request["uri"] and "page_size=" in request["uri"]
            body = json.loads(request["body"])
            assert "page" not in body and "page_size" not in body
            assert body["timezone_id"] == 67 and body["show_conversions"] and body["show_events"]
            filters = body["query"]["filters"]
            assert filters and all(f["resource_type"] == "transaction_id" for f in filters)
