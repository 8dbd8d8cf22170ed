"""Shared fixtures: configs, running the target in-process or as a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

from target_everflow.clock import CLOCK_ENV

REPO = Path(__file__).resolve().parents[1]
POSTGRES_ENV = "TARGET_EVERFLOW_TEST_POSTGRES_URL"
REQUIRE_ALL_ENV = "TARGET_EVERFLOW_REQUIRE_ALL_TESTS"

# Recognisable secrets: a test scans every output for them.
SECRET_TOKEN = "vt-SECRET-token-7f3a"
SECRET_API_KEY = "sk-SECRET-apikey-91c2"


TEST_CLOCK = "2026-12-01T00:00:00Z"
""""Now" for every test (``TARGET_EVERFLOW_CLOCK``): the tests' data carry fixed dates of
2025-2026, and no outcome may change as the calendar moves on (max_conversion_age_days)."""


@pytest.fixture(autouse=True)
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> str:
    """Pins the clock for in-process runs and for every subprocess started with this process's
    environment (the CLI, the benchmarks' target); a test about the clock sets its own."""
    monkeypatch.setenv(CLOCK_ENV, TEST_CLOCK)
    return TEST_CLOCK


def postgres_url() -> str:
    """The test PostgreSQL server, or skip with the reason (a laptop may have none)."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"{POSTGRES_ENV} is not set: no PostgreSQL server for this test (.ci/run sets it)"
        )
    return url


def pg_execute(sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on the test PostgreSQL server (autocommit); its rows, if any."""
    import psycopg2

    conn = psycopg2.connect(postgres_url())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def wait_for(pred: t.Callable[[], t.Any], timeout: float, step: float = 0.05) -> bool:
    """Poll ``pred`` until it is true (True) or ``timeout`` seconds passed (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


FIGURES: list[str] = []
"""Lines a test wants shown at the end of the run whatever ``-s`` says (the fault soak's figures)."""


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    if FIGURES:
        terminalreporter.section("figures", sep="-")
        for line in FIGURES:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI every test must run: a skip (missing server, missing tool) fails the run."""
    if not os.environ.get(REQUIRE_ALL_ENV):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            sys.stderr.write(f"SKIPPED (not allowed here): {report.nodeid}: {reason}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def singer_lines(
    stream: str,
    records: t.Iterable[dict],
    *,
    schema: dict | None = None,
    state: dict | None = None,
    key_properties: list[str] | None = None,
) -> list[str]:
    """A Singer stream: SCHEMA, the RECORDs, optionally a final STATE."""
    lines = [
        json.dumps(
            {
                "type": "SCHEMA",
                "stream": stream,
                "schema": schema
                or {"type": "object", "properties": {}, "additionalProperties": True},
                "key_properties": key_properties or [],
            }
        )
    ]
    lines += [json.dumps({"type": "RECORD", "stream": stream, "record": r}) for r in records]
    if state is not None:
        lines.append(json.dumps({"type": "STATE", "value": state}))
    return lines


class RunResult(t.NamedTuple):
    code: int
    stdout: str
    stderr: str

    @property
    def states(self) -> list[dict]:
        return [
            json.loads(line) for line in self.stdout.splitlines() if line.strip().startswith("{")
        ]


DEAD_LETTERS_ON_PURPOSE = {"max_dead_letter_ratio": 1}
"""Settings for a test whose run dead-letters on purpose and checks those outcomes with exit 0:
the ratio threshold off (by default a run dead-lettering over 5% exits 5). Tests of the
thresholds themselves set their own."""


def config_under(directory: Path) -> dict:
    """The tests' usual settings, every file the target writes under ``directory``."""
    return {
        "network_id": 1,
        "event_mapping": {"Order Completed": 0, "Subscription Started": 24},
        "dead_letter_path": str(directory / "state" / "dead_letter.jsonl"),
        "dry_run_output": str(directory / "dry_run.jsonl"),
        "summary_path": str(directory / "summary.json"),
        "progress_interval": 0,
    }


@pytest.fixture
def base_config(tmp_path: Path) -> dict:
    """A live config against nothing yet (tests set postback_url), all files under tmp_path."""
    return {**config_under(tmp_path), "request_timeout": 5}


def run_target(
    config: dict,
    lines: list[str],
    tmp_path: Path,
    *,
    timeout: float = 120,
    env: dict | None = None,
    args: t.Sequence[str] = (),
) -> RunResult:
    """Run the installed CLI in a subprocess, as a pipeline would; return exit code and output."""
    config_path = tmp_path / f"config-{os.getpid()}-{len(os.listdir(tmp_path))}.json"
    config_path.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "target_everflow", "--config", str(config_path), *args],
        input="\n".join(lines) + ("\n" if lines else ""),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )
    return RunResult(proc.returncode, proc.stdout, proc.stderr)


def run_in_process(config: dict, lines: list[str], capsys: t.Any = None) -> tuple[int, t.Any]:
    """Run the target in this process (fast); return (exit code, the target).

    The target installs SIGINT/SIGTERM handlers; pytest's own are put back afterwards.
    """
    from target_everflow.adapter.target import TargetEverflow

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        target = TargetEverflow(config=config)
        code = target.main(io.StringIO("\n".join(lines) + "\n"))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code, target


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    # split on "\n" only: str.splitlines() also splits inside a JSON string at U+2028 and the like
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
    ]


def dead_letter_records(path: Path) -> list[dict]:
    """The RECORD lines of a dead-letter file (its SCHEMA lines left out)."""
    return [line for line in read_jsonl(path) if line.get("type") == "RECORD"]


def track(
    i: int, *, event: str = "Order Completed", tid: str | None = "auto", **properties: t.Any
) -> dict:
    """A raw Segment track event, message id ``msg-<i>``, transaction id ``tx-<i>`` by default."""
    context: dict[str, t.Any] = {"ip": "203.0.113.7", "userAgent": "Mozilla/5.0 test"}
    if tid is not None:
        context["referrer"] = {"type": "everflow", "id": f"tx-{i}" if tid == "auto" else tid}
    return {
        "type": "track",
        "event": event,
        "messageId": f"msg-{i}",
        "timestamp": "2026-11-20T18:14:08.612Z",
        "context": context,
        "properties": {"orderId": 1000 + i, "total": 10 + i, **properties},
    }


# The child is started by a small launcher that forks it and reads its rusage: a process
# started straight from pytest inherits pytest's own peak RSS in ru_maxrss (Linux carries the
# high-water mark of the memory it replaced at exec), which after a few hundred tests is larger
# than the bound.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def stop(pid: int, within: float = 10.0) -> None:
    """SIGSTOP ``pid`` and wait until every one of its threads has stopped: kill() returns
    before the signal is delivered, and a thread still running could take a ledger lock after
    the caller checked that it holds none."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + within
    while True:
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError):
                states.append(stat.read_text().rpartition(")")[2].split()[0])
        if all(state in ("T", "t", "Z", "X") for state in states):
            return
        assert time.monotonic() < deadline, f"process {pid} did not stop within {within} s"
        time.sleep(0.005)
