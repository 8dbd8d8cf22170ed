"""A ledger for the operator-command tests, SQLite or PostgreSQL, with raw SQL access to it.

``from tests.ledgers import ledger, cli  # noqa: F401`` brings the ``ledger`` fixture (both
backends; the PostgreSQL one on its own tables, dropped afterwards) into a test module.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from tests.conftest import postgres_url


class TestLedger:
    """Where a test's ledger lives (its ``ledger_url``), and SQL straight into its tables."""

    __test__ = False

    def __init__(self, kind: str, url: str, table: str, path: Path | None = None) -> None:
        self.kind, self.url, self.table, self.path = kind, url, table, path

    def sql(self, statement: str, params: t.Sequence[t.Any] = ()) -> list[tuple[t.Any, ...]]:
        statement = statement.format(t=self.table, runs=f"{self.table}_runs")
        if self.kind == "sqlite":
            assert self.path is not None
            lite = sqlite3.connect(self.path, isolation_level=None)
            try:
                return lite.execute(statement, params).fetchall()
            finally:
                lite.close()
        import psycopg2

        pg = psycopg2.connect(postgres_url())
        pg.autocommit = True
        try:
            with pg.cursor() as cur:
                cur.execute(statement.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        finally:
            pg.close()

    def rows(self) -> dict[str, str]:
        """delivery key -> status."""
        return dict(self.sql("SELECT delivery_key, status FROM {t}"))

    def put(self, key: str, status: str, *, owner: str = "elsewhere:4242:00c0ffee",
            lease_until: float | None = None, age_days: float = 0.0) -> None:
        """A row as another run left it, ``age_days`` old."""
        when = time.time() - age_days * 86400
        self.sql(
            "INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until, http_status,"
            " created_at, updated_at) VALUES (?, ?, ?, '', ?, NULL, ?, ?)",
            (key, status, owner, lease_until, when, when),
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[TestLedger]:
    if request.param == "sqlite":
        path = tmp_path / "ledger.sqlite3"
        yield TestLedger("sqlite", f"sqlite:///{path}", "everflow_ledger", path)
        return
    base = postgres_url()
    table = f"teo_{uuid.uuid4().hex[:12]}"
    backend = TestLedger("postgres", f"{base}{'&' if '?' in base else '?'}table={table}", table)
    yield backend
    backend.sql("DROP TABLE IF EXISTS {t}")
    backend.sql("DROP TABLE IF EXISTS {runs}")


class CliResult(t.NamedTuple):
    code: int
    stdout: str
    stderr: str

    def json(self) -> t.Any:
        return json.loads(self.stdout)


def cli(config: dict, *args: str, tmp_path: Path, stdin: t.Any = subprocess.DEVNULL,
        env: dict | None = None) -> CliResult:
    """``target-everflow <args> --config <config>`` as a subprocess (no terminal: stdin /dev/null)."""
    path = tmp_path / f"cli-config-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "target_everflow", *args, "--config", str(path)],
        stdin=stdin, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
