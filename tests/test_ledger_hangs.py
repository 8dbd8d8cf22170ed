"""Issue 11, finding 3: a ledger that does not answer never hangs the run.

Every ledger connection has connect, lock and statement timeouts (``ledger_timeout``) and TCP
keepalives; every ledger call runs on the ledger's I/O thread and is waited for with a deadline,
so a ledger that does not answer fails the run with exit 4 and a line naming the wait, and
SIGTERM (handled on the main thread, which never blocks in libpq or in SQLite's busy wait) ends
the process within its grace. Faults: a TCP proxy that goes silent (no reset, everything
swallowed), a second connection holding a lock (PostgreSQL and SQLite).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
import uuid

import pytest

from target_everflow.ledger import open_ledger
from tests.conftest import config_under, pg_execute, postgres_url, singer_lines, track, wait_for
from tests.receiver import Receiver

GRACE = 2.0  # request_timeout 2 -> the stop grace is min(2, 10) s
MARGIN = 6.0  # "does not hang" margin on top of the grace (start-up, a loaded machine)


class BlackHoleProxy:
    """A TCP proxy from 127.0.0.1:<port> to ``upstream`` that can go silent: from then on it
    keeps every connection open and reads (so the kernel acknowledges) everything, in both
    directions, but forwards nothing. No reset, no FIN: what a dead NAT or a frozen peer looks
    like. New connections are accepted and connected upstream, and hear nothing either."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.silent = threading.Event()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def black_hole(self) -> None:
        self.silent.set()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                if self.silent.is_set():
                    continue  # a silent network does not pass a FIN on either
                break
            if self.silent.is_set():
                continue  # swallowed
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stopping.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> BlackHoleProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Target:
    """The target in a subprocess (its stderr in a file), to signal and time."""

    def __init__(self, tmp_path: pathlib.Path, config: dict, conversions: int) -> None:
        (tmp_path / "config.json").write_text(json.dumps(config))
        records = [track(i) for i in range(conversions)]
        (tmp_path / "input.singer").write_text("\n".join(singer_lines("orders", records)) + "\n")
        self.stderr_path = tmp_path / "stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "target_everflow", "--config", str(tmp_path / "config.json"),
                 "--input", str(tmp_path / "input.singer")],
                stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path,
            )  # fmt: skip

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float) -> tuple[int | None, float]:
        """(exit code or None if it is still running after ``timeout``, seconds waited)."""
        started = time.monotonic()
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def terminate(self) -> tuple[int | None, float]:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(GRACE + MARGIN)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _ended(target: Target, ending: str, code: int | None, waited: float, says: str) -> None:
    """It failed with exit 4 and a line naming the wait, or SIGTERM ended it within the grace."""
    stderr = target.stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    if ending == "ledger_timeout":
        assert code == 4, (code, waited, stderr[-3000:])
        assert says in stderr, stderr[-3000:]
    else:
        assert code == 128 + signal.SIGTERM, (code, waited, stderr[-3000:])
        assert waited <= GRACE + MARGIN


def _pg_params() -> dict[str, str]:
    import psycopg2.extensions

    params = psycopg2.extensions.parse_dsn(postgres_url())
    return {"user": params.get("user", "postgres"), "host": params.get("host", "127.0.0.1"),
            "port": params.get("port", "5432"), "dbname": params["dbname"]}  # fmt: skip


@pytest.fixture
def pg_table() -> t.Iterator[str]:
    table = f"thang_{uuid.uuid4().hex[:10]}"
    yield table
    pg_execute(f"DROP TABLE IF EXISTS {table}")


def _live_config(tmp_path: pathlib.Path, postback_url: str, **changes: t.Any) -> dict:
    return {**config_under(tmp_path), "postback_url": postback_url, "request_timeout": GRACE,
            "max_concurrency": 2, **changes}  # fmt: skip


