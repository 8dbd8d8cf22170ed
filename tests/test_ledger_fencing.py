"""Issue 11, finding 1: a paused process never resends silently.

A run frozen past its lease (SIGSTOP, a suspended VM or laptop, a debugger) loses its claims to
the next run, which sends them. When it wakes up it must not send them too: every postback
leaves only after a ledger write that proves, in the same statement, that this run still holds
the claim (the fence); a lost claim is skipped as ``claimed_elsewhere``. A run whose lease may
have expired (measured on CLOCK_BOOTTIME, which counts a suspend) renews before it sends more.

The full scenario (``test_a_paused_run_never_resends_silently``) waits out the 60 s lease
minimum, once per ledger, both at once; it is marked ``slow`` (``make test`` runs it,
``make test-fast`` leaves it out).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

from target_everflow.ledger import ClaimStatus, lease_clock, open_ledger
from tests.conftest import (
    config_under,
    pg_execute,
    postgres_url,
    singer_lines,
    stop,
    track,
    wait_for,
)
from tests.receiver import Answer, Receiver, ReceiverProcess, read_log
from tests.test_ledger import Backend, backend  # noqa: F401 - the fixture, both ledgers

C = ClaimStatus.CLAIMED
I = ClaimStatus.TAKEN_OVER  # noqa: E741

IN_DOUBT = re.compile(
    r"In doubt: conversion (\S+) \(stream (\S+), event '([^']*)', transaction (\S+)\) "
    r"(was claimed by a run that stopped|got no answer)"
)
TOOK_OVER = re.compile(r"took over (\d+) claim\(s\) of (\S+) \(([^)]*)\), (\d+) of them in doubt")


# --- the fence, one ledger call at a time ------------------------------------------------------


def test_the_fence_refuses_a_claim_another_run_took_over(backend: Backend) -> None:
    lease = 0.5
    holder = backend.open(lease=lease)
    rival = backend.open(lease=lease)
    assert holder.claim(["sent", "unsent"]) == {"sent": C, "unsent": C}
    assert holder.mark_sending("sent") is True  # still ours: the postback may leave

    # The holder freezes: nothing renews its leases, and the rival takes its claims over.
    holder._leases.stop()
    assert wait_for(
        lambda: max(backend.lease_of("sent"), backend.lease_of("unsent")) < time.time(), 5
    )
    assert rival.claim(["sent", "unsent"]) == {"sent": I, "unsent": C}

    # It wakes up: neither postback may leave, and the rival's rows are untouched.
    assert holder.mark_sending("unsent") is False
    assert holder.mark_sending("sent") is False
    rows = dict(backend.sql("SELECT delivery_key, owner || ' ' || status FROM {t}"))
    assert rows == {"sent": f"{rival.owner} pending", "unsent": f"{rival.owner} pending"}

    # A claim that is still its own passes the fence (and gets a fresh lease).
    assert holder.claim(["mine"]) == {"mine": C}
    assert holder.mark_sending("mine") is True
    assert backend.lease_of("mine") > time.time()
    assert holder.mark_sending("mine") is True  # a retry is fenced again


def test_a_lease_that_may_have_expired_is_renewed_before_the_next_send(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The machine was suspended: time.monotonic did not count it, CLOCK_BOOTTIME did. Before
    the next postback leaves, the run renews every lease it holds (the heartbeat is late)."""
    ledger = backend.open(lease=60)
    suspended = [0.0]
    monkeypatch.setattr(ledger._leases, "clock", lambda: lease_clock() + suspended[0])
    assert ledger.claim(["now", "later"]) == {"now": C, "later": C}
    backend.sql("UPDATE {t} SET lease_until = ?", (time.time() + 2,))  # wall time went on
    suspended[0] = 45.0
    with caplog.at_level(logging.WARNING):
        assert ledger.mark_sending("now") is True
    assert backend.lease_of("later") > time.time() + 50  # renewed before "now" left
    assert any("renewing them before sending more" in r.getMessage() for r in caplog.records)
    caplog.clear()
    assert ledger.mark_sending("later") is True  # renewed just now: no second renewal
    assert not any("renewing" in r.getMessage() for r in caplog.records)


