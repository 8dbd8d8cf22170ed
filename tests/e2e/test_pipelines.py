"""The two sample pipelines of meltano.yml, end to end, against a local Everflow receiver.

Warehouse: Segment-shaped PostgreSQL tables -> meltanolabs-tap-postgres (incremental on
received_at) -> target-everflow. Archive: Segment's gzipped JSON-lines files -> tap-filesanywhere
-> target-everflow. Each pipeline runs three times: on batch 1, after batch 2 arrived, and with
nothing new. The receiver must get exactly the expected postbacks, each once, over all runs,
although the warehouse tap re-emits its last row every run (inclusive bookmark) and the archive
repeats a batch-1 event in batch 2 (Segment delivers at least once).

Expectations come from tests/e2e/fixtures/scenario.py, written out by hand from README's field
table; numbers compare by value (a warehouse's double precision turns 12 into 12.0).
"""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time
import typing as t
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest

from tests.e2e.conftest import Meltano, Warehouse, target_env
from tests.e2e.fixtures import archive, scenario
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e

NUMERIC_PARAMS = {
    "amount",
    "latitude",
    "longitude",
    "affiliate_id",
    "nid",
    "aid",
    "adv_event_id",
    "timestamp",
}
DEAD_LETTER_ID = "node-7f1e2d3c-0007"


# --- checking what the receiver got -------------------------------------------------------------


def _same(name: str, got: t.Any, want: t.Any) -> bool:
    if name in NUMERIC_PARAMS:
        try:
            return Decimal(str(got)) == Decimal(str(want))
        except (InvalidOperation, ValueError):
            return False
    return got == want


def assert_postbacks(received: list, expected: dict[str, dict], *, label: str) -> None:
    """``received`` holds exactly one postback per expected transaction, with exactly its params."""
    counts = collections.Counter(r.transaction_id for r in received)
    want = collections.Counter({txn: 1 for txn in expected})
    assert counts == want, (
        f"{label}: postbacks per transaction_id differ.\n  got:      {dict(sorted(counts.items()))}\n"
        f"  expected: {dict(sorted(want.items()))}"
    )
    problems = []
    for r in received:
        assert r.method == "GET", f"{label}: {r.method} {r.path}"
        names = [name for name, _ in r.params_list]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append(f"{r.transaction_id}: repeated parameters {repeated}")
        params = dict(r.params_list)
        token = params.pop("verification_token", None)
        if token != scenario.VERIFICATION_TOKEN:
            problems.append(f"{r.transaction_id}: verification_token {token!r}")
        if "order_line_items" in params:
            try:
                params["order_line_items"] = json.loads(params["order_line_items"])
            except ValueError:
                problems.append(f"{r.transaction_id}: order_line_items is not JSON")
        exp = expected[r.transaction_id]
        for name in sorted(set(params) | set(exp)):
            if name not in params:
                problems.append(f"{r.transaction_id}: missing {name}={exp[name]!r}")
            elif name not in exp:
                problems.append(f"{r.transaction_id}: unexpected {name}={params[name]!r}")
            elif not _same(name, params[name], exp[name]):
                problems.append(
                    f"{r.transaction_id}: {name}={params[name]!r}, expected {exp[name]!r}"
                )
    assert not problems, f"{label}:\n  " + "\n  ".join(problems)


def read_summary(path: Path) -> dict:
    assert path.exists(), f"the target wrote no summary at {path}"
    return json.loads(path.read_text())


def dead_letters(e2e_dir: Path) -> list[dict]:
    path = e2e_dir / "state" / "dead_letter.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [d for d in lines if d.get("type") == "RECORD"]


def record_id(dead: dict) -> str | None:
    rec = dead.get("record") or {}
    for key in ("id", "messageId", "messageid"):
        if rec.get(key):
            return rec[key]
    return None


def assert_no_secret(result_text: str) -> None:
    assert scenario.VERIFICATION_TOKEN not in result_text, "the verification token was printed"


# --- warehouse ----------------------------------------------------------------------------------


