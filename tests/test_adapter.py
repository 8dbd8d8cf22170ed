"""The core knows nothing of Singer: every private SDK name the adapter still uses is listed
(with its reason) in PRIVATE_SDK_NAMES, and none is used outside the adapter. (That singer_sdk
is imported only inside target_everflow/adapter/ is an import-linter contract: make lint.)"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import warnings
from pathlib import Path

import singer_sdk

from target_everflow.adapter import PRIVATE_SDK_NAMES

PACKAGE = Path(__file__).resolve().parent.parent / "target_everflow"
ADAPTER = PACKAGE / "adapter"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _sdk_private_names() -> set[str]:
    """Every private name singer-sdk defines: module names, module attributes, class members."""
    names: set[str] = set()
    for info in pkgutil.walk_packages(singer_sdk.__path__, "singer_sdk."):
        names.update(p for p in info.name.split(".") if _private(p))
        try:
            with warnings.catch_warnings():  # (deprecated module aliases warn on import)
                warnings.simplefilter("ignore")
                module = importlib.import_module(info.name)
        except Exception:  # optional extras (e.g. a connector's driver)
            continue
        for name, value in vars(module).items():
            if _private(name):
                names.add(name)
            if inspect.isclass(value) and value.__module__.startswith("singer_sdk"):
                for klass in value.__mro__:
                    if klass.__module__.startswith("singer_sdk"):
                        names.update(n for n in vars(klass) if _private(n))
    root = Path(singer_sdk.__file__).parent
    for path in root.rglob("*.py"):  # instance attributes: self._name = ... in the SDK's classes
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and _private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                names.add(node.attr)
    return names


SDK_PRIVATE = _sdk_private_names()


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _sdk_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "singer_sdk"
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "singer_sdk":
            found.append((node.lineno, node.module or ""))
    return found


def _private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """SDK-private names a module uses: imported (a private module or name), read or written
    as an attribute, or defined as a method/attribute (an override)."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "singer_sdk":
            uses += [(node.lineno, p) for p in node.module.split(".") if _private(p)]
            uses += [(node.lineno, a.name) for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "singer_sdk":
                    uses += [(node.lineno, p) for p in alias.name.split(".") if _private(p)]
        elif isinstance(node, ast.Attribute) and node.attr in SDK_PRIVATE:
            uses.append((node.lineno, node.attr))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in SDK_PRIVATE:
            uses.append((node.lineno, node.name))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                targets = (
                    item.targets
                    if isinstance(item, ast.Assign)
                    else ([item.target] if isinstance(item, ast.AnnAssign) else [])
                )
                uses += [
                    (item.lineno, n.id)
                    for n in targets
                    if isinstance(n, ast.Name) and n.id in SDK_PRIVATE
                ]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "super"
            and len(node.args) == 2
        ):
            uses.append((node.lineno, "super(Class, cls): skips an SDK method"))
    return uses


def test_the_sdk_private_name_set_is_real():
    """(The check below would pass vacuously if this set were empty.)"""
    assert {
        "_validate_and_parse",
        "_process_record_message",
        "_sinks_active",
        "_ConfigInput",
        "_compat",
        "_key_properties",
    } <= SDK_PRIVATE


def _own_names(trees: list[ast.AST]) -> set[str]:
    """The private names the code defines itself (functions, methods, self._x, module names)."""
    own: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.alias):
                own.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.arg):
                own.add(node.arg)
    return {n for n in own if _private(n)}


def test_no_sdk_private_name_outside_the_adapter():
    """Outside the adapter no class derives from the SDK's (it is not imported there), so a
    private name is the SDK's when the SDK has it and the core does not define it itself."""
    core = {
        path: ast.parse(path.read_text(encoding="utf-8"))
        for path in _files(PACKAGE)
        if ADAPTER not in path.parents
    }
    own = _own_names(list(core.values()))
    outside = {
        f"{path.relative_to(PACKAGE)}:{line}: {name}"
        for path, tree in core.items()
        for line, name in _private_uses(tree)
        if name not in own or _sdk_imports(tree)  # a module that imports the SDK may override
    }
    assert outside == set()


def test_the_adapter_lists_exactly_the_private_sdk_names_it_uses():
    used = {
        name
        for path in _files(ADAPTER)
        for _, name in _private_uses(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert used == set(PRIVATE_SDK_NAMES)
    assert all(len(reason.split()) >= 5 for reason in PRIVATE_SDK_NAMES.values())