def test_the_lease_clock_counts_a_suspend() -> None:
    if not hasattr(time, "CLOCK_BOOTTIME"):
        pytest.skip("no CLOCK_BOOTTIME on this system: the monotonic clock is the fallback")
    assert abs(lease_clock() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0


# --- the delivery engine: a lost claim is skipped, not sent --------------------------------------


@pytest.mark.parametrize("rival_does", ["deliver", "let_go"])
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_run_that_lost_its_claims_does_not_send_them(
    kind: str, rival_does: str, tmp_path: pathlib.Path
) -> None:
    """Run A sends tx-1 (its answer held back), loses every claim to run B meanwhile (its
    leases expired), then gets tx-1's answer: it sends none of what B holds and says so. Once B
    has delivered them they are skipped (claimed_elsewhere); if B lets them go instead (it
    failed, or died and its lease ran out), A sends them after all: nothing is lost. Exit 0."""
    table = f"tfence_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        base = postgres_url()
        url = f"{base}{'&' if '?' in base else '?'}table={table}"
    # tx-1's answer takes 8 s: meanwhile A's leases run out and B takes every claim over.
    script = Receiver.per_transaction({"tx-1": [Answer.slow(8.0)]})
    config = {
        **config_under(tmp_path),
        "ledger_url": url,
        "max_concurrency": 1,
        "request_timeout": 30,
    }
    try:
        with Receiver(script=script) as rx:
            config["postback_url"] = rx.url
            (tmp_path / "config.json").write_text(json.dumps(config))
            (tmp_path / "input.singer").write_text(
                "\n".join(singer_lines("orders", [track(i) for i in range(1, 6)])) + "\n"
            )
            with (tmp_path / "stderr").open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "target_everflow", "--config", str(tmp_path / "config.json"),
                     "--input", str(tmp_path / "input.singer")],
                    stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path,
                )  # fmt: skip
                try:
                    assert rx.wait_for(1, timeout=30), "run A sent nothing"
                    rival = open_ledger(
                        url, default_dir=tmp_path, lease_seconds=60, retention_days=400
                    )
                    try:
                        _sql(kind, url, tmp_path, table, "UPDATE {t} SET lease_until = 0")
                        keys = [f"m:msg-{i}" for i in range(1, 6)]
                        assert rival.claim(keys) == {"m:msg-1": I, **{k: C for k in keys[1:]}}
                        time.sleep(2.0)  # A runs into the fence and waits for B's outcome
                        if rival_does == "deliver":
                            for key in keys[1:]:
                                rival.mark_delivered(key, 200)
                        else:
                            rival.release(keys[1:])
                        rival.flush()
                    finally:
                        rival.close()
                    code = proc.wait(60)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            sent = collections.Counter(r.transaction_id for r in rx.requests)
    finally:
        if kind == "postgres":
            _sql(kind, url, tmp_path, table, "DROP TABLE IF EXISTS {t}")
    stderr = (tmp_path / "stderr").read_text()
    assert code == 0, stderr[-3000:]
    summary = json.loads(pathlib.Path(config["summary_path"]).read_text())
    assert summary["records_read"] == 5
    assert (
        "4 conversion(s) of this batch were not sent: another run took their claims over" in stderr
    )
    assert "claimed_elsewhere" in stderr and "Traceback" not in stderr
    if rival_does == "deliver":
        assert sent == {"tx-1": 1}, sent  # nothing of what B owned left A
        assert summary["delivered"] == 1 and summary["skipped"] == {"claimed_elsewhere": 4}, summary
    else:  # sent once each, by A, after B let them go
        assert sent == {f"tx-{i}": 1 for i in range(1, 6)}, sent
        assert summary["delivered"] == 5 and summary["skipped"] == {}, summary


def _sql(kind: str, url: str, tmp_path: pathlib.Path, table: str, sql: str) -> None:
    if kind == "sqlite":
        conn = sqlite3.connect(tmp_path / "ledger.db", timeout=30)
        with contextlib.closing(conn):
            conn.execute(sql.format(t="everflow_ledger"))
            conn.commit()
        return
    pg_execute(sql.format(t=table))


# --- the whole scenario: SIGSTOP past the lease, a second run, SIGCONT ----------------------------

CONVERSIONS = 100
MAX_CONCURRENCY = 4


