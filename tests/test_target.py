"""The target as a pipeline runs it: the CLI (subprocess) and in-process runs.

Dry-run output, dead-letter file (and its replay with ``--input``), the run summary, config
errors before any record is read, and secrets that never leave the process.
"""

from __future__ import annotations

import http.server
import json
import threading
import typing as t
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import simplejson

from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    SECRET_API_KEY,
    SECRET_TOKEN,
    config_under,
    run_in_process,
    run_target,
)
from tests.test_mapping import (
    MOBILE_BASE_CONTEXT,
    MOBILE_CONTEXT,
    MOBILE_GOLDEN,
    MOBILE_PROPERTIES,
    TID,
    TS_UNIX,
    WEB_CONTEXT,
    WEB_GOLDEN,
    WEB_PROPERTIES,
    raw_event,
    to_flat,
    to_warehouse,
)

OPEN_SCHEMA = {"type": "object", "properties": {}, "additionalProperties": True}
RAW, WAREHOUSE, FLAT = "segment_archive", "segment_shop-order_completed", "segment_flat"


def dumps(obj: t.Any) -> str:
    return simplejson.dumps(obj, use_decimal=True)


def loads(text: str) -> t.Any:
    return json.loads(text, parse_float=Decimal)


def stream_lines(stream: str, records: list[dict], schema: dict | None = None) -> list[str]:
    """A Singer stream whose numbers keep their exact text (Decimals written as given)."""
    lines = [
        dumps(
            {
                "type": "SCHEMA",
                "stream": stream,
                "schema": schema or OPEN_SCHEMA,
                "key_properties": [],
            }
        )
    ]
    lines += [dumps({"type": "RECORD", "stream": stream, "record": record}) for record in records]
    return lines


