"""House rules that ruff and mypy do not state: every suppression names what it suppresses and why."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "target_everflow"
SUPPRESSION = re.compile(r"#\s*(noqa|type:\s*ignore)(?P<after>.*)$")
CODED = re.compile(r"^(:\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*|\[[a-z-]+(,[a-z-]+)*\])")
REASON = re.compile(r"(\s-\s|\s#\s*)\w")


def suppressions() -> list[tuple[str, str]]:
    found = []
    # the package and the scripts (the tests follow the same rule, unchecked: many hands)
    paths = [p for d in ("target_everflow", "scripts", "bench") for p in (REPO / d).rglob("*.py")]
    for path in sorted(paths):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = SUPPRESSION.search(line)
            if match:
                found.append((f"{path.relative_to(REPO)}:{number}", match.group("after")))
    return found


def test_every_noqa_and_type_ignore_names_its_code_and_gives_a_reason() -> None:
    bad = [
        where
        for where, after in suppressions()
        if not CODED.match(after.strip()) or not REASON.search(after)
    ]
    assert not bad, "a noqa / type: ignore without a code and a reason on its line: " + ", ".join(
        bad
    )


def test_the_check_sees_the_suppressions() -> None:
    assert len(suppressions()) > 10  # (the walk finds them: the test above can fail)
    assert not CODED.match("")  # a blanket one has no code
    assert REASON.search(": BLE001 - best effort") and not REASON.search(": BLE001")


# --- All SQL lives in ledger/ ----------------------------------------------------------------

SQL = re.compile(
    r"\b(SELECT\b.*\bFROM|INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(TABLE|(UNIQUE\s+)?INDEX)|ALTER\s+TABLE|DROP\s+(TABLE|INDEX))\b",
    re.S,
)
DB_CALLS = {"cursor", "execute", "executemany", "executescript"}
SQL_ALLOWED = {
    "target_everflow/ledger",  # the one home of the SQL
}


def _text_of(node: ast.AST) -> str | None:
    """The text a string expression builds (``{}`` for what is computed): a literal, an
    f-string, or literals joined with ``+``; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text_of(v) or "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text_of(node.left), _text_of(node.right)
        if left is not None or right is not None:
            return (left or "{}") + (right or "{}")
    return None


def sql_uses(source: str) -> list[tuple[int, str]]:
    """SQL text in string expressions, and database cursor calls, in one module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in DB_CALLS:
                found.append((node.lineno, f".{node.func.attr}("))
        elif isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp)):
            text = _text_of(node)
            if text is not None and (match := SQL.search(text)):
                found.append((node.lineno, " ".join(match.group(0).split())[:60]))
    return found


def test_no_sql_text_and_no_cursor_outside_the_ledger() -> None:
    outside = [
        f"{where}:{line}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not any(
            (where := str(path.relative_to(REPO))).startswith(allowed + "/")
            for allowed in SQL_ALLOWED
        )
        for line, what in sql_uses(path.read_text(encoding="utf-8"))
    ]
    assert not outside, "SQL outside target_everflow/ledger/: " + "; ".join(outside)


def test_the_sql_check_sees_sql() -> None:
    assert [w for _, w in sql_uses('cur.execute("SELECT a FROM t")')] == [
        ".execute(",
        "SELECT a FROM",
    ]
    assert sql_uses('q = f"UPDATE {table} SET a = ?"')
    assert sql_uses('q = "DELETE " + "FROM t WHERE x"')
    assert sql_uses('q = ("CREATE TABLE IF NOT EXISTS x"\n " (a INTEGER)")')
    assert sql_uses("conn.cursor()")
    assert not sql_uses('log("select the keys to update from the list")')
    assert not sql_uses('msg = "Delete from the dead-letter file"')
    # the walk reaches the ledger's own SQL (so the test above could fail)
    assert any(sql_uses((PACKAGE / "ledger" / "admin.py").read_text(encoding="utf-8")))
