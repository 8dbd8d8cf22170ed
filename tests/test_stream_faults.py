"""Singer stream faults, through the real CLI: what the target does with input that is not a
valid Singer stream, and why that is right for a pipeline (docs/hardening.md, "Broken input").

The rule: a line that is not a Singer message stops the run with exit code 2 and one error line
naming the line number and what is wrong (no traceback). The records read before that line are
settled first (delivered, skipped or dead-lettered) and the last STATE read before it is emitted,
so the re-run after the input is fixed resumes there and the ledger skips what was delivered.
Nothing after the broken line is read: it may carry conversions, and skipping it would lose them
unnoticed. A record that is a bad *record* (not an object, breaks its schema) is not a broken
stream: it is dead-lettered, and the run goes on.
"""

from __future__ import annotations

import json
import subprocess
import typing as t
from pathlib import Path

import pytest

from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    bytes_of,
    completed,
    dead_letter_records,
    read_jsonl,
    run_cli,
    run_target,
    singer_lines,
    track,
)
from tests.receiver import Receiver

SCHEMA = json.dumps(
    {
        "type": "SCHEMA",
        "stream": "orders",
        "schema": {"type": "object", "properties": {}},
        "key_properties": [],
    }
)


def rec(i: int, stream: str = "orders", **properties: t.Any) -> str:
    return json.dumps({"type": "RECORD", "stream": stream, "record": track(i, **properties)})


def state(i: int) -> str:
    return json.dumps({"type": "STATE", "value": {"upto": i}})


TYPED_SCHEMA = json.dumps({
    "type": "SCHEMA", "stream": "orders", "key_properties": [],
    "schema": {"type": "object", "properties": {
        "timestamp": {"type": "string", "format": "date-time"},
        "properties": {"type": "object", "properties": {"total": {"type": "integer"}}},
    }},
})  # fmt: skip


class Case(t.NamedTuple):
    payload: bytes
    code: int
    says: tuple[str, ...]  # what stderr must say (the line number first, when there is one)
    states: list[dict]  # the STATE messages on stdout
    planned: set[str]  # message ids of the planned postbacks (dry run)
    config: dict = {}


def text(*lines: str, end: str = "\n") -> bytes:
    return ("\n".join(lines) + (end if lines else "")).encode()


