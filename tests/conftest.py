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
import warnings
from pathlib import Path

import pytest

from target_everflow import masking
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
    if FIGURES and not hasattr(terminalreporter.config, "workerinput"):
        terminalreporter.section("figures", sep="-")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: t.Any, error: t.Any) -> None:
    """(pytest-xdist, in the controller) a worker's figures, shown at the end like ours."""
    FIGURES.extend(getattr(node, "workeroutput", {}).get("figures", []))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (--dist loadgroup) the Meltano pipelines run on one worker, one after
    another: they share the project's .meltano/ directory."""
    for item in items:
        if "e2e" in item.path.relative_to(REPO).parts[:2]:
            item.add_marker(pytest.mark.xdist_group("meltano"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI every test must run: a skip (missing server, missing tool) fails the run.

    (Under pytest-xdist this runs in each worker too: a worker hands its figures to the
    controller, whose reporter sees every worker's skips.)"""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["figures"] = list(FIGURES)
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


SUBPROCESS_ENV = "TARGET_EVERFLOW_TEST_SUBPROCESS"
"""Set (to anything) to run every CLI of the tests in a subprocess, as before in-process runs."""


def run_cli(
    args: t.Sequence[str],
    *,
    stdin: str | bytes = "",
    cwd: Path,
    env: dict | None = None,
    timeout: float = 120,
    subprocess_run: bool = False,
) -> RunResult:
    """``target-everflow <args>``: its exit code, stdout and stderr.

    In this process by default (no interpreter start, no import of the SDK: most of a CLI
    test's time), as :func:`run_in_process_cli` describes; in a subprocess when
    ``subprocess_run`` (a test of what only a process shows: signals, pipes, hangs, memory,
    start-up), when called from a thread other than the main one (runs side by side), or when
    ``TARGET_EVERFLOW_TEST_SUBPROCESS`` is set.
    """
    # (a run from another thread is concurrent with this one: only processes keep them apart)
    if subprocess_run or os.environ.get(SUBPROCESS_ENV) or not _main_thread():
        proc = subprocess.run(
            [sys.executable, "-m", "target_everflow", *args],
            capture_output=True,
            timeout=timeout,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            **(
                {"input": stdin.encode() if isinstance(stdin, str) else stdin}
                if stdin
                else {"stdin": subprocess.DEVNULL}
            ),
        )
        return RunResult(proc.returncode, *(_text(b) for b in (proc.stdout, proc.stderr)))
    return run_in_process_cli(args, stdin=stdin, cwd=cwd, env=env)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _process_state_kept() -> t.Iterator[None]:
    """Whatever a CLI run changes in the process, put back afterwards: signal handlers, the
    logging setup (root handlers, logger levels, the record factory), the garbage collector's
    policy, the working directory, the environment, sys.argv."""
    import gc
    import logging

    signals = {
        sig: signal.getsignal(sig)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGALRM)
    }
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    logger_state = {
        lg: (list(lg.handlers), lg.level, lg.propagate, lg.disabled, list(lg.filters))
        for lg in loggers
    }
    factory = logging.getLogRecordFactory()
    disable = logging.root.manager.disable
    thresholds = gc.get_threshold()
    cwd = os.getcwd()
    environ = dict(os.environ)
    argv = list(sys.argv)
    protected = masking._protected  # the secrets a run registers (masking.protect) are its own
    try:
        yield
    finally:
        masking._protected = protected
        sys.argv[:] = argv
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        logging.setLogRecordFactory(factory)
        logging.disable(disable)
        for lg in [logging.getLogger()] + [
            lg
            for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger)
        ]:
            if lg in logger_state:
                handlers, level, propagate, disabled, filters = logger_state[lg]
            else:  # a logger the run made: as a new one is
                handlers, level, propagate, disabled, filters = [], logging.NOTSET, True, False, []
            for handler in lg.handlers:
                if handler not in handlers:
                    with contextlib.suppress(Exception):
                        handler.flush()
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
            lg.filters[:] = filters
        for sig, handler in signals.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _text(output: bytes) -> str:
    """A process's output as text; bytes that are not UTF-8 kept (``bytes_of`` gives them back)."""
    return output.decode("utf-8", "surrogateescape")


def bytes_of(text: str) -> bytes:
    """The bytes of an output :func:`run_cli` gave as text."""
    return text.encode("utf-8", "surrogateescape")


def run_in_process_cli(
    args: t.Sequence[str], *, stdin: str | bytes = "", cwd: Path, env: dict | None = None
) -> RunResult:
    """``target-everflow <args>`` run by its click command in this process, as the console
    script runs it: stdin (a regular file holding ``stdin``, as from ``< file``), stdout and stderr captured as bytes, the exit code from SystemExit, the
    working directory ``cwd``, ``env`` added to the environment. What the run changes in the
    process is put back (:func:`_process_state_kept`)."""
    import tempfile

    handle, name = tempfile.mkstemp(prefix="target-everflow-stdin-")
    stdin_path = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(stdin.encode() if isinstance(stdin, str) else stdin)
        code, out, err = _run_click(args, stdin_path, cwd, env)
    finally:
        stdin_path.unlink(missing_ok=True)
    return RunResult(code, out, err)


def _run_click(
    args: t.Sequence[str], stdin_path: Path, cwd: Path, env: dict | None
) -> tuple[int, str, str]:
    import logging
    import traceback

    from target_everflow.adapter.cli import cli
    from target_everflow.adapter.reader import SegmentReader

    out, err = (
        io.TextIOWrapper(
            io.BytesIO(), encoding="utf-8", errors=errors, newline="\n", write_through=True
        )
        for errors in ("strict", "backslashreplace")  # (as Python's own stdout and stderr)
    )
    saved = (sys.stdin, sys.stdout, sys.stderr, SegmentReader.default_input)
    code: t.Any = 0
    with (
        _process_state_kept(),
        warnings.catch_warnings(),
        open(stdin_path, encoding="utf-8", errors="surrogateescape") as source,
    ):
        # Python's own warning filters (pytest's are stricter), shown on the run's stderr
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
            warnings.simplefilter("ignore", category)
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
            err.write(warnings.formatwarning(message, category, filename, lineno, line))
        )
        # the logging of a fresh interpreter: no handler (pytest's are put back afterwards), so
        # what the run does not configure goes to logging.lastResort, on the run's stderr
        logging.getLogger().handlers[:] = []
        logging.getLogger().setLevel(logging.WARNING)
        os.chdir(cwd)
        os.environ.update(env or {})
        sys.argv[:] = ["target-everflow", *args]
        sys.stdin, sys.stdout, sys.stderr = source, out, err
        SegmentReader.default_input = source
        try:
            cli.main(list(args), prog_name="target-everflow")
        except SystemExit as exc:
            code = exc.code
        except Exception:  # what the interpreter does with an uncaught exception
            traceback.print_exc(file=err)
            code = 1
        finally:
            sys.stdin, sys.stdout, sys.stderr, SegmentReader.default_input = saved
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, exit 1
        err.write(f"{code}\n")
        code = 1
    return code, _text(out.buffer.getvalue()), _text(err.buffer.getvalue())


def completed(result: RunResult, *, text: bool = True) -> subprocess.CompletedProcess:
    """A :func:`run_cli` result as ``subprocess.run`` gives it (``text``: str, else bytes)."""
    if text:
        return subprocess.CompletedProcess([], result.code, result.stdout, result.stderr)
    return subprocess.CompletedProcess(
        [], result.code, bytes_of(result.stdout), bytes_of(result.stderr)
    )


def run_target(
    config: dict,
    lines: list[str],
    tmp_path: Path,
    *,
    timeout: float = 120,
    env: dict | None = None,
    args: t.Sequence[str] = (),
    subprocess_run: bool = False,
) -> RunResult:
    """Run the CLI as a pipeline would (in this process unless ``subprocess_run``, see
    :func:`run_cli`); return exit code and output."""
    config_path = tmp_path / f"config-{os.getpid()}-{len(os.listdir(tmp_path))}.json"
    config_path.write_text(json.dumps(config))
    return run_cli(
        ["--config", str(config_path), *args],
        stdin="\n".join(lines) + ("\n" if lines else ""),
        cwd=tmp_path,
        env=env,
        timeout=timeout,
        subprocess_run=subprocess_run,
    )


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
