"""Reconcile and the REST client, hardened (docs/hardening.md, "Reconcile and the REST client"):
paging by ``total_count``, bounded memory, hostile rows, findings reported until a completed
reconcile printed them, secrets, held keys, amounts per currency, one REST client."""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import sqlite3
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from target_everflow.delivery import engine
from target_everflow.errors import EXIT_CONFIG, EXIT_DELIVERY
from target_everflow.everflow.client import (
    ApiAuthError,
    ApiBadAnswer,
    ApiRateLimited,
    ApiUnavailable,
)
from target_everflow.ledger import open_ledger
from target_everflow.ledger.verdicts import DueKey, ReconcileStore, Verdict
from target_everflow.reconcile import reconciler
from target_everflow.reconcile.reconciler import ReconcileError, Reconciler, ReconcileResult
from target_everflow.retry import RateLimiter
from target_everflow.settings import Settings
from tests.conftest import (
    SECRET_API_KEY,
    SECRET_TOKEN,
    config_under,
    postgres_url,
    run_target,
    singer_lines,
)
from tests.receiver import Answer, FakeReporting, Raw, Receiver
from tests.receiver import Verdict as FakeVerdict
from tests.test_reconcile import live_config, recent
from tests.test_reconcile_e2e import reconcile_cli

ROOT = Path(__file__).resolve().parent.parent


def deliver(rx: Receiver, tmp_path: Path, n: int, **overrides: t.Any) -> dict:
    """``n`` conversions delivered through the receiver; returns the config (SQLite ledger)."""
    now = time.time()
    config = live_config(tmp_path, rx, api_requests_per_second=1000, **overrides)
    lines = singer_lines("o", [recent(i, now) for i in range(n)])
    result = run_target(config, lines, tmp_path)
    assert result.code == 0, result.stderr[-2000:]
    return config


def reconcile_once(config: dict, **kwargs: t.Any) -> ReconcileResult:
    s = Settings.from_config(config)
    ledger = open_ledger(
        s.ledger_url, default_dir=s.state_dir, lease_seconds=60, retention_days=400
    )
    try:
        rec = Reconciler(s, ledger, sleep=lambda _: None, **kwargs)
        result = rec.run()
        result.lines()
        rec.mark_reported(result)
        return result
    finally:
        ledger.close()


def recon_rows(tmp_path: Path) -> list[tuple[t.Any, ...]]:
    con = sqlite3.connect(tmp_path / "state" / "ledger.sqlite3")
    try:
        return con.execute(
            "SELECT transaction_id, recon_status, recon_error_code, recon_error_message"
            " FROM everflow_ledger ORDER BY transaction_id"
        ).fetchall()
    finally:
        con.close()


# --- 2. paging -------------------------------------------------------------------------------


@pytest.mark.parametrize("filtered", [True, False], ids=["filter", "whole-day"])
def test_an_api_capping_pages_at_100_finds_all_300_conversions(
    tmp_path: Path, filtered: bool
) -> None:
    reporting = FakeReporting(api_key=SECRET_API_KEY, page_cap=100, transaction_filter=filtered)
    with Receiver(reporting=reporting) as rx:
        config = deliver(rx, tmp_path, 300)
        result = reconcile_once(config)
    assert result.checked == 300 and result.found == [] and result.exit_code == 0
    assert {row[1] for row in recon_rows(tmp_path)} == {"confirmed"}
    pages = [r for r in reporting.requests if r.path.endswith("/reporting/conversions")]
    asked = [int(r.query["page"]) for r in pages]
    # One day, 300 transactions: pages 1 to 3 of 100 rows (after the refused filter's 400).
    assert asked == ([1, 2, 3] if filtered else [1, 1, 2, 3])


def test_an_api_ignoring_page_stops_paging_and_calls_nothing_not_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reporting = FakeReporting(api_key=SECRET_API_KEY, page_cap=100, ignore_page=True)
    with Receiver(reporting=reporting) as rx:
        config = deliver(rx, tmp_path, 300)
        caplog.set_level(logging.WARNING)
        result = reconcile_once(config)
    statuses = [row[1] for row in recon_rows(tmp_path)]
    assert statuses.count("confirmed") == 100 and statuses.count(None) == 200
    assert "not_found" not in statuses and result.exit_code == 0
    assert sum("with the same rows as page 1" in r.getMessage() for r in caplog.records) == 1


