"""Faults around the records rather than the network (issue 11, findings 5, 8, 9, 10, 11).

- 5: a record nested ~1,000 levels deep, which the reader accepts, is dead-lettered like any
  other (or as a stand-in that says why it could not be written) and the run goes on;
- 8: the run summary keeps a row per mapped event, the most frequent other names (at most 50)
  and an "(other events)" row: memory and the summary's length do not grow with the number of
  distinct event names;
- 9: output paths are checked at start-up (exit 1, one line); a dead-letter file that fills up
  mid-run stops the run cleanly (exit 7) with what was written counted truly; a failure after
  the last STATE is a warning; SIGTERM while the summary is logged is no "Logging error";
- 10: a value from a record can never forge a log line of its own;
- 11: postback_url with a non-ASCII path is encoded; a fragment, credentials, or a query string
  setting the target's own parameters is refused at config time. (A Singer message that names a
  key twice is refused with exit 2: ``tests/test_stream_faults.py``, ``test_reader_*`` below.)

docs/hardening.md, "Faults around the records", says what each guarantees.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import typing as t
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from target_everflow.accounting.summary import (
    MAX_OTHER_EVENTS,
    OTHER_EVENTS,
    UNWRITABLE,
    DeadLetters,
    RunSummary,
    dumps,
    escape_log_records,
    records_kept,
)
from target_everflow.adapter.reader import SegmentReader
from target_everflow.errors import EXIT_OUTPUT
from target_everflow.outcomes import (
    DEAD_LETTER,
    DELIVERED,
    SKIPPED,
    UNMAPPED_EVENT,
)
from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    LAUNCHER,
    SECRET_TOKEN,
    completed,
    config_under,
    dead_letter_records,
    read_jsonl,
    run_cli,
    run_in_process,
    run_target,
    singer_lines,
    track,
)
from tests.receiver import Answer, Receiver

STREAM = "orders"
DEPTH = 980  # the repro: the reader accepts it, the JSON encoder could not write it


def dry(tmp_path: Path, **changes: t.Any) -> dict:
    """A dry run that dead-letters on purpose (the failure thresholds are not what is tested)."""
    return {**config_under(tmp_path), "dry_run": True, **DEAD_LETTERS_ON_PURPOSE, **changes}


def mobile_without_ip(i: int, **properties: t.Any) -> dict:
    """A mobile track without context.ip: dead-lettered (missing_required_field)."""
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"mob-{i}",
        "context": {
            "os": {"name": "iOS"},
            "app": {"namespace": "com.example.shop"},
            "referrer": {"type": "everflow", "id": f"tx-mob-{i}"},
        },
        "properties": {"total": 5, **properties},
    }


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def deep_record_line(depth: int = DEPTH) -> str:
    """A RECORD whose record is a mobile track without IP with ``properties.x`` nested ``depth``
    levels (built as text: Python's json could not write it from a test's stack)."""
    line = json.dumps(
        {"type": "RECORD", "stream": STREAM, "record": mobile_without_ip(0, x="@DEEP@")}
    )
    return line.replace('"@DEEP@"', nested(depth))


def record_line(record: dict, stream: str = STREAM) -> str:
    return json.dumps({"type": "RECORD", "stream": stream, "record": record})


def cli(
    config: dict,
    payload: str | bytes,
    tmp_path: Path,
    *,
    limit_file_size: int | None = None,
    timeout: float = 180,
    subprocess_run: bool = False,
) -> subprocess.CompletedProcess:
    """The CLI as a pipeline runs it; ``limit_file_size``: no file it writes may grow past that
    many bytes (RLIMIT_FSIZE: a write past it fails with EFBIG, as a full disk fails with ENOSPC)."""
    path = tmp_path / f"config-{len(os.listdir(tmp_path))}.json"
    path.write_text(json.dumps(config))

    def limit() -> None:
        if limit_file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    data = payload.encode() if isinstance(payload, str) else payload
    if limit_file_size is None and not subprocess_run:  # in this process (conftest's run_cli)
        result = run_cli(["--config", str(path)], stdin=data, cwd=tmp_path, timeout=timeout)
        return completed(result, text=False)
    return subprocess.run(
        [sys.executable, "-m", "target_everflow", "--config", str(path)],
        input=data,
        capture_output=True,
        timeout=timeout,
        cwd=tmp_path,
        preexec_fn=limit,
    )


def text_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode("utf-8", "replace")


def states(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def dead_letter_lines(path: Path) -> list[str]:
    """The dead-letter file's lines as text (a 980-deep line cannot be parsed in a test)."""
    content = path.read_text(encoding="utf-8")
    assert content.endswith("\n")  # complete lines only
    return content[:-1].split("\n")


