"""Harness for the end-to-end pipelines: real Meltano, real taps, real PostgreSQL, a local receiver.

Every test runs ``meltano --environment=e2e ...`` in the repository (the project is the repo's
``meltano.yml``; the plugins live in the repo's ``.meltano/``, ``meltano install``ed once per
session) and points everything that a run writes at the test's own temporary directory or
schema, through environment variables only (the ``e2e`` environment takes its inputs from the
process environment; see meltano.yml):

- ``MELTANO_DATABASE_URI``: a fresh system database per test, so Singer STATE starts empty;
- ``SEGMENT_WAREHOUSE_URL`` / ``SEGMENT_SCHEMA``: the test database and a schema unique to the test;
- ``SEGMENT_ARCHIVE_DIR``: the test's archive folder;
- ``TARGET_EVERFLOW_*``: the receiver's URL, ids and token, dead letters, summary and ledger.

The archive test and the ``check`` tests need no database. Tests skip, with the reason, when
``TARGET_EVERFLOW_TEST_POSTGRES_URL`` is unset (the warehouse) or Meltano is not installed (``.venv-meltano/bin/meltano``, ``$MELTANO_BIN`` or ``meltano`` on PATH). CI sets both up
and turns any skip into a failure (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import typing as t
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from target_everflow.clock import CLOCK_ENV
from tests.conftest import postgres_url
from tests.e2e.fixtures import scenario

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MELTANO_VERSION = "4.4.1"
PLUGIN_EXECUTABLES = {
    "tap-postgres": REPO / ".meltano/extractors/tap-postgres/venv/bin/tap-postgres",
    "tap-filesanywhere": REPO / ".meltano/extractors/tap-filesanywhere/venv/bin/tap-filesanywhere",
    "target-everflow": REPO / ".meltano/loaders/target-everflow/venv/bin/target-everflow",
}
INSTALL_TIMEOUT = 900
RUN_TIMEOUT = float(os.environ.get("TARGET_EVERFLOW_E2E_RUN_TIMEOUT", "300"))

# Environment variables a developer's shell may carry that would leak into a test's Meltano run.
_SCRUB_PREFIXES = (
    "MELTANO_",
    "TARGET_EVERFLOW_",
    "TAP_POSTGRES_",
    "TAP_FILESANYWHERE_",
    "SEGMENT_",
)


def find_meltano() -> str | None:
    candidates = [
        os.environ.get("MELTANO_BIN"),
        str(REPO / ".venv-meltano/bin/meltano"),
        shutil.which("meltano"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class Ran(t.NamedTuple):
    """A command the tests ran (``meltano ...``, ``make ...``) and what it said."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str

    def tail(self, n: int = 60) -> str:
        lines = (self.stdout + "\n" + self.stderr).splitlines()
        return "\n".join(lines[-n:])

    def check(self) -> Ran:
        assert self.code == 0, (
            f"`{' '.join(self.argv)}` exited {self.code}; last lines:\n{self.tail()}"
        )
        return self


def run_command(
    argv: list[str],
    env: dict[str, str],
    timeout: float,
    *,
    cwd: Path = REPO,
    input: str | None = None,
) -> Ran:
    """``argv`` in ``cwd`` (the repo) with ``env`` over the shell's environment, from which the
    target's and Meltano's own variables are scrubbed (but the tests' pinned clock); stdin is
    ``input``, or nothing."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SCRUB_PREFIXES) or k == CLOCK_ENV  # the tests' pinned clock
    }
    full_env.update(env)
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
    )
    return Ran(argv, proc.returncode, proc.stdout, proc.stderr)


class Meltano:
    """Runs ``meltano`` in the repo with a test's environment (and nothing from the shell's)."""

    def __init__(self, binary: str, env: dict[str, str]) -> None:
        self.binary = binary
        self.env = env

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT
    ) -> Ran:
        argv = [self.binary, "--log-level=info", *args]
        return run_command(argv, {**self.env, **(env or {})}, timeout)

    def run(self, *blocks: str, **kwargs: t.Any) -> Ran:
        return self("--environment=e2e", "run", *blocks, **kwargs)

    def state(self, state_id: str) -> dict:
        result = self("--environment=e2e", "state", "get", state_id).check()
        text = result.stdout.strip()
        return json.loads(text) if text else {}


@pytest.fixture(scope="session")
def meltano_bin() -> str:
    binary = find_meltano()
    if binary is None:
        pytest.skip(
            "meltano is not installed: python3 -m venv .venv-meltano && "
            f".venv-meltano/bin/pip install meltano=={MELTANO_VERSION} (or set MELTANO_BIN)"
        )
    return binary


@pytest.fixture(scope="session")
def meltano_plugins(meltano_bin: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The three plugins of meltano.yml, (re)installed into the repo's .meltano/ once a session.

    Always run: the target's venv must follow pyproject.toml's dependencies, and the taps
    meltano.yml's pins. With Meltano's uv backend this takes ~5 s warm, ~11 s cold.
    """
    db = tmp_path_factory.mktemp("meltano-install") / "meltano.db"
    env = {"MELTANO_DATABASE_URI": f"sqlite:///{db}"}
    installed = run_command([meltano_bin, "install"], env, INSTALL_TIMEOUT).check()
    missing = [name for name, exe in PLUGIN_EXECUTABLES.items() if not exe.exists()]
    assert not missing, f"meltano install left {missing} without an executable:\n{installed.tail()}"
    return meltano_bin


