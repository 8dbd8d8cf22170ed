"""The ledger package: other modules use its public helpers, never a ledger's private names."""

from __future__ import annotations

import ast
import pathlib

import pytest

from target_everflow import settings

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "target_everflow"


def _ledger_privates(path: pathlib.Path) -> list[str]:
    """``<something named ledger>._name`` uses in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__"):
            continue
        owner = node.value
        name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
        if "ledger" in name.lower():
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {name}.{node.attr}")
    return found


def test_no_module_outside_the_package_reaches_into_a_ledger() -> None:
    outside = [
        p for p in sorted(PACKAGE.rglob("*.py")) if "ledger" not in p.relative_to(PACKAGE).parts[:1]
    ]
    assert outside, PACKAGE
    assert [hit for p in outside for hit in _ledger_privates(p)] == []


def test_the_request_timeout_default_comes_from_the_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(settings.CONFIG_SCHEMA["properties"]["request_timeout"], "default", 12.5)
    assert settings.Settings.from_config({"dry_run": True}).request_timeout == 12.5
