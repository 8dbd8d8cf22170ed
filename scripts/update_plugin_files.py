"""Generate the Meltano plugin files from one source: the target's settings as ``--about`` shows
them (``CONFIG_SCHEMA`` in target_everflow/settings.py, plus the SDK settings the target keeps).

    python scripts/update_plugin_files.py          # rewrite the files below
    python scripts/update_plugin_files.py --check  # exit 1 when one is out of date (tests do this)

- ``plugin/loaders/target-everflow/<variant>.yml``: the Meltano Hub plugin definition (the hub's
  loader schema: name, namespace, variant, pip_url, executable, capabilities, settings with
  kind, label, description, sensitive, and settings_group_validation);
- ``meltano.yml``: the target-everflow loader's capabilities, settings_group_validation and
  settings, between the ``# generated`` marker lines. Everything else in meltano.yml
  (pip_url, config, commands, environments, jobs) is hand-written and left alone. Meltano's own
  edits (``meltano config set target-everflow NAME VALUE``) rewrite the whole file, markers and
  comments gone: ``--check`` compares the generated keys by value, so such a file passes while
  they hold what the schema says, and a rewrite replaces just those keys.

A setting's label is its ``title``, its description, default (``value``) and secrecy
(``sensitive``) are the schema's; its kind follows its JSON type. The Hub file's project facts
(name, description, keywords, URLs) come from pyproject.toml, its commands from meltano.yml.
Change a setting in settings.py, then run ``make plugin-files`` (this and update_readme.py).
"""

from __future__ import annotations

import sys
import typing as t
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without the package installed, too

from target_everflow.adapter.target import (  # noqa: E402 - after the sys.path line
    HIDDEN_SDK_SETTINGS,
    TargetEverflow,
    plugin_settings_schema,
)
from target_everflow.settings import SETTINGS_GROUP_VALIDATION  # noqa: E402 - after the sys.path line

MELTANO_YML = REPO / "meltano.yml"
VARIANT = "maintainers"
HUB_FILE = REPO / "plugin" / "loaders" / "target-everflow" / f"{VARIANT}.yml"
LOADER = "target-everflow"

# The Meltano setting kind of each JSON type (an enum is `options`). A secret is `sensitive: true`
# with its type's kind: Meltano 4 rewrites the older `kind: password` that way. A number is
# `string`: Meltano 4.4.1 reads a `decimal` from an environment variable as a Decimal it then
# cannot write into the config ("Object of type Decimal is not JSON serializable"); the target
# reads a number given as text (and checks it finite and within its bounds).
KINDS = {
    "string": "string",
    "integer": "integer",
    "number": "string",
    "boolean": "boolean",
    "object": "object",
    "array": "array",
}

BEGIN = "    # --- generated from settings.py by `make plugin-files` (scripts/update_plugin_files.py): do not edit\n"
END = "    # --- end of the generated settings\n"

PREREQ = (
    "target-everflow is not on a package index yet and has no public repository: build its wheel "
    "from the source (`python -m build`, or `make wheel`), then set this plugin's `pip_url` to "
    "the wheel's path before `meltano install`."
)

HUB_FACTS = {
    "label": "Everflow",
    "domain_url": "https://www.everflow.io/",
    "maintenance_status": "beta",
    "quality": "unknown",  # the Hub rates it
}


def option_label(value: t.Any) -> str:
    """``dead_letter`` -> ``Dead letter``."""
    return str(value).replace("_", " ").replace("-", " ").capitalize()


def meltano_setting(name: str, spec: dict) -> dict:
    """One setting of the config schema as a Meltano setting definition."""
    types = spec.get("type", "string")
    types = [x for x in (types if isinstance(types, list) else [types]) if x != "null"]
    secret = bool(spec.get("secret") or spec.get("writeOnly"))
    if not spec.get("title") or not spec.get("description"):
        raise SystemExit(f"setting {name!r} needs a title and a description in the config schema")
    if "enum" in spec:
        kind = "options"
    else:
        kind = KINDS[types[0]]
    setting: dict[str, t.Any] = {
        "name": name,
        "kind": kind,
        "label": spec["title"],
        "description": spec["description"],
    }
    if "default" in spec:
        setting["value"] = spec["default"]
    if kind == "options":
        setting["options"] = [
            {"label": option_label(v), "value": v} for v in spec["enum"] if v is not None
        ]
    if secret:
        setting["sensitive"] = True
    return setting


def meltano_settings() -> list[dict]:
    return [
        meltano_setting(name, spec) for name, spec in plugin_settings_schema()["properties"].items()
    ]


def capabilities() -> list[str]:
    return [str(c) for c in TargetEverflow.capabilities]


def generated_loader_part() -> dict:
    """What meltano.yml's loader and the Hub file share, all derived from the schema."""
    return {
        "capabilities": capabilities(),
        "settings_group_validation": [list(group) for group in SETTINGS_GROUP_VALIDATION],
        "settings": meltano_settings(),
    }


