"""Self-tests of the fake Everflow postback receiver (tests/receiver.py)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import requests

from tests.receiver import Answer, Receiver, ReceiverProcess, read_log

REPO = Path(__file__).resolve().parents[1]


def get(
    rx: Receiver, txn: str | None = None, timeout: float = 5.0, **params: str
) -> requests.Response:
    """GET the receiver's URL with ``transaction_id=txn`` and ``params``."""
    if txn is not None:
        params = {"transaction_id": txn, **params}
    return requests.get(rx.url, params=params, timeout=timeout)


def test_default_answer_records_and_echoes() -> None:
    with Receiver() as rx:
        response = requests.get(
            rx.url + "?nid=7&transaction_id=tx%201&amount=9.99&sub1=&adv1=a&adv1=b", timeout=5
        )
        assert response.status_code == 200
        assert response.json()["transaction_id"] == "tx 1"
        assert response.json()["conversion_id"]
        [received] = rx.requests
        assert received.method == "GET" and received.path == "/"
        assert received.query == {
            "nid": "7",
            "transaction_id": "tx 1",
            "amount": "9.99",
            "sub1": "",
            "adv1": "a",
        }
        assert received.params_list[-2:] == [("adv1", "a"), ("adv1", "b")]
        assert received.raw_query.startswith("nid=7&transaction_id=tx%201")
        assert received.headers["user-agent"].startswith("python-requests")
        assert received.status == 200 and received.accepted
        assert rx.accepted == [received]
        assert rx.count_by_transaction() == {"tx 1": 1}


def test_per_transaction_script_then_default() -> None:
    script = Receiver.per_transaction({"tx1": [Answer.status(503), Answer.status(503)]})
    with Receiver(script=script) as rx:
        assert [get(rx, "tx1").status_code for _ in range(3)] == [503, 503, 200]
        assert get(rx, "tx2").status_code == 200
        assert [r.n_for_txn for r in rx.requests] == [0, 1, 2, 0]
        assert rx.count_by_transaction() == {"tx1": 1, "tx2": 1}


def test_list_script_in_arrival_order_and_rejections() -> None:
    script = [Answer.no_content(), Answer.error_json("Invalid offer"), Answer.ok_text()]
    with Receiver(script=script, default=Answer.status(404)) as rx:
        codes = [get(rx, f"tx{i}").status_code for i in range(4)]
        assert codes == [204, 200, 200, 404]
        assert [r.accepted for r in rx.requests] == [False, False, True, False]
        assert rx.requests[1].answer == Answer.error_json("Invalid offer")
        rx.set_script([Answer.status(400)])
        assert get(rx, "tx9").status_code == 400
        assert rx.count_by_transaction() == {"tx2": 1}


def test_rate_limited_sends_retry_after() -> None:
    when = "Wed, 21 Oct 2037 07:28:00 GMT"
    with Receiver(script=[Answer.rate_limited("2"), Answer.rate_limited(when)]) as rx:
        first, second = get(rx, "a"), get(rx, "a")
        assert first.status_code == 429 and first.headers["Retry-After"] == "2"
        assert second.status_code == 429 and parsedate_to_datetime(second.headers["Retry-After"])
        assert rx.accepted == []


def test_drop_is_a_connection_error() -> None:
    with Receiver(script=[Answer.drop(), Answer.drop(accepted=True)]) as rx:
        for _ in range(2):
            with pytest.raises(requests.exceptions.ConnectionError):
                get(rx, "tx1")
        assert [r.status for r in rx.requests] == [None, None]
        assert rx.count_by_transaction() == {"tx1": 1}  # recorded, answer lost: in doubt
        assert get(rx, "tx1").status_code == 200  # the server itself is fine


def test_slow_is_a_timeout_but_accepted_and_stop_does_not_wait() -> None:
    rx = Receiver(script=[Answer.slow(30)]).start()
    try:
        with pytest.raises(requests.exceptions.Timeout):
            get(rx, "tx1", timeout=0.2)
        assert rx.count_by_transaction() == {"tx1": 1}  # Everflow has it; the caller does not know
        # a second caller still waiting on a slow answer when the receiver stops
        rx.set_script([Answer.slow(30)])
        outcome: list[BaseException] = []

        def wait_for_answer() -> None:
            try:
                get(rx, "tx2")
            except requests.RequestException as exc:
                outcome.append(exc)

        waiting = threading.Thread(target=wait_for_answer)
        waiting.start()
        assert rx.wait_for(2)
    finally:
        started = time.monotonic()
        rx.stop()
        rx.stop()  # idempotent
    assert time.monotonic() - started < 1.0
    waiting.join(2)
    assert not waiting.is_alive()
    assert [type(e) for e in outcome] == [requests.exceptions.ConnectionError]


def test_200_concurrent_requests_over_64_connections() -> None:
    local = threading.local()

    def send(i: int) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.get(rx.url, params={"transaction_id": f"tx{i}"}, timeout=10)
        return response.status_code

    with Receiver(latency=0.01) as rx, ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(send, range(200)))
    assert codes == [200] * 200
    assert len(rx.requests) == 200
    assert sorted(r.seq for r in rx.requests) == list(range(200))
    assert set(rx.count_by_transaction().values()) == {1} and len(rx.accepted) == 200