class PauseScenario:
    """Run A frozen (SIGSTOP) once it is sending; its leases run out (the 60 s minimum); run B
    on the same input and ledger takes over and finishes; then A is resumed (SIGCONT)."""

    def __init__(self, kind: str, root: pathlib.Path, url: str) -> None:
        self.kind = kind
        self.prefix = kind[0]
        self.root = root
        self.url = url
        self.table = f"tpause_{uuid.uuid4().hex[:10]}"
        self.app = f"pause-{uuid.uuid4().hex[:8]}"  # A's session, to find it in pg_stat_activity
        self.error: BaseException | None = None
        self.codes: dict[str, int | None] = {}
        root.mkdir(parents=True)

    def ledger_url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.root / 'ledger.db'}"
        base = postgres_url()
        return f"{base}{'&' if '?' in base else '?'}table={self.table}&application_name={self.app}"

    def config(self, run: str) -> dict:
        return {
            **config_under(self.root / run), "postback_url": self.url, "ledger_url": self.ledger_url(),
            "max_concurrency": MAX_CONCURRENCY, "request_timeout": 2, "max_retries": 0,
        }  # fmt: skip

    def start(self, run: str) -> subprocess.Popen[bytes]:
        directory = self.root / run
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(self.config(run)))
        records = [track(i, tid=f"{self.prefix}-{i}") for i in range(CONVERSIONS)]
        (directory / "input.singer").write_text("\n".join(singer_lines("orders", records)) + "\n")
        with (directory / "stderr").open("wb") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "target_everflow", "--config", str(directory / "config.json"),
                 "--input", str(directory / "input.singer")],
                stdout=subprocess.DEVNULL, stderr=err, cwd=directory,
            )  # fmt: skip

    def sent(self, log: pathlib.Path) -> int:
        return sum(
            1
            for e in read_log(log)
            if str(e.get("transaction_id") or "").startswith(f"{self.prefix}-")
        )

    def in_transaction(self) -> bool:
        """Does frozen A hold a ledger transaction open (locks others would wait for)?"""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.root / "ledger.db", timeout=0, isolation_level=None)
            with contextlib.closing(conn):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:
                    return True
                conn.execute("ROLLBACK")
                return False
        return bool(pg_execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                            " AND state <> 'idle'", (self.app,))[0][0])  # fmt: skip

    def leases_of_a_expired(self) -> bool:
        sql = "SELECT count(*) FROM {t} WHERE status IN ('pending', 'sending') AND lease_until > {now}"
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.root / "ledger.db", timeout=30)
            with contextlib.closing(conn):
                live = conn.execute(sql.format(t="everflow_ledger", now=time.time())).fetchone()[0]
        else:
            live = pg_execute(
                sql.format(t=self.table, now="EXTRACT(EPOCH FROM clock_timestamp())")
            )[0][0]
        return live == 0

    def drive(self, log: pathlib.Path) -> None:
        try:
            self._drive(log)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _drive(self, log: pathlib.Path) -> None:
        a = self.start("a")
        try:
            assert wait_for(lambda: self.sent(log) >= 2 * MAX_CONCURRENCY, 60), (
                "run A did not start sending"
            )
            time.sleep(0.5)
            stop(a.pid)
            for _ in range(
                100
            ):  # freeze it outside a ledger transaction (else B waits on A's locks)
                if not self.in_transaction():
                    break
                os.kill(a.pid, signal.SIGCONT)
                time.sleep(0.03)
                stop(a.pid)
            assert wait_for(self.leases_of_a_expired, 120, step=0.5), "A's leases never expired"
            time.sleep(1.0)
            b = self.start("b")
            self.codes["b"] = b.wait(120)
        finally:
            os.kill(a.pid, signal.SIGCONT)
            try:
                self.codes["a"] = a.wait(60)
            finally:
                if a.poll() is None:
                    a.kill()
                    a.wait()
                if self.kind == "postgres":
                    pg_execute(f"DROP TABLE IF EXISTS {self.table}")

    def check(self, log: pathlib.Path) -> dict:
        mine = [
            e
            for e in read_log(log)
            if str(e.get("transaction_id") or "").startswith(f"{self.prefix}-")
        ]
        seen = collections.Counter(e["transaction_id"] for e in mine)
        stderr = {run: (self.root / run / "stderr").read_text() for run in ("a", "b")}
        summary = {
            run: json.loads((self.root / run / "summary.json").read_text()) for run in ("a", "b")
        }
        reported = {m.group(4) for text in stderr.values() for m in IN_DOUBT.finditer(text)}
        takeovers = [m for m in TOOK_OVER.finditer(stderr["b"])]
        twice = {tx for tx, n in seen.items() if n > 1}
        figures = {
            "ledger": self.kind, "requests": len(mine), "sent twice": len(twice),
            "reported in doubt": len(reported), "takeovers": [m.group(0) for m in takeovers],
            "a": {k: summary["a"][k] for k in ("delivered", "skipped", "in_doubt")},
            "b": {k: summary["b"][k] for k in ("delivered", "skipped", "in_doubt")},
            "codes": self.codes,
        }  # fmt: skip
        shown = json.dumps(figures)
        assert self.codes == {"a": 0, "b": 0}, (shown, stderr["a"][-2000:], stderr["b"][-2000:])
        assert set(seen) == {f"{self.prefix}-{i}" for i in range(CONVERSIONS)}, shown  # none lost
        assert takeovers, f"B took nothing over: the scenario did not happen\n{shown}"
        assert twice <= reported, (
            f"sent twice, never reported in doubt: {sorted(twice - reported)}\n{shown}"
        )
        after_takeover = {
            m.group(4)
            for m in IN_DOUBT.finditer(stderr["b"])
            if m.group(5).startswith("was claimed")
        }
        assert len(after_takeover) <= MAX_CONCURRENCY * len(takeovers), shown
        assert sum(int(m.group(4)) for m in takeovers) <= MAX_CONCURRENCY * len(takeovers), shown
        lost = summary["a"]["skipped"].get("claimed_elsewhere", 0)
        assert lost > 0 and "claimed_elsewhere" in stderr["a"], (
            f"A never noticed it lost its claims\n{shown}"
        )
        for s in summary.values():
            assert s["records_read"] == s["delivered"] + sum(s["skipped"].values()) + sum(
                s["dead_lettered"].values()
            )
        return figures