def read_jsonl(path: Path) -> list[dict]:
    return [loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- one mixed input: every shape, every mapping outcome --------------------------------------

WEB_1 = raw_event(context=WEB_CONTEXT, properties=WEB_PROPERTIES, message_id="web-1")
MOBILE_1 = raw_event(
    "Subscription Started", context=MOBILE_CONTEXT, properties=MOBILE_PROPERTIES, message_id="mob-1"
)
DUPLICATE = raw_event(context=WEB_CONTEXT, properties={"total": 1}, message_id="web-1")
PAGE = raw_event(None, context=WEB_CONTEXT, message_id="page-1", type="page")
UNMAPPED = raw_event("Product Viewed", context=WEB_CONTEXT, message_id="pv-1")
NO_TID = raw_event(context=WEB_CONTEXT, tid=None, message_id="notid-1")
NO_APP_ID = raw_event(
    context={**MOBILE_BASE_CONTEXT, "app": {"name": "Shop"}},
    properties={"total": 5},
    message_id="and-7",
)
IP_OBJECT = raw_event(
    context={**MOBILE_BASE_CONTEXT, "ip": {"v4": "198.51.100.23"}},
    properties={"total": 15},
    message_id="ios-9",
)
BAD_ORDER_ID = raw_event(
    context={"ip": "203.0.113.7"},
    properties={"orderId": ["ORD-2026-0042"], "total": "41.00"},  # a list: not an order id
    message_id="web-3",
)
RAW_RECORDS = [
    WEB_1,
    MOBILE_1,
    DUPLICATE,
    PAGE,
    UNMAPPED,
    NO_TID,
    NO_APP_ID,
    IP_OBJECT,
    BAD_ORDER_ID,
]

WH_1 = to_warehouse(raw_event(context=WEB_CONTEXT, properties=WEB_PROPERTIES, message_id="wh-1"))
WH_2 = to_warehouse(raw_event(None, context={"ip": "192.0.2.45"}, message_id="wh-2", tid="wh-tid"))
FLAT_1 = to_flat(raw_event(context=WEB_CONTEXT, properties=WEB_PROPERTIES, message_id="flat-1"))


def mixed_input() -> list[str]:
    return [
        *stream_lines(RAW, RAW_RECORDS),
        json.dumps({"type": "STATE", "value": {"bookmarks": {RAW: {"file": "part-1"}}}}),
        *stream_lines(WAREHOUSE, [WH_1, WH_2]),
        *stream_lines(FLAT, [FLAT_1]),
        json.dumps({"type": "STATE", "value": {"bookmarks": {RAW: {"file": "part-2"}}}}),
    ]


EXPECTED_PLANNED = {
    "web-1": WEB_GOLDEN,
    "mob-1": MOBILE_GOLDEN,
    "web-3": [
        ("nid", "1"), ("transaction_id", TID), ("aid", "7"), ("timestamp", TS_UNIX),
        ("conversion_user_ip", "203.0.113.7"), ("amount", "41.00"),
    ],
    "wh-1": WEB_GOLDEN,
    "wh-2": [("nid", "1"), ("transaction_id", "wh-tid"), ("aid", "7"), ("timestamp", TS_UNIX),
             ("conversion_user_ip", "192.0.2.45")],
    "flat-1": WEB_GOLDEN,
}  # fmt: skip

EXPECTED_STREAMS = {
    RAW: {
        "(page)": {
            "delivered": 0,
            "skipped": {"not_track": 1},
            "dead_letter": {},
            "dropped_fields": {},
        },
        "Order Completed": {
            "delivered": 2,
            "skipped": {"duplicate": 1, "no_transaction_id": 1},
            "dead_letter": {"missing_required_field": 1, "type_mismatch": 1},
            "dropped_fields": {"order_id": 1},
        },
        "Product Viewed": {
            "delivered": 0,
            "skipped": {"unmapped_event": 1},
            "dead_letter": {},
            "dropped_fields": {},
        },
        "Subscription Started": {
            "delivered": 1,
            "skipped": {},
            "dead_letter": {},
            "dropped_fields": {},
        },
    },
    WAREHOUSE: {
        "Order Completed": {"delivered": 1, "skipped": {}, "dead_letter": {}, "dropped_fields": {}},
        "order_completed": {"delivered": 1, "skipped": {}, "dead_letter": {}, "dropped_fields": {}},
    },
    FLAT: {
        "Order Completed": {"delivered": 1, "skipped": {}, "dead_letter": {}, "dropped_fields": {}}
    },
}


def dry_config(base_config: dict, **changes: t.Any) -> dict:
    """A dry run; the inputs of these tests hold bad records on purpose (thresholds off)."""
    return {
        **base_config,
        "dry_run": True,
        "advertiser_id": 7,
        "verification_token": SECRET_TOKEN,
        **DEAD_LETTERS_ON_PURPOSE,
        **changes,
    }


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, t.Any]:
    """The mixed input through the CLI once, in dry run with a verification token."""
    tmp_path = tmp_path_factory.mktemp("mixed")
    config = dry_config(config_under(tmp_path))
    lines = mixed_input()
    result = run_target(config, lines, tmp_path)
    return {"result": result, "config": config, "tmp": tmp_path, "lines": lines}


def test_mixed_run_exits_zero_and_emits_state(mixed_run: dict) -> None:
    result = mixed_run["result"]
    assert result.code == 0, result.stderr
    assert result.states[-1] == {"bookmarks": {RAW: {"file": "part-2"}}}


def test_dry_run_output_one_line_per_planned_postback(mixed_run: dict) -> None:
    lines = read_jsonl(Path(mixed_run["config"]["dry_run_output"]))
    assert sorted(line["message_id"] for line in lines) == sorted(EXPECTED_PLANNED)
    for line in lines:
        expected = [*EXPECTED_PLANNED[line["message_id"]], ("verification_token", "***")]
        url = urlsplit(line["url"])
        assert (url.scheme, url.netloc, url.path) == ("https", "dry-run.invalid", "/")
        # the URL's query, decoded, is exactly the expected parameters in order
        assert parse_qsl(url.query, keep_blank_values=True, strict_parsing=True) == expected
        assert line["params"] == dict(expected)
        assert line["key"] == f"m:{line['message_id']}"
        assert (
            "verification_token=%2A%2A%2A" in line["url"] or "verification_token=***" in line["url"]
        )