# --- 5: a deeply nested record ------------------------------------------------------------------


def test_a_record_nested_980_levels_is_dead_lettered_and_the_run_goes_on(
    base_config: dict, tmp_path: Path
) -> None:
    """The issue's repro, live through the CLI: the good records around it are delivered, the
    deep one is in the dead-letter file whole, the summary counts it, exit 0."""
    payload = "\n".join([
        *singer_lines(STREAM, [track(1)]), deep_record_line(), record_line(track(3)),
        json.dumps({"type": "STATE", "value": {"upto": 3}}),
    ]) + "\n"  # fmt: skip
    with Receiver() as rx:
        proc = cli(
            {**base_config, "postback_url": rx.url, **DEAD_LETTERS_ON_PURPOSE},
            payload,
            tmp_path,
            subprocess_run=True,  # the recursion limit of a process of its own
        )
        sent = sorted(r.transaction_id for r in rx.requests)
    stderr = text_of(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "recursion" not in stderr
    assert sent == ["tx-1", "tx-3"]
    assert states(proc) == [{"upto": 3}]
    schema_line, line = dead_letter_lines(Path(base_config["dead_letter_path"]))
    assert json.loads(schema_line)["type"] == "SCHEMA"
    assert line.startswith('{"type":"RECORD","stream":"orders","record":{"type":"track"')
    assert '"messageId":"mob-0"' in line and '"reason":"missing_required_field"' in line
    assert nested(DEPTH) in line  # the record is kept whole, not a stand-in
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert (summary["delivered"], summary["dead_lettered"]) == (2, {"missing_required_field": 1})
    assert "Dead-lettered a record of stream orders (message id mob-0)" in stderr


def test_the_deep_dead_letter_replays(tmp_path: Path) -> None:
    """The dead-letter line of a deep record is read back by the target (a Singer stream)."""
    first = tmp_path / "first"
    first.mkdir()
    payload = (
        "\n".join([*singer_lines(STREAM, [track(1)]), deep_record_line(), record_line(track(3))])
        + "\n"
    )
    proc = cli(dry(first), payload, first, subprocess_run=True)  # (as above)
    assert proc.returncode == 0, text_of(proc)[-3000:]
    assert {p["message_id"] for p in read_jsonl(first / "dry_run.jsonl")} == {"msg-1", "msg-3"}
    replay = tmp_path / "replay"
    replay.mkdir()
    dead = (first / "state" / "dead_letter.jsonl").read_bytes()
    proc = cli(dry(replay), dead, replay, subprocess_run=True)
    assert proc.returncode == 0, text_of(proc)[-3000:]
    (line,) = dead_letter_lines(replay / "state" / "dead_letter.jsonl")[1:]
    assert nested(DEPTH) in line and '"messageId":"mob-0"' in line


def test_dumps_writes_any_depth() -> None:
    """Deeper than the encoder's recursion allows: the same JSON, written without recursion."""
    value: t.Any = [Decimal("1.50"), float("nan"), "\ud800"]
    for _ in range(5000):
        value = {"a": value, "n": None}
    text = dumps(value)
    assert text == '{"a":' * 5000 + '[1.50,null,"\ud800"]' + ',"n":null}' * 5000
    assert dumps({"a": [1, {"b": True}]}) == '{"a":[1,{"b":true}]}'


class _Unprintable:
    def __str__(self) -> str:
        raise ValueError("no text for this one")


def test_a_record_that_cannot_be_written_is_kept_as_a_stand_in(tmp_path: Path) -> None:
    """What no JSON can hold (only a programmatic caller can hand it over) is dead-lettered as a
    stand-in that says why, with its message id; the file takes the next record as usual."""
    letters = DeadLetters(tmp_path / "dl.jsonl", lambda _stream: None)
    letters.write(
        STREAM,
        {"messageId": "odd-1", "properties": {"x": _Unprintable()}},
        "rejected",
        "HTTP 204",
        message_id="odd-1",
    )  # (the id read once at the door; the writer no longer reads the record)
    letters.write(STREAM, track(2), "rejected", "HTTP 204")
    letters.close()
    first, second = dead_letter_records(tmp_path / "dl.jsonl")
    assert first["record"]["messageId"] == "odd-1"
    assert "cannot be written as JSON" in first["record"][UNWRITABLE]
    assert (first["reason"], second["record"]["messageId"], letters.count) == (
        "rejected",
        "msg-2",
        2,
    )


# --- 8: memory and the summary with many distinct event names -----------------------------------


def _many_names(path: Path, distinct: int) -> None:
    """``distinct`` unmapped event names once each, ten mapped conversions, a frequent unmapped
    name (one record in a hundred), and a page call, as a Singer stream file."""
    with path.open("w") as out:
        out.write(singer_lines(STREAM, [])[0] + "\n")
        for i in range(distinct):
            out.write(
                record_line({"type": "track", "event": f"Event {i}", "messageId": f"e-{i}"}) + "\n"
            )
            if i % 100 == 0:
                out.write(
                    record_line(
                        {"type": "track", "event": "Product Viewed", "messageId": f"pv-{i}"}
                    )
                    + "\n"
                )
            if i % (distinct // 10) == 0:
                out.write(record_line(track(i)) + "\n")
        out.write(record_line({"type": "page", "messageId": "page-1"}) + "\n")


def _dry_run_peak_rss(tmp_path: Path, distinct: int) -> tuple[float, dict, list[str]]:
    """A dry run over ``_many_names``: its peak RSS in MB (wait4), summary and stderr lines."""
    tmp_path.mkdir()
    _many_names(tmp_path / "in.singer", distinct)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dry(tmp_path)))
    with (tmp_path / "in.singer").open("rb") as stdin, (tmp_path / "stderr.log").open("wb") as err:
        # through the launcher: a child started straight from pytest reports pytest's own peak
        rss_path = tmp_path / "maxrss"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                LAUNCHER,
                str(rss_path),
                "-m",
                "target_everflow",
                "--config",
                str(config),
            ],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp_path,
        )
        code = proc.wait(600)
    lines = (tmp_path / "stderr.log").read_text(errors="replace").splitlines()
    assert code == 0, "\n".join(lines[-30:])
    peak_mb = int(rss_path.read_text()) / 1024
    return peak_mb, json.loads((tmp_path / "summary.json").read_text()), lines