CASES: dict[str, Case] = {
    "not_json": Case(
        text(SCHEMA, rec(1), state(1), rec(2), "this is not json", rec(3), state(3)),
        2, ("at line 5", "it is not JSON", "'this is not json'"), [{"upto": 1}], {"msg-1", "msg-2"}),
    "truncated_last_line": Case(
        text(SCHEMA, rec(1), state(1), rec(2), rec(3)[:40], end=""),
        2, ("at line 5", "the last line is cut off"), [{"upto": 1}], {"msg-1", "msg-2"}),
    "truncated_line_in_the_middle": Case(
        text(SCHEMA, rec(1), state(1), rec(2)[:40], rec(3), state(3)),
        2, ("at line 4", "it is not JSON"), [{"upto": 1}], {"msg-1"}),
    "record_before_schema": Case(
        text(SCHEMA, rec(1), state(1), rec(2, stream="refunds"), rec(3)),
        2, ("at line 4", "stream 'refunds' was encountered before a corresponding schema"), [{"upto": 1}], {"msg-1"}),
    "unknown_message_type": Case(
        text(SCHEMA, rec(1), state(1), json.dumps({"type": "METRIC", "value": 1}), rec(2)),
        2, ("at line 4", "unknown message type 'METRIC'"), [{"upto": 1}], {"msg-1"}),
    "lower_case_type": Case(
        text(SCHEMA, rec(1), json.dumps({"type": "record", "stream": "orders", "record": track(2)})),
        2, ("at line 3", "unknown message type 'record'"), [], {"msg-1"}),
    "no_type": Case(
        text(SCHEMA, rec(1), json.dumps({"stream": "orders", "record": track(2)})),
        2, ("at line 3", 'the message has no "type"'), [], {"msg-1"}),
    "duplicate_key_in_a_message": Case(  # read by its last "type", this STATE was a RECORD
        text(SCHEMA, rec(1), state(1),
             '{"type": "STATE", "value": {"upto": 9}, "type": "RECORD", "stream": "orders", "record": '
             + json.dumps(track(2)) + "}", rec(3), state(3)),
        2, ("at line 4", "the message has the key 'type' more than once"), [{"upto": 1}], {"msg-1"}),
    "json_but_not_an_object": Case(
        text(SCHEMA, rec(1), state(1), "[1, 2, 3]"),
        2, ("at line 4", "it is a list, not a Singer message"), [{"upto": 1}], {"msg-1"}),
    "a_bare_number": Case(
        text(SCHEMA, "42"), 2, ("at line 2", "it is a number, not a Singer message"), [], set()),
    "record_without_record": Case(
        text(SCHEMA, json.dumps({"type": "RECORD", "stream": "orders"})),
        2, ("at line 2", 'has no "record"'), [], set()),
    "record_without_stream": Case(
        text(SCHEMA, json.dumps({"type": "RECORD", "record": track(1)})),
        2, ("at line 2", 'the RECORD message has no "stream"'), [], set()),
    "schema_without_properties": Case(
        text(json.dumps({"type": "SCHEMA", "stream": "orders", "schema": {"type": "object"}}), rec(1)),
        2, ("at line 1", 'has no "properties"'), [], set()),
    "schema_that_is_not_an_object": Case(
        text(json.dumps({"type": "SCHEMA", "stream": "orders", "schema": "object"})),
        2, ("at line 1", '"schema" is a string'), [], set()),
    "invalid_json_schema_validate_records_on": Case(
        text(SCHEMA, rec(1), state(1),
             json.dumps({"type": "SCHEMA", "stream": "refunds", "schema": {"type": "object", "properties": {"x": {"type": "bogus"}}}}),
             rec(2)),
        2, ("at line 4", "the SCHEMA of stream 'refunds' is not a valid JSON schema"), [{"upto": 1}], {"msg-1"},
        {"validate_records": True}),
    "invalid_json_schema_validate_records_off": Case(
        text(json.dumps({"type": "SCHEMA", "stream": "orders", "schema": {"type": "object", "properties": {"x": {"type": "bogus"}}}}),
             rec(1), state(1)),
        0, (), [{"upto": 1}], {"msg-1"}),
    "state_without_value": Case(
        text(SCHEMA, rec(1), json.dumps({"type": "STATE"})),
        2, ("at line 3", 'the STATE message has no "value"'), [], {"msg-1"}),
    "batch_message": Case(
        text(SCHEMA, rec(1), json.dumps({"type": "BATCH", "stream": "orders", "encoding": {"format": "jsonl"},
                                         "manifest": ["file:///tmp/x.jsonl"]})),
        2, ("at line 3", "BATCH messages are not supported"), [], {"msg-1"}),
    "activate_version_before_schema": Case(
        text(json.dumps({"type": "ACTIVATE_VERSION", "stream": "orders", "version": 1})),
        2, ("at line 1", "ACTIVATE_VERSION message for stream 'orders' came before"), [], set()),
    "not_utf8": Case(
        text(SCHEMA, rec(1), state(1))
        + json.dumps({"type": "RECORD", "stream": "orders", "record": track(2, coupon="été")}, ensure_ascii=False).encode("latin-1")
        + b"\n" + text(rec(3)),
        2, ("at line 4", "not UTF-8", "0xe9"), [{"upto": 1}], {"msg-1"}),
    # --- not broken: the run goes on ---
    "empty_input": Case(b"", 0, (), [], set()),
    "only_state": Case(text(state(7)), 0, (), [{"upto": 7}], set()),
    "only_state_twice_the_same": Case(text(state(7), state(7)), 0, (), [{"upto": 7}], set()),
    "blank_lines_and_crlf": Case(
        text("", SCHEMA, "   ", rec(1) + "\r", "", state(1), ""), 0, (), [{"upto": 1}], {"msg-1"}),
    "activate_version": Case(
        text(SCHEMA, rec(1), json.dumps({"type": "ACTIVATE_VERSION", "stream": "orders", "version": 3}), state(1)),
        0, (), [{"upto": 1}], {"msg-1"}),
    "record_that_is_not_an_object": Case(
        text(SCHEMA, rec(1), json.dumps({"type": "RECORD", "stream": "orders", "record": ["not", "an", "object"]}),
             json.dumps({"type": "RECORD", "stream": "orders", "record": None}), rec(2), state(2)),
        0, ("line 3: the RECORD's \"record\" is a list, not a JSON object",
            "line 4: the RECORD's \"record\" is null"), [{"upto": 2}], {"msg-1", "msg-2"}),
    "schema_violation_validate_records_off": Case(
        text(TYPED_SCHEMA, rec(1, total="abc"), rec(2), state(2)),
        0, ("Left out optional field amount", "msg-1"), [{"upto": 2}], {"msg-1", "msg-2"}),
    "schema_violation_validate_records_on": Case(
        text(TYPED_SCHEMA, rec(1, total="abc"), rec(2), state(2)),
        0, ("Dead-lettered a record of stream orders (message id msg-1): invalid_record",
            "properties.total"), [{"upto": 2}], {"msg-2"}, {"validate_records": True}),
    "bad_date_time_validate_records_off": Case(
        text(TYPED_SCHEMA, json.dumps({"type": "RECORD", "stream": "orders", "record": {**track(1), "timestamp": "soon"}}),
             json.dumps({"type": "RECORD", "stream": "orders", "record": {**track(2), "timestamp": 1795198448}}),
             rec(3), state(3)),
        0, ("Left out optional field timestamp", "msg-1"), [{"upto": 3}], {"msg-1", "msg-2", "msg-3"}),
    "bad_date_time_validate_records_on": Case(
        text(TYPED_SCHEMA, json.dumps({"type": "RECORD", "stream": "orders", "record": {**track(1), "timestamp": "soon"}}),
             rec(3), state(3)),
        0, ("invalid_record", "at timestamp", "'soon' is not a date-time"), [{"upto": 3}], {"msg-3"},
        {"validate_records": True}),
}  # fmt: skip