def test_dry_run_line_names_stream_and_event(mixed_run: dict) -> None:
    lines = {
        line["message_id"]: line for line in read_jsonl(Path(mixed_run["config"]["dry_run_output"]))
    }
    assert (lines["mob-1"]["stream"], lines["mob-1"]["event"]) == (RAW, "Subscription Started")
    assert (lines["wh-2"]["stream"], lines["wh-2"]["event"]) == (WAREHOUSE, "order_completed")
    assert (lines["flat-1"]["stream"], lines["flat-1"]["event"]) == (FLAT, "Order Completed")


def test_dead_letter_file(mixed_run: dict) -> None:
    lines = read_jsonl(Path(mixed_run["config"]["dead_letter_path"]))
    assert lines[0] == {
        "type": "SCHEMA",
        "stream": RAW,
        "schema": OPEN_SCHEMA,
        "key_properties": [],
    }
    records = lines[1:]
    assert [(r["type"], r["stream"], r["reason"], r["field"]) for r in records] == [
        ("RECORD", RAW, "missing_required_field", "app_id"),
        ("RECORD", RAW, "type_mismatch", "conversion_user_ip"),
    ]
    inputs = {"and-7": NO_APP_ID, "ios-9": IP_OBJECT}
    for line in records:
        original = loads(dumps(inputs[line["record"]["messageId"]]))
        assert line["record"] == original  # the record as received
        assert line["field"] in line["message"]
        assert set(line) == {"type", "stream", "record", "reason", "message", "field", "at"}
        assert line["at"].endswith("+00:00")
    assert "context.app.namespace" in records[0]["message"]
    assert "context.ip" in records[1]["message"]


def test_summary_counts(mixed_run: dict) -> None:
    summary = loads(Path(mixed_run["config"]["summary_path"]).read_text())
    assert summary["dry_run"] is True
    assert summary["records_read"] == 12
    assert summary["delivered"] == 6
    assert summary["skipped"] == {
        "duplicate": 1,
        "no_transaction_id": 1,
        "not_track": 1,
        "unmapped_event": 1,
    }
    assert summary["dead_lettered"] == {"missing_required_field": 1, "type_mismatch": 1}
    assert summary["dropped_fields"] == 1
    assert summary["requests"] == 0  # dry run: no network
    assert summary["streams"] == EXPECTED_STREAMS
    # every record in exactly one outcome
    outcomes = sum(
        entry["delivered"] + sum(entry["skipped"].values()) + sum(entry["dead_letter"].values())
        for events in summary["streams"].values()
        for entry in events.values()
    )
    assert outcomes == summary["records_read"]


def test_log_names_the_record_and_field(mixed_run: dict) -> None:
    stderr = mixed_run["result"].stderr
    dropped = [line for line in stderr.splitlines() if "Left out optional field" in line]
    assert len(dropped) == 1
    assert "order_id" in dropped[0] and "web-3" in dropped[0] and RAW in dropped[0]
    dead = [line for line in stderr.splitlines() if "Dead-lettered" in line]
    assert len(dead) == 2
    assert any("and-7" in line and "app_id" in line for line in dead)


def test_secrets_appear_nowhere(mixed_run: dict) -> None:
    result, config = mixed_run["result"], mixed_run["config"]
    outputs = {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "dry_run_output": Path(config["dry_run_output"]).read_text(),
        "dead_letters": Path(config["dead_letter_path"]).read_text(),
        "summary": Path(config["summary_path"]).read_text(),
    }
    for name, text in outputs.items():
        assert SECRET_TOKEN not in text, name
    assert outputs["dry_run_output"].count("verification_token") == 2 * len(EXPECTED_PLANNED)


