"""Helpers for the operator-command tests: the ledger of tests/test_ledger.py (its ``backend``
fixture: SQLite, and PostgreSQL on a table of its own), rows put in it as other runs left them,
and the command line.

``from tests.ledgers import backend, cli, put, rows  # noqa: F401`` brings the fixture along.
"""

from __future__ import annotations

import json
import time
import typing as t
import uuid
from pathlib import Path

from tests.conftest import run_cli
from tests.test_ledger import Backend, backend  # the fixture

__all__ = ["Backend", "backend", "cli", "put", "rows"]


def rows(ledger: Backend) -> dict[str, str]:
    """delivery key -> status."""
    return dict(ledger.sql("SELECT delivery_key, status FROM {t}"))


def put(
    ledger: Backend,
    key: str,
    status: str,
    *,
    owner: str = "elsewhere:4242:00c0ffee",
    lease_until: float | None = None,
    age_days: float = 0.0,
) -> None:
    """A row as another run left it, claimed and last updated ``age_days`` ago."""
    when = time.time() - age_days * 86400
    ledger.sql(
        "INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until, http_status,"
        " created_at, updated_at) VALUES (?, ?, ?, '', ?, NULL, ?, ?)",
        (key, status, owner, lease_until, when, when),
    )


class CliResult(t.NamedTuple):
    code: int
    stdout: str
    stderr: str

    def json(self) -> t.Any:
        return json.loads(self.stdout)


def cli(
    config: dict, *args: str, tmp_path: Path, env: dict | None = None, subprocess_run: bool = False
) -> CliResult:
    """``target-everflow <args> --config <config>`` without a terminal (stdin is empty), in
    this process unless ``subprocess_run`` (see ``tests/conftest.py``'s ``run_cli``)."""
    path = tmp_path / f"cli-config-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(config))
    result = run_cli(
        [*args, "--config", str(path)], cwd=tmp_path, env=env, subprocess_run=subprocess_run
    )
    return CliResult(*result)
