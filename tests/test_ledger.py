"""Tests of the idempotency ledger (target_everflow/ledger.py).

The behaviour tests run against SQLite and, when ``TARGET_EVERFLOW_TEST_POSTGRES_URL`` is set
(e.g. ``postgresql://postgres@127.0.0.1:5432/test``), against PostgreSQL too. Each PostgreSQL
test uses its own table (``?table=tel_<random>``) and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from target_everflow.ledger import (
    ClaimStatus,
    Ledger,
    LedgerError,
    NullLedger,
    PostgresLedger,
    SQLiteLedger,
    open_ledger,
    redact_url,
)
from tests.conftest import wait_for

PG_ENV = "TARGET_EVERFLOW_TEST_POSTGRES_URL"
REPO = pathlib.Path(__file__).resolve().parents[1]

C = ClaimStatus.CLAIMED
D = ClaimStatus.DELIVERED
H = ClaimStatus.HELD
I = ClaimStatus.TAKEN_OVER  # noqa: E741
B = ClaimStatus.BUSY


class Backend:
    """One ledger location plus raw SQL access to its table (to fake other owners' rows)."""

    def __init__(self, kind: str, url: str, tmp_path: pathlib.Path, table: str) -> None:
        self.kind = kind
        self.url = url
        self.tmp_path = tmp_path
        self.table = table
        self.opened: list[Ledger] = []

    def open(self, lease: float = 30.0, retention_days: int = 400, **kw: Any) -> Ledger:
        ledger = open_ledger(
            self.url,
            default_dir=self.tmp_path,
            lease_seconds=lease,
            retention_days=retention_days,
            **kw,
        )
        self.opened.append(ledger)
        return ledger

    def sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        sql = sql.format(t=self.table)
        if self.kind == "sqlite":
            lite = sqlite3.connect(self.tmp_path / "ledger.db", isolation_level=None)
            try:
                return lite.execute(sql, params).fetchall()
            finally:
                lite.close()
        import psycopg2

        pg = psycopg2.connect(os.environ[PG_ENV])
        pg.autocommit = True
        try:
            with pg.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        finally:
            pg.close()

    def fake_row(
        self,
        key: str,
        *,
        owner: str,
        status: str = "sending",  # a postback may have left: in doubt once stale
        lease_until: float | None = None,
        scope: str = "",
        updated_at: float | None = None,
    ) -> None:
        now = time.time()
        self.sql(
            "INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until,"
            " http_status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
            (key, status, owner, scope, lease_until, now, updated_at or now),
        )

    def lease_of(self, key: str) -> float:
        return float(self.sql("SELECT lease_until FROM {t} WHERE delivery_key = ?", (key,))[0][0])

    def owner_of(self, key: str) -> str:
        return str(self.sql("SELECT owner FROM {t} WHERE delivery_key = ?", (key,))[0][0])

    def break_writes(self) -> None:
        """Make every later 'delivered' write fail inside the database."""
        if self.kind == "sqlite":
            for event in ("INSERT", "UPDATE"):
                self.sql(
                    f"CREATE TRIGGER boom_{event.lower()} BEFORE {event} ON {{t}}"
                    " WHEN NEW.status = 'delivered'"
                    " BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END"
                )
        else:
            self.sql("ALTER TABLE {t} ADD CONSTRAINT boom CHECK (status <> 'delivered') NOT VALID")


def _pg_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV}=postgresql://user@host:port/db")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        be = Backend("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path, "everflow_ledger")
    else:
        base = _pg_url()
        table = f"tel_{uuid.uuid4().hex[:12]}"
        sep = "&" if "?" in base else "?"
        be = Backend("postgres", f"{base}{sep}table={table}", tmp_path, table)
    yield be
    for ledger in be.opened:
        with contextlib.suppress(LedgerError):
            ledger.close()
    if be.kind == "postgres":
        be.sql("DROP TABLE IF EXISTS {t}")
        be.sql("DROP TABLE IF EXISTS {t}_runs")  # the run history (tests/test_history.py)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _within(seconds: float, fn: Any) -> Any:
    """Run ``fn()`` and fail (instead of hanging the suite) if it does not return in time."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _wait_for(pred: Any, timeout: float = 2.0) -> bool:
    return wait_for(pred, timeout, step=0.005)


# ------------------------------------------------------------------------------------------
# Claims, marks, releases


def test_claim_mark_flush_is_seen_by_a_second_instance(backend: Backend) -> None:
    first = backend.open()
    assert first.claim(["k1", "k2", "k3"]) == {"k1": C, "k2": C, "k3": C}
    first.mark_delivered("k1", 200)
    first.mark_delivered("k2", 202)
    first.flush()
    assert backend.sql("SELECT http_status FROM {t} WHERE delivery_key = 'k2'") == [(202,)]
    first.release(["k3"])
    first.close()

    second = backend.open()
    assert second.claim(["k1", "k2", "k3", "k4"]) == {"k1": D, "k2": D, "k3": C, "k4": C}
    assert second.status("k1") == "delivered"
    assert second.status("k4") == "pending"
    assert second.status("nope") is None


def test_duplicates_in_one_claim_get_the_same_answer_in_input_order(backend: Backend) -> None:
    ledger = backend.open()
    assert ledger.claim([]) == {}
    got = ledger.claim(["b", "a", "b", "a", "c"])
    assert list(got) == ["b", "a", "c"]
    assert set(got.values()) == {C}
    assert backend.sql("SELECT count(*) FROM {t}") == [(3,)]
    with pytest.raises(TypeError):
        ledger.claim("abc")  # type: ignore[arg-type]


def test_release_makes_a_key_claimable_again_and_touches_only_our_pending_rows(
    backend: Backend,
) -> None:
    ours = backend.open()
    other = backend.open()
    assert ours.claim(["r1", "r2", "done"]) == {"r1": C, "r2": C, "done": C}
    ours.mark_delivered("done", 200)
    ours.flush()
    assert other.claim(["theirs"]) == {"theirs": C}

    ours.release(["r1", "r2", "done", "theirs", "unknown"])
    assert ours.status("r1") is None and ours.status("r2") is None
    assert ours.status("done") == "delivered"  # delivered rows are never released
    assert ours.status("theirs") == "pending"  # another owner's claim is untouched
    assert other.claim(["r1", "theirs"]) == {"r1": C, "theirs": B}


def test_a_live_other_owner_gets_busy_and_our_own_in_flight_claim_is_busy(
    backend: Backend,
) -> None:
    a = backend.open()
    b = backend.open()
    assert a.owner != b.owner
    assert a.claim(["x", "y"]) == {"x": C, "y": C}
    assert b.claim(["x", "y", "z"]) == {"x": B, "y": B, "z": C}
    # A second claim of a key we already hold (a send still in flight) must not send it twice.
    assert a.claim(["x"]) == {"x": B}
    a.mark_delivered("x", 200)
    a.flush()
    a.release(["y"])
    assert b.claim(["x", "y"]) == {"x": D, "y": C}


def test_owner_id_is_host_pid_random(backend: Backend) -> None:
    ledger = backend.open()
    host, pid, rnd = ledger.owner.rsplit(":", 2)
    assert host == socket.gethostname() and pid == str(os.getpid()) and rnd
    ledger.claim(["o"])
    assert backend.owner_of("o") == ledger.owner


# ------------------------------------------------------------------------------------------
# In doubt, leases, heartbeat


def test_expired_lease_of_another_host_is_taken_over_as_in_doubt(backend: Backend) -> None:
    ledger = backend.open()
    now = time.time()
    backend.fake_row("expired", owner="elsewhere:4242:dead", lease_until=now - 1)
    backend.fake_row("live", owner="elsewhere:4242:live", lease_until=now + 600)
    assert ledger.claim(["expired", "live"]) == {"expired": I, "live": B}
    assert backend.owner_of("expired") == ledger.owner
    assert backend.lease_of("expired") > now + 20
    # Taken over: a second process now sees it as busy, not in doubt again.
    assert backend.open().claim(["expired"]) == {"expired": B}
    # in_doubt=resend: the caller sends it and marks it delivered.
    ledger.mark_delivered("expired", 200)
    ledger.flush()
    assert ledger.claim(["expired"]) == {"expired": D}


def test_claim_of_a_dead_process_on_this_machine_is_taken_over_at_once(backend: Backend) -> None:
    ledger = backend.open()
    assert isinstance(ledger, (SQLiteLedger, PostgresLedger))
    host, scope = socket.gethostname(), ledger.scope
    future = time.time() + 600
    dead = _dead_pid()
    backend.fake_row("crashed", owner=f"{host}:{dead}:abcd", lease_until=future, scope=scope)
    backend.fake_row("alive", owner=f"{host}:{os.getppid()}:abcd", lease_until=future, scope=scope)
    # Same hostname but another PID namespace / boot (e.g. a host-network container): the pid
    # means nothing to us, so only the lease counts.
    backend.fake_row(
        "other-ns", owner=f"{host}:{dead}:abcd", lease_until=future, scope="other-boot|pid:[1]"
    )
    backend.fake_row("other-host", owner=f"not-{host}:{dead}:abcd", lease_until=future)
    assert ledger.claim(["crashed", "alive", "other-ns", "other-host"]) == {
        "crashed": I,
        "alive": B,
        "other-ns": B,
        "other-host": B,
    }


def test_stale_claim_that_was_never_sent_is_claimed_not_in_doubt(backend: Backend) -> None:
    ledger = backend.open()
    backend.fake_row("unsent", owner="elsewhere:1:x", status="pending", lease_until=time.time() - 5)
    backend.fake_row("sent", owner="elsewhere:1:x", status="sending", lease_until=time.time() - 5)
    assert ledger.claim(["unsent", "sent"]) == {"unsent": C, "sent": I}
    assert ledger.status("unsent") == "pending" and ledger.status("sent") == "pending"
    assert backend.owner_of("unsent") == ledger.owner


def test_mark_sending_is_durable_and_only_for_our_pending_claims(backend: Backend) -> None:
    ledger = backend.open()
    assert ledger.claim(["k"]) == {"k": C}
    ledger.mark_sending("k")
    assert backend.sql("SELECT status FROM {t} WHERE delivery_key = 'k'") == [("sending",)]
    ledger.mark_delivered("k", 200)
    ledger.flush()
    assert ledger.status("k") == "delivered"
    ledger.mark_sending("k")  # no effect on a delivered key
    assert ledger.status("k") == "delivered"
    assert ledger.claim(["r"]) == {"r": C}
    ledger.mark_sending("r")
    ledger.release(["r"])  # a failed send releases a sending claim too
    assert ledger.status("r") is None


def test_in_doubt_dead_lettered_key_is_held_for_good(backend: Backend) -> None:
    ledger = backend.open()
    backend.fake_row("doubt", owner="elsewhere:1:x", lease_until=time.time() - 5)
    assert ledger.claim(["doubt"]) == {"doubt": I}
    ledger.mark_held(["doubt"])  # in_doubt=dead_letter
    assert ledger.status("doubt") == "in_doubt"
    assert ledger.claim(["doubt"]) == {"doubt": H}
    ledger.release(["doubt"])  # terminal: a release does not reopen it
    ledger.close()
    assert backend.open().claim(["doubt"]) == {"doubt": H}


def test_heartbeat_keeps_a_live_claim_and_lease_expiry_makes_it_in_doubt(
    backend: Backend,
) -> None:
    lease = 0.6
    holder = backend.open(lease=lease)
    rival = backend.open(lease=lease)
    assert holder.claim(["slow", "unsent"]) == {"slow": C, "unsent": C}
    holder.mark_sending("slow")  # durable before it returns
    assert backend.sql("SELECT status FROM {t} WHERE delivery_key = 'slow'") == [("sending",)]
    first_lease = backend.lease_of("slow")
    time.sleep(lease * 1.8)  # longer than the lease: only the heartbeat keeps it alive
    assert backend.lease_of("slow") > first_lease + lease / 2
    assert rival.claim(["slow"]) == {"slow": B}

    # The holder stops (without releasing); it is still "alive" (same pid), so only lease
    # expiry counts. Then the claim whose postback may have left is in doubt; the claim it
    # never sent is simply claimed again.
    holder.close()
    assert backend.sql("SELECT status FROM {t} WHERE delivery_key = 'slow'") == [("sending",)]
    assert _wait_for(lambda: backend.lease_of("slow") < time.time(), timeout=lease * 2)
    assert rival.claim(["slow", "unsent"]) == {"slow": I, "unsent": C}


# ------------------------------------------------------------------------------------------
# Group commit and failures


def test_marks_are_group_committed_within_milliseconds(backend: Backend) -> None:
    ledger = backend.open()
    assert isinstance(ledger, (SQLiteLedger, PostgresLedger))
    keys = [f"g{i}" for i in range(2000)]
    assert set(ledger.claim(keys).values()) == {C}

    ledger.mark_delivered("g0", 200)  # no flush: the writer commits it by itself, quickly
    assert _wait_for(
        lambda: backend.sql("SELECT status FROM {t} WHERE delivery_key = 'g0'") == [("delivered",)],
        timeout=1.0,
    )
    commits_before = ledger.writer_commits

    def mark(part: list[str]) -> None:
        for k in part:
            ledger.mark_delivered(k, 200)

    threads = [threading.Thread(target=mark, args=(keys[1 + i :: 4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.flush()
    assert backend.sql("SELECT count(*) FROM {t} WHERE status = 'delivered'") == [(2000,)]
    assert ledger.writer_commits - commits_before < 200  # batched, not one commit per mark


def test_marks_beyond_one_commit_and_marks_queued_around_a_fence_are_all_committed(
    backend: Backend,
) -> None:
    """The writer is woken only when marks wait that no caller commits: marks queued while a
    fence commits, and marks beyond what one commit takes, still reach the ledger without a
    flush."""
    ledger = backend.open()
    assert isinstance(ledger, (SQLiteLedger, PostgresLedger))
    ledger._marks._max_batch = 10  # (at most 10 marks per commit)
    keys = [f"b{i}" for i in range(120)]
    assert set(ledger.claim(keys).values()) == {C}

    def deliver_meanwhile() -> None:
        for k in keys[60:]:
            ledger.mark_delivered(k, 200)

    thread = threading.Thread(target=deliver_meanwhile)
    thread.start()
    for i in range(0, 60, 6):  # fences with delivered marks riding along, as the engine's ticks
        fenced = ledger.fence(keys[i : i + 3], [(k, 200) for k in keys[i + 3 : i + 6]])
        assert fenced == set(keys[i : i + 3])
    thread.join()
    assert _wait_for(  # no flush
        lambda: backend.sql("SELECT count(*) FROM {t} WHERE status = 'delivered'") == [(90,)],
        timeout=5.0,
    ), backend.sql("SELECT status, count(*) FROM {t} GROUP BY status")
    assert backend.sql("SELECT count(*) FROM {t} WHERE status = 'sending'") == [(30,)]


def test_a_failed_commit_makes_flush_and_later_calls_raise(backend: Backend) -> None:
    ledger = backend.open()
    ledger.claim(["f1", "f2"])
    backend.break_writes()
    ledger.mark_delivered("f1", 200)
    with pytest.raises(LedgerError, match="could not commit delivered marks"):
        _within(5, ledger.flush)
    with pytest.raises(LedgerError):
        _within(5, ledger.flush)
    with pytest.raises(LedgerError):
        ledger.mark_delivered("f2", 200)
    with pytest.raises(LedgerError):
        ledger.claim(["f3"])
    with pytest.raises(LedgerError, match="not committed"):
        ledger.close()


def test_leases_that_cannot_be_renewed_make_the_ledger_fail(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = open_ledger(None, default_dir=tmp_path, lease_seconds=0.3, retention_days=400)
    assert isinstance(ledger, SQLiteLedger)

    def broken() -> int:
        raise LedgerError("database unreachable")

    monkeypatch.setattr(ledger, "renew_leases", broken)
    ledger.claim(["h1"])
    # Once the lease may have expired, other processes may own our claims: stop sending.
    assert _wait_for(lambda: ledger.failure is not None, timeout=2.0)
    with pytest.raises(LedgerError, match="leases not renewed"):
        ledger.claim(["h2"])
    with pytest.raises(LedgerError, match="leases not renewed"):
        ledger.close()


def test_sqlite_flush_raises_when_the_connection_is_gone(tmp_path: pathlib.Path) -> None:
    ledger = open_ledger(
        f"sqlite:///{tmp_path / 'l.db'}", default_dir=tmp_path, lease_seconds=30, retention_days=400
    )
    assert isinstance(ledger, SQLiteLedger)
    ledger.claim(["c1"])
    ledger.backend.conn.close()  # the database disappears under the writer
    ledger.mark_delivered("c1", 200)
    with pytest.raises(LedgerError):
        _within(5, ledger.flush)
    with pytest.raises(LedgerError):
        _within(5, ledger.close)


def test_close_keeps_unreleased_claims_pending_and_refuses_later_use(backend: Backend) -> None:
    ledger = backend.open()
    ledger.claim(["left"])
    ledger.mark_delivered("sent", 200)  # queued marks are committed by close()
    ledger.close()
    ledger.close()  # idempotent
    rows = dict(backend.sql("SELECT delivery_key, status FROM {t}"))
    assert rows == {"left": "pending", "sent": "delivered"}
    for call in (lambda: ledger.claim(["x"]), lambda: ledger.mark_delivered("x", 200)):
        with pytest.raises(LedgerError, match="closed"):
            call()


# ------------------------------------------------------------------------------------------
# Prune


def test_prune_deletes_old_delivered_and_held_rows_only(backend: Backend) -> None:
    backend.open().close()  # create the table
    old = time.time() - 401 * 86400
    backend.fake_row("old-delivered", owner="h:1:a", status="delivered", updated_at=old)
    backend.fake_row("old-held", owner="h:1:a", status="in_doubt", updated_at=old)
    backend.fake_row("old-pending", owner="h:1:a", lease_until=old, updated_at=old)
    backend.fake_row("new-delivered", owner="h:1:a", status="delivered")

    backend.open(retention_days=0).close()  # 0: keep everything
    assert backend.sql("SELECT count(*) FROM {t}") == [(4,)]

    backend.open(retention_days=400)
    keys = {k for (k,) in backend.sql("SELECT delivery_key FROM {t}")}
    assert keys == {"old-pending", "new-delivered"}


# ------------------------------------------------------------------------------------------
# Several processes


WORKER = textwrap.dedent(
    """
    import json, pathlib, random, sys
    from target_everflow.ledger import ClaimStatus, open_ledger

    url, seed, n_keys, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    keys = [f"key-{i:05d}" for i in range(n_keys)]
    ledger = open_ledger(url, default_dir=pathlib.Path("."), lease_seconds=120, retention_days=400)
    print("ready", flush=True)
    sys.stdin.readline()
    claimed, other = [], {}
    for r in range(rounds + 1):
        if r < rounds:
            start = rng.randrange(n_keys)
            batch = [keys[(start + j) % n_keys] for j in range(rng.randint(50, 400))]
            rng.shuffle(batch)
        else:
            batch = list(keys)  # finally both claim everything
        for k, st in ledger.claim(batch).items():
            if st is ClaimStatus.CLAIMED:
                claimed.append(k)
                if rng.random() < 0.5:
                    ledger.mark_delivered(k, 200)
            else:
                other[st.value] = other.get(st.value, 0) + 1
    ledger.flush()
    # Stay alive until both are done: once a process has exited, its unreleased claims are
    # (correctly) in doubt for the survivor.
    print("done", flush=True)
    sys.stdin.readline()
    ledger.close()
    print(json.dumps({"owner": ledger.owner, "claimed": claimed, "other": other}), flush=True)
    """
)


def test_two_processes_never_both_claim_a_key(backend: Backend) -> None:
    n_keys, rounds = 2000, 150
    backend.open().close()  # create the table before the race
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, backend.url, str(seed), str(n_keys), str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=backend.tmp_path,
        )
        for seed in (1, 2)
    ]

    def kill_all() -> None:
        for p in procs:
            p.kill()

    watchdog = threading.Timer(60, kill_all)  # never hang the suite
    watchdog.start()
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:  # start both at once
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "done"
        results = []
        for p in procs:
            out, err = p.communicate("exit\n", timeout=60)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        watchdog.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()

    a, b = (set(r["claimed"]) for r in results)
    assert len(a) == len(results[0]["claimed"]) and len(b) == len(results[1]["claimed"])
    assert not a & b, f"{len(a & b)} key(s) claimed by both processes"
    assert a | b == {f"key-{i:05d}" for i in range(n_keys)}
    assert "in_doubt" not in results[0]["other"] and "in_doubt" not in results[1]["other"]
    assert results[0]["other"] and results[1]["other"]  # they did compete for keys
    owners = dict(backend.sql("SELECT delivery_key, owner FROM {t}"))
    assert all(owners[k] == results[0]["owner"] for k in a)
    assert all(owners[k] == results[1]["owner"] for k in b)


# ------------------------------------------------------------------------------------------
# Opening, URLs, errors


def test_default_location_is_sqlite_in_wal_mode(tmp_path: pathlib.Path) -> None:
    for url in (None, "", "  "):
        ledger = open_ledger(url, default_dir=tmp_path, lease_seconds=30, retention_days=400)
        path = tmp_path / "ledger.sqlite3"
        assert isinstance(ledger, SQLiteLedger) and ledger.path == path
        assert ledger.description == f"sqlite:///{path}"
        ledger.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_url_forms_and_table_parameter(tmp_path: pathlib.Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    ledger = open_ledger(
        "sqlite:///rel/dir/l.db?table=my_ledger",  # SQLAlchemy: three slashes = relative
        default_dir=tmp_path / "unused",
        lease_seconds=30,
        retention_days=400,
    )
    assert isinstance(ledger, SQLiteLedger) and ledger.path == tmp_path / "rel/dir/l.db"
    ledger.claim(["t"])
    ledger.close()
    conn = sqlite3.connect(tmp_path / "rel/dir/l.db")
    assert conn.execute("SELECT delivery_key FROM my_ledger").fetchall() == [("t",)]
    conn.close()
    with pytest.raises(LedgerError, match="identifier"):
        open_ledger(
            "sqlite:///tmp/x.db?table=a;drop",
            default_dir=tmp_path,
            lease_seconds=1,
            retention_days=1,
        )


def test_unwritable_sqlite_path_raises_ledger_error_naming_ledger_url(
    tmp_path: pathlib.Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker}/sub/ledger.db"
    with pytest.raises(LedgerError) as err:
        open_ledger(url, default_dir=tmp_path, lease_seconds=30, retention_days=400)
    assert "ledger_url" in str(err.value) and str(blocker) in str(err.value)


def test_unsupported_url_is_rejected_without_its_password(tmp_path: pathlib.Path) -> None:
    with pytest.raises(LedgerError) as err:
        open_ledger(
            "mysql://me:hunter2@db/x", default_dir=tmp_path, lease_seconds=30, retention_days=400
        )
    assert "ledger_url" in str(err.value) and "hunter2" not in str(err.value)
    assert "mysql://me:***@db/x" in str(err.value)
    with pytest.raises(LedgerError, match="ledger_url"):
        open_ledger("sqlite://", default_dir=tmp_path, lease_seconds=30, retention_days=400)


def test_none_is_a_null_ledger_with_a_warning(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        ledger = open_ledger("none", default_dir=tmp_path, lease_seconds=30, retention_days=400)
    assert isinstance(ledger, NullLedger)
    assert any("ledger_url is none" in r.getMessage() for r in caplog.records)
    assert ledger.claim(["a", "a", "b"]) == {"a": C, "b": C}
    ledger.mark_delivered("a", 200)
    ledger.flush()
    # within the run it still dedupes, in memory; nothing is written anywhere
    assert ledger.claim(["a", "b"]) == {"a": ClaimStatus.DELIVERED, "b": ClaimStatus.BUSY}
    assert ledger.status("a") == "delivered"
    ledger.release(["b"])
    assert ledger.claim(["b"]) == {"b": C}
    ledger.close()
    assert not list(tmp_path.iterdir())
    assert open_ledger("none", default_dir=tmp_path, lease_seconds=30, retention_days=400).claim(
        ["a"]
    ) == {"a": C}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://user:pa%40ss@db.example:5432/app",
            "postgresql://user:***@db.example:5432/app",
        ),
        ("postgres://u:p@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://:secret@h/db", "postgresql://:***@h/db"),
        ("postgresql://h/db?user=u&password=secret", "postgresql://h/db?user=u&password=***"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("sqlite:///tmp/l.db", "sqlite:///tmp/l.db"),
        # libpq reads "#frag" as part of the value: it may be part of the password
        ("postgresql://u:p@h/db?password=p#frag", "postgresql://u:***@h/db?password=***"),
        ("u:secret@h/db", "<ledger_url hidden>"),  # not a URL: fail closed
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_postgres_that_is_down_raises_with_the_password_masked(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("psycopg2")
    url = "postgresql://everflow:Sup3rS3cret@127.0.0.1:1/test"
    with pytest.raises(LedgerError) as err:
        open_ledger(url, default_dir=tmp_path, lease_seconds=30, retention_days=400)
    text = str(err.value)
    assert "ledger_url=postgresql://everflow:***@127.0.0.1:1/test" in text
    assert "Sup3rS3cret" not in text and "Sup3rS3cret" not in repr(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_postgres_without_psycopg2_says_how_to_install_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # import psycopg2 -> ImportError
    with pytest.raises(LedgerError) as err:
        open_ledger(
            "postgres://u:pw@h/db", default_dir=tmp_path, lease_seconds=30, retention_days=400
        )
    assert str(err.value) == (
        "ledger_url is PostgreSQL but psycopg2 is not installed: "
        "pip install 'target-everflow[postgres]'"
    )


@pytest.mark.postgres
def test_postgres_repr_and_description_hide_the_password(tmp_path: pathlib.Path) -> None:
    base = _pg_url()
    import psycopg2.extensions

    params = psycopg2.extensions.parse_dsn(base)
    params.setdefault("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    table = f"tel_{uuid.uuid4().hex[:12]}"
    # trust auth ignores the password, so a made-up one reaches the repr/description paths
    url = (
        f"postgresql://{params['user']}:NotShown123@{host}:{port}/{params['dbname']}?table={table}"
    )
    ledger = open_ledger(url, default_dir=tmp_path, lease_seconds=30, retention_days=400)
    try:
        assert "NotShown123" not in repr(ledger) and "NotShown123" not in ledger.description
        assert ":***@" in ledger.description
    finally:
        ledger.close()
        conn = psycopg2.connect(base)
        conn.autocommit = True
        conn.cursor().execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()