# --- PostgreSQL: the connection goes silent -------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("ending", ["ledger_timeout", "sigterm"])
def test_a_silent_postgresql_connection_never_hangs_the_run(
    ending: str, tmp_path: pathlib.Path, pg_table: str
) -> None:
    """Mid-run, the network to PostgreSQL swallows everything. With ledger_timeout 3 the run
    fails with exit 4 and a line naming the wait; with the default (30 s), SIGTERM ends it within
    its grace all the same."""
    p = _pg_params()
    with BlackHoleProxy((p["host"], int(p["port"]))) as proxy, Receiver(latency=0.02) as rx:
        url = f"postgresql://{p['user']}@127.0.0.1:{proxy.port}/{p['dbname']}?table={pg_table}"
        changes = {"ledger_timeout": 3} if ending == "ledger_timeout" else {}
        target = Target(tmp_path, _live_config(tmp_path, rx.url, ledger_url=url, **changes), 3000)
        try:
            assert rx.wait_for(20, timeout=60), target.stderr[-2000:]
            proxy.black_hole()
            if ending == "ledger_timeout":
                code, waited = target.wait(3 + 5 + 30)
            else:
                time.sleep(1.0)  # the writer is stuck in a commit by now
                code, waited = target.terminate()
        finally:
            target.kill()
    _ended(target, ending, code, waited, "no answer within 8 s while trying to")
    assert "ledger_timeout is 3 s" in target.stderr or ending == "sigterm"
    assert "Stopped by signal 15" in target.stderr or ending == "ledger_timeout"


@pytest.mark.postgres
def test_a_postgresql_server_that_never_answers_the_connect_fails_with_exit_4(
    tmp_path: pathlib.Path,
) -> None:
    p = _pg_params()
    with BlackHoleProxy((p["host"], int(p["port"]))) as proxy:
        proxy.black_hole()
        url = f"postgresql://{p['user']}@127.0.0.1:{proxy.port}/{p['dbname']}"
        target = Target(tmp_path, _live_config(tmp_path, "https://track.example.com/", ledger_url=url,
                                               ledger_timeout=3), 1)  # fmt: skip
        try:
            code, waited = target.wait(60)
        finally:
            target.kill()
    assert code == 4, (code, target.stderr[-3000:])
    assert "cannot open the ledger" in target.stderr and "(connect_timeout)" in target.stderr, (
        target.stderr[-3000:]
    )


# --- PostgreSQL: a lock held by another connection -------------------------------------------------


LOCKS = {
    "access_exclusive": "LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE",
    # README's "delete a key to re-send it", typed in psql without COMMIT
    "uncommitted_delete": "DELETE FROM {t} WHERE delivery_key = 'm:msg-1'",
}


@contextlib.contextmanager
def _pg_lock(table: str, statement: str, tmp_path: pathlib.Path) -> t.Iterator[None]:
    open_ledger(f"{postgres_url()}{'&' if '?' in postgres_url() else '?'}table={table}",
                default_dir=tmp_path, lease_seconds=60, retention_days=400).close()  # fmt: skip
    import psycopg2

    holder = psycopg2.connect(postgres_url())  # a transaction left open
    try:
        holder.cursor().execute(statement.format(t=table))
        yield
    finally:
        holder.rollback()
        holder.close()


def _waiting_on_a_lock(app: str) -> bool:
    return bool(pg_execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                           " AND wait_event_type = 'Lock'", (app,))[0][0])  # fmt: skip


