"""Reconcile's rules, against the test receiver's fake reporting endpoint (tests/receiver.py):
matching, windows and batching, what is due, the claim discipline on a shared PostgreSQL ledger,
``reconcile: true`` after a normal run, dry runs, rate limiting, settings and signals."""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from target_everflow.adapter.target import TargetEverflow
from target_everflow.ledger import open_ledger
from target_everflow.ledger.verdicts import DueKey, ReconcileStore
from target_everflow.reconcile import reconciler
from target_everflow.reconcile.reconciler import Reconciler, ReportRow, match
from target_everflow.settings import Settings
from tests.conftest import (
    SECRET_API_KEY,
    config_under,
    postgres_url,
    run_in_process,
    run_target,
    singer_lines,
    track,
)
from tests.receiver import Answer, FakeReporting, Receiver, Verdict
from tests.test_reconcile_e2e import reconcile_cli

DAY = 86400.0


def key(
    k: str, tid: str, *, event_id: int = 0, order: str | None = None, at: float = 1000.0
) -> DueKey:
    return DueKey(k, "s", "E", tid, f"m-{k}", event_id, order, 1.0, at, at + 60)


def row(
    tid: str, *, event: str = "", order: str = "", at: int = 1000, status: str = "approved"
) -> ReportRow:
    return ReportRow(tid, bool(event), event, order, float(at), status, None, "")


# --- matching ---------------------------------------------------------------------------------------


def test_match_by_transaction_event_and_order_id() -> None:
    keys = [
        key("base", "T"), key("purchase", "T", event_id=24), key("lead", "T", event_id=31),
        key("ordered", "U", order="7"), key("other-order", "V", order="8"),
    ]  # fmt: skip
    rows = [
        row("T", event="Lead"), row("T"), row("T", event="Purchase"),
        row("U", order="7"), row("V", order="9"), row("W"),
    ]  # fmt: skip
    found = match(keys, rows, {24: "Purchase", 31: "Lead"})
    assert found["base"] is rows[1]
    assert found["purchase"] is rows[2]
    assert found["lead"] is rows[0]
    assert found["ordered"] is rows[3]
    assert "other-order" not in found  # both have an order id and they differ


def test_each_row_matches_one_key_nearest_in_time() -> None:
    """The same conversion sent twice (two message ids): Everflow keeps one and rejects the
    other as a duplicate; each key gets one row, the nearest in time."""
    keys = [key("first", "T", at=1000), key("second", "T", at=5000)]
    rows = [row("T", at=5001, status="rejected"), row("T", at=1001)]
    found = match(keys, rows, None)
    assert found["first"] is rows[1] and found["second"] is rows[0]
    assert match([key("only", "T", at=1000)], [row("T", event="Purchase")], None) == {}


def test_without_event_names_an_event_key_takes_any_event_row() -> None:
    found = match([key("e", "T", event_id=24)], [row("T"), row("T", event="Whatever")], None)
    assert found["e"].event == "Whatever"


# --- windows and batching --------------------------------------------------------------------------


class Recorder:
    """Stands in for ReportingClient.conversions: records each query, answers no rows."""

    def __init__(self) -> None:
        self.queries: list[tuple[float, float, list[str] | None]] = []

    def __call__(
        self,
        start: float,
        end: float,
        tids: t.Sequence[str] | None,
        before: t.Any = None,
        **_: t.Any,
    ) -> reconciler.Page:
        self.queries.append((start, end, None if tids is None else list(tids)))
        return reconciler.Page()


def settings_for(tmp_path: Path, **overrides: t.Any) -> Settings:
    return Settings.from_config({
        "postback_url": "https://t.example.com/", "network_id": 1, "api_key": SECRET_API_KEY,
        "api_url": "https://api.eflow.team/v1", "dead_letter_path": str(tmp_path / "state" / "dl.jsonl"),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "reconcile_after_minutes": 0,
        **overrides,
    })  # fmt: skip


