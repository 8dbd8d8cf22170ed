"""A live run replayed from a vcrpy cassette: the exact postbacks the target sends, and what it
does with Everflow's documented answers (accepted, 204, error JSON).

The cassette ``tests/cassettes/postback/live_run.yaml`` was recorded from a real run of the
target against the test receiver (``tests/receiver.py``) answering as Everflow does, with the
host then rewritten to ``https://www.example-tracking.com/`` and the verification token filtered
at record time. Re-record (e.g. after a deliberate change of the postback format) with::

    .venv/bin/python -m tests.test_postback_cassettes

Replays run with ``record_mode="none"``: any request the cassette does not hold fails the test,
so the cassette is also a golden file of the query strings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import vcr

from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    SECRET_TOKEN,
    dead_letter_records,
    run_in_process,
    singer_lines,
    track,
)
from tests.receiver import Answer, Receiver

CASSETTE = Path(__file__).parent / "cassettes" / "postback" / "live_run.yaml"
HOST = "https://www.example-tracking.com/"


def _vcr(record_mode: str) -> vcr.VCR:
    return vcr.VCR(
        record_mode=record_mode,
        match_on=["method", "scheme", "host", "port", "path", "query"],
        filter_query_parameters=[("verification_token", "FILTERED")],
        filter_headers=["Cookie", "Authorization", "X-Eflow-API-Key"],
        decode_compressed_response=True,
    )


def _records() -> list[dict]:
    mobile = track(3)
    mobile["context"].update(
        {
            "app": {"namespace": "com.example.shop", "name": "Shop", "version": "4.2.0"},
            "device": {
                "type": "ios",
                "manufacturer": "Apple",
                "model": "iPhone15,2",
                "adTrackingEnabled": True,
            },
            "os": {"name": "iOS", "version": "17.1"},
            "network": {"cellular": True, "wifi": False, "carrier": "Verizon"},
        }
    )
    return [
        track(1, coupon="SPRING"),
        track(2, event="Subscription Started"),
        mobile,
        track(4),
        track(5),
    ]


ANSWERS = {
    "tx-1": Answer.ok({"conversion_id": "c0ffee01", "transaction_id": "tx-1"}),
    "tx-2": Answer.ok({"conversion_id": "c0ffee02", "transaction_id": "tx-2"}),
    "tx-3": Answer.ok({"conversion_id": "c0ffee03", "transaction_id": "tx-3"}),
    "tx-4": Answer.no_content(),
    "tx-5": Answer.error_json("Invalid Verification Token"),
}


def _config(base_config: dict, url: str) -> dict:
    return {
        **base_config,
        "postback_url": url,
        "advertiser_id": 7,
        "verification_token": SECRET_TOKEN,
        "max_concurrency": 1,
    }


def test_live_run_replays_from_cassette(base_config):
    with _vcr("none").use_cassette(str(CASSETTE)) as cassette:
        config = {**_config(base_config, HOST), **DEAD_LETTERS_ON_PURPOSE}  # 2 of 5 rejected
        code, _ = run_in_process(config, singer_lines("orders", _records()))
        assert cassette.all_played, "the target did not send every recorded postback"
        assert cassette.play_count == 5
    assert code == 0
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert summary["delivered"] == 3
    assert summary["dead_lettered"] == {"rejected": 2}
    dead = dead_letter_records(Path(base_config["dead_letter_path"]))
    assert sorted(d["record"]["messageId"] for d in dead) == ["msg-4", "msg-5"]
    assert {d["status"] for d in dead} == {200, 204}
    assert any("Invalid Verification Token" in d["message"] for d in dead)


def test_cassettes_hold_no_secret():
    for path in (Path(__file__).parent / "cassettes").rglob("*.yaml"):
        text = path.read_text()
        assert SECRET_TOKEN not in text and "SECRET" not in text, path


def test_cassette_postbacks_carry_the_documented_parameters():
    import yaml

    data = yaml.safe_load(CASSETTE.read_text())
    from urllib.parse import parse_qsl, urlsplit

    queries = [dict(parse_qsl(urlsplit(i["request"]["uri"]).query)) for i in data["interactions"]]
    assert [q["transaction_id"] for q in queries] == ["tx-1", "tx-2", "tx-3", "tx-4", "tx-5"]
    assert queries[0] == {
        "nid": "1",
        "transaction_id": "tx-1",
        "aid": "7",
        "timestamp": "1795198448",
        "conversion_user_ip": "203.0.113.7",
        "http_user_agent": "Mozilla/5.0 test",
        "coupon_code": "SPRING",
        "order_id": "1001",
        "amount": "11",
        "verification_token": "FILTERED",
    }
    assert all(q["verification_token"] == "FILTERED" for q in queries)
    assert queries[1]["adv_event_id"] == "24" and "adv_event_id" not in queries[0]
    assert (
        queries[2]["limit_ad_tracking"] == "false" and queries[2]["connection_type"] == "cellular"
    )
    assert queries[2]["app_id"] == "com.example.shop"


def record_cassette() -> None:
    """Record the cassette from a real run against the test receiver (run by hand)."""
    import tempfile

    CASSETTE.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = {
            "network_id": 1,
            "event_mapping": {"Order Completed": 0, "Subscription Started": 24},
            "dead_letter_path": f"{tmp}/dl.jsonl",
            "progress_interval": 0,
            "ledger_url": "none",
        }
        script = lambda received, n: ANSWERS.get(received.transaction_id)  # noqa: E731
        with Receiver(script=script) as rx, _vcr("all").use_cassette(str(CASSETTE)):
            code, _ = run_in_process(_config(base, rx.url), singer_lines("orders", _records()))
    assert code == 0
    CASSETTE.write_text(re.sub(r"http://127\.0\.0\.1:\d+/", HOST, CASSETTE.read_text()))
    print(f"recorded {CASSETTE}")


if __name__ == "__main__":
    record_cassette()