class _Dumper(yaml.SafeDumper):
    """Block style, except a list of plain values on one line: ``[postback_url, network_id]``."""

    def represent_list(self, data: list) -> yaml.Node:
        flow = all(isinstance(x, (str, int, float, bool)) for x in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def dump(data: dict, indent: str = "") -> str:
    text = yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )
    return "".join(
        indent + line if line.strip() else line for line in text.splitlines(keepends=True)
    )


def loader_of(project: dict) -> dict:
    (loader,) = [p for p in project["plugins"]["loaders"] if p["name"] == LOADER]
    return loader


def render_meltano_yml(text: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(
            f"meltano.yml: the {LOADER} loader needs one pair of marker lines:\n{BEGIN}{END}"
            "(put them where capabilities, settings_group_validation and settings go)"
        )
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + dump(generated_loader_part(), indent="    ") + END + tail


def render_hub_file(meltano_yml: str) -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    loader = loader_of(yaml.safe_load(meltano_yml))
    urls = project.get("urls", {})
    definition: dict[str, t.Any] = {
        "name": project["name"],
        "namespace": loader["namespace"],
        "variant": VARIANT,
        "label": HUB_FACTS["label"],
        "description": project["description"],
        "executable": loader["executable"],
    }
    # Only what is true: the package is on no index and has no public repository yet, so no
    # pip_url and no docs page to point at (the Hub's schema requires neither); `prereq` says
    # how to install it meanwhile. A repository, once pyproject.toml names one, is listed.
    if "Repository" in urls:
        definition["repo"] = urls["Repository"]
    definition.update(
        {
            "domain_url": HUB_FACTS["domain_url"],
            "keywords": project["keywords"],
            "maintenance_status": HUB_FACTS["maintenance_status"],
            "quality": HUB_FACTS["quality"],
            "prereq": PREREQ,
            "settings_preamble": (
                "The SDK settings "
                + ", ".join(f"`{n}`" for n in HIDDEN_SDK_SETTINGS)
                + " are not offered: they mean nothing to a target that sends postbacks."
            ),
            **generated_loader_part(),
            "commands": loader.get("commands", {}),
        }
    )
    header = (
        "# Meltano Hub plugin definition of target-everflow (the Hub's _data/meltano/loaders/"
        f"target-everflow/{VARIANT}.yml).\n"
        "# Generated by scripts/update_plugin_files.py from the config schema, pyproject.toml and\n"
        "# meltano.yml's commands: do not edit. Use it without the Hub:\n"
        f"#   meltano add --plugin-type loader target-everflow --from-ref {HUB_FILE.relative_to(REPO)} --no-install\n"
        "# then set pip_url to a wheel built from the source (prereq below; README: Install) and meltano install.\n"
    )
    return header + dump(definition)


def loader_is_current(meltano_yml: str) -> bool:
    """The loader's generated keys hold what the schema says, by value: true as well after
    Meltano rewrote the file (``meltano config set ...`` drops comments and markers, reorders
    keys and rewraps lines, but keeps the values)."""
    loader = loader_of(yaml.safe_load(meltano_yml))
    return all(loader.get(key) == value for key, value in generated_loader_part().items())


def regenerate_meltano_yml(text: str) -> str:
    """Between the marker lines when they are there; in a file Meltano rewrote (no markers, no
    comments left), the loader's generated keys are replaced and the file written as YAML."""
    if BEGIN in text and END in text:
        return render_meltano_yml(text)
    project = yaml.safe_load(text)
    loader_of(project).update(generated_loader_part())
    return dump(project)


def main() -> int:
    args = sys.argv[1:]
    meltano_path = MELTANO_YML
    if "--meltano-yml" in args:  # another project file (tests: a copy Meltano rewrote)
        meltano_path = Path(args[args.index("--meltano-yml") + 1])
    current_meltano = meltano_path.read_text(encoding="utf-8")
    wanted_meltano = regenerate_meltano_yml(current_meltano)
    wanted_hub = render_hub_file(wanted_meltano)
    current_hub = HUB_FILE.read_text(encoding="utf-8") if HUB_FILE.exists() else None
    if "--check" in args:
        stale = []
        if not loader_is_current(current_meltano):
            stale.append(meltano_path.name)
        if current_hub != wanted_hub:
            stale.append(str(HUB_FILE.relative_to(REPO)))
        if stale:
            print(
                f"{', '.join(stale)} out of date: run python scripts/update_plugin_files.py "
                "(make plugin-files)"
            )
            return 1
        return 0
    meltano_path.write_text(wanted_meltano, encoding="utf-8")
    HUB_FILE.parent.mkdir(parents=True, exist_ok=True)
    HUB_FILE.write_text(wanted_hub, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