def test_replay_dead_letters_through_the_target(mixed_run: dict, tmp_path: Path) -> None:
    """The dead-letter file is a Singer stream: `--input` replays it as it is."""
    dead_letters = Path(mixed_run["config"]["dead_letter_path"])
    replay = tmp_path / "retry.jsonl"
    replay.write_bytes(dead_letters.read_bytes())
    config = {
        **mixed_run["config"],
        "dead_letter_path": str(tmp_path / "dl2.jsonl"),
        "dry_run_output": str(tmp_path / "dry2.jsonl"),
        "summary_path": str(tmp_path / "summary2.json"),
    }
    # Unchanged config: the same records are dead-lettered again, for the same reasons.
    result = run_target(config, [], tmp_path, args=["--input", str(replay)])
    assert result.code == 0, result.stderr
    summary = loads(Path(config["summary_path"]).read_text())
    assert summary["records_read"] == 2
    assert summary["dead_lettered"] == {"missing_required_field": 1, "type_mismatch": 1}
    again = read_jsonl(tmp_path / "dl2.jsonl")
    first = read_jsonl(dead_letters)
    assert [line.get("record") for line in again] == [line.get("record") for line in first]
    assert [line.get("reason") for line in again] == [line.get("reason") for line in first]

    # After fixing the cause (these apps are web after all), the replay plans both.
    config = {**config, "platform": "web", "dead_letter_path": str(tmp_path / "dl3.jsonl")}
    result = run_target(config, [], tmp_path, args=["--input", str(replay)])
    assert result.code == 0, result.stderr
    summary = loads(Path(config["summary_path"]).read_text())
    assert (summary["records_read"], summary["delivered"], summary["dead_lettered"]) == (2, 2, {})
    planned = {
        line["message_id"]: line["params"] for line in read_jsonl(Path(config["dry_run_output"]))
    }
    assert planned["and-7"]["conversion_user_ip"] == "198.51.100.23"
    assert "conversion_user_ip" not in planned["ios-9"]  # an object: left out on web
    assert not (tmp_path / "dl3.jsonl").exists() or read_jsonl(tmp_path / "dl3.jsonl") == []


# --- in process: outcomes and summary ---------------------------------------------------------


def test_in_process_every_record_has_one_outcome(base_config: dict) -> None:
    records = RAW_RECORDS + [raw_event(message_id=f"extra-{i}", tid=f"t{i}") for i in range(20)]
    code, target = run_in_process(dry_config(base_config), stream_lines(RAW, records))
    assert code == 0
    data = target.run.summary.as_dict(dry_run=True)
    assert data["records_read"] == len(records)
    assert target.run.summary.accounted() == len(records)
    assert data["delivered"] == 3 + 20


def test_duplicates_across_streams_are_sent_once(base_config: dict, tmp_path: Path) -> None:
    """A warehouse has each track in `tracks` and in its event's table, with the same id."""
    row = to_warehouse(raw_event(context={"ip": "192.0.2.1"}, message_id="same-id"))
    lines = [*stream_lines("segment_shop-tracks", [row]), *stream_lines(WAREHOUSE, [row])]
    code, target = run_in_process(dry_config(base_config), lines)
    assert code == 0
    data = target.run.summary.as_dict(dry_run=True)
    assert (data["delivered"], data["skipped"]) == (1, {"duplicate": 1})
    assert len(read_jsonl(Path(base_config["dry_run_output"]))) == 1


def test_strict_types_dead_letters_instead_of_dropping(base_config: dict) -> None:
    code, target = run_in_process(
        dry_config(base_config, strict_types=True), stream_lines(RAW, [BAD_ORDER_ID])
    )
    assert code == 0
    data = target.run.summary.as_dict(dry_run=True)
    assert (data["delivered"], data["dead_lettered"], data["dropped_fields"]) == (
        0,
        {"type_mismatch": 1},
        0,
    )
    (line,) = read_jsonl(Path(base_config["dead_letter_path"]))[1:]
    assert (line["reason"], line["field"]) == ("type_mismatch", "order_id")