def test_warehouse_pipeline_sends_each_conversion_once(
    meltano: Meltano, warehouse: Warehouse, e2e_dir: Path
) -> None:
    warehouse.load("warehouse.sql")
    state_id = "e2e:tap-postgres-to-target-everflow"
    expected_1 = scenario.expected_postbacks(scenario.BATCH_1, warehouse=True)
    expected_2 = scenario.expected_postbacks(scenario.BATCH_2, warehouse=True)

    with Receiver() as rx:
        env = {
            "SEGMENT_WAREHOUSE_URL": warehouse.url,
            "SEGMENT_SCHEMA": warehouse.schema,
            **target_env(rx.url, e2e_dir, ledger_url=warehouse.ledger_url),
        }

        # Run 1: batch 1.
        run1 = meltano.run(
            "tap-postgres",
            "target-everflow",
            env={**env, "TARGET_EVERFLOW_SUMMARY_PATH": str(e2e_dir / "summary-1.json")},
        )
        run1.check()
        assert_no_secret(run1.stdout + run1.stderr)
        first = list(rx.requests)
        assert_postbacks(first, expected_1, label="run 1 (batch 1)")
        summary = read_summary(e2e_dir / "summary-1.json")
        assert summary["delivered"] == len(expected_1), summary
        assert summary["dead_lettered"].get("missing_required_field", 0) >= 1, summary
        assert DEAD_LETTER_ID in {record_id(d) for d in dead_letters(e2e_dir)}

        bookmarks = meltano.state(state_id)["singer_state"]["bookmarks"]
        for table in ("order_completed", "tracks"):
            stream = f"{warehouse.schema}-{table}"
            assert bookmarks[stream]["replication_key"] == "received_at", bookmarks
            assert bookmarks[stream]["replication_key_value"].startswith(
                "2026-11-20T17:31:00.28"
            ), bookmarks

        # Run 2: batch 2 arrived. The tap re-emits the last batch-1 row (inclusive bookmark):
        # a conversion already delivered, which the ledger must skip.
        warehouse.load("warehouse_more.sql")
        run2 = meltano.run(
            "tap-postgres",
            "target-everflow",
            env={**env, "TARGET_EVERFLOW_SUMMARY_PATH": str(e2e_dir / "summary-2.json")},
        )
        run2.check()
        second = rx.requests[len(first) :]
        assert_postbacks(second, expected_2, label="run 2 (batch 2)")
        summary = read_summary(e2e_dir / "summary-2.json")
        assert summary["delivered"] == len(expected_2), summary
        assert summary["skipped"].get("duplicate", 0) >= 1, summary

        # Run 3: nothing new; the re-emitted last row is still not sent again.
        run3 = meltano.run(
            "tap-postgres",
            "target-everflow",
            env={**env, "TARGET_EVERFLOW_SUMMARY_PATH": str(e2e_dir / "summary-3.json")},
        )
        run3.check()
        assert rx.requests[len(first) + len(second) :] == []
        summary = read_summary(e2e_dir / "summary-3.json")
        assert summary["records_read"] >= 1 and summary["delivered"] == 0, summary
        assert summary["skipped"].get("duplicate", 0) >= 1, summary

        assert_postbacks(rx.requests, {**expected_1, **expected_2}, label="all runs")


# --- archive ------------------------------------------------------------------------------------