# --- 3. bounded memory -----------------------------------------------------------------------

# The peak is read from /proc/self/status (VmHWM: this process's own high-water mark since its
# exec), never from ru_maxrss, which carries the peak of the pytest worker that started it.
MEASURE = """
import atexit, sys
def peak():
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    sys.stderr.write(f"MAXRSS_KB {kb}\\n")
atexit.register(peak)
import target_everflow.reconcile.reconciler as r
r.MAX_PAGES = 30
import runpy
sys.argv = ["target-everflow", "reconcile", "--config", sys.argv[1]]
runpy.run_module("target_everflow", run_name="__main__")
"""


def test_an_api_that_ignores_page_keeps_reconcile_under_200_mb(tmp_path: Path) -> None:
    """Every answer is a new page of 2,000 rows of the asked transactions (3.6 KB each, ~7.5 MB),
    ``total_count`` a billion: the rows kept stay a few per transaction, memory bounded."""
    blob = "x" * 3500

    def pages(n: int, body: dict) -> dict:
        tids = [f["filter_id_value"] for f in body["query"]["filters"]] or ["tx-0"]
        rows = [
            {"transaction_id": tids[i % len(tids)], "status": "rejected", "error_code": 8,
             "error_message": f"{n}-{i} {blob}", "is_event": False, "event": "",
             "conversion_unix_timestamp": int(time.time()) - 600}
            for i in range(2000)
        ]  # fmt: skip
        return {"conversions": rows, "paging": {"total_count": 10**9}}

    reporting = FakeReporting(api_key=SECRET_API_KEY, pages=pages)
    with Receiver(reporting=reporting) as rx:
        config = deliver(rx, tmp_path, 3)
        path = tmp_path / "config-measure.json"
        path.write_text(json.dumps({**config, "api_requests_per_second": 1000}))
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE, str(path)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    peak_mb = int(proc.stderr.split("MAXRSS_KB ")[1].split()[0]) / 1024
    assert peak_mb < 200, f"peak {peak_mb:.0f} MB"
    assert proc.stderr.count("had more than 30 pages") == 1, proc.stderr[-3000:]
    assert proc.returncode in (0, 6), proc.stderr[-3000:]


def test_a_page_of_a_million_tiny_values_is_one_line_not_a_memory_blowup(tmp_path: Path) -> None:
    content = b'{"conversions": [' + b"[]," * 1_000_000 + b'[]], "paging": {}}'
    with pytest.raises(ApiBadAnswer, match="more values than"):
        reconciler.parse_page(content)
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises((ApiBadAnswer, RecursionError, ValueError)):
        reconciler.parse_page(deep)


# --- 4. hostile rows -------------------------------------------------------------------------

HOSTILE = {
    "tx-1": Raw("1e400"),
    "tx-2": 99999999999,
    "tx-3": "abc",
    "tx-4": Raw("-0.5"),
}


def hostile(row: dict) -> dict:
    tid = row["transaction_id"]
    if tid in HOSTILE:
        row.update(status="rejected", error_code=HOSTILE[tid],
                   error_message=f"bad\u0000row\x1b[31m {tid} " + "m" * 5000)  # fmt: skip
    return row


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_one_hostile_row_never_breaks_reconcile(tmp_path: Path, kind: str) -> None:
    table = None
    overrides: dict[str, t.Any] = {}
    if kind == "postgres":
        base = postgres_url()
        table = f"thost_{uuid.uuid4().hex[:12]}"
        overrides["ledger_url"] = f"{base}{'&' if '?' in base else '?'}table={table}"
    reporting = FakeReporting(api_key=SECRET_API_KEY, rewrite=hostile)
    try:
        with Receiver(reporting=reporting) as rx:
            config = deliver(rx, tmp_path, 6, **overrides)
            result = reconcile_once(config)
        assert result.checked == 6 and result.exit_code == 6 and result.odd_rows == 4
        s = Settings.from_config(config)
        ledger = open_ledger(s.ledger_url, default_dir=s.state_dir, lease_seconds=60,
                             retention_days=400)  # fmt: skip
        try:
            got = {
                p.key.transaction_id: p for p in ReconcileStore(ledger, lease_seconds=60).problems()
            }
        finally:
            ledger.close()
        assert sorted(got) == sorted(HOSTILE)
        for tid, raw in HOSTILE.items():
            p = got[tid]
            assert p.error_code is None and p.status == "rejected"
            assert p.error_message is not None and "\x00" not in p.error_message
            assert "\x1b" not in p.error_message and len(p.error_message) <= 1000
            assert f"error_code {raw} is not a code" in p.error_message
        text = "\n".join(result.lines())
        assert "4 report row(s) had an error code that is no code" in text
        assert "no error code" in text
    finally:
        if table:
            import psycopg2

            con = psycopg2.connect(postgres_url())
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            con.close()