def test_numbers_from_the_singer_input_are_sent_as_written(base_config: dict) -> None:
    record = raw_event(
        properties={"total": Decimal("76.0"), "orderId": Decimal("1E+2"), "adv1": Decimal("0.10")}
    )
    code, _ = run_in_process(dry_config(base_config), stream_lines(RAW, [record]))
    assert code == 0
    (line,) = read_jsonl(Path(base_config["dry_run_output"]))
    assert (line["params"]["amount"], line["params"]["order_id"], line["params"]["adv1"]) == (
        "76.0",
        "100",
        "0.10",
    )


def test_date_time_columns_parsed_by_the_sdk(base_config: dict) -> None:
    """A warehouse schema marks timestamps date-time: the SDK hands over datetimes."""
    schema = {
        "type": "object",
        "properties": {
            "timestamp": {"type": ["string", "null"], "format": "date-time"},
            "received_at": {"type": ["string", "null"], "format": "date-time"},
        },
        "additionalProperties": True,
    }
    row = to_warehouse(raw_event(timestamp="2026-10-31T20:00:00-04:00", message_id="wh-dt"))
    row["received_at"] = "2026-11-01T00:00:09+00:00"
    mobile_row = to_warehouse(
        raw_event(
            context={"os": {"name": "iOS"}},
            message_id="wh-dt-2",
            timestamp="2026-11-01T00:00:00+00:00",
        )
    )
    code, _ = run_in_process(
        dry_config(base_config), stream_lines(WAREHOUSE, [row, mobile_row], schema)
    )
    assert code == 0
    (line,) = read_jsonl(Path(base_config["dry_run_output"]))
    assert line["params"]["timestamp"] == "1793491200"
    (dead,) = read_jsonl(Path(base_config["dead_letter_path"]))[1:]
    assert dead["record"]["timestamp"] == "2026-11-01T00:00:00+00:00"  # written back as ISO-8601


# --- a live run against a loopback server -----------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: t.ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = b'{"conversion_id": "c1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: t.Any) -> None:
        pass


