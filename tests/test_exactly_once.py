"""Exactly once, end to end: the target with its ledger against a receiver on 127.0.0.1.

Re-runs, inclusive bookmarks, crashes (SIGKILL) and two processes sharing a PostgreSQL ledger
must never make Everflow accept a conversion twice, except an in-doubt resend the target
reported (and none at all with ``in_doubt: dead_letter``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from target_everflow.ledger import LedgerError, SQLLedger
from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    dead_letter_records,
    postgres_url,
    run_in_process,
    run_target,
    singer_lines,
    track,
)
from tests.receiver import Receiver, ReceiverProcess, accepted_by_transaction, read_log


def live(base_config: dict, url: str, **overrides) -> dict:
    return {**base_config, "postback_url": url, **overrides}


def numbered(start: int, stop: int, *, every: int = 5) -> list[str]:
    """Records start..stop-1, each STATE {"upto": i} a tap would emit, as a resumable stream."""
    lines = singer_lines("orders", [])
    for i in range(start, stop):
        lines.append(json.dumps({"type": "RECORD", "stream": "orders", "record": track(i)}))
        if (i + 1) % every == 0:
            lines.append(json.dumps({"type": "STATE", "value": {"upto": i}}))
    return lines


def summary(config: dict) -> dict:
    return json.loads(Path(config["summary_path"]).read_text())


def test_same_input_twice_sends_nothing_the_second_time(base_config, tmp_path):
    config_lines = numbered(0, 30)
    with Receiver() as rx:
        config = live(base_config, rx.url)
        first = run_target(config, config_lines, tmp_path)
        second = run_target(config, config_lines, tmp_path)
        counts = rx.count_by_transaction()
    assert first.code == 0 and second.code == 0
    assert counts == {f"tx-{i}": 1 for i in range(30)}
    assert summary(config)["delivered"] == 0
    assert summary(config)["skipped"] == {"duplicate": 30}
    assert second.states[-1] == {"upto": 29}  # STATE still moves on


def test_inclusive_bookmark_re_emitting_the_last_record_sends_nothing(base_config, tmp_path):
    with Receiver() as rx:
        config = live(base_config, rx.url)
        assert run_target(config, numbered(0, 10), tmp_path).code == 0
        # the next scheduled run starts at the bookmark (record 9) inclusive
        assert run_target(config, numbered(9, 15), tmp_path).code == 0
        counts = rx.count_by_transaction()
    assert counts == {f"tx-{i}": 1 for i in range(15)}
    assert summary(config)["skipped"] == {"duplicate": 1} and summary(config)["delivered"] == 5


def test_duplicates_within_one_run_across_batches_and_streams(base_config, tmp_path):
    # Segment writes every track to `tracks` and to its event table: one conversion.
    records = [track(i) for i in range(12)]
    lines = singer_lines("segment-tracks", records) + singer_lines(
        "segment-order_completed", records[::-1]
    )
    with Receiver() as rx:
        config = live(base_config, rx.url, batch_size_rows=5)
        assert run_target(config, lines, tmp_path).code == 0
        counts = rx.count_by_transaction()
    assert counts == {f"tx-{i}": 1 for i in range(12)}
    assert summary(config)["skipped"] == {"duplicate": 12}


@pytest.mark.parametrize("ledger_url", ["none", None])
def test_duplicates_within_one_run_even_without_a_ledger(base_config, tmp_path, ledger_url):
    records = [track(1), track(2), track(1)]
    with Receiver() as rx:
        config = live(base_config, rx.url, batch_size_rows=2, ledger_url=ledger_url)
        assert run_target(config, singer_lines("orders", records), tmp_path).code == 0
        assert rx.count_by_transaction() == {"tx-1": 1, "tx-2": 1}


def test_ledger_that_cannot_be_opened_fails_before_any_request(base_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with Receiver() as rx:
        config = live(base_config, rx.url, ledger_url=f"sqlite:///{blocker}/ledger.db")
        result = run_target(config, numbered(0, 5), tmp_path)
        assert rx.requests == []
    assert result.code == 4
    assert "ledger_url" in result.stderr and "Traceback" not in result.stderr
    assert result.states == []


def test_postgres_ledger_down_fails_before_any_request_without_the_password(base_config, tmp_path):
    with Receiver() as rx:
        config = live(
            base_config, rx.url, ledger_url="postgresql://everflow:hunter2secret@127.0.0.1:1/db"
        )
        result = run_target(config, numbered(0, 5), tmp_path)
        assert rx.requests == []
    assert result.code == 4
    assert "hunter2secret" not in result.stderr + result.stdout
    assert "postgresql://everflow:***@127.0.0.1:1/db" in result.stderr


def test_a_claim_that_fails_mid_batch_settles_what_is_in_flight(base_config, tmp_path, monkeypatch):
    """A batch is claimed a chunk at a time while the chunk before is being sent. When a later
    chunk's claim fails, nothing more is sent, and the postbacks in flight are settled: their
    answers are recorded (none is left in doubt), the run exits 4, and the next run sends
    exactly the rest."""
    claim = SQLLedger.claim
    calls = []

    def failing_second(self, keys, metadata=None):
        calls.append(len(keys))
        if len(calls) == 2:
            raise LedgerError("ledger test: could not claim keys: disk I/O error")
        return claim(self, keys, metadata)

    config = live(base_config, "", max_concurrency=8, batch_size_rows=1000)
    lines = numbered(0, 300, every=300)
    with Receiver(latency=0.05) as rx:
        config["postback_url"] = rx.url
        monkeypatch.setattr(SQLLedger, "claim", failing_second)
        code, _ = run_in_process(config, lines)
        first = Counter(r.query["transaction_id"] for r in rx.requests)
        monkeypatch.setattr(SQLLedger, "claim", claim)
        db = Path(config["dead_letter_path"]).parent / "ledger.sqlite3"
        conn = sqlite3.connect(db)
        statuses = dict(conn.execute("SELECT delivery_key, status FROM everflow_ledger"))
        conn.close()
        again = run_target(config, lines, tmp_path)
        everything = Counter(r.query["transaction_id"] for r in rx.requests)
    assert code == 4
    assert len(calls) == 2 and 0 < len(first) <= calls[0]  # the first chunk only, in part
    assert set(statuses.values()) == {"delivered"} and len(statuses) == len(first)
    assert again.code == 0, again.stderr[-2000:]
    assert summary(config)["in_doubt"] == 0 and summary(config)["delivered"] == 300 - len(first)
    assert everything == Counter({f"tx-{i}": 1 for i in range(300)})


def _pending_row(db: Path, key: str, owner: str, status: str = "sending") -> None:
    """A claim left by a run on another machine whose lease ran out (``sending``: its postback
    may have left; ``pending``: claimed, never sent)."""
    conn = sqlite3.connect(db)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(everflow_ledger)")]
    values = {
        "delivery_key": key,
        "status": status,
        "owner": owner,
        "owner_scope": "elsewhere",
        "lease_until": time.time() - 5,
        "http_status": None,
        "created_at": time.time() - 100,
        "updated_at": time.time() - 100,
    }
    conn.execute(
        f"INSERT INTO everflow_ledger ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
        [values.get(c) for c in columns],
    )
    conn.commit()
    conn.close()


@pytest.mark.parametrize("in_doubt", ["resend", "dead_letter"])
def test_expired_claims_follow_in_doubt(base_config, tmp_path, in_doubt):
    with Receiver() as rx:
        config = live(base_config, rx.url, in_doubt=in_doubt, **DEAD_LETTERS_ON_PURPOSE)
        assert run_target(config, numbered(0, 1), tmp_path).code == 0  # creates the ledger
        db = Path(config["dead_letter_path"]).parent / "ledger.sqlite3"
        _pending_row(db, "m:msg-7", "other-host:4242:abcd1234")
        result = run_target(config, numbered(5, 10), tmp_path)
        counts = rx.count_by_transaction()
    assert result.code == 0
    assert "In doubt: conversion m:msg-7" in result.stderr
    assert summary(config)["in_doubt"] == 1
    dead = dead_letter_records(Path(config["dead_letter_path"]))
    if in_doubt == "resend":
        assert counts["tx-7"] == 1 and dead == []
    else:
        assert "tx-7" not in counts
        assert [d["reason"] for d in dead] == ["in_doubt"] and dead[0]["record"][
            "messageId"
        ] == "msg-7"
        # held for a person: a later run does not send it either
        assert run_target(config, numbered(7, 8, every=1), tmp_path).code == 0
        assert "tx-7" not in rx.count_by_transaction()


def test_expired_claim_that_was_never_sent_is_not_in_doubt(base_config, tmp_path):
    with Receiver() as rx:
        config = live(base_config, rx.url, in_doubt="dead_letter")
        assert run_target(config, numbered(0, 1), tmp_path).code == 0
        _pending_row(
            Path(config["dead_letter_path"]).parent / "ledger.sqlite3",
            "m:msg-7",
            "other-host:4242:abcd1234",
            status="pending",
        )
        result = run_target(config, numbered(5, 10), tmp_path)
        assert rx.count_by_transaction()["tx-7"] == 1
    assert result.code == 0 and "In doubt" not in result.stderr
    assert summary(config)["in_doubt"] == 0


# --- crashes --------------------------------------------------------------------------------


def _spawn(
    config: dict, lines: list[str], tmp_path: Path, name: str
) -> tuple[subprocess.Popen, Path, Path]:
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    (tmp_path / f"{name}.singer").write_text("\n".join(lines) + "\n")
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "target_everflow",
            "--config",
            str(tmp_path / f"{name}.json"),
            "--input",
            str(tmp_path / f"{name}.singer"),
        ],
        stdout=out.open("w"),
        stderr=err.open("w"),
        cwd=tmp_path,
    )
    return proc, out, err


def _last_state(out: Path) -> dict | None:
    states = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return states[-1] if states else None


IN_DOUBT_LINE = re.compile(
    r"In doubt: conversion \S+ \(stream \S+, event '[^']*', transaction (\S+)\)"
)


@pytest.mark.parametrize("in_doubt", ["resend", "dead_letter"])
def test_sigkill_then_rerun_from_last_state(base_config, tmp_path, in_doubt):
    total = 300
    log = tmp_path / "rx.jsonl"
    reported: set[str] = set()
    with ReceiverProcess(latency=0.03, log_path=log) as rx:
        config = live(base_config, rx.url, max_concurrency=8, batch_size_rows=40, in_doubt=in_doubt)
        proc, out, err = _spawn(config, numbered(0, total), tmp_path, "killed")
        deadline = time.monotonic() + 30
        # read_log: the receiver may be writing its next line right now (a torn last line)
        while len(read_log(log)) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        state = _last_state(out)
        resume = state["upto"] if state else 0  # inclusive, as taps resume
        result = run_target(config, numbered(resume, total), tmp_path)
        assert result.code == 0, result.stderr
        reported = set(IN_DOUBT_LINE.findall(result.stderr))
        counts = accepted_by_transaction(log)
    dead = {
        d["record"]["context"]["referrer"]["id"]
        for d in dead_letter_records(Path(config["dead_letter_path"]))
    }
    twice = {tx for tx, n in counts.items() if n > 1}
    lost = [f"tx-{i}" for i in range(total) if f"tx-{i}" not in counts and f"tx-{i}" not in dead]
    assert lost == []
    assert twice <= reported, "a conversion reached Everflow twice without an in-doubt report"
    if in_doubt == "dead_letter":
        assert twice == set()
        assert dead == reported
    assert len(reported) <= config["max_concurrency"]


# --- two processes, one PostgreSQL ledger ---------------------------------------------------


def test_two_processes_share_a_postgres_ledger(base_config, tmp_path):
    url = postgres_url()
    table = f"ledger_{uuid.uuid4().hex[:10]}"
    ledger_url = f"{url}{'&' if '?' in url else '?'}table={table}"
    log = tmp_path / "rx.jsonl"
    with ReceiverProcess(latency=0.005, log_path=log) as rx:
        procs = []
        for name, (start, stop) in {"a": (0, 600), "b": (300, 900)}.items():
            run_dir = tmp_path / name
            run_dir.mkdir()
            config = {
                **live(base_config, rx.url),
                "ledger_url": ledger_url,
                "max_concurrency": 8,
                "batch_size_rows": 50,
                "dead_letter_path": str(run_dir / "dl.jsonl"),
                "summary_path": str(run_dir / "summary.json"),
            }
            procs.append((_spawn(config, numbered(start, stop), run_dir, "run"), run_dir))
        for (proc, _, err), _ in procs:
            assert proc.wait(120) == 0, err.read_text()[-2000:]
        counts = accepted_by_transaction(log)
    assert counts == Counter({f"tx-{i}": 1 for i in range(900)})
    delivered = [json.loads((d / "summary.json").read_text())["delivered"] for _, d in procs]
    duplicates = [
        json.loads((d / "summary.json").read_text())["skipped"].get("duplicate", 0)
        for _, d in procs
    ]
    assert sum(delivered) == 900 and sum(duplicates) == 300