def test_reconcile_true_with_a_hostile_row_only_warns_or_finds(tmp_path: Path) -> None:
    now = time.time()
    reporting = FakeReporting(api_key=SECRET_API_KEY, rewrite=hostile)
    with Receiver(reporting=reporting) as rx:
        config = deliver(rx, tmp_path, 2)
        result = run_target(
            {**config, "reconcile": True},
            singer_lines("o", [recent(9, now)], state={"n": 2}),
            tmp_path,
        )
    assert result.code == 6, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.states == [{"n": 2}]


def test_verdicts_are_validated_before_they_reach_the_ledger() -> None:
    with pytest.raises(ValueError, match="32-bit"):
        Verdict("k", "rejected", 2**31, "m")
    with pytest.raises(ValueError, match="one line"):
        Verdict("k", "rejected", 8, "a\x00b")
    with pytest.raises(ValueError, match="unknown reconcile status"):
        Verdict("k", "approved")
    assert reconciler.error_code_of(8.0) == (8, None)
    assert reconciler.error_code_of(True) == (None, "true")
    assert reconciler.error_code_of("1e400") == (None, "1e400")
    assert reconciler.error_code_of(0) == (None, None)


# --- 5. findings reported until a completed reconcile printed them ---------------------------------


def test_rejections_found_by_a_failed_reconcile_are_reported_by_the_next(tmp_path: Path) -> None:
    def old(row: dict) -> dict:  # Everflow saw the 10 rejected ones 3 days ago
        if row["transaction_id"] != "tx-10":
            row["conversion_unix_timestamp"] -= 3 * 86400
        return row

    verdicts = {f"tx-{i}": FakeVerdict.rejected(8) for i in range(10)}
    reporting = FakeReporting(api_key=SECRET_API_KEY, verdicts=verdicts)
    with Receiver(reporting=reporting) as rx:
        config = deliver(rx, tmp_path, 11)
        # The 10 rejected ones were sent 3 days ago (asked first); today's request fails.
        con = sqlite3.connect(tmp_path / "state" / "ledger.sqlite3")
        con.execute("UPDATE everflow_ledger SET event_time = event_time - 3 * 86400,"
                    " sent_at = sent_at - 3 * 86400 WHERE transaction_id <> 'tx-10'")  # fmt: skip
        con.commit()
        con.close()
        reporting.rewrite = old
        reporting.script = [None] + [Answer.status(500)] * 4
        with pytest.raises(ReconcileError) as info:
            reconcile_once(config)
        assert info.value.exit_code == EXIT_DELIVERY
        assert [r[1] for r in recon_rows(tmp_path)].count("rejected") == 10
        reporting.script = []
        second = reconcile_once(config)
        third = reconcile_once(config)
    assert second.exit_code == 6 and len(second.unreported) == 10
    assert (
        "10 conversion(s) Everflow rejected or does not have, reported now (0 found by this "
        "run, 10 by an earlier reconcile that did not complete)" in "\n".join(second.lines())
    )
    assert third.exit_code == 0 and third.unreported == []


