"""Regenerate the documentation's tables from the code: README's settings tables and
docs/fields.md's field table.

python scripts/update_readme.py          # rewrite the files in place
python scripts/update_readme.py --check  # exit 1 when one is out of date (tests do this)

Each table sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` lines; everything
around them is hand-written. A new setting in settings.py or a new row in fields.py shows up
here without touching the prose.
"""

from __future__ import annotations

import re
import sys
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without the package installed, too

from target_everflow import fields, settings  # noqa: E402 - after the sys.path line above
from target_everflow.adapter.target import HIDDEN_SDK_SETTINGS, plugin_settings_schema  # noqa: E402 - after the sys.path line above

README = REPO / "README.md"
FIELDS_DOC = REPO / "docs" / "fields.md"


def sdk_settings() -> str:
    """The SDK's own settings the target keeps (those it hides are named, not tabled)."""
    properties = {
        name: spec
        for name, spec in plugin_settings_schema()["properties"].items()
        if name not in settings.CONFIG_SCHEMA["properties"]
    }
    hidden = ", ".join(f"`{name}`" for name in HIDDEN_SDK_SETTINGS)
    return (
        settings.markdown_table(properties)
        + f"\n\nNot offered, because they mean nothing to a target that sends postbacks: {hidden}."
    )


# file -> {block name: what goes between its markers}
FILES: dict[Path, dict[str, t.Callable[[], str]]] = {
    README: {"settings": settings.markdown_table, "sdk-settings": sdk_settings},
    FIELDS_DOC: {"fields": fields.markdown_table},
}


def render(text: str, sections: dict[str, t.Callable[[], str]], where: str = "README.md") -> str:
    for name, make in sections.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{where} has no <!-- {name}:start --> ... <!-- {name}:end --> block")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    stale = []
    for path, sections in FILES.items():
        current = path.read_text(encoding="utf-8")
        wanted = render(current, sections, str(path.relative_to(REPO)))
        if current == wanted:
            continue
        if "--check" in sys.argv:
            stale.append(str(path.relative_to(REPO)))
        else:
            path.write_text(wanted, encoding="utf-8")
    if stale:
        print(f"{', '.join(stale)} out of date: run python scripts/update_readme.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
