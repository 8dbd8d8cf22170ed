"""Helpers for the operator-command tests: the ledger of tests/test_ledger.py (its ``backend``
fixture: SQLite, and PostgreSQL on a table of its own), rows put in it as other runs left them,
and the command line.

``from tests.ledgers import backend, cli, put, rows  # noqa: F401`` brings the fixture along.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

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


def cli(config: dict, *args: str, tmp_path: Path, env: dict | None = None) -> CliResult:
    """``target-everflow <args> --config <config>`` as a subprocess, without a terminal (stdin
    is /dev/null)."""
    path = tmp_path / f"cli-config-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "target_everflow", *args, "--config", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
