"""Regenerate README's tables from the code: the field table and the settings table.

python scripts/update_readme.py          # rewrite README.md in place
python scripts/update_readme.py --check  # exit 1 when README is out of date (tests do this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from target_everflow import fields, settings
from target_everflow.adapter.target import HIDDEN_SDK_SETTINGS, plugin_settings_schema

README = Path(__file__).resolve().parents[1] / "README.md"


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


SECTIONS = {
    "fields": fields.markdown_table,
    "settings": settings.markdown_table,
    "sdk-settings": sdk_settings,
}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(
                f"README.md has no <!-- {name}:start --> ... <!-- {name}:end --> block"
            )
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in sys.argv:
        if current != wanted:
            print("README.md is out of date: run python scripts/update_readme.py")
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