def test_memory_stays_flat_with_distinct_event_names(tmp_path: Path) -> None:
    """200,000 distinct event names take no more memory than 20,000; the summary keeps the
    mapped event, the most frequent other names (at most 50) and an "(other events)" row."""
    small_rss, _, _ = _dry_run_peak_rss(tmp_path / "small", 20_000)
    rss, summary, lines = _dry_run_peak_rss(tmp_path / "large", 200_000)
    assert rss < 200, f"peak RSS {rss:.0f} MB"
    assert rss - small_rss < 30, (
        f"peak RSS {small_rss:.0f} MB -> {rss:.0f} MB: it grows with the names"
    )
    rows = summary["streams"][STREAM]
    assert rows["Order Completed"][DELIVERED] == 10  # the mapped event keeps its row
    assert rows["Product Viewed"][SKIPPED] == {
        UNMAPPED_EVENT: 2_000
    }  # the most frequent other name
    assert rows["(page)"][SKIPPED] == {"not_track": 1}
    assert len(rows) <= 1 + MAX_OTHER_EVENTS + 1
    assert sum(rows[OTHER_EVENTS][SKIPPED].values()) > 199_000
    outcomes = sum(
        row[DELIVERED] + sum(row[SKIPPED].values()) + sum(row[DEAD_LETTER].values())
        for row in rows.values()
    )
    assert outcomes == summary["records_read"] == 200_000 + 2_000 + 10 + 1
    summary_lines = [
        line for line in lines if f"|   {STREAM} / " in line
    ]  # one per row, bounded too
    assert len(summary_lines) == len(rows)