@pytest.mark.slow
@pytest.mark.postgres
def test_a_paused_run_never_resends_silently(tmp_path: pathlib.Path) -> None:
    """Issue 11's scenario on SQLite and PostgreSQL side by side (about 75 s: the lease
    minimum is 60 s, and the test waits it out). Every conversion the receiver saw twice is
    one a run reported in doubt, at most max_concurrency per takeover."""
    postgres_url()
    log = tmp_path / "receiver.jsonl"
    with ReceiverProcess(latency=0.5, log_path=log) as rx:
        scenarios = [
            PauseScenario(kind, tmp_path / kind, rx.url) for kind in ("sqlite", "postgres")
        ]
        threads = [threading.Thread(target=s.drive, args=(log,)) for s in scenarios]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for scenario in scenarios:
        if scenario.error is not None:
            raise AssertionError(f"{scenario.kind}: {scenario.error!r}") from scenario.error
    figures = [scenario.check(log) for scenario in scenarios]
    print("\n" + "\n".join(json.dumps(f) for f in figures))


# --- two live runs on overlapping input never wait for each other holding claims ------------------


def test_a_run_sends_what_it_claimed_before_waiting_for_another_runs_claims(
    tmp_path: pathlib.Path,
) -> None:
    """Another live run holds tx-2's claim. This run sends tx-1 (its own claim) at once, and
    waits for tx-2 only after that: were it to hold tx-1 unsent while waiting, two runs each
    holding what the other needs would wait for each other until the busy deadline (minutes)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    other = open_ledger(url, default_dir=tmp_path, lease_seconds=60, retention_days=400)
    config = {**config_under(tmp_path), "ledger_url": url, "request_timeout": 5}
    try:
        assert other.claim(["m:msg-2"]) == {"m:msg-2": C}
        with Receiver() as rx:
            config["postback_url"] = rx.url
            (tmp_path / "config.json").write_text(json.dumps(config))
            (tmp_path / "input.singer").write_text(
                "\n".join(singer_lines("orders", [track(1), track(2)])) + "\n"
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "target_everflow", "--config", str(tmp_path / "config.json"),
                 "--input", str(tmp_path / "input.singer")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path,
            )  # fmt: skip
            try:
                sent_while_waiting = rx.wait_for(1, timeout=60)
                other.mark_delivered("m:msg-2", 200)  # the other run delivers its claim
                other.flush()
                _, stderr = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            sent = [r.transaction_id for r in rx.requests]
    finally:
        other.close()
    assert sent_while_waiting and sent == ["tx-1"], sent
    assert proc.returncode == 0, stderr.decode()[-3000:]
    summary = json.loads(pathlib.Path(config["summary_path"]).read_text())
    assert summary["delivered"] == 1 and summary["skipped"] == {"duplicate": 1}, summary
