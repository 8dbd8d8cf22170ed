"""Latency behind a streaming tap (issue 15, goal 3): a record is delivered at most
``max_batch_age_seconds`` after it was read, and the STATE after it emitted, even while the tap
sends nothing more; the input is waited on with a timeout, only complete lines are parsed, and
SIGTERM keeps its grace.

The targets here are subprocesses fed through a pipe that stays open, as a tap's output is.
Every wait has a generous deadline: these tests check *whether* something happens before the
end of input, never how fast.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest

from target_everflow.adapter.reader import SegmentReader
from tests.conftest import singer_lines, track
from tests.receiver import Receiver

DEADLINE = 30.0
"""Seconds a test waits for something that should happen within about a second."""


class StreamingTarget:
    """target-everflow in a subprocess whose standard input is a pipe the test writes to."""

    def __init__(self, config: dict, tmp_path: Path) -> None:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        self.stderr_path = tmp_path / "target.err"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "target_everflow", "--config", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=tmp_path,
        )
        self.states: list[dict] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                with self._seen:
                    self.states.append(json.loads(line))
                    self._seen.notify_all()

    def write(self, data: str | list[str]) -> None:
        """Write lines (each gets its newline) or raw text, and flush it to the target."""
        text = "".join(line + "\n" for line in data) if isinstance(data, list) else data
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait_for_state(self, state: dict, timeout: float = DEADLINE) -> bool:
        with self._seen:
            return self._seen.wait_for(lambda: state in self.states, timeout)

    def close_input(self, timeout: float = DEADLINE) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.wait(timeout)

    def wait(self, timeout: float = DEADLINE) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        self._stderr.close()
        return code

    @property
    def input_open(self) -> bool:
        return (
            self.proc.poll() is None and self.proc.stdin is not None and not self.proc.stdin.closed
        )

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._stderr.closed:
            self._stderr.close()


@pytest.fixture
def streaming(tmp_path: Path) -> t.Iterator[t.Callable[[dict], StreamingTarget]]:
    started: list[StreamingTarget] = []

    def start(config: dict) -> StreamingTarget:
        target = StreamingTarget(config, tmp_path)
        started.append(target)
        return target

    yield start
    for target in started:
        target.kill()


def record_line(i: int, stream: str = "orders") -> str:
    return json.dumps({"type": "RECORD", "stream": stream, "record": track(i)})


def state_line(upto: int) -> str:
    return json.dumps({"type": "STATE", "value": {"upto": upto}})


def schema_line(stream: str = "orders") -> str:
    return singer_lines(stream, [])[0]


def test_a_record_is_delivered_and_checkpointed_while_the_input_stays_open(
    base_config, streaming
) -> None:
    """The tap writes one record and its STATE, then nothing (its pipe stays open): the
    postback arrives and the STATE is emitted before the end of input; a second record later
    likewise; each is sent once, and end of input finds nothing left to send."""
    with Receiver() as rx:
        target = streaming({**base_config, "postback_url": rx.url, "max_batch_age_seconds": 1})
        target.write([schema_line(), record_line(0), state_line(0)])
        assert rx.wait_for(1, DEADLINE), "no postback while the input stayed open"
        assert target.input_open
        assert target.wait_for_state({"upto": 0}), (
            f"no STATE before the end of input: {target.log[-2000:]}"
        )
        assert target.input_open

        target.write([record_line(1), state_line(1)])
        assert rx.wait_for(2, DEADLINE), (
            "the second record was not delivered while the input stayed open"
        )
        assert target.wait_for_state({"upto": 1})
        assert target.input_open

        code = target.close_input()
        requests = rx.count_by_transaction()
    assert code == 0, target.log[-3000:]
    assert requests == {"tx-0": 1, "tx-1": 1}, "a record was sent twice (or not at all)"
    assert target.states == [{"upto": 0}, {"upto": 1}]
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert summary["records_read"] == 2 and summary["delivered"] == 2


def test_a_line_not_yet_ended_waits_for_its_newline_and_sigterm_keeps_its_grace(
    base_config, streaming
) -> None:
    """A line the tap has only half written is not parsed early (it would be 'cut off'), while
    the records before it are delivered by age; SIGTERM while the target waits for the rest of
    the line ends the run promptly, with the STATE already emitted and no broken-input error."""
    with Receiver() as rx:
        target = streaming({**base_config, "postback_url": rx.url, "max_batch_age_seconds": 1})
        target.write([schema_line(), record_line(0), state_line(0)])
        half = record_line(1)
        target.write(half[: len(half) // 2])  # no newline yet
        assert rx.wait_for(1, DEADLINE), "no postback while a line was half written"
        assert target.wait_for_state({"upto": 0})
        assert target.input_open, (
            f"the target stopped on a line not yet ended: {target.log[-2000:]}"
        )

        target.write(half[len(half) // 2 :] + "\n" + state_line(1) + "\n")
        assert rx.wait_for(2, DEADLINE), "the completed line was not delivered"
        assert target.wait_for_state({"upto": 1})

        target.write(record_line(2)[:30])  # again half a line, then the signal
        target.proc.send_signal(signal.SIGTERM)
        code = target.wait()
        requests = rx.count_by_transaction()
    log = target.log
    assert code == 128 + signal.SIGTERM, log[-3000:]
    assert "Stopped by signal 15" in log and "Traceback" not in log
    assert "broken" not in log, "the half-written line was parsed"
    assert requests == {"tx-0": 1, "tx-1": 1}
    assert target.states == [{"upto": 0}, {"upto": 1}]


def test_batch_full_age_and_end_of_input_each_deliver_once(base_config, streaming) -> None:
    """The three ways a batch is delivered side by side: full (at once), old (after the age,
    input still open), end of input (the rest). Nothing is sent twice and every STATE comes
    after the records it covers."""
    with Receiver() as rx:
        config = {
            **base_config,
            "postback_url": rx.url,
            "batch_size_rows": 3,
            "max_batch_age_seconds": 1,
        }
        target = streaming(config)
        # full: three records make a full batch, delivered at once
        target.write([schema_line(), *(record_line(i) for i in range(3)), state_line(2)])
        assert rx.wait_for(3, DEADLINE)
        assert target.wait_for_state({"upto": 2})
        # old: one record, delivered by age while the input is open
        target.write([record_line(3), state_line(3)])
        assert rx.wait_for(4, DEADLINE), (
            "a record in a batch that is not full waited for more input"
        )
        assert target.wait_for_state({"upto": 3})
        assert target.input_open
        # end of input: the last record goes when the input ends
        target.write([record_line(4), state_line(4)])
        code = target.close_input()
        requests = rx.count_by_transaction()
    assert code == 0, target.log[-3000:]
    assert requests == {f"tx-{i}": 1 for i in range(5)}
    assert target.states == [{"upto": 2}, {"upto": 3}, {"upto": 4}]


def test_reader_waits_on_a_pipe_with_a_timeout_and_parses_only_complete_lines() -> None:
    """The reader itself: while no input comes it calls ``due`` at least as often as ``due``
    asks; a line split across writes is handed on once, complete; a last line without a
    newline is read at end of input."""
    read_fd, write_fd = os.pipe()
    messages: list[tuple[float, dict]] = []
    calls: list[float] = []
    reader = SegmentReader()

    def due() -> float:
        calls.append(time.monotonic())
        return 0.05

    reader.due = due
    callbacks = {
        kind: (lambda m: messages.append((time.monotonic(), m)))
        for kind in ("SCHEMA", "RECORD", "STATE", "ACTIVATE_VERSION", "BATCH")
    }
    first = (schema_line() + "\n" + record_line(0)).encode()
    second = ("\n" + state_line(0)).encode()  # ends the record line; the STATE has no newline

    def tap() -> None:
        os.write(write_fd, first[:40])
        time.sleep(0.3)
        os.write(write_fd, first[40:])
        time.sleep(0.5)
        os.write(write_fd, second)
        os.close(write_fd)

    writer = threading.Thread(target=tap)
    with os.fdopen(read_fd, "r") as source:
        writer.start()
        started = time.monotonic()
        counts = reader.process_lines(source, callbacks)
    writer.join(DEADLINE)
    assert counts == {"SCHEMA": 1, "RECORD": 1, "STATE": 1}
    assert [m["type"] for _, m in messages] == ["SCHEMA", "RECORD", "STATE"]
    assert messages[1][1]["record"] == track(0)
    # The record's line ended only with the second write, some 0.8 s in: it was not parsed
    # before (the SCHEMA was, once its newline came with the first write's rest).
    assert messages[1][0] - started >= 0.7
    # While nothing came, the reader did not block: it asked `due` again and again.
    assert sum(1 for c in calls if started < c < messages[1][0]) >= 3


def test_reader_still_reads_files_and_in_memory_streams(tmp_path: Path) -> None:
    """A regular file and a StringIO are read straight through, ``due`` asked between blocks."""
    lines = singer_lines("orders", [track(i) for i in range(2500)], state={"upto": 2499})
    path = tmp_path / "input.singer"
    path.write_text("\n".join(lines))  # the last line without a newline
    for source in (io.StringIO("\n".join(lines)), path.open("r"), path.open("rb")):
        reader = SegmentReader()
        calls: list[float] = []
        reader.due = lambda: calls.append(1.0) or None  # noqa: B023
        got: list[dict] = []
        callbacks = {k: got.append for k in ("SCHEMA", "RECORD", "STATE")}
        with source:
            counts = reader.process_lines(source, callbacks)
        assert counts == {"SCHEMA": 1, "RECORD": 2500, "STATE": 1}, source
        assert got[-1] == {"type": "STATE", "value": {"upto": 2499}}
        assert len(calls) >= 3, source  # 2,502 lines: asked before each block of lines


@pytest.mark.parametrize("via", ["pipe", "file"])
def test_input_dash_reads_standard_input(base_config, tmp_path: Path, via: str) -> None:
    """``--input -`` (click hands over standard input wrapped) is read like standard input:
    from a pipe, waited on, and from a redirected file."""
    lines = singer_lines("orders", [track(0), track(1)], state={"upto": 1})
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**base_config, "dry_run": True}))
    command = [
        sys.executable,
        "-m",
        "target_everflow",
        "--config",
        str(config_path),
        "--input",
        "-",
    ]
    data = "\n".join(lines) + "\n"
    if via == "pipe":
        proc = subprocess.run(
            command, input=data, capture_output=True, text=True, timeout=DEADLINE * 4, cwd=tmp_path
        )
    else:
        source = tmp_path / "input.singer"
        source.write_text(data)
        with source.open("rb") as stdin:
            proc = subprocess.run(
                command,
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=DEADLINE * 4,
                cwd=tmp_path,
            )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [{"upto": 1}]
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert summary["records_read"] == 2 and summary["delivered"] == 2


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_max_batch_age_seconds_must_be_a_positive_number(
    base_config, tmp_path: Path, value: t.Any
) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(
        json.dumps({**base_config, "dry_run": True, "max_batch_age_seconds": value})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "target_everflow", "--config", str(config_path)],
        input="",
        capture_output=True,
        text=True,
        timeout=DEADLINE * 4,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Setting 'max_batch_age_seconds': must be" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_max_batch_age_seconds_defaults_to_the_schema_default() -> None:
    from target_everflow.settings import CONFIG_SCHEMA, Settings

    spec = CONFIG_SCHEMA["properties"]["max_batch_age_seconds"]
    assert spec["default"] == 5 and spec["title"] and spec["exclusiveMinimum"] == 0
    assert Settings.from_config({"dry_run": True}).max_batch_age_seconds == 5
    assert (
        Settings.from_config({"dry_run": True, "max_batch_age_seconds": 0.5}).max_batch_age_seconds
        == 0.5
    )
