"""The delivery engine against a receiver on 127.0.0.1: concurrency, retries, rate limit,
outage vs bad record, and the STATE guarantee (including under SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    dead_letter_records,
    run_in_process,
    run_target,
    singer_lines,
    track,
)
from tests.receiver import Answer, Receiver, ReceiverProcess, accepted_by_transaction, read_log


def live(base_config: dict, url: str, **overrides) -> dict:
    return {**base_config, "postback_url": url, **overrides}


def test_thousand_conversions_one_request_each(base_config, tmp_path):
    records = [track(i) for i in range(1000)]
    with Receiver() as rx:
        code, target = run_in_process(
            live(base_config, rx.url, max_concurrency=16, batch_size_rows=300),
            singer_lines("orders", records),
        )
        counts = rx.count_by_transaction()
        requests = len(rx.requests)
    assert code == 0
    assert requests == 1000
    assert counts == {f"tx-{i}": 1 for i in range(1000)}
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert summary["delivered"] == 1000 == len(counts)
    assert summary["requests"] == requests
    assert summary["records_read"] == 1000
    assert summary["skipped"] == {} and summary["dead_lettered"] == {}


@pytest.mark.parametrize("ledger_url", ["none", None])
def test_fence_commits_are_spaced_only_where_a_fence_is_a_commit(
    base_config, monkeypatch, ledger_url
):
    """A fence commit is worth gathering several freed slots into (SETTLE_EVERY apart); a fence
    that commits nothing (``ledger_url: none``) is never waited for: a freed slot is filled at
    once. The SQLite run is the control: its results, answered at once, do wait."""
    from target_everflow.delivery import engine

    waits: list[float] = []

    class Clock:  # the engine's time, with its sleeps noted
        def __getattr__(self, name):
            return getattr(time, name)

        def sleep(self, seconds: float) -> None:
            waits.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(engine, "time", Clock())
    config = live(base_config, "", max_concurrency=8, batch_size_rows=400)
    if ledger_url is not None:
        config["ledger_url"] = ledger_url
    with Receiver() as rx:
        config["postback_url"] = rx.url
        code, _ = run_in_process(config, singer_lines("orders", [track(i) for i in range(400)]))
        assert rx.count_by_transaction() == {f"tx-{i}": 1 for i in range(400)}
    assert code == 0
    spacing = [w for w in waits if 0 < w <= engine.SETTLE_EVERY]
    if ledger_url == "none":
        assert spacing == []
    else:
        assert spacing, "results answered at once gather for the next fence commit"


def test_query_string_of_a_postback(base_config):
    record = track(7, coupon="SPRING 20%", adv1=True)
    record["context"]["traits"] = {"email": "jürgen+vip@example.com"}
    with Receiver() as rx:
        code, _ = run_in_process(
            live(base_config, rx.url, advertiser_id=7, verification_token="t0k"),
            singer_lines("orders", [record]),
        )
        (received,) = rx.requests
    assert code == 0
    assert received.method == "GET" and received.body == b""
    assert received.query == {
        "nid": "1",
        "transaction_id": "tx-7",
        "aid": "7",
        "timestamp": "1795198448",
        "conversion_user_ip": "203.0.113.7",
        "http_user_agent": "Mozilla/5.0 test",
        "email": "jürgen+vip@example.com",
        "adv1": "true",
        "coupon_code": "SPRING 20%",
        "order_id": "1007",
        "amount": "17",
        "verification_token": "t0k",
    }
    assert "email=j%C3%BCrgen%2Bvip%40example.com" in received.raw_query


def test_503_twice_then_200_is_delivered_with_three_requests(base_config):
    script = Receiver.per_transaction({"tx-1": [Answer.status(503), Answer.status(503)]})
    with Receiver(script=script) as rx:
        code, _ = run_in_process(live(base_config, rx.url), singer_lines("orders", [track(1)]))
        seen = [r.status for r in rx.requests]
    assert code == 0
    assert seen == [503, 503, 200]
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert summary["delivered"] == 1 and summary["retries"] == 2 and summary["requests"] == 3
    assert dead_letter_records(Path(base_config["dead_letter_path"])) == []


def test_429_retry_after_holds_every_sender(base_config):
    records = [track(i) for i in range(40)]
    script = Receiver.per_transaction({"tx-0": [Answer.rate_limited("1")]})
    with Receiver(script=script, latency=0.01) as rx:
        code, _ = run_in_process(
            live(base_config, rx.url, max_concurrency=4), singer_lines("orders", records)
        )
        arrivals = [(r.at, r.status, r.transaction_id) for r in rx.requests]
    assert code == 0
    t429 = next(at for at, status, _ in arrivals if status == 429)
    # Requests already in flight when the 429 came back may still land; after that, nobody
    # sends until Retry-After (1 s) has passed -- not only the request that got the 429.
    later = [at for at, _, _ in arrivals if at > t429 + 0.1]
    assert later, "the run went on after the 429"
    assert min(later) >= t429 + 1.0 - 0.05
    assert sum(1 for _, s, tx in arrivals if tx == "tx-0" and s == 200) == 1
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert summary["http_429"] == 1 and summary["delivered"] == 40


@pytest.mark.parametrize(
    ("answer", "reason", "status"),
    [
        (Answer.no_content(), "rejected", 204),
        (Answer.status(400, "bad transaction"), "http_400", 400),
        (Answer.error_json("Invalid Verification Token"), "rejected", 200),
    ],
)
def test_permanent_answers_are_dead_lettered_once_never_retried(
    base_config, answer, reason, status
):
    records = [track(1), track(2), track(3)]
    script = Receiver.per_transaction({"tx-2": [answer]})
    with Receiver(script=script) as rx:
        code, _ = run_in_process(
            live(base_config, rx.url, **DEAD_LETTERS_ON_PURPOSE), singer_lines("orders", records)
        )
        by_txn = {tx: n for tx, n in rx.count_by_transaction().items()}
        tx2_requests = [r for r in rx.requests if r.transaction_id == "tx-2"]
    assert code == 0
    assert len(tx2_requests) == 1  # never retried
    assert by_txn == {"tx-1": 1, "tx-3": 1}
    (dead,) = dead_letter_records(Path(base_config["dead_letter_path"]))
    assert dead["reason"] == reason and dead["status"] == status
    assert dead["record"] == records[1] and dead["stream"] == "orders"


def test_401_is_systemic(base_config):
    with Receiver(default=Answer.status(401)) as rx:
        code, _ = run_in_process(
            live(base_config, rx.url), singer_lines("orders", [track(i) for i in range(5)])
        )
        assert len(rx.requests) >= 1
    assert code == 3
    assert dead_letter_records(Path(base_config["dead_letter_path"])) == []


def _numbered_stream(n: int, every: int) -> list[str]:
    """Records 0..n-1 with a STATE {"upto": i} after every ``every`` records."""
    lines = singer_lines("orders", [])
    for i in range(n):
        lines.append(json.dumps({"type": "RECORD", "stream": "orders", "record": track(i)}))
        if (i + 1) % every == 0:
            lines.append(json.dumps({"type": "STATE", "value": {"upto": i}}))
    return lines


def test_receiver_down_stops_the_run_without_losing_or_dead_lettering(base_config, tmp_path):
    # The first 12 postbacks are accepted, then Everflow is down (503 forever).
    def script(received, n):
        return (
            Answer.ok() if int(received.transaction_id.split("-")[1]) < 12 else Answer.status(503)
        )

    with Receiver(script=script) as rx:
        result = run_target(
            live(base_config, rx.url, max_retries=1, max_concurrency=1, batch_size_rows=5),
            _numbered_stream(40, 5),
            tmp_path,
        )
        accepted = {r.transaction_id for r in rx.accepted}
    assert result.code == 3, result.stderr
    assert "Stopping: records not yet delivered are not dead-lettered" in result.stderr
    states = result.states
    assert states, "the batches delivered before the outage have their STATE"
    for state in states:  # no STATE beyond the last delivered record
        assert all(f"tx-{i}" in accepted for i in range(state["upto"] + 1))
    assert max(s["upto"] for s in states) == 9
    assert dead_letter_records(Path(base_config["dead_letter_path"])) == []


def test_connection_refused_exits_non_zero_with_a_clear_message(base_config, tmp_path):
    with Receiver() as rx:
        url = rx.url  # bound, then closed: nothing listens there any more
    result = run_target(live(base_config, url, max_retries=1), _numbered_stream(3, 1), tmp_path)
    assert result.code == 3
    assert "connection failed" in result.stderr and "Traceback" not in result.stderr
    assert result.states == []
    assert dead_letter_records(Path(base_config["dead_letter_path"])) == []


def test_max_requests_per_second_is_honoured(base_config):
    rate, n = 20.0, 50
    with Receiver() as rx:
        code, _ = run_in_process(
            live(base_config, rx.url, max_requests_per_second=rate, max_concurrency=8),
            singer_lines("orders", [track(i) for i in range(n)]),
        )
        arrivals = sorted(r.at for r in rx.requests)
    assert code == 0 and len(arrivals) == n
    span = arrivals[-1] - arrivals[0]
    assert span >= (n - 1) / rate * 0.95  # never faster than the limit
    # and no burst: any one-second window holds about `rate` arrivals (slack for a noisy
    # machine: a request's slot is exact, its arrival a thread-scheduling moment later)
    for i, start in enumerate(arrivals):
        window = [a for a in arrivals[i:] if a < start + 1.0]
        assert len(window) <= rate * 1.15 + 1


def test_slow_answer_past_timeout_is_retried(base_config):
    script = Receiver.per_transaction({"tx-1": [Answer.slow(3.0)]})
    with Receiver(script=script) as rx:
        code, _ = run_in_process(
            live(base_config, rx.url, request_timeout=0.5), singer_lines("orders", [track(1)])
        )
        statuses = [r.transaction_id for r in rx.requests]
    assert code == 0 and statuses == ["tx-1", "tx-1"]


def test_dropped_connection_is_retried(base_config):
    script = Receiver.per_transaction({"tx-1": [Answer.drop()]})
    with Receiver(script=script) as rx:
        code, _ = run_in_process(live(base_config, rx.url), singer_lines("orders", [track(1)]))
        assert len(rx.requests) == 2 and len(rx.accepted) == 1
    assert code == 0


# --- STATE under SIGKILL -------------------------------------------------------------------------


def _start_target(config: dict, lines: list[str], tmp_path: Path, name: str):
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(config))
    input_path = tmp_path / f"{name}.singer"
    input_path.write_text("\n".join(lines) + "\n")
    stdout = (tmp_path / f"{name}.out").open("w")
    stderr = (tmp_path / f"{name}.err").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "target_everflow",
            "--config",
            str(config_path),
            "--input",
            str(input_path),
        ],
        stdout=stdout,
        stderr=stderr,
        cwd=tmp_path,
    )
    return proc, tmp_path / f"{name}.out"


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _assert_states_covered(out: Path, accepted: set[str], dead: set[str]) -> int:
    states = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for state in states:
        missing = [
            i
            for i in range(state["upto"] + 1)
            if f"tx-{i}" not in accepted and f"tx-{i}" not in dead
        ]
        assert not missing, (
            f"STATE {state} covers records that reached neither Everflow nor the dead letters: {missing[:5]}"
        )
    return len(states)


@pytest.mark.parametrize("when", ["mid-batch", "between-batches"])
def test_sigkill_leaves_only_states_whose_records_reached_an_outcome(base_config, tmp_path, when):
    log = tmp_path / "rx.jsonl"
    with ReceiverProcess(latency=0.01, log_path=log) as rx:
        config = live(
            base_config,
            rx.url,
            max_concurrency=4,
            batch_size_rows=25,
            dead_letter_path=str(tmp_path / "dl.jsonl"),
        )
        proc, out = _start_target(config, _numbered_stream(400, 5), tmp_path, "run")
        try:
            if when == "mid-batch":
                # some postbacks of the second batch have arrived, but not all of them
                _wait_until(lambda: len(read_log(log)) >= 37)  # (a torn last line is skipped)
            else:
                _wait_until(lambda: out.exists() and out.read_text().count("\n") >= 2)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        accepted = set(accepted_by_transaction(log))
    dead = {
        r["record"]["context"]["referrer"]["id"] for r in dead_letter_records(tmp_path / "dl.jsonl")
    }
    assert proc.returncode == -signal.SIGKILL
    assert len(accepted) < 400, "the run finished before it was killed"
    assert _assert_states_covered(out, accepted, dead) >= (1 if when == "between-batches" else 0)


def test_sigterm_stops_reading_settles_in_flight_and_exits_non_zero(base_config, tmp_path):
    log = tmp_path / "rx.jsonl"
    with ReceiverProcess(latency=0.02, log_path=log) as rx:
        config = live(
            base_config,
            rx.url,
            max_concurrency=2,
            batch_size_rows=50,
            dead_letter_path=str(tmp_path / "dl.jsonl"),
        )
        proc, out = _start_target(config, _numbered_stream(2000, 5), tmp_path, "run")
        _wait_until(lambda: len(read_log(log)) >= 60)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        took = time.monotonic() - started
        time.sleep(0.2)
        accepted = set(accepted_by_transaction(log))
    assert proc.returncode == 128 + signal.SIGTERM
    assert took < 15
    assert len(accepted) < 2000
    _assert_states_covered(out, accepted, set())
    err = (tmp_path / "run.err").read_text()
    assert "Stopped by signal 15" in err and "Traceback" not in err
    assert "Run summary" in err


def test_a_duplicate_does_not_warn_about_or_count_dropped_fields(base_config, tmp_path):
    """tap-postgres re-emits its bookmark row every incremental run: the second run skips it as
    a duplicate, without "Left out optional field" or a dropped-field count for it."""
    record = track(1, currency="euro")  # not a currency code: currency is left out
    with Receiver() as rx:
        first = run_target(live(base_config, rx.url), singer_lines("orders", [record]), tmp_path)
        first_summary = json.loads(Path(base_config["summary_path"]).read_text())
        second = run_target(live(base_config, rx.url), singer_lines("orders", [record]), tmp_path)
        second_summary = json.loads(Path(base_config["summary_path"]).read_text())
        assert len(rx.requests) == 1
    assert first.code == 0 and second.code == 0, second.stderr[-2000:]
    assert "Left out optional field currency" in first.stderr
    assert first_summary["dropped_fields"] == 1 and first_summary["delivered"] == 1
    assert first_summary["planned"] == 0  # a live run plans nothing: it delivers
    assert second_summary["skipped"] == {"duplicate": 1}, second_summary
    assert second_summary["dropped_fields"] == 0, second_summary
    assert "Left out optional field" not in second.stderr, second.stderr[-2000:]
