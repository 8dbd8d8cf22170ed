"""House rules that ruff and mypy do not state: every suppression names what it suppresses and why."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "target_everflow"
SUPPRESSION = re.compile(r"#\s*(noqa|type:\s*ignore)(?P<after>.*)$")
CODED = re.compile(r"^(:\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*|\[[a-z-]+(,[a-z-]+)*\])")
REASON = re.compile(r"(\s-\s|\s#\s*)\w")


def suppressions() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = SUPPRESSION.search(line)
            if match:
                found.append((f"{path.relative_to(PACKAGE.parent)}:{number}", match.group("after")))
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