def test_findings_of_a_reconcile_whose_report_could_not_be_written_are_reported_next(
    tmp_path: Path,
) -> None:
    reporting = FakeReporting(api_key=SECRET_API_KEY, verdicts={"tx-1": FakeVerdict.rejected(8)})
    (tmp_path / "blocked").write_text("a file, not a directory")
    with Receiver(reporting=reporting) as rx:
        config = deliver(rx, tmp_path, 3)
        blocked = {**config, "reconcile_report_path": str(tmp_path / "blocked" / "r.json")}
        with pytest.raises(ReconcileError, match="reconcile_report_path"):
            reconcile_once(blocked)  # the path went bad after start-up: the write fails
        s = Settings.from_config(config)
        ledger = open_ledger(s.ledger_url, default_dir=s.state_dir, lease_seconds=60,
                             retention_days=400)  # fmt: skip
        try:
            assert reconciler.reconcile_after_run(
                Settings.from_config({**config, "reconcile": True}), ledger,
                logging.getLogger("test"),
            ) == 6  # fmt: skip
            assert reconciler.reconcile_after_run(
                Settings.from_config({**config, "reconcile": True}), ledger,
                logging.getLogger("test"),
            ) == 0  # fmt: skip
        finally:
            ledger.close()


def test_reconcile_true_checks_reconcile_report_path_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file, not a directory")
    with Receiver(reporting=FakeReporting(api_key=SECRET_API_KEY)) as rx:
        config = live_config(
            tmp_path, rx, reconcile=True,
            reconcile_report_path=str(tmp_path / "blocked" / "report.json"),
        )  # fmt: skip
        result = run_target(config, singer_lines("o", [recent(1, time.time())]), tmp_path)
        assert rx.requests == []  # nothing sent: the path is checked before anything is read
    assert result.code == EXIT_CONFIG
    assert "Setting 'reconcile_report_path': cannot write" in result.stderr


# --- 6. secrets --------------------------------------------------------------------------------


def test_a_token_echoed_by_everflow_is_masked_in_the_ledger_report_and_summary(
    tmp_path: Path,
) -> None:
    echo = f"Invalid Verification Token {SECRET_TOKEN} (key {SECRET_API_KEY})"
    reporting = FakeReporting(
        api_key=SECRET_API_KEY, verdicts={"tx-0": FakeVerdict.rejected(21, echo)}
    )
    with Receiver(reporting=reporting) as rx:
        config = deliver(rx, tmp_path, 2, verification_token=SECRET_TOKEN)
        proc = reconcile_cli(config, tmp_path)
    assert proc.code == 6, proc.stderr[-2000:]
    report = (tmp_path / "state" / "reconcile_report.json").read_text()
    ledger = (tmp_path / "state" / "ledger.sqlite3").read_bytes()
    for text in (report, proc.stdout, proc.stderr):
        assert SECRET_TOKEN not in text and SECRET_API_KEY not in text
    assert SECRET_TOKEN.encode() not in ledger
    assert "Invalid Verification Token [redacted]" in report


# --- 7. after a killed reconcile -----------------------------------------------------------------


def test_after_a_killed_reconcile_the_summary_says_what_is_held_and_until_when(
    tmp_path: Path,
) -> None:
    with Receiver(reporting=FakeReporting(api_key=SECRET_API_KEY)) as rx:
        config = deliver(rx, tmp_path, 35)
        s = Settings.from_config(config)
        killed = open_ledger(s.ledger_url, default_dir=s.state_dir, lease_seconds=60,
                             retention_days=400)  # fmt: skip
        try:  # a reconciler that claimed 30 keys and was killed: its lease stays
            _, held = ReconcileStore(killed, lease_seconds=540).claim_due(after_seconds=0, limit=30)
        finally:
            killed.close()
        assert len(held) == 30
        con = sqlite3.connect(tmp_path / "state" / "ledger.sqlite3")
        con.execute("UPDATE everflow_ledger SET sent_at = ? WHERE recon_owner IS NULL",
                    (time.time(),))  # fmt: skip
        con.commit()
        con.close()
        result = reconcile_once({**config, "reconcile_after_minutes": 30})
    text = "\n".join(result.lines())
    assert result.checked == 0 and result.exit_code == 0
    assert "none was due now" in text
    assert "Still to check: 0 due, 5 waiting for reconcile_after_minutes (30 min" in text
    until = text.split("30 held by another reconciler until ")[1].split(" ")[0]
    left = dt.datetime.fromisoformat(until.replace("Z", "+00:00")).timestamp() - time.time()
    assert 480 < left <= 541  # the killed one's 9-minute lease, not yet run out


# --- 8. money ------------------------------------------------------------------------------------


