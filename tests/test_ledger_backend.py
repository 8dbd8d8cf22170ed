"""The ledger is one object with a backend: no module of the package reaches into another's
private names, and the package's modules import each other without a cycle (``TYPE_CHECKING``
imports included)."""

from __future__ import annotations

import ast
import pathlib

from target_everflow.ledger import PostgresLedger, SQLiteLedger, SQLLedger
from target_everflow.ledger.backend import Backend
from target_everflow.ledger.postgres import PostgresBackend
from target_everflow.ledger.sqlite import SQLiteBackend
from tests.test_ledger import Backend as Location
from tests.test_ledger import backend  # noqa: F401 - the fixture (SQLite, PostgreSQL)

LEDGER = pathlib.Path(__file__).resolve().parents[1] / "target_everflow" / "ledger"
PACKAGE = "target_everflow.ledger"


def _module(path: pathlib.Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


def _imports(path: pathlib.Path) -> set[str]:
    """The package's modules ``path`` imports, wherever the import is (TYPE_CHECKING blocks,
    functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: from .x import y
                base = f"{PACKAGE}.{node.module}" if node.module else PACKAGE
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                # "from target_everflow.ledger.sql import SQLLedger" names module ...sql
                parts = name.split(".")
                for n in range(len(parts), 2, -1):
                    candidate = ".".join(parts[:n])
                    if candidate == PACKAGE or (LEDGER / f"{parts[n - 1]}.py").exists():
                        found.add(candidate)
                        break
    found.discard(_module(path))
    return found


def test_no_module_of_the_ledger_uses_another_ones_private_names() -> None:
    hits = []
    for path in sorted(LEDGER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                if node.attr.startswith("__"):
                    continue
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                hits.append(f"{path.name}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                hits += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names
                         if a.name.startswith("_")]  # fmt: skip
    assert hits == []


def test_the_ledger_modules_import_each_other_without_a_cycle() -> None:
    graph = {_module(p): _imports(p) for p in LEDGER.glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*path, module))
        done.add(module)

    assert f"{PACKAGE}.sql" in graph and graph[f"{PACKAGE}.claims"]
    for module in sorted(graph):
        visit(module, ())


def test_both_ledgers_own_a_backend(tmp_path: pathlib.Path) -> None:
    backends: list[Backend] = [
        SQLiteBackend(tmp_path / "l.db", table="t1", timeout=5),
        PostgresBackend("postgresql://u:secret@127.0.0.1:1/db?table=t2", table=None, timeout=5),
    ]
    assert [(b.dialect, b.table, b.connected) for b in backends] == [
        ("sqlite", "t1", False),
        ("postgresql", "t2", False),
    ]
    assert "secret" not in backends[1].description
    sqlite = SQLiteLedger(tmp_path / "l.db", table="t1", lease_seconds=30, timeout=5)
    assert isinstance(sqlite.backend, SQLiteBackend)
    assert (sqlite.dialect, sqlite.table, sqlite.real_type, sqlite.path) == (
        "sqlite", "t1", "REAL", tmp_path / "l.db"
    )  # fmt: skip
    pg = PostgresLedger("postgresql://u@127.0.0.1:1/db", table="t3", lease_seconds=30, timeout=5)
    assert (pg.dialect, pg.table, pg.real_type) == ("postgresql", "t3", "DOUBLE PRECISION")


def test_the_backend_classifies_postgresql_errors() -> None:
    class PgError(Exception):
        def __init__(self, code: str) -> None:
            super().__init__(f"error {code}")
            self.pgcode = code

    pg = PostgresBackend("postgresql://u@127.0.0.1:1/db", table=None, timeout=3)
    assert pg.lock_timed_out(PgError("55P03")) and not pg.lock_timed_out(PgError("40P01"))
    assert pg.retryable(PgError("40P01")) and pg.retryable(PgError("40001"))
    assert not pg.retryable(PgError("55P03"))
    assert "lock_timeout" in pg.describe_error(PgError("55P03"))
    assert "statement_timeout" in pg.describe_error(PgError("57014"))


def test_fence_records_answers_and_fences_the_next_in_one_commit(backend: Location) -> None:
    ledger = backend.open()
    assert isinstance(ledger, SQLLedger)
    ledger.claim(["a", "b", "c", "d"])
    assert ledger.fence(["a"]) == {"a"}
    backend.sql("UPDATE {t} SET owner = 'elsewhere:1:x' WHERE delivery_key = ?", ("d",))
    commits = ledger.writer_commits
    # a's answer and the fences of the next three: one transaction; d is another run's now
    assert ledger.fence(["b", "c", "d"], [("a", 200)]) == {"b", "c"}
    assert ledger.writer_commits == commits + 1
    rows = dict(backend.sql("SELECT delivery_key, status FROM {t}"))
    assert rows == {"a": "delivered", "b": "sending", "c": "sending", "d": "pending"}
    # answers alone are only queued: the writer (or flush) commits them
    assert ledger.fence([], [("b", 200), ("c", 200)]) == set()
    ledger.flush()
    assert dict(backend.sql("SELECT delivery_key, status FROM {t}"))["c"] == "delivered"
    ledger.close()