@pytest.mark.postgres
@pytest.mark.parametrize("lock", list(LOCKS))
def test_a_lock_held_elsewhere_fails_the_start_with_exit_4_naming_it(
    lock: str, tmp_path: pathlib.Path, pg_table: str
) -> None:
    base = postgres_url()
    url = f"{base}{'&' if '?' in base else '?'}table={pg_table}"
    with _pg_lock(pg_table, LOCKS[lock], tmp_path), Receiver() as rx:
        target = Target(
            tmp_path, _live_config(tmp_path, rx.url, ledger_url=url, ledger_timeout=3), 5
        )
        try:
            code, waited = target.wait(60)
        finally:
            target.kill()
        assert rx.requests == []
    stderr = target.stderr
    assert code == 4, (code, stderr[-3000:])
    assert "cannot open the ledger" in stderr, stderr[-3000:]
    assert (
        f"gave up after 3 s (lock_timeout) waiting for a lock on the ledger table {pg_table}"
        in stderr
    )
    assert "Traceback" not in stderr


@pytest.mark.postgres
def test_sigterm_while_waiting_for_a_postgresql_lock_ends_the_run_within_its_grace(
    tmp_path: pathlib.Path, pg_table: str
) -> None:
    base = postgres_url()
    app = f"hang-{uuid.uuid4().hex[:8]}"
    url = f"{base}{'&' if '?' in base else '?'}table={pg_table}&application_name={app}"
    with _pg_lock(pg_table, LOCKS["uncommitted_delete"], tmp_path):
        target = Target(
            tmp_path, _live_config(tmp_path, "https://track.example.com/", ledger_url=url), 5
        )
        try:
            assert wait_for(lambda: _waiting_on_a_lock(app), 60), target.stderr[-3000:]
            code, waited = target.terminate()
        finally:
            target.kill()
    _ended(target, "sigterm", code, waited, "")


# --- SQLite: another process holds the write lock --------------------------------------------------


@contextlib.contextmanager
def _sqlite_lock(path: pathlib.Path, tmp_path: pathlib.Path) -> t.Iterator[None]:
    open_ledger(
        f"sqlite:///{path}", default_dir=tmp_path, lease_seconds=60, retention_days=400
    ).close()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize("ending", ["ledger_timeout", "sigterm"])
def test_sqlite_busy_wait_never_hangs_the_run(ending: str, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ledger.db"
    with _sqlite_lock(path, tmp_path):
        changes = {"ledger_timeout": 2} if ending == "ledger_timeout" else {}
        target = Target(tmp_path, _live_config(tmp_path, "https://track.example.com/",
                                               ledger_url=f"sqlite:///{path}", **changes), 5)  # fmt: skip
        try:
            if ending == "ledger_timeout":
                code, waited = target.wait(60)
            else:
                assert wait_for(lambda: "Meltano SDK v" in target.stderr, 60)  # it is up
                time.sleep(1.0)  # in SQLite's busy wait by now (30 s by default)
                code, waited = target.terminate()
        finally:
            target.kill()
    _ended(target, ending, code, waited,
           "waited 2 s (ledger_timeout) for another process to release its lock on the SQLite file")  # fmt: skip


@pytest.mark.postgres
@pytest.mark.parametrize(
    "command", [["ledger", "status"], ["ledger", "in-doubt"], ["reconcile"], ["report"]]
)
def test_ledger_commands_wait_for_a_held_lock_at_most_ledger_timeout(
    command: list[str], tmp_path: pathlib.Path, pg_table: str
) -> None:
    """The commands open the ledger as a run does: under the configured ``ledger_timeout``
    (they used its default, 30 s, whatever the config said)."""
    base = postgres_url()
    url = f"{base}{'&' if '?' in base else '?'}table={pg_table}"
    config = {**config_under(tmp_path), "ledger_url": url, "ledger_timeout": 2,
              "postback_url": "http://127.0.0.1:9/", "api_key": "test-key",
              "api_url": "https://api.eflow.team/v1"}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with _pg_lock(pg_table, LOCKS["access_exclusive"], tmp_path):
        proc = subprocess.run(
            [sys.executable, "-m", "target_everflow", *command, "--config", str(path)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 4, (proc.returncode, proc.stderr[-3000:])
    assert (
        f"gave up after 2 s (lock_timeout) waiting for a lock on the ledger table {pg_table}"
        in (proc.stderr)
    ), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