def test_archive_pipeline_sends_each_conversion_once(meltano: Meltano, e2e_dir: Path) -> None:
    archive_dir = e2e_dir / "segment-archive"
    now = time.time()
    archive.write_archive(archive_dir, batch=1, mtime=now - 120)
    state_id = "e2e:tap-filesanywhere-to-target-everflow"
    expected_1 = scenario.expected_postbacks(scenario.BATCH_1)
    expected_2 = scenario.expected_postbacks(scenario.BATCH_2)

    with Receiver() as rx:
        env = {"SEGMENT_ARCHIVE_DIR": str(archive_dir), **target_env(rx.url, e2e_dir)}

        run1 = meltano.run(
            "tap-filesanywhere",
            "target-everflow",
            env={**env, "TARGET_EVERFLOW_SUMMARY_PATH": str(e2e_dir / "summary-1.json")},
        )
        run1.check()
        assert_no_secret(run1.stdout + run1.stderr)
        # the tests' pinned clock reached the target through Meltano (dated data)
        assert "The clock is pinned by TARGET_EVERFLOW_CLOCK" in run1.stdout + run1.stderr
        first = list(rx.requests)
        assert_postbacks(first, expected_1, label="run 1 (batch 1)")
        summary = read_summary(e2e_dir / "summary-1.json")
        assert summary["delivered"] == len(expected_1), summary
        assert summary["skipped"].get("not_track", 0) == 2, summary  # the page and identify calls
        assert summary["dead_lettered"].get("missing_required_field", 0) == 1, summary
        assert (e2e_dir / "state" / "ledger.sqlite3").exists(), "no ledger next to the dead letters"
        bookmarks = meltano.state(state_id)["singer_state"]["bookmarks"]
        assert "segment_archive" in bookmarks, bookmarks

        # Run 2: a newer file with batch 2 and a re-delivery of a batch-1 conversion.
        archive.write_archive(archive_dir, batch=2, mtime=now - 60)
        run2 = meltano.run(
            "tap-filesanywhere",
            "target-everflow",
            env={**env, "TARGET_EVERFLOW_SUMMARY_PATH": str(e2e_dir / "summary-2.json")},
        )
        run2.check()
        second = rx.requests[len(first) :]
        assert_postbacks(second, expected_2, label="run 2 (batch 2 + a re-delivery)")
        summary = read_summary(e2e_dir / "summary-2.json")
        assert summary["records_read"] == len(archive.events_for(2)), summary  # file 1 not re-read
        assert summary["skipped"].get("duplicate", 0) == 1, summary

        # Run 3: no new file.
        run3 = meltano.run(
            "tap-filesanywhere",
            "target-everflow",
            env={**env, "TARGET_EVERFLOW_SUMMARY_PATH": str(e2e_dir / "summary-3.json")},
        )
        run3.check()
        assert rx.requests[len(first) + len(second) :] == []

        assert_postbacks(rx.requests, {**expected_1, **expected_2}, label="all runs")


# --- the plugin command `check` -----------------------------------------------------------------


class FakeEverflowAPI:
    """Everflow's REST API, the two calls the check makes, on 127.0.0.1."""

    def __init__(self, api_key: str, events: list[dict]) -> None:
        self.api_key = api_key
        self.events = events
        self.calls: list[tuple[str, str | None]] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: t.Any) -> None:
                pass

            def do_GET(self) -> None:
                key = self.headers.get("X-Eflow-API-Key")
                api.calls.append((self.path, key))
                if key != api.api_key:
                    self._send(401, {"Error": "No Authentication Method Found"})
                elif self.path == "/v1/networks":
                    self._send(200, {"network_id": scenario.NETWORK_ID, "name": "E2E Network"})
                elif self.path == f"/v1/networks/advertisers/{scenario.ADVERTISER_ID}/events":
                    self._send(200, {"global_events": api.events})
                else:
                    self._send(404, {"Error": "not found"})

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeEverflowAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


API_KEY = "sk-E2E-apikey-0c4f"
ACTIVE_24 = [
    {"network_advertiser_global_event_id": 24, "entry_name": "Subscription", "status": "active"}
]


def test_check_command_gets_its_config_from_meltano(meltano: Meltano, e2e_dir: Path) -> None:
    with FakeEverflowAPI(API_KEY, ACTIVE_24) as api, Receiver() as rx:
        env = {
            **target_env(rx.url, e2e_dir),
            "TARGET_EVERFLOW_API_KEY": API_KEY,
            "TARGET_EVERFLOW_API_URL": api.url,
        }
        result = meltano(
            "--environment=e2e", "invoke", "target-everflow:check", env=env, timeout=120
        )
        output = result.stdout + result.stderr
        assert result.code == 0, result.tail()
        assert "Everflow API check passed" in output, result.tail()
        assert "'Subscription Started' -> event 24 'Subscription'" in output, result.tail()
        assert [path for path, _ in api.calls] == [
            "/v1/networks",
            f"/v1/networks/advertisers/{scenario.ADVERTISER_ID}/events",
        ]
        assert all(key == API_KEY for _, key in api.calls)
        assert API_KEY not in output and scenario.VERIFICATION_TOKEN not in output
        assert rx.requests == [], "the check sent a postback"