def test_fault_mix_is_seeded_per_attempt() -> None:
    mix = {"429": 0.2, "503": 0.2, "204": 0.1, "drop": 0.1, "slow": 0.1, "slow_seconds": 0.01}

    def run(seed: int) -> list[tuple[str | None, int | None]]:
        with Receiver(seed=seed, fault_mix=mix) as rx:
            for i in range(40):
                with contextlib.suppress(requests.exceptions.ConnectionError):
                    get(rx, f"tx{i}")
            faulted = [r for r in rx.requests if r.answer != Answer.ok()]
            assert sum(rx.faults.values()) == len(faulted)
            return [(r.transaction_id, r.status) for r in rx.requests]

    first = run(1)
    assert first == run(1)
    assert first != run(2)
    assert {status for _, status in first} >= {200, 429, 503}
    with pytest.raises(ValueError):
        Receiver(fault_mix={"bogus": 0.1})
    with pytest.raises(ValueError):
        Receiver(fault_mix={"503": 0.7, "429": 0.7})


def test_log_path_in_process(tmp_path: Path) -> None:
    log = tmp_path / "rx.jsonl"
    with Receiver(script=[Answer.status(503)], log_path=log) as rx:
        assert rx.accepted_log_path == log
        get(rx, "tx1")
        get(rx, "tx1", amount="5")
        lines = read_log(log)  # readable while the receiver runs
    assert [(e["status"], e["accepted"]) for e in lines] == [(503, False), (200, True)]
    assert lines[1]["query"] == {"transaction_id": "tx1", "amount": "5"}


def test_cli_start_stop_with_log(tmp_path: Path) -> None:
    log = tmp_path / "accepted.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.receiver",
            "--port",
            "0",
            "--latency",
            "0",
            "--fault-mix",
            '{"503": 0.5}',
            "--seed",
            "1",
            "--log",
            str(log),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        codes = [
            requests.get(url, params={"transaction_id": f"tx{i}"}, timeout=5).status_code
            for i in range(10)
        ]
        entries = read_log(log)  # flushed per line, before the receiver stops
        assert [e["status"] for e in entries] == codes and {200, 503} <= set(codes)
        assert [e["accepted"] for e in entries] == [c == 200 for c in codes]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "10 requests" in stderr


def test_receiver_process_helper(tmp_path: Path) -> None:
    with ReceiverProcess(log_path=tmp_path / "rx.jsonl") as rx:
        assert requests.get(rx.url, params={"transaction_id": "a"}, timeout=5).ok
    assert rx.process is not None and rx.process.returncode == 0
    assert rx.accepted_by_transaction() == {"a": 1}
    assert json.loads((tmp_path / "rx.jsonl").read_text().splitlines()[0])["seq"] == 0


# --- the fake reporting endpoint -------------------------------------------------------------------


def test_fake_reporting_lists_what_the_postback_endpoint_accepted() -> None:
    from tests.receiver import FakeReporting, Verdict

    reporting = FakeReporting(
        api_key="k",
        verdicts={"t2": Verdict.rejected(21), ("t3", 24): Verdict("pending")},
        omit={"t4"},
    )
    import datetime as dt

    def day(epoch: float) -> str:
        return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d")

    then = int(time.time()) - 40 * 86400
    with Receiver(reporting=reporting, script=[Answer.no_content()]) as rx:
        get(rx, "t0")  # rejected by the postback endpoint (204): never in the report
        for txn, extra in (("t1", {"order_id": "9", "amount": "12.5", "timestamp": str(then)}),
                           ("t2", {}), ("t3", {"adv_event_id": "24"}), ("t4", {})):  # fmt: skip
            get(rx, txn, **extra)

        def report(body: dict, page: int = 1, size: int = 2, key: str = "k") -> requests.Response:
            return requests.post(
                f"{rx.api_url}/networks/reporting/conversions", params={"page": page, "page_size": size},
                json=body, headers={"X-Eflow-API-Key": key}, timeout=5,
            )  # fmt: skip

        body = {"from": day(then - 86400), "to": day(time.time() + 86400), "timezone_id": 67,
                "show_conversions": True, "show_events": True, "query": {"filters": []}}  # fmt: skip
        first = report(body).json()
        assert first["paging"] == {"page": 1, "page_size": 2, "total_count": 3}
        rows = first["conversions"] + report(body, page=2).json()["conversions"]
        assert [(r["transaction_id"], r["status"], r["error_code"], r["is_event"], r["event"]) for r in rows] == [
            ("t1", "approved", 0, False, ""), ("t2", "rejected", 21, False, ""), ("t3", "pending", 0, True, "Purchase"),
        ]  # fmt: skip
        assert rows[0]["order_id"] == "9" and rows[0]["sale_amount"] == 12.5
        assert rows[0]["conversion_unix_timestamp"] == then
        by_tid = {**body, "query": {"filters": [{"resource_type": "transaction_id", "filter_id_value": t}
                                                for t in ("t1", "t3")]}}  # fmt: skip
        assert [r["transaction_id"] for r in report(by_tid, size=10).json()["conversions"]] == [
            "t1",
            "t3",
        ]
        only_base = {**by_tid, "show_events": False}
        assert [r["transaction_id"] for r in report(only_base, size=10).json()["conversions"]] == [
            "t1"
        ]
        window = {
            **body,
            "from": day(then) + " 00:00:00",
            "to": day(then) + " 23:59:59",
        }  # t1's day
        assert [r["transaction_id"] for r in report(window, size=10).json()["conversions"]] == [
            "t1"
        ]
        assert report(body, key="wrong").status_code == 401
        assert report(body, size=5000).status_code == 400
        events = requests.get(f"{rx.api_url}/networks/advertisers/7/events",
                              headers={"X-Eflow-API-Key": "k"}, timeout=5).json()  # fmt: skip
        assert events["global_events"][0]["entry_name"] == "Purchase"
        assert len(rx.requests) == 5  # the API calls are not postbacks
        assert len(reporting.requests) == 8