def test_the_summary_keeps_mapped_rows_and_the_most_frequent_other_names() -> None:
    mapped = {"Order Completed": "Order Completed", "order_completed": "order_completed",
              "ORDER COMPLETED": "Order Completed"}  # fmt: skip
    summary = RunSummary(mapped.get)
    for i in range(30_000):  # each name once: followed a while, then folded into OTHER_EVENTS
        summary.count(STREAM, f"Event {i}", SKIPPED, UNMAPPED_EVENT)
        if i % 100 == 0:
            summary.count(STREAM, "Product Viewed", SKIPPED, UNMAPPED_EVENT)
            summary.count(STREAM, "ORDER COMPLETED", DELIVERED)
            summary.count(STREAM, "order_completed", DELIVERED)
    rows = summary.as_dict()["streams"][STREAM]
    assert rows["Product Viewed"][SKIPPED] == {UNMAPPED_EVENT: 300}
    assert rows["Order Completed"][DELIVERED] == rows["order_completed"][DELIVERED] == 300
    assert len(rows) == 2 + MAX_OTHER_EVENTS + 1
    assert sum(sum(r[SKIPPED].values()) + r[DELIVERED] for r in rows.values()) == 30_000 + 900
    assert summary.totals() == {DELIVERED: 600, SKIPPED: 30_300, DEAD_LETTER: 0}
    assert len(summary._others) <= 2000  # what memory holds stays bounded
    assert list(rows)[-1] == OTHER_EVENTS
    assert len(summary.lines()) == 1 + len(rows)


# --- 9: outputs ------------------------------------------------------------------------------


def _assert_one_line_exit_1(proc: subprocess.CompletedProcess, setting: str) -> None:
    stderr = text_of(proc)
    assert proc.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if f"Setting '{setting}'" in line]
    assert "ERROR" in line and "cannot write" in line
    assert proc.stdout == b""  # nothing read, no STATE


def test_a_summary_path_that_cannot_be_written_fails_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    config = dry(tmp_path, summary_path=str(tmp_path / "a-file" / "summary.json"))
    proc = cli(
        config, "\n".join(singer_lines(STREAM, [track(1)], state={"upto": 1})) + "\n", tmp_path
    )
    _assert_one_line_exit_1(proc, "summary_path")
    assert not (tmp_path / "dry_run.jsonl").exists()


def test_a_dry_run_output_that_is_a_directory_fails_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    config = dry(tmp_path, dry_run_output=str(tmp_path / "out"))
    proc = cli(
        config, "\n".join(singer_lines(STREAM, [track(1)], state={"upto": 1})) + "\n", tmp_path
    )
    _assert_one_line_exit_1(proc, "dry_run_output")


def _fills_the_dead_letter_file() -> str:
    """A good record and its STATE, 30 dead letters of ~30 kB each, a good record and a STATE."""
    lines = singer_lines(STREAM, [track(1)], state={"upto": 1})
    lines += [record_line(mobile_without_ip(i, note="x" * 30_000)) for i in range(30)]
    lines += [record_line(track(2)), json.dumps({"type": "STATE", "value": {"upto": 2}})]
    return "\n".join(lines) + "\n"


def test_a_dead_letter_file_that_fills_up_stops_the_run_counting_what_was_written(
    tmp_path: Path,
) -> None:
    """No file may grow past 300 kB: the dead-letter file fills up after 9 of the 30 dead
    letters, the 10th written part-way. The run stops (exit 7, one line), the torn line is cut
    off, and the log, the summary and the file agree on what was kept."""
    proc = cli(dry(tmp_path), _fills_the_dead_letter_file(), tmp_path, limit_file_size=300_000)
    stderr = text_of(proc)
    assert proc.returncode == EXIT_OUTPUT, stderr[-3000:]
    assert "Traceback" not in stderr
    (error,) = [line for line in stderr.splitlines() if "ERROR" in line]
    assert "Cannot write the dead-letter file" in error and "File too large" in error
    lines = dead_letter_lines(tmp_path / "state" / "dead_letter.jsonl")  # complete lines only
    kept = [json.loads(line) for line in lines if json.loads(line)["type"] == "RECORD"]
    assert 0 < len(kept) < 30
    assert [k["record"]["messageId"] for k in kept] == [f"mob-{i}" for i in range(len(kept))]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dead_lettered"] == {"missing_required_field": len(kept)}
    assert f"{records_kept(len(kept))} in" in stderr
    assert f"Stopping: {records_kept(len(kept))} in it" in error
    assert states(proc) == []  # no STATE covers a record without its outcome
    assert summary["delivered"] == 0 and summary["records_read"] == 1 + len(kept) + 1