def test_amounts_are_per_currency_and_codes_named_with_age_grouped() -> None:
    result = ReconcileResult(report_path=Path("r.json"))

    def key(k: str, amount: float | None, currency: str | None) -> DueKey:
        return DueKey(k, "s", "Buy", f"T{k}", None, 0, None, amount, None, 1.0, currency)

    result.count(key("a", 10.0, "USD"), Verdict("a", "confirmed"))
    result.count(key("b", 5.0, "EUR"), Verdict("b", "confirmed"))
    result.count(key("c", 2.0, None), Verdict("c", "confirmed"))
    result.count(key("d", 7.0, "USD"), Verdict("d", "rejected", 13, "click not found"))
    result.count(key("e", 3.0, "EUR"), Verdict("e", "rejected", 5, "lookback"))
    result.count(key("f", 1.0, "USD"), Verdict("f", "rejected", 27, "pass"))
    text = "\n".join(result.lines())
    assert "3 confirmed (EUR 5.00; USD 10.00; (no currency) 2.00)" in text
    assert "rejected, error 27 (pass-through): 1, amount USD 1.00" in text
    assert "rejected, error 5 (outside the conversion lookback window): 1, amount EUR 3.00" in text
    assert "rejected, lost to age (codes 5, 13, 20): 2, amount EUR 3.00; USD 7.00" in text
    data = result.as_dict()["by_event"]["Buy"]
    assert data["confirmed"]["amount_by_currency"] == {"(no currency)": 2.0, "EUR": 5.0,
                                                      "USD": 10.0}  # fmt: skip
    assert data["rejected_lost_to_age"] == {"count": 2,
                                           "amount_by_currency": {"EUR": 3.0, "USD": 7.0}}  # fmt: skip
    assert not hasattr(reconciler, "ERROR_NAMES")


# --- 1. one REST client --------------------------------------------------------------------------


def test_one_rest_client_no_private_names_across_modules_one_rate_limiter() -> None:
    assert engine.RateLimiter is RateLimiter
    assert not (ROOT / "target_everflow" / "everflow" / "api.py").exists()
    for path in [*(ROOT / "target_everflow" / "reconcile").glob("*.py"),
                 *(ROOT / "target_everflow" / "everflow").glob("*.py")]:  # fmt: skip
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("target_"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
    # Reconcile's SQL uses the ledger's public helpers only (no private attribute of it).
    tree = ast.parse((ROOT / "target_everflow" / "ledger" / "verdicts.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            if node.value.attr == "ledger":
                assert not node.attr.startswith("_"), f"verdicts.py uses ledger.{node.attr}"
    assert (ApiAuthError.exit_code, ApiRateLimited.exit_code, ApiUnavailable.exit_code,
            ApiBadAnswer.exit_code) == (EXIT_CONFIG, EXIT_DELIVERY, EXIT_DELIVERY, EXIT_DELIVERY)  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "code"), [(Answer.status(401), EXIT_CONFIG), (Answer.status(500), EXIT_DELIVERY)]
)
def test_reporting_failures_keep_their_typed_exit_codes(
    tmp_path: Path, answer: Answer, code: int
) -> None:
    reporting = FakeReporting(api_key=SECRET_API_KEY)
    with Receiver(reporting=reporting) as rx:
        config = deliver(rx, tmp_path, 1)
        reporting.script = [answer] * 4
        proc = reconcile_cli({**config, "request_timeout": 2}, tmp_path)
    assert proc.code == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("target-everflow:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr


def test_a_failed_api_check_is_one_real_line(tmp_path: Path) -> None:
    reporting = FakeReporting(api_key=SECRET_API_KEY, events={24: "Purchase", 31: "Lead"})
    with Receiver(reporting=reporting) as rx:
        config = {
            **config_under(tmp_path), "postback_url": rx.url, "api_url": rx.api_url,
            "api_key": SECRET_API_KEY, "advertiser_id": 7, "preflight": True,
            "event_mapping": {"Order Completed": 99, "Other": 98},
        }  # fmt: skip
        result = run_target(config, singer_lines("o", []), tmp_path)
    assert result.code == EXIT_CONFIG
    failed = [line for line in result.stderr.splitlines() if "Everflow API check failed" in line]
    assert len(failed) == 1, result.stderr
    assert "\\n" not in failed[0] and "24: Purchase; 31: Lead." in failed[0]
