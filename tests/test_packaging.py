"""Installable outside this repository: license, metadata, dependencies, changelog.

(`make wheel-check`, run by CI, builds the wheel and runs it from a fresh virtualenv.)
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "target_everflow"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> where target_everflow/ imports it, for every module outside the
    standard library and the package itself."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in {"target_everflow", "__future__"}:
                    continue
                found.setdefault(top, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def distributions_of(module: str) -> set[str]:
    return {canonical(d) for d in md.packages_distributions().get(module, [])}


def provided_by(requirement: Requirement) -> set[str]:
    """The distribution and those its requested extras add (singer-sdk[msgspec] -> msgspec)."""
    names = {canonical(requirement.name)}
    for extra in requirement.extras:
        for dep in md.requires(requirement.name) or []:
            req = Requirement(dep)
            # only what the extra adds, not the base requirements under a python_version marker
            if (
                req.marker is not None
                and req.marker.evaluate({"extra": extra})
                and not req.marker.evaluate({"extra": ""})
            ):
                names.add(canonical(req.name))
    return names


def test_license_file_matches_pyproject() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub
    # an SPDX expression and a License classifier together are refused by current setuptools
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]


def test_project_metadata_for_an_index_and_the_hub() -> None:
    assert {"meltano_sdk", "singer", "everflow", "segment"} <= set(PROJECT["keywords"])
    assert PROJECT["authors"] and all(a.get("name") for a in PROJECT["authors"])
    classifiers = PROJECT["classifiers"]
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    assert PROJECT["urls"]
    for label, url in PROJECT["urls"].items():
        assert url.startswith("https://"), (label, url)
        assert not re.search(r"example|your-|todo|xxx|<|>", url, re.I), (label, url)


def test_every_runtime_dependency_is_imported_and_every_import_declared() -> None:
    imports = third_party_imports()
    runtime = [Requirement(r) for r in PROJECT["dependencies"]]
    optional = [Requirement(r) for r in PROJECT["optional-dependencies"]["postgres"]]
    declared: set[str] = set()
    for requirement in runtime + optional:
        declared |= provided_by(requirement)
    undeclared = {m: where for m, where in imports.items() if not distributions_of(m) & declared}
    assert not undeclared, f"imported but not a declared dependency: {undeclared}"

    imported_distributions: set[str] = set()
    for module in imports:
        imported_distributions |= distributions_of(module)
    for requirement in runtime + optional:
        unused = provided_by(requirement) - imported_distributions
        assert not unused, f"{requirement} declares {unused}, which target_everflow/ never imports"


def test_the_test_only_packages_stay_out_of_the_runtime_dependencies() -> None:
    runtime = {canonical(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert not runtime & {"pyyaml", "msgspec", "pytest", "build"}, runtime


def test_changelog_has_an_unreleased_section_and_the_current_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[0] == "Unreleased"
    assert any(h.split()[0] == PROJECT["version"] for h in headings[1:]), headings
    unreleased = text.split("## Unreleased", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^- ", unreleased, re.M), "Unreleased lists no change"


def test_the_python_versions_agree_with_what_is_tested() -> None:
    """requires-python, the classifiers, --about and README name the one version CI runs."""
    from target_everflow.adapter.target import TargetEverflow

    assert PROJECT["requires-python"] == ">=3.11"
    versions = [
        c.rsplit(" :: ", 1)[1]
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions == ["3.11"], versions
    assert TargetEverflow.get_supported_python_versions() == versions
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "Python 3.11" in readme
    assert not re.search(r"Python 3\.1[02]\+|Python 3\.10", readme), "README names another Python"


def test_make_wheel_installs_only_build() -> None:
    """`make wheel` on a fresh machine: a virtualenv, `build`, and python -m build; not the
    test toolchain (`.[test]`) nor the package itself."""
    import subprocess

    proc = subprocess.run(
        ["make", "-n", "wheel", "VENV=/nonexistent/fresh-venv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    installs = [line for line in proc.stdout.splitlines() if "pip install" in line]
    assert installs == [
        "/nonexistent/fresh-venv/bin/python -m pip install --quiet --upgrade pip",
        '/nonexistent/fresh-venv/bin/python -m pip install --quiet "build>=1.2"',
    ], installs
    assert "-m build --outdir dist ." in proc.stdout