def test_a_full_disk_under_the_dead_letter_file_stops_the_run(tmp_path: Path) -> None:
    """/dev/full: every write fails with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    proc = cli(dry(tmp_path, dead_letter_path="/dev/full"), _fills_the_dead_letter_file(), tmp_path)
    stderr = text_of(proc)
    assert proc.returncode == EXIT_OUTPUT, stderr[-3000:]
    assert "Traceback" not in stderr and "No space left on device" in stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dead_lettered"] == {} and states(proc) == []


def test_a_dry_run_output_that_fills_up_stops_the_run(tmp_path: Path) -> None:
    """The planned postbacks' file on a full disk: one line, exit 7, no traceback, no STATE."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    lines = singer_lines(STREAM, [track(i) for i in range(1, 4)], state={"upto": 3})
    proc = cli(dry(tmp_path, dry_run_output="/dev/full"), "\n".join(lines) + "\n", tmp_path)
    stderr = text_of(proc)
    assert proc.returncode == EXIT_OUTPUT, stderr[-3000:]
    assert "Traceback" not in stderr
    (error,) = [line for line in stderr.splitlines() if "ERROR" in line]
    assert "Cannot write the planned postbacks to /dev/full: No space left on device" in error
    assert states(proc) == []


def test_a_dead_letter_from_everflow_that_cannot_be_written_stops_delivery(
    base_config: dict, tmp_path: Path
) -> None:
    """A live run: Everflow rejects a conversion (204) and its dead letter cannot be written.
    The engine stops (exit 7, the dead-letter error named), nothing is counted that was not kept."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    config = {**base_config, "dead_letter_path": "/dev/full", "max_concurrency": 1}
    lines = singer_lines(STREAM, [track(i) for i in range(1, 6)], state={"upto": 5})
    with Receiver(script=Receiver.per_transaction({"tx-2": [Answer.no_content()]})) as rx:
        result = run_target({**config, "postback_url": rx.url}, lines, tmp_path)
    assert result.code == EXIT_OUTPUT, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Cannot write the dead-letter file /dev/full: No space left on device" in result.stderr
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert summary["dead_lettered"] == {} and result.states == []


def test_a_summary_that_cannot_be_written_at_the_end_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After the last STATE nothing fails the run: a disk that filled since start-up is a warning."""
    real_write_text = Path.write_text

    def write_text(self: Path, *args: t.Any, **kwargs: t.Any) -> int:
        if self.name == "summary.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    code, _ = run_in_process(dry(tmp_path), singer_lines(STREAM, [track(1)], state={"upto": 1}))
    assert code == 0
    (warning,) = [r for r in caplog.records if "Could not write the run summary" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "No space left on device" in warning.getMessage()
    assert [p["message_id"] for p in read_jsonl(tmp_path / "dry_run.jsonl")] == ["msg-1"]


class _SignalingStream(io.StringIO):
    """A log stream that sends this process SIGTERM while it writes a message starting with
    ``prefix``: the signal arrives inside ``StreamHandler.emit``, as it does when a real
    SIGTERM lands while the main thread logs."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix, self.sent = prefix, False

    def write(self, text: str) -> int:
        if not self.sent and text.startswith(self.prefix):
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return super().write(text)


def _run_with_signal_on(
    prefix: str, config: dict, lines: list[str], capsys: pytest.CaptureFixture
) -> tuple[int, str]:
    stream = _SignalingStream(prefix)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("target-everflow")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        code, _ = run_in_process(config, lines)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert stream.sent
    return code, capsys.readouterr().err


def test_sigterm_while_the_final_summary_is_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """No "--- Logging error ---": the summary is logged and written whole, the signal is
    reported after it, and the exit code says the process was stopped by it."""
    config = dry(tmp_path)
    code, err = _run_with_signal_on(
        "Run summary:", config, singer_lines(STREAM, [track(1)], state={"upto": 1}), capsys
    )
    assert "Logging error" not in err and "Traceback" not in err
    assert code == 128 + signal.SIGTERM
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("  orders / Order Completed: 1 planned") for m in messages
    )  # the rest of it
    assert any("Received signal 15 while finishing" in m for m in messages)
    assert json.loads(Path(config["summary_path"]).read_text())["delivered"] == 1


def test_sigterm_while_a_warning_is_logged_stops_before_the_next_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A signal that arrives while a dead letter's warning is logged cannot stop the main
    thread there; the reader stops before the next line (not, as before, never)."""
    lines = singer_lines(STREAM, [track(1), mobile_without_ip(2), track(3)], state={"upto": 3})
    code, err = _run_with_signal_on("Dead-lettered a record", dry(tmp_path), lines, capsys)
    assert "Logging error" not in err and "Traceback" not in err
    assert code == 128 + signal.SIGTERM
    assert read_jsonl(tmp_path / "dry_run.jsonl") == []  # msg-3 never read, msg-1 not settled


# --- 10: log injection -----------------------------------------------------------------------

FORGED = "2026-01-01 00:00:00,000 | ERROR    | target-everflow                | FORGED"


def test_a_value_in_a_record_cannot_forge_a_log_line(tmp_path: Path) -> None:
    """A messageId, an event name and a stream name holding a newline and a fake log prefix:
    each stays escaped inside its own log line."""
    forged = f"id-1\n{FORGED} message id"
    odd_stream = f"orders\n{FORGED} stream"
    records = [
        {**mobile_without_ip(1), "messageId": forged},  # dead-lettered: logged with its message id
        {**track(2, orderId="ORD-2"), "messageId": f"id-2\r\n{FORGED} dropped"},  # a dropped field
        {**track(3), "event": f"Odd\n{FORGED} event"},  # in the summary
    ]
    lines = [*singer_lines(STREAM, records), *singer_lines(odd_stream, [mobile_without_ip(4)])]
    proc = cli(dry(tmp_path), "\n".join(lines) + "\n", tmp_path)
    stderr = text_of(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert not [
        line for line in stderr.splitlines() if line.startswith(FORGED[:10]) and "FORGED" in line
    ]
    assert "FORGED" in stderr and "\\n2026-01-01" in stderr  # escaped, not left out
    assert "Dead-lettered a record of stream orders (message id 'id-1\\n2026-01-01" in stderr


def test_every_log_record_is_one_line(capsys: pytest.CaptureFixture) -> None:
    """The backstop under the call sites: whatever a message is built from, it stays one line;
    a traceback is still printed as one."""
    escape_log_records()
    logger = logging.getLogger(f"target-everflow.\n{FORGED} logger")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s | %(name)s | %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("In doubt: transaction %s", f"tx\n{FORGED}\x1b[2K\u2028")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed: %s", "a\rb")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert not [line for line in err.splitlines() if line.startswith(FORGED[:10])]
    assert "In doubt: transaction tx\\n2026-01-01" in err and "\\x1b[2K\\u2028" in err
    assert "failed: a\\rb" in err and "Traceback (most recent call last)" in err


# --- 11: postback_url -------------------------------------------------------------------------

REFUSED_URLS = [
    ("fragment_empty", "https://track.example.com/#", "fragment"),
    ("fragment", "https://track.example.com/postback#section", "fragment"),
    ("userinfo_empty", "https://@track.example.com/", "credentials"),
    ("userinfo", f"https://user:{SECRET_TOKEN}@track.example.com/", "credentials"),
    ("query_nid", "https://track.example.com/?nid=5", "'nid'"),
    (
        "query_token",
        f"https://track.example.com/?verification_token={SECRET_TOKEN}",
        "'verification_token'",
    ),
    (
        "query_field_any_case",
        "https://track.example.com/?src=x&Transaction_ID=tx",
        "'transaction_id'",
    ),
    ("query_encoded_name", "https://track.example.com/?%61mount=5", "'amount'"),
    ("host_not_ascii", "https://trackä.example.com/", "ASCII"),
    ("port_out_of_range", "https://track.example.com:99999/", "not a valid URL"),
    ("port_not_a_number", f"https://track.example.com:{SECRET_TOKEN}/", "its port is not a number"),
]


@pytest.mark.parametrize(("case", "url", "says"), REFUSED_URLS, ids=[c[0] for c in REFUSED_URLS])
def test_postback_url_refused_at_config_time(
    case: str, url: str, says: str, tmp_path: Path
) -> None:
    config = {**config_under(tmp_path), "postback_url": url, "verification_token": SECRET_TOKEN}
    proc = cli(
        config, "\n".join(singer_lines(STREAM, [track(1)], state={"upto": 1})) + "\n", tmp_path
    )
    stderr = text_of(proc)
    assert proc.returncode == 1, (case, stderr[-3000:])
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if "Setting 'postback_url'" in line]
    assert says in line, line
    assert SECRET_TOKEN not in stderr and SECRET_TOKEN not in proc.stdout.decode()
    assert proc.stdout == b"" and not Path(config["dead_letter_path"]).parent.exists()


def test_a_non_ascii_path_in_postback_url_is_percent_encoded(
    base_config: dict, tmp_path: Path
) -> None:
    """Sent as UTF-8 percent-encoding (it used to fail every postback as a network error); a
    query string of the user's own that does not collide is kept."""
    with Receiver() as rx:
        url = f"{rx.url}pöstback/ä b?source=ségment"
        result = run_target(
            {**base_config, "postback_url": url}, singer_lines(STREAM, [track(1)]), tmp_path
        )
        requests = rx.requests
    assert result.code == 0, result.stderr[-3000:]
    (request,) = requests
    assert request.path == "/p%C3%B6stback/%C3%A4%20b"
    assert parse_qsl(request.raw_query)[:2] == [("source", "ségment"), ("nid", "1")]


# --- 11: a Singer message that names a key twice ------------------------------------------------


def _read(lines: list[str | bytes]) -> list[dict]:
    reader = SegmentReader()
    seen: list[dict] = []
    callbacks = {
        kind: seen.append for kind in ("RECORD", "SCHEMA", "STATE", "ACTIVATE_VERSION", "BATCH")
    }
    reader.process_lines(
        io.StringIO("".join(x if isinstance(x, str) else x.decode() for x in lines)), callbacks
    )  # type: ignore[arg-type]
    return seen


@pytest.mark.parametrize(
    "line",
    [
        '{"type": "STATE", "value": {"upto": 9}, "type": "RECORD", "stream": "orders", "record": {}}\n',
        '{"type":"RECORD","type":"RECORD","stream":"orders","record":{}}\n',
        '{"type":"RECORD","stream":"orders","record":{},"record":{"type":"track"}}\n',
        '{"typ\\u0065":"STATE","type":"RECORD","stream":"orders","record":{}}\n',  # spelt differently
        '{ "type" : "RECORD" ,\t"stream":"orders", "record":{}, "stream":"other"}\r\n',  # unusual spacing
        '{"type":"STATE","value":NaN,"type":"STATE","value":1}\n',  # (the lenient reader's path)
    ],
    ids=[
        "type_state_then_record",
        "type_twice_same",
        "record_twice",
        "escaped_key",
        "odd_spacing",
        "lenient",
    ],
)
def test_reader_refuses_a_message_that_names_a_key_twice(line: str) -> None:
    from target_everflow.errors import InputError

    with pytest.raises(
        InputError,
        match=r"at line 1: the message has the key '(type|record|stream|value)' more than once",
    ):
        _read([line])


def test_reader_reads_keys_named_like_message_keys_inside_a_record() -> None:
    """The record's own keys ("type": "track") are the record's: only the message's keys count."""
    raw = {"type": "track", "stream": "x", "record": {"type": "y"}, "properties": {"type": "z"}}
    lines = [
        json.dumps({"type": "RECORD", "stream": "orders", "record": raw}) + "\n",
        json.dumps({"type": "RECORD", "stream": "orders", "record": raw}, separators=(",", ":"))
        + "\n",
        '{ "type" : "RECORD", "stream" : "orders", "record" : {"type": "track", "type": "page"} }\n',
    ]
    messages = _read(lines)
    assert [m["record"] for m in messages] == [
        raw,
        raw,
        {"type": "page"},
    ]  # (inside a record: the last)


def test_records_kept_says_one_record() -> None:
    assert records_kept(1) == "1 record was kept"
    assert records_kept(2) == "2 records were kept"
    assert records_kept(0) == "0 records were kept"
