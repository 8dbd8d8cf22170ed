"""Issue 11, finding 6: the ledger password never leaks.

``ledger_url`` reaches output only through ``ledger.redact_url``, which fails closed
(``<ledger_url hidden>`` when it cannot tell where the password is). Passwords with an
unencoded ``#``, ``/``, ``?`` or ``@`` and libpq keyword/value connection strings are masked;
the end-to-end tests scan everything a run writes (stdout, stderr, the summary, every file
under the run's directory) for the password marker, on success and on failure, and the
exceptions a program using the ledger would see.
"""

from __future__ import annotations

import pathlib
import uuid

import pytest

from target_everflow.ledger import HIDDEN_URL, LedgerError, _url_secrets, open_ledger, redact_url
from tests.conftest import config_under, pg_execute, postgres_url, run_target, singer_lines, track
from tests.receiver import Receiver

MARK = "Pw7MARKq"
"""In every test password: it must appear nowhere."""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://postgres:{MARK}#x@127.0.0.1:5432/test",
            "postgresql://postgres:***@127.0.0.1:5432/test",
        ),
        (f"postgresql://u:{MARK}/x@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db"),
        (f"postgresql://u:{MARK}?x@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db"),
        (
            f"postgresql://u:a#{MARK}/?b@h:5432/db?sslmode=require",
            "postgresql://u:***@h:5432/db?sslmode=require",
        ),
        (f"postgresql://u:{MARK}@x@h/db", "postgresql://u:***@h/db"),
        (f"postgres://u:{MARK}%23x@h/db", "postgres://u:***@h/db"),
        (
            f"postgresql://h/db?user=u&password={MARK}#x&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        (
            f"host=127.0.0.1 port=5432 dbname=db user=u password={MARK}",
            "host=127.0.0.1 port=5432 dbname=db user=u password=***",
        ),
        (f"host=h dbname='my db' password='{MARK} \\' #/?'", "host=h dbname='my db' password=***"),
        (f"host = h   password = {MARK}", "host=h password=***"),
        # unsure: show nothing
        (f"host=h password='{MARK}", HIDDEN_URL),  # unterminated quote
        (f"u:{MARK}@h/db", HIDDEN_URL),  # not a URL
        (f"postgresql://h/db?sslcert=/a:{MARK}@b", HIDDEN_URL),  # the "@" may be a path's
        (f"postgresql://u:{MARK}@h/db?sslcert=/a@b", HIDDEN_URL),  # which "@" ends the password?
        (f"sqlite://u:{MARK}@/tmp/l.db", HIDDEN_URL),
        ("sqlite:////tmp/ledger.db", "sqlite:////tmp/ledger.db"),
        ("sqlite:////tmp/a@b/ledger.db?table=t", "sqlite:////tmp/a@b/ledger.db?table=t"),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        # a password that is also the user's name is masked, and the rest still shown
        (
            "postgresql://postgres:postgres@127.0.0.1:5432/test",
            "postgresql://postgres:***@127.0.0.1:5432/test",
        ),
        ("host=h user=postgres password=postgres", "host=h user=postgres password=***"),
    ],
)
def test_redact_url_masks_every_spelling_and_fails_closed(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert MARK not in redact_url(url)
    assert any(MARK in s for s in _url_secrets(url)) or MARK not in url


@pytest.mark.parametrize("url", [
    f"mysql://me:{MARK}@db/x",
    f"host=h password='{MARK}",
    f"{MARK}-not-a-url",
    f"sqlite://u:{MARK}@/x",
])  # fmt: skip
def test_refused_urls_are_never_echoed(url: str, tmp_path: pathlib.Path) -> None:
    with pytest.raises(LedgerError) as err:
        open_ledger(url, default_dir=tmp_path, lease_seconds=30, retention_days=400)
    assert "ledger_url" in str(err.value)
    for text in (str(err.value), repr(err.value), repr(err.value.args)):
        assert MARK not in text
    assert err.value.__cause__ is None


@pytest.mark.parametrize("url", [
    f"postgresql://u:{MARK}#x@127.0.0.1:1/db",
    f"postgresql://u:{MARK}/x@127.0.0.1:1/db",
    f"postgresql://u:{MARK}?x@127.0.0.1:1/db",
    f"host=127.0.0.1 port=1 dbname=db user=u password='{MARK} #/?' connect_timeout=2",
])  # fmt: skip
def test_a_ledger_that_cannot_be_opened_names_it_masked(url: str, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("psycopg2")
    with pytest.raises(LedgerError) as err:
        open_ledger(url, default_dir=tmp_path, lease_seconds=30, retention_days=400, timeout=3)
    text = str(err.value)
    assert f"ledger_url={redact_url(url)}" in text and "***" in text, text
    assert "127.0.0.1" in text  # the reason is kept: where it tried to connect
    for shown in (text, repr(err.value)):
        assert MARK not in shown


# --- end to end: everything a run writes -------------------------------------------------------


def _pg_parts() -> dict[str, str]:
    import psycopg2.extensions

    params = psycopg2.extensions.parse_dsn(postgres_url())
    return {"user": params.get("user", "postgres"), "host": params.get("host", "127.0.0.1"),
            "port": params.get("port", "5432"), "dbname": params["dbname"]}  # fmt: skip


def _scan(result_text: str, root: pathlib.Path) -> list[str]:
    """Where the marker shows: the given text, and every file under ``root``."""
    found = [f"output:{i}" for i, line in enumerate(result_text.splitlines()) if MARK in line]
    for path in root.rglob("*"):
        if path.is_file() and MARK.encode() in path.read_bytes():
            found.append(str(path))
    return found


def _drop(table: str) -> None:
    pg_execute(f"DROP TABLE IF EXISTS {table}")


@pytest.mark.postgres
@pytest.mark.parametrize("spelling", ["hash", "slash", "question", "keywords"])
def test_a_run_with_a_password_full_of_reserved_characters_prints_it_nowhere(
    spelling: str, tmp_path: pathlib.Path
) -> None:
    """The server trusts 127.0.0.1, so any password connects: the run succeeds, and its open
    line, summary and every file show the ledger masked."""
    p = _pg_parts()
    table = f"tmask_{uuid.uuid4().hex[:10]}"
    password = {"hash": f"{MARK}#x", "slash": f"{MARK}/x", "question": f"{MARK}?x",
                "keywords": f"{MARK} #/?'"}[spelling]  # fmt: skip
    if spelling == "keywords":
        quoted = password.replace("'", "\\'")
        url = (f"host={p['host']} port={p['port']} dbname={p['dbname']} user={p['user']} "
               f"password='{quoted}' table={table}")  # fmt: skip
        shown = f"host={p['host']} port={p['port']} dbname={p['dbname']} user={p['user']} password=*** table={table}"
    else:
        url = f"postgresql://{p['user']}:{password}@{p['host']}:{p['port']}/{p['dbname']}?table={table}"
        shown = f"postgresql://{p['user']}:***@{p['host']}:{p['port']}/{p['dbname']}?table={table}"
    config = {**config_under(tmp_path), "ledger_url": url, "request_timeout": 5}
    try:
        with Receiver() as rx:
            config["postback_url"] = rx.url
            result = run_target(config, singer_lines("orders", [track(1), track(2)]), tmp_path)
            assert len(rx.requests) == 2
    finally:
        _drop(table)
    for config_file in tmp_path.glob("config-*.json"):
        config_file.unlink()  # the config holds the password, as the user wrote it
    assert result.code == 0, result.stderr[-2000:]
    assert f"ledger {shown} opened" in result.stderr
    assert _scan(result.stdout + result.stderr, tmp_path) == []


@pytest.mark.parametrize("url", [
    f"postgresql://everflow:{MARK}#x@127.0.0.1:1/db",
    f"postgresql://everflow:{MARK}/x@127.0.0.1:1/db",
    f"host=127.0.0.1 port=1 dbname=db user=everflow password='{MARK}?/#'",
    f"{MARK}@not-a-url",
])  # fmt: skip
def test_a_run_whose_ledger_fails_prints_the_password_nowhere(
    url: str, tmp_path: pathlib.Path
) -> None:
    pytest.importorskip("psycopg2")
    config = {**config_under(tmp_path), "ledger_url": url, "postback_url": "https://track.example.com/",
              "ledger_timeout": 3}  # fmt: skip
    result = run_target(config, singer_lines("orders", [track(1)]), tmp_path)
    for config_file in tmp_path.glob("config-*.json"):
        config_file.unlink()
    assert result.code == 4, result.stderr[-2000:]
    assert "ledger_url" in result.stderr and "Traceback" not in result.stderr
    assert redact_url(url) in result.stderr
    assert _scan(result.stdout + result.stderr, tmp_path) == []