def seed(
    url: str, tmp_path: Path, items: list[tuple[str, str, float | None]], **meta: t.Any
) -> None:
    """Delivered keys: (key, transaction id, event time)."""
    ledger = open_ledger(url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
    try:
        metadata = {
            k: {"transaction_id": tid, "event": "Order Completed", "adv_event_id": 0,
                "event_time": when, "amount": 5.0, **meta}
            for k, tid, when in items
        }  # fmt: skip
        ledger.claim(list(metadata), metadata)
        for k in metadata:
            ledger.mark_delivered(k, 200)
        ledger.flush()
    finally:
        ledger.close()


def run_recorded(tmp_path: Path, **overrides: t.Any) -> tuple[Recorder, t.Any]:
    s = settings_for(tmp_path, **overrides)
    ledger = open_ledger(s.ledger_url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
    try:
        rec = Reconciler(s, ledger)
        recorder = Recorder()
        rec.client.conversions = recorder  # type: ignore[method-assign] - records, answers no rows
        return recorder, rec.run()
    finally:
        ledger.close()


def test_grouped_by_the_earlier_of_event_and_sent_time_within_365_days(tmp_path: Path) -> None:
    now = time.time()
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    seed(url, tmp_path, [
        ("fresh", "tx-fresh", now - 3600),
        ("backfill", "tx-backfill", now - 40 * DAY),  # an old event delivered now
        ("no-time", "tx-none", None),
        ("ancient", "tx-ancient", now - 400 * DAY),
    ])  # fmt: skip
    recorder, result = run_recorded(tmp_path)
    by_tid = {tuple(q[2] or []): q for q in recorder.queries}
    assert result.checked == 4
    today = now - now % DAY
    for start, end, _ in by_tid.values():
        assert start % DAY == 0 and (end + 1) % DAY == 0  # whole UTC days
        assert end <= today + DAY - 1 and end - start <= 365 * DAY
        assert start >= today - 364 * DAY  # Everflow's report covers the prior 365 days
        assert end >= now - 10  # everything was sent just now
    start, _, _ = by_tid[("tx-backfill",)]
    backfill_day = (now - 40 * DAY) - (now - 40 * DAY) % DAY
    assert start == backfill_day - DAY  # from the event's day (a day's margin for time zones)
    assert by_tid[("tx-ancient",)][0] == today - 364 * DAY  # clipped to the last 365 days
    # "fresh" (event an hour ago) and "no-time" (sent now) share a day unless the hour crossed midnight
    assert sum(len(q[2] or []) for q in recorder.queries) == 4


def test_at_most_500_transaction_ids_per_request_and_a_transaction_stays_together(
    tmp_path: Path,
) -> None:
    now = time.time() - 60
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    items = [(f"k{i}", f"tx-{i}", now) for i in range(1200)]
    items += [(f"k{i}-event", f"tx-{i}", now) for i in range(0, 1200, 7)]  # 2 keys, 1 transaction
    seed(url, tmp_path, items)
    recorder, result = run_recorded(tmp_path)
    sizes = [len(q[2] or []) for q in recorder.queries]
    assert sorted(sizes) == [200, 500, 500] and result.checked == len(items)
    assert sum(sizes) == len({tid for _, tid, _ in items})


def test_10000_conversions_over_30_days_take_30_report_requests(tmp_path: Path) -> None:
    """The number the README gives: 10,000 conversions spread over 30 days, all due at once,
    take one report request per day (333 transactions a day, under the 500 of a request)."""
    now = time.time()
    day0 = now - now % DAY - 30 * DAY
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    seed(url, tmp_path, [(f"k{i}", f"tx-{i}", day0 + (i % 30) * DAY + 3600) for i in range(10_000)])
    reporting = FakeReporting(api_key=SECRET_API_KEY)
    with Receiver(reporting=reporting) as rx:
        s = settings_for(tmp_path, api_url=rx.api_url, api_requests_per_second=1000)
        ledger = open_ledger(url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
        try:
            result = Reconciler(s, ledger).run()
        finally:
            ledger.close()
    assert result.checked == 10_000
    assert len(reporting.report_requests()) == 30 == result.requests
    assert sum(reporting.asked_transactions().values()) == 10_000


# --- what is due ----------------------------------------------------------------------------------


def test_due_waits_reconcile_after_minutes_and_skips_settled_and_old_release_keys(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    seed(
        url,
        tmp_path,
        [("a", "tx-a", None), ("b", "tx-b", None), ("c", "tx-c", None), ("d", "tx-d", None)],
    )
    con = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    now = time.time()
    con.execute("UPDATE everflow_ledger SET sent_at = ? WHERE delivery_key = 'a'", (now - 3600,))
    con.execute("UPDATE everflow_ledger SET recon_status = 'confirmed' WHERE delivery_key = 'b'")
    con.execute(
        "UPDATE everflow_ledger SET transaction_id = NULL WHERE delivery_key = 'c'"
    )  # 0.1.0's
    con.execute("UPDATE everflow_ledger SET recon_status = 'pending', recon_checked_at = ?,"
                " sent_at = ? WHERE delivery_key = 'd'", (now - 600, now - 7200))  # fmt: skip
    con.close()
    ledger = open_ledger(url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
    try:
        store = ReconcileStore(ledger, lease_seconds=60)
        _, due = store.claim_due(after_seconds=30 * 60, limit=100)
        assert [k.key for k in due] == ["a"]  # d was checked 10 minutes ago: not yet
        store.release()
        _, due = store.claim_due(after_seconds=5 * 60, limit=100)
        assert [k.key for k in due] == ["d", "a"]  # pending again after as long; oldest first
        assert store.uncheckable() == 1
    finally:
        ledger.close()


def test_not_found_only_after_reconcile_not_found_after_hours(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    seed(url, tmp_path, [("recent", "tx-recent", None), ("old", "tx-old", None)])
    con = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    con.execute(
        "UPDATE everflow_ledger SET sent_at = sent_at - 25 * 3600 WHERE delivery_key = 'old'"
    )
    con.close()
    _, result = run_recorded(tmp_path)
    assert [(k.key, v.status) for k, v in result.found] == [("old", "not_found")]
    con = sqlite3.connect(tmp_path / "ledger.sqlite3")
    rows = dict(con.execute("SELECT delivery_key, recon_status FROM everflow_ledger").fetchall())
    con.close()
    assert rows == {"recent": None, "old": "not_found"}
    assert result.exit_code == 6


# --- several processes on one PostgreSQL ledger -------------------------------------------------------


@pytest.mark.postgres
def test_two_reconcilers_on_one_postgres_ledger_check_each_key_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = postgres_url()
    table = f"trec_{uuid.uuid4().hex[:12]}"
    url = f"{base}{'&' if '?' in base else '?'}table={table}"
    monkeypatch.setattr(reconciler, "CLAIM_CHUNK", 40)
    monkeypatch.setattr(reconciler, "TRANSACTION_IDS_PER_REQUEST", 10)
    now = time.time()
    seed(url, tmp_path, [(f"k{i}", f"tx-{i}", now - 3600) for i in range(400)])
    import psycopg2

    con = psycopg2.connect(base)
    with con, con.cursor() as cur:  # sent an hour ago: due with reconcile_after_minutes 30
        cur.execute(f"UPDATE {table} SET sent_at = sent_at - 3600")
    con.close()
    reporting = FakeReporting(api_key=SECRET_API_KEY)
    results: list[t.Any] = []
    errors: list[BaseException] = []
    try:
        with Receiver(latency=0.005, reporting=reporting) as rx:
            s = settings_for(tmp_path, api_url=rx.api_url, ledger_url=url,
                             api_requests_per_second=1000, reconcile_after_minutes=30)  # fmt: skip

            def work() -> None:
                ledger = open_ledger(
                    url, default_dir=tmp_path, lease_seconds=60, retention_days=400
                )
                try:
                    results.append(Reconciler(s, ledger).run())
                except BaseException as exc:  # reported in the test thread
                    errors.append(exc)
                finally:
                    ledger.close()

            threads = [threading.Thread(target=work) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        asked = reporting.asked_transactions()
        # Every key asked once, by one of them (a key checked by one is not due again for
        # reconcile_after_minutes, whichever process looks next).
        assert asked == {f"tx-{i}": 1 for i in range(400)}
        assert sum(r.checked for r in results) == 400
        con = psycopg2.connect(base)
        with con, con.cursor() as cur:
            cur.execute(
                f"SELECT count(*) FROM {table} WHERE recon_status IS NULL OR recon_owner IS NOT NULL"
            )
            assert cur.fetchone()[0] == 400  # all missing from the report (no postbacks), none held
            cur.execute(f"SELECT count(*) FROM {table} WHERE recon_checked_at IS NOT NULL")
            assert cur.fetchone()[0] == 400
        con.close()
    finally:
        import psycopg2

        con = psycopg2.connect(base)
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        con.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_live_lease_is_respected_and_an_expired_one_taken_over(tmp_path: Path, kind: str) -> None:
    if kind == "sqlite":
        url, table = f"sqlite:///{tmp_path / 'ledger.sqlite3'}", None
    else:
        base = postgres_url()
        table = f"tlease_{uuid.uuid4().hex[:12]}"
        url = f"{base}{'&' if '?' in base else '?'}table={table}"
    seed(url, tmp_path, [("k1", "tx-1", None), ("k2", "tx-2", None)])
    a = open_ledger(url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
    b = open_ledger(url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
    try:
        first = ReconcileStore(a, lease_seconds=60)
        second = ReconcileStore(b, lease_seconds=0.5)
        _, mine = second.claim_due(after_seconds=0, limit=1)
        assert [k.key for k in mine] == ["k1"]
        _, theirs = first.claim_due(after_seconds=0, limit=10)
        assert [k.key for k in theirs] == ["k2"]  # k1 is leased by the other one
        first.release()
        time.sleep(0.6)  # the other one's lease runs out (it died)
        _, taken = first.claim_due(after_seconds=0, limit=10)
        assert sorted(k.key for k in taken) == ["k1", "k2"]
        # The dead one's late write does not overwrite the taker's claim.
        second.record([reconciler.Verdict("k1", "confirmed")])
        first.record([reconciler.Verdict("k1", "rejected", 8, "dup")])
    finally:
        a.close()
        b.close()
    check = open_ledger(url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
    try:
        store = ReconcileStore(check, lease_seconds=60)
        assert [(p.key.key, p.status, p.error_code) for p in store.problems()] == [
            ("k1", "rejected", 8)
        ]
    finally:
        check.close()
        if table:
            import psycopg2

            con = psycopg2.connect(postgres_url())
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            con.close()


# --- reconcile: true, after a normal run ----------------------------------------------------------------


def recent(i: int, now: float) -> dict:
    record = track(i)
    record["timestamp"] = dt.datetime.fromtimestamp(now - 600, dt.timezone.utc).isoformat()
    return record


def live_config(tmp_path: Path, rx: Receiver, **overrides: t.Any) -> dict:
    return {
        **config_under(tmp_path), "postback_url": rx.url, "api_url": rx.api_url,
        "api_key": SECRET_API_KEY, "preflight": False, "reconcile_after_minutes": 0,
        "reconcile_not_found_after_hours": 0, **overrides,
    }  # fmt: skip


def test_reconcile_true_checks_earlier_runs_after_the_last_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    reporting = FakeReporting(api_key=SECRET_API_KEY, verdicts={"tx-2": Verdict.rejected(8)})
    events: list[tuple[str, float]] = []
    original = TargetEverflow._write_state_message

    def record_state(self: TargetEverflow, state: dict) -> None:
        events.append(("state", time.time()))
        original(self, state)

    monkeypatch.setattr(TargetEverflow, "_write_state_message", record_state)
    with Receiver(reporting=reporting) as rx:
        first, _ = run_in_process(
            live_config(tmp_path, rx),
            singer_lines("o", [recent(1, now), recent(2, now)], state={"n": 1}),
        )
        assert first == 0 and reporting.requests == []
        config = live_config(tmp_path, rx, reconcile=True)
        code, _ = run_in_process(config, singer_lines("o", [recent(3, now)], state={"n": 2}))
    assert code == 6  # an earlier run's conversion was rejected
    asked = reporting.asked_transactions()
    assert asked == {"tx-1": 1, "tx-2": 1}  # this run's own tx-3 is not checked by it
    last_state = max(at for kind, at in events if kind == "state")
    assert all(r.wall >= last_state for r in reporting.requests)  # after the last STATE
    report = json.loads((tmp_path / "state" / "reconcile_report.json").read_text())
    assert [(c["transaction_id"], c["error_code"]) for c in report["rejected_or_not_found"]] == [
        ("tx-2", 8)
    ]


@pytest.mark.parametrize("failure", ["401", "unreachable"])
def test_reconcile_true_a_reporting_failure_is_only_a_warning(tmp_path: Path, failure: str) -> None:
    now = time.time()
    reporting = FakeReporting(api_key="another key" if failure == "401" else SECRET_API_KEY)
    with Receiver(reporting=reporting) as rx:
        config = live_config(tmp_path, rx, request_timeout=2)
        assert run_target(config, singer_lines("o", [recent(1, now)]), tmp_path).code == 0
        if failure == "unreachable":
            config["api_url"] = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
        result = run_target(
            {**config, "reconcile": True},
            singer_lines("o", [recent(2, now)], state={"n": 2}),
            tmp_path,
        )
    assert result.code == 0, result.stderr[-2000:]
    assert result.states == [{"n": 2}]
    assert "Reconcile after the run did not finish (the delivery is not affected)" in result.stderr
    assert "Traceback" not in result.stderr and SECRET_API_KEY not in result.stderr
    con = sqlite3.connect(tmp_path / "state" / "ledger.sqlite3")
    rows = con.execute("SELECT recon_status, recon_owner FROM everflow_ledger").fetchall()
    con.close()
    assert rows == [(None, None), (None, None)]  # unchecked, due next time


def test_dry_run_never_calls_the_reporting_api(tmp_path: Path) -> None:
    reporting = FakeReporting(api_key=SECRET_API_KEY)
    with Receiver(reporting=reporting) as rx:
        config = live_config(tmp_path, rx, dry_run=True, reconcile=True)
        code, _ = run_in_process(config, singer_lines("o", [track(1)]))
        assert code == 0
        proc = reconcile_cli(config, tmp_path)
    assert proc.code == 0 and "Dry run: reconcile calls no reporting API" in proc.stdout
    assert reporting.requests == [] and rx.requests == []


# --- limits, settings, signals --------------------------------------------------------------------


class CountingLimiter:
    def __init__(self) -> None:
        self.acquired = 0
        self.held: list[float] = []

    def acquire(self, stop: t.Any = None) -> bool:
        self.acquired += 1
        return True

    def hold(self, seconds: float) -> None:
        self.held.append(seconds)


def test_every_attempt_waits_for_the_token_bucket_and_a_429_holds_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    seed(url, tmp_path, [("k1", "tx-1", None)])
    reporting = FakeReporting(api_key=SECRET_API_KEY, script=[Answer.rate_limited("1")])
    limiter = CountingLimiter()
    with Receiver(reporting=reporting) as rx:
        s = settings_for(tmp_path, api_url=rx.api_url)
        ledger = open_ledger(url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
        try:
            result = Reconciler(s, ledger, limiter=limiter, sleep=lambda _: None).run()  # type: ignore[arg-type]
        finally:
            ledger.close()
    assert limiter.acquired == 2 == result.requests and limiter.held == [1.0]
    default = Reconciler(
        s, open_ledger(url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
    )
    assert default.client.api.limiter.rate == s.api_requests_per_second == 5.0
    default.store.ledger.close()


def test_when_everflow_refuses_the_transaction_filter_whole_days_are_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    reporting = FakeReporting(
        api_key=SECRET_API_KEY, transaction_filter=False, verdicts={"tx-1": Verdict.rejected(13)}
    )
    with Receiver(reporting=reporting) as rx:
        config = live_config(tmp_path, rx)
        assert (
            run_target(config, singer_lines("o", [recent(1, now), recent(2, now)]), tmp_path).code
            == 0
        )
        proc = reconcile_cli(config, tmp_path)
    assert proc.code == 6, proc.stderr[-2000:]
    assert "Everflow refused the transaction id filter" in proc.stderr
    bodies = reporting.report_requests()
    assert len(bodies) == 2 and bodies[1]["query"]["filters"] == []


@pytest.mark.parametrize(
    ("changes", "says", "code"),
    [({"reconcile": True, "api_key": None}, "Setting 'reconcile': is true but api_key is not set", 1),
     ({"reconcile": True, "ledger_url": "none"}, "Setting 'reconcile': is true but ledger_url is none", 1),
     ({"api_requests_per_second": 0}, "Setting 'api_requests_per_second': must be a number > 0 and <= 1000, not 0", 1)],
)  # fmt: skip
def test_settings_are_checked_before_anything_runs(
    tmp_path: Path, changes: dict, says: str, code: int
) -> None:
    config = {
        **config_under(tmp_path),
        "postback_url": "https://t.example.com/",
        "api_key": SECRET_API_KEY,
        **changes,
    }
    config = {k: v for k, v in config.items() if v is not None}
    result = run_target(config, singer_lines("o", [track(1)]), tmp_path)
    assert result.code == code and says in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("changes", "says", "code"),
    [({"api_key": None}, "Setting 'api_key': reconcile reads Everflow's conversion report", 1),
     ({"ledger_url": "none"}, "Setting 'ledger_url': is none", 1),
     ({"api_url": "http://api.example.com/v1"}, "Setting 'api_url': must use https", 1)],
)  # fmt: skip
def test_the_reconcile_command_says_what_is_wrong_in_one_line(
    tmp_path: Path, changes: dict, says: str, code: int
) -> None:
    config = {
        **config_under(tmp_path),
        "postback_url": "https://t.example.com/",
        "api_key": SECRET_API_KEY,
        **changes,
    }
    config = {k: v for k, v in config.items() if v is not None}
    proc = reconcile_cli(config, tmp_path)
    assert proc.code == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("target-everflow:")]
    assert len(lines) == 1 and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_stops_reconcile_and_gives_its_claims_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite3'}"
    (tmp_path / "state").mkdir()
    seed(url, tmp_path, [("k1", "tx-1", None)])
    reporting = FakeReporting(
        api_key=SECRET_API_KEY, script=[Answer.slow(60, then=Answer.ok({"conversions": []}))]
    )
    with Receiver(reporting=reporting) as rx:
        config = {**config_under(tmp_path), "postback_url": rx.url, "api_url": rx.api_url,
                  "api_key": SECRET_API_KEY, "reconcile_after_minutes": 0}  # fmt: skip
        path = tmp_path / "config-sig.json"
        path.write_text(json.dumps(config))
        proc = subprocess.Popen(
            [sys.executable, "-m", "target_everflow", "reconcile", "--config", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not reporting.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reporting.requests, "reconcile never asked"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)  # within its grace, not after the 60 s answer
    assert proc.returncode == 143, stderr
    assert "stopped by signal 15" in stderr and "Traceback" not in stderr
    con = sqlite3.connect(tmp_path / "state" / "ledger.sqlite3")
    assert con.execute("SELECT recon_status, recon_owner FROM everflow_ledger").fetchall() == [
        (None, None)
    ]
    con.close()


def test_the_summary_lines_escape_event_names() -> None:
    result = reconciler.ReconcileResult(report_path=Path("r.json"))
    odd = DueKey("k", "s", "Buy\nnow \x1b[31m", "T", None, 0, None, 3.5, None, 1.0)
    result.count(odd, reconciler.Verdict("k", "rejected", 21, "bad token"))
    lines = result.lines()
    assert all("\n" not in line and "\x1b" not in line for line in lines)
    assert "rejected, error 21 (invalid verification token): 1, amount (no currency) 3.50" in (
        "\n".join(lines)
    )
    logging.getLogger(__name__).info("%s", lines)


def test_a_report_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    seed(url, tmp_path, [("k1", "tx-1", None)])
    (tmp_path / "blocked").write_text("a file, not a directory")
    with Receiver(reporting=FakeReporting(api_key=SECRET_API_KEY)) as rx:
        config = {**config_under(tmp_path), "postback_url": rx.url, "api_url": rx.api_url,
                  "api_key": SECRET_API_KEY, "ledger_url": url, "reconcile_after_minutes": 0,
                  "reconcile_report_path": str(tmp_path / "blocked" / "report.json")}  # fmt: skip
        proc = reconcile_cli(config, tmp_path)
    assert proc.code == 1 and "Traceback" not in proc.stderr
    assert "Setting 'reconcile_report_path': cannot write" in proc.stderr


def test_the_lease_is_renewed_before_every_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconciler, "PAGE_SIZE", 2)
    now = time.time()
    reporting = FakeReporting(api_key=SECRET_API_KEY)
    with Receiver(reporting=reporting) as rx:
        config = live_config(tmp_path, rx)
        assert (
            run_target(config, singer_lines("o", [recent(i, now) for i in range(5)]), tmp_path).code
            == 0
        )
        renewals: list[float] = []
        original = ReconcileStore.renew

        def renew(self: ReconcileStore) -> float:
            renewals.append(time.time())
            return original(self)

        monkeypatch.setattr(ReconcileStore, "renew", renew)
        s = Settings.from_config({**config, "api_requests_per_second": 1000})
        ledger = open_ledger(
            s.ledger_url, default_dir=s.state_dir, lease_seconds=60, retention_days=400
        )
        try:
            result = Reconciler(s, ledger).run()
        finally:
            ledger.close()
    assert len(reporting.report_requests()) == 3 == len(renewals)  # pages of 2, 2 and 1
    assert result.as_dict()["by_event"]["Order Completed"]["confirmed"]["count"] == 5