def test_check_command_fails_on_an_unknown_event_id(meltano: Meltano, e2e_dir: Path) -> None:
    events = [{"network_advertiser_global_event_id": 31, "entry_name": "Lead", "status": "active"}]
    with FakeEverflowAPI(API_KEY, events) as api:
        env = {
            **target_env("http://127.0.0.1:9/", e2e_dir),
            "TARGET_EVERFLOW_API_KEY": API_KEY,
            "TARGET_EVERFLOW_API_URL": api.url,
        }
        result = meltano(
            "--environment=e2e", "invoke", "target-everflow:check", env=env, timeout=120
        )
        output = result.stdout + result.stderr
        assert result.code != 0, result.tail()
        assert "Subscription Started" in output and "24" in output, result.tail()
        assert API_KEY not in output


def test_meltano_yml_validates_and_lists_every_setting(meltano: Meltano, e2e_dir: Path) -> None:
    """`meltano config list target-everflow` (Meltano 4's spelling of `config <plugin> list`)."""
    from target_everflow.settings import CONFIG_SCHEMA

    env = {
        **target_env("https://www.example-tracking.com/", e2e_dir),
        "TARGET_EVERFLOW_VERIFICATION_TOKEN": scenario.VERIFICATION_TOKEN,
    }
    result = meltano(
        "--environment=e2e", "config", "list", "target-everflow", "--all", env=env, timeout=120
    )
    assert result.code == 0, result.tail()
    output = result.stdout + result.stderr
    for name in CONFIG_SCHEMA["properties"]:
        assert f"TARGET_EVERFLOW_{name.upper()}" in output, name
    assert scenario.VERIFICATION_TOKEN not in output  # sensitive: shown redacted


def test_reconcile_command_gets_its_config_from_meltano(meltano: Meltano, e2e_dir: Path) -> None:
    """`meltano invoke target-everflow:reconcile`: conversions delivered earlier are checked
    against the (fake) Conversion Report with the API key from Meltano's settings; one rejected
    conversion makes it exit 6."""
    from tests.conftest import run_target, singer_lines, track
    from tests.receiver import FakeReporting, Verdict

    reporting = FakeReporting(api_key=API_KEY, verdicts={"tx-2": Verdict.rejected(25)},
                              advertiser_id=scenario.ADVERTISER_ID)  # fmt: skip
    with Receiver(reporting=reporting) as rx:
        config = {"postback_url": rx.url, "network_id": scenario.NETWORK_ID, "progress_interval": 0,
                  "dead_letter_path": str(e2e_dir / "state" / "dead_letter.jsonl")}  # fmt: skip
        records = [track(i) for i in (1, 2, 3)]
        for record in records:  # recent events: the report covers the last 365 days
            record["timestamp"] = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600)
            )
        delivered = run_target(config, singer_lines("orders", records), e2e_dir)
        assert delivered.code == 0, delivered.stderr[-2000:]
        env = {
            **target_env(rx.url, e2e_dir),
            "TARGET_EVERFLOW_API_KEY": API_KEY,
            "TARGET_EVERFLOW_API_URL": rx.api_url,
        }
        result = meltano(
            "--environment=e2e", "invoke", "target-everflow:reconcile", env=env, timeout=120
        )
    output = result.stdout + result.stderr
    assert result.code == 6, result.tail()
    assert "Reconciled 3 delivered conversion(s)" in output, result.tail()
    assert "rejected, error 25 (event not on the offer): 1" in output, result.tail()
    report = json.loads((e2e_dir / "state" / "reconcile_report.json").read_text())
    assert [(c["transaction_id"], c["error_code"]) for c in report["rejected_or_not_found"]] == [
        ("tx-2", 25)
    ]
    assert reporting.asked_transactions() == {"tx-1": 1, "tx-2": 1, "tx-3": 1}
    assert len(rx.requests) == 3  # the three deliveries; reconcile sent no postback
    assert API_KEY not in output and scenario.VERIFICATION_TOKEN not in output