def _config(tmp_path: Path, changes: dict) -> dict:
    """A dry run's settings; a case's few records include bad ones on purpose (thresholds off)."""
    return {
        "dry_run": True, "network_id": 1, "event_mapping": {"Order Completed": 0},
        "dead_letter_path": str(tmp_path / "dl.jsonl"), "dry_run_output": str(tmp_path / "dry.jsonl"),
        "summary_path": str(tmp_path / "summary.json"), "progress_interval": 0,
        **DEAD_LETTERS_ON_PURPOSE, **changes,
    }  # fmt: skip


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every case through the CLI once (in this process: tests/conftest.py's run_cli)."""

    def run(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        tmp = tmp_path_factory.mktemp(name)
        (tmp / "config.json").write_text(json.dumps(_config(tmp, CASES[name].config)))
        result = run_cli(["--config", str(tmp / "config.json")], stdin=CASES[name].payload, cwd=tmp)
        return tmp, completed(result, text=False)

    return {name: run(name) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_stream_fault(name: str, runs: dict) -> None:
    case = CASES[name]
    tmp, proc = runs[name]
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == case.code, stderr[-3000:]
    assert "Traceback" not in stderr
    for phrase in case.says:
        assert phrase in stderr, (phrase, stderr[-3000:])
    if case.code == 2:
        (error,) = [line for line in stderr.splitlines() if "The Singer input is broken" in line]
        assert (
            "ERROR" in error and case.says[0] in error
        )  # one line says it all, with the line number
    stdout = proc.stdout.decode()
    assert [json.loads(line) for line in stdout.splitlines()] == case.states
    planned = {line["message_id"] for line in read_jsonl(tmp / "dry.jsonl")}
    assert planned == case.planned
    summary = json.loads((tmp / "summary.json").read_text())  # the summary is always written
    dead = dead_letter_records(tmp / "dl.jsonl")
    assert summary["records_read"] == summary["delivered"] + sum(summary["skipped"].values()) + len(
        dead
    )


def test_invalid_records_are_dead_lettered_with_their_reason(runs: dict) -> None:
    tmp, _ = runs["record_that_is_not_an_object"]
    dead = dead_letter_records(tmp / "dl.jsonl")
    assert [(d["reason"], d["record"], d["field"]) for d in dead] == [
        ("invalid_record", ["not", "an", "object"], "record"),
        ("invalid_record", None, "record"),
    ]
    tmp, _ = runs["schema_violation_validate_records_on"]
    (line,) = dead_letter_records(tmp / "dl.jsonl")
    assert (line["reason"], line["record"]["messageId"]) == ("invalid_record", "msg-1")
    assert "properties.total" in line["message"]
    tmp, _ = runs["bad_date_time_validate_records_on"]
    (line,) = dead_letter_records(tmp / "dl.jsonl")
    assert (line["reason"], line["field"], line["record"]["timestamp"]) == (
        "invalid_record",
        "timestamp",
        "soon",
    )


def test_empty_input_writes_an_empty_summary(runs: dict) -> None:
    tmp, proc = runs["empty_input"]
    summary = json.loads((tmp / "summary.json").read_text())
    assert (summary["records_read"], summary["delivered"]) == (0, 0)
    assert proc.stdout == b""


def test_every_case_is_in_the_documented_table() -> None:
    """docs/hardening.md has a row per case of this module (by its name in backquotes)."""
    table = (Path(__file__).resolve().parents[1] / "docs" / "hardening.md").read_text()
    missing = [name for name in CASES if f"`{name}`" not in table]
    assert not missing, f"docs/hardening.md does not describe: {missing}"


# --- live: settled before the broken line, resumed after it -----------------------------------


def test_live_run_delivers_what_came_before_the_broken_line_and_resumes(
    base_config: dict, tmp_path: Path
) -> None:
    """30 records, STATE every 5, a broken line after record 17. The first run delivers 0..17
    and emits STATE 14 (the last one read); the re-run from STATE 14 with the line fixed sends
    18..29 only: 15, 16, 17 are duplicates the ledger skips. Everflow accepts each once."""

    def stream(broken_after: int | None, start: int = 0) -> list[str]:
        lines = singer_lines("orders", [])
        for i in range(start, 30):
            lines.append(rec(i))
            if (i + 1) % 5 == 0:
                lines.append(state(i))
            if i == broken_after:
                lines.append('{"type": "RECORD", "stream": "orders", "record": {"messageId": ')
        return lines

    with Receiver() as rx:
        config = {**base_config, "postback_url": rx.url, "batch_size_rows": 7}
        first = run_target(config, stream(broken_after=17), tmp_path)
        assert first.code == 2, first.stderr
        assert (
            "The Singer input is broken at line" in first.stderr and "Traceback" not in first.stderr
        )
        assert first.states[-1] == {"upto": 14}
        assert {r.transaction_id for r in rx.accepted} == {f"tx-{i}" for i in range(18)}
        second = run_target(config, stream(broken_after=None, start=15), tmp_path)
        assert second.code == 0, second.stderr
        counts = rx.count_by_transaction()
    assert counts == {f"tx-{i}": 1 for i in range(30)}
    summary = json.loads(Path(config["summary_path"]).read_text())
    assert (summary["delivered"], summary["skipped"]) == (12, {"duplicate": 3})
    assert second.states[-1] == {"upto": 29}


@pytest.mark.parametrize(
    "name", ["truncated_line_in_the_middle", "truncated_last_line", "blank_lines_and_crlf"]
)
def test_a_pipe_is_read_as_the_file_was(name: str, runs: dict, tmp_path: Path) -> None:
    """The cases above read their input from a file (in-process runs); from a pipe, as a tap
    writes it, the reader waits with poll and takes whole lines: the same outcomes."""
    _, from_file = runs[name]
    (tmp_path / "config.json").write_text(json.dumps(_config(tmp_path, CASES[name].config)))
    result = run_cli(
        ["--config", str(tmp_path / "config.json")],
        stdin=CASES[name].payload,
        cwd=tmp_path,
        subprocess_run=True,  # stdin is a pipe
    )
    assert (result.code, bytes_of(result.stdout)) == (from_file.returncode, from_file.stdout)
    planned = {line["message_id"] for line in read_jsonl(tmp_path / "dry.jsonl")}
    assert planned == CASES[name].planned