def test_live_run_sends_the_token_and_logs_it_nowhere(base_config: dict, tmp_path: Path) -> None:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = {
            **base_config,
            "postback_url": f"http://127.0.0.1:{server.server_address[1]}/",
            "verification_token": SECRET_TOKEN,
            "advertiser_id": 7,
            **DEAD_LETTERS_ON_PURPOSE,  # NO_APP_ID is a dead letter: one of two
        }
        records = [WEB_1, NO_APP_ID]
        result = run_target(config, stream_lines(RAW, records), tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert result.code == 0, result.stderr
    (path,) = _Recorder.seen
    assert parse_qsl(urlsplit(path).query, strict_parsing=True) == [
        *WEB_GOLDEN,
        ("verification_token", SECRET_TOKEN),
    ]
    summary = loads(Path(config["summary_path"]).read_text())
    assert (summary["delivered"], summary["requests"]) == (1, 1)
    texts = [result.stdout, result.stderr, Path(config["summary_path"]).read_text(),
             Path(config["dead_letter_path"]).read_text()]  # fmt: skip
    for text in texts:
        assert SECRET_TOKEN not in text


# --- config errors: exit 1, the setting named, nothing read -----------------------------------

CONFIG_ERRORS = [
    ("wrong_type", {"network_id": "abc"}, "network_id"),
    ("wrong_type_bool", {"dry_run": "yes"}, "dry_run"),
    ("missing_postback_url_live", {"dry_run": False}, "postback_url"),
    ("missing_network_id_live", {"dry_run": False, "postback_url": "https://track.example.com/", "network_id": None}, "network_id"),
    ("http_remote_url", {"dry_run": False, "postback_url": "http://track.example.com/"}, "postback_url"),
    ("ftp_url", {"dry_run": False, "postback_url": "ftp://track.example.com/"}, "postback_url"),
    ("negative_event_id", {"event_mapping": {"Order Completed": -1}}, "event_mapping"),
    ("event_id_not_integer", {"event_mapping": {"Order Completed": "24"}}, "event_mapping"),
    ("empty_event_mapping", {"event_mapping": {}}, "event_mapping"),
    ("platform_enum", {"platform": "desktop"}, "platform"),
    ("concurrency_zero", {"max_concurrency": 0}, "max_concurrency"),
    ("preflight_without_key", {"preflight": True, "api_key": None}, "preflight"),
]  # fmt: skip

SECRETS = {
    "verification_token": SECRET_TOKEN,
    "api_key": SECRET_API_KEY,
    "preflight": False,
    "ledger_url": f"postgresql://u:{SECRET_TOKEN}@db.example.com/x",
}
SECRET_CASES = [
    ("network_id_wrong", {"network_id": "abc"}),
    ("token_wrong_type", {"verification_token": [SECRET_TOKEN]}),
    ("api_key_wrong_type", {"api_key": {"key": SECRET_API_KEY}}),
    ("event_id_is_a_secret", {"event_mapping": {"Order Completed": SECRET_TOKEN}}),
    ("platform_is_a_secret", {"platform": SECRET_API_KEY}),
    ("url_with_credentials", {"postback_url": f"https://user:{SECRET_TOKEN}@track.example.com/"}),
    (
        "http_url",
        {"dry_run": False, "postback_url": f"http://track.example.com/?k={SECRET_API_KEY}"},
    ),
]


def _config_in(tmp_path: Path, changes: dict) -> dict:
    config = {
        "network_id": 1,
        "event_mapping": {"Order Completed": 0},
        "dead_letter_path": str(tmp_path / "state" / "dead_letter.jsonl"),
        "dry_run_output": str(tmp_path / "dry_run.jsonl"),
        "summary_path": str(tmp_path / "summary.json"),
        "progress_interval": 0,
        "dry_run": True,
        **changes,
    }
    return {k: v for k, v in config.items() if v is not None}


def _assert_nothing_written(config: dict) -> None:
    for key in ("dry_run_output", "dead_letter_path", "summary_path"):
        assert not Path(config[key]).exists(), key
    assert not Path(config["dead_letter_path"]).parent.exists()  # not even the state directory


@pytest.mark.parametrize(
    ("case", "changes", "setting"), CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS]
)
def test_config_error_in_process(case: str, changes: dict, setting: str, tmp_path: Path) -> None:
    from singer_sdk.exceptions import ConfigValidationError

    from target_everflow.adapter.target import TargetEverflow

    config = _config_in(tmp_path, {**SECRETS, **changes})
    with pytest.raises(ConfigValidationError) as info:
        TargetEverflow(config=config)
    errors = " | ".join(info.value.errors)
    assert f"Setting '{setting}" in errors, errors
    for secret in (SECRET_TOKEN, SECRET_API_KEY):
        assert secret not in errors and secret not in str(info.value)
    _assert_nothing_written(config)


@pytest.mark.parametrize(("case", "changes"), SECRET_CASES, ids=[c[0] for c in SECRET_CASES])
def test_config_error_in_process_never_echoes_a_secret(
    case: str, changes: dict, tmp_path: Path
) -> None:
    from singer_sdk.exceptions import ConfigValidationError

    from target_everflow.adapter.target import TargetEverflow

    config = _config_in(tmp_path, {**SECRETS, **changes})
    with pytest.raises(ConfigValidationError) as info:
        TargetEverflow(config=config)
    errors = " | ".join(info.value.errors)
    assert "Setting '" in errors
    for secret in (SECRET_TOKEN, SECRET_API_KEY):
        assert secret not in errors and secret not in str(info.value), case
    _assert_nothing_written(config)


# The cases through the real CLI, with every secret in the config: exit code 1, the
# setting named on stderr, no secret on stdout/stderr, no record read.
CLI_CASES = [
    ("wrong_type", {"network_id": "abc"}, "network_id"),
    ("missing_postback_url_live", {"dry_run": False}, "postback_url"),
    (
        "http_remote_url",
        {"dry_run": False, "postback_url": "http://track.example.com/"},
        "postback_url",
    ),
    ("negative_event_id", {"event_mapping": {"Order Completed": -1}}, "event_mapping"),
    ("secret_of_the_wrong_type", {"verification_token": [SECRET_TOKEN]}, "verification_token"),
]