@pytest.fixture
def pg_url() -> str:
    return postgres_url()


@pytest.fixture
def e2e_dir(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir()
    return tmp_path


@pytest.fixture
def meltano(meltano_plugins: str, e2e_dir: Path) -> Meltano:
    """``meltano`` for this test: its own system database (so its own STATE), e2e environment."""
    return Meltano(
        meltano_plugins,
        {
            "MELTANO_DATABASE_URI": f"sqlite:///{e2e_dir / 'meltano.db'}",
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_CLI_LOG_FORMAT": "uncolored",
            "NO_COLOR": "1",
            "PYTHONUNBUFFERED": "1",
        },
    )


def target_env(
    receiver_url: str, e2e_dir: Path, *, ledger_url: str | None = None
) -> dict[str, str]:
    """The target's settings for a live run against the receiver (strings and integers only:
    Meltano 4.4.1 cannot pass a `decimal` setting that comes from an environment variable)."""
    env = {
        "TARGET_EVERFLOW_POSTBACK_URL": receiver_url,
        "TARGET_EVERFLOW_NETWORK_ID": str(scenario.NETWORK_ID),
        "TARGET_EVERFLOW_ADVERTISER_ID": str(scenario.ADVERTISER_ID),
        "TARGET_EVERFLOW_VERIFICATION_TOKEN": scenario.VERIFICATION_TOKEN,
        "TARGET_EVERFLOW_DEAD_LETTER_PATH": str(e2e_dir / "state" / "dead_letter.jsonl"),
        "TARGET_EVERFLOW_DRY_RUN_OUTPUT": str(e2e_dir / "dry_run.jsonl"),
    }
    if ledger_url:
        env["TARGET_EVERFLOW_LEDGER_URL"] = ledger_url
    return env


# --- the warehouse ------------------------------------------------------------------------------


class Warehouse:
    """A Segment-shaped schema of its own in the test database."""

    def __init__(self, url: str, schema: str) -> None:
        import psycopg2

        self.url = url
        self.schema = schema
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True

    def execute(self, sql: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f'SET search_path TO "{self.schema}"')
            cur.execute(sql)

    def load(self, name: str) -> None:
        self.execute((FIXTURES / name).read_text())

    def rows(self, table: str) -> list[dict]:
        with self.conn.cursor() as cur:
            cur.execute(f'SELECT * FROM "{self.schema}"."{table}" ORDER BY received_at, id')
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    @property
    def ledger_url(self) -> str:
        """A PostgreSQL ledger whose table lives in this schema (dropped with it)."""
        joiner = "&" if "?" in self.url else "?"
        return f"{self.url}{joiner}options={quote(f'-csearch_path={self.schema}', safe='')}"

    def drop(self) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            self.conn.close()


@pytest.fixture
def warehouse(pg_url: str) -> t.Iterator[Warehouse]:
    pytest.importorskip("psycopg2", reason="psycopg2 is needed to load the warehouse fixture")
    schema = f"e2e_segment_{uuid.uuid4().hex[:10]}"
    wh = Warehouse(pg_url, schema)
    try:
        with wh.conn.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{schema}"')
        yield wh
    finally:
        wh.drop()