@pytest.fixture(scope="module")
def cli_config_error_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[dict, t.Any]]:
    """The CLI cases, each run once (in this process: tests/conftest.py's run_cli)."""
    jobs = {
        case: _config_in(tmp_path_factory.mktemp(case), {**SECRETS, **changes})
        for case, changes, _ in CLI_CASES
    }
    lines = stream_lines(RAW, [WEB_1, NO_APP_ID])

    def run(case: str) -> t.Any:
        config = jobs[case]
        return run_target(config, lines, Path(config["dry_run_output"]).parent)

    return {case: (jobs[case], run(case)) for case in jobs}


@pytest.mark.parametrize(("case", "changes", "setting"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_config_error_cli(
    case: str, changes: dict, setting: str, cli_config_error_runs: dict
) -> None:
    config, result = cli_config_error_runs[case]
    assert result.code == 1, (case, result.stderr)
    assert f"Setting '{setting}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    for secret in (SECRET_TOKEN, SECRET_API_KEY):
        assert secret not in result.stderr, case
        assert secret not in result.stdout, case
    _assert_nothing_written(config)
    assert result.states == []


def test_stream_maps_still_transform_records(base_config: dict) -> None:
    """The target skips the transform of a map that hands every record on as it is (the SDK's
    own map, no flattening); a map that filters, renames or flattens still transforms each
    record, and the planned postback is the same as the record's unflattened one."""
    from singer_sdk.mapper import SameRecordTransform

    from target_everflow.adapter.target import hands_on_as_is

    records = [raw_event(message_id="kept", tid="t1"), raw_event(message_id="dropped", tid="t2")]
    bad = raw_event(properties={"total": "forty"}, message_id="bad")  # strict_types: dead letter
    lines = stream_lines(RAW, [*records, bad])
    code, target = run_in_process(dry_config(base_config, strict_types=True), lines)
    assert code == 0
    (as_is,) = target.mapper.stream_maps[RAW]
    assert isinstance(as_is, SameRecordTransform) and hands_on_as_is(as_is)
    plain = {line["message_id"]: line for line in read_jsonl(Path(base_config["dry_run_output"]))}
    assert set(plain) == {"kept", "dropped"}
    (letter,) = read_jsonl(Path(base_config["dead_letter_path"]))[1:]
    assert letter["record"] == loads(dumps(bad))  # as received

    maps = {RAW: {"__alias__": "renamed", "__filter__": "messageId != 'dropped'"}}
    code, target = run_in_process(
        dry_config(base_config, strict_types=True, stream_maps=maps), lines
    )
    assert code == 0
    assert not any(hands_on_as_is(m) for m in target.mapper.stream_maps[RAW])
    (line,) = read_jsonl(Path(base_config["dry_run_output"]))
    assert (line["message_id"], line["stream"]) == ("kept", "renamed")
    assert line["params"] == plain["kept"]["params"]

    Path(base_config["dead_letter_path"]).unlink(missing_ok=True)
    code, target = run_in_process(
        dry_config(base_config, strict_types=True, flattening_enabled=True, flattening_max_depth=3),
        lines,
    )
    assert code == 0
    (letter,) = read_jsonl(Path(base_config["dead_letter_path"]))[1:]
    assert "properties" not in letter["record"]  # flattened
    assert letter["record"]["properties__total"] == "forty"
    assert not any(hands_on_as_is(m) for m in target.mapper.stream_maps[RAW])
    flattened = {
        line["message_id"]: line for line in read_jsonl(Path(base_config["dry_run_output"]))
    }
    assert {k: v["params"] for k, v in flattened.items()} == {
        k: v["params"] for k, v in plain.items()
    }
