"""Every kind of setting passed by Meltano from a ``TARGET_EVERFLOW_*`` environment variable
(issue 22.3): a number (``kind: string`` in the plugin files: Meltano 4.4.1 cannot pass a
``decimal`` from the environment, "Object of type Decimal is not JSON serializable"), an integer,
a boolean, an option, an object and a string, each in a dry run whose outcome depends on the
value. One Meltano system database for the module; each case is one ``meltano invoke``."""

from __future__ import annotations

import json
import typing as t

import pytest

from tests.conftest import read_jsonl, singer_lines, track
from tests.e2e.conftest import RUN_TIMEOUT, run_command

pytestmark = pytest.mark.e2e


class Invoked(t.NamedTuple):
    code: int
    stdout: str
    stderr: str
    planned: list[dict]
    summary: dict | None


@pytest.fixture(scope="module")
def invoke(
    meltano_plugins: str, tmp_path_factory: pytest.TempPathFactory
) -> t.Callable[..., Invoked]:
    """``meltano invoke target-everflow[:command]`` in the dev environment (a dry run), with the
    given ``TARGET_EVERFLOW_*`` variables and Singer input; its outputs go to a fresh folder."""
    home = tmp_path_factory.mktemp("settings-env")
    base = {
        "MELTANO_DATABASE_URI": f"sqlite:///{home / 'meltano.db'}",
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false", "NO_COLOR": "1",
    }  # fmt: skip
    runs = iter(range(1000))

    def run(env: dict[str, str], lines: list[str] | None = None, command: str = "") -> Invoked:
        out = home / f"run-{next(runs)}"
        out.mkdir()
        full = {**base, "TARGET_EVERFLOW_DRY_RUN_OUTPUT": str(out / "dry_run.jsonl"),
                "TARGET_EVERFLOW_DEAD_LETTER_PATH": str(out / "state" / "dead_letter.jsonl"),
                "TARGET_EVERFLOW_SUMMARY_PATH": str(out / "summary.json"),
                "TARGET_EVERFLOW_PROGRESS_INTERVAL": "0", **env}  # fmt: skip
        proc = run_command(
            [meltano_plugins, "--environment=dev", "invoke", f"target-everflow{command}"],
            full, RUN_TIMEOUT, input="\n".join(lines or []) + "\n",
        )  # fmt: skip
        summary = out / "summary.json"
        return Invoked(
            proc.code,
            proc.stdout,
            proc.stderr,
            read_jsonl(out / "dry_run.jsonl"),
            json.loads(summary.read_text()) if summary.exists() else None,
        )

    return run


def mobile_without_app(i: int) -> dict:
    """Dead-lettered on the default platform (auto: its context says iOS, no app namespace)."""
    record = track(i)
    record["context"]["os"] = {"name": "iOS"}
    return record


ONE_OF_TWO_DEAD = singer_lines("orders", [track(1), mobile_without_app(2)])


def test_a_number_from_the_environment_turns_exit_5_into_0(
    invoke: t.Callable[..., Invoked],
) -> None:
    default = invoke({}, ONE_OF_TWO_DEAD)
    assert default.code == 5, default.stderr[-3000:]
    assert "Decimal" not in default.stderr
    for value in ("1", "0.5"):
        off = invoke({"TARGET_EVERFLOW_MAX_DEAD_LETTER_RATIO": value}, ONE_OF_TWO_DEAD)
        assert off.code == 0, off.stderr[-3000:]
        assert off.summary is not None and off.summary["dead_lettered"] == {
            "missing_required_field": 1
        }
    refused = invoke({"TARGET_EVERFLOW_MAX_DEAD_LETTER_RATIO": "nan"}, ONE_OF_TWO_DEAD)
    assert refused.code == 1, refused.stderr[-3000:]
    assert (
        "Setting 'max_dead_letter_ratio': must be a number >= 0 and <= 1, not the text 'nan'"
        in refused.stderr
    )
    assert "Traceback" not in refused.stderr


def test_an_integer_from_the_environment(invoke: t.Callable[..., Invoked]) -> None:
    env = {"TARGET_EVERFLOW_MAX_DEAD_LETTER_RATIO": "1"}
    assert invoke({**env, "TARGET_EVERFLOW_MAX_DEAD_LETTERS": "1"}, ONE_OF_TWO_DEAD).code == 0
    over = invoke({**env, "TARGET_EVERFLOW_MAX_DEAD_LETTERS": "0"}, ONE_OF_TWO_DEAD)
    assert over.code == 5, over.stderr[-3000:]


def test_an_option_an_object_and_a_boolean_from_the_environment(
    invoke: t.Callable[..., Invoked],
) -> None:
    web = invoke({"TARGET_EVERFLOW_PLATFORM": "web"}, ONE_OF_TWO_DEAD)  # option: no dead letter
    assert web.code == 0, web.stderr[-3000:]
    assert [p["message_id"] for p in web.planned] == ["msg-1", "msg-2"]

    lines = singer_lines("orders", [track(1), track(2, event="Product Viewed")])
    mapping = json.dumps({"Order Completed": 0, "Product Viewed": 24})
    mapped = invoke({"TARGET_EVERFLOW_EVENT_MAPPING": mapping}, lines)  # object
    assert mapped.code == 0, mapped.stderr[-3000:]
    assert [p["params"].get("adv_event_id") for p in mapped.planned] == [None, "24"]

    live = invoke({"TARGET_EVERFLOW_DRY_RUN": "false"}, lines)  # boolean: live needs a URL
    assert live.code == 1, live.stderr[-3000:]
    assert "Setting 'postback_url': is required unless dry_run is true" in live.stderr


def test_reconcile_takes_a_number_from_the_environment(invoke: t.Callable[..., Invoked]) -> None:
    """Before: `TARGET_EVERFLOW_RECONCILE_AFTER_MINUTES=0 meltano invoke target-everflow:reconcile`
    crashed in Meltano ("Object of type Decimal is not JSON serializable")."""
    result = invoke({"TARGET_EVERFLOW_RECONCILE_AFTER_MINUTES": "0"}, command=":reconcile")
    assert "Decimal" not in result.stderr, result.stderr[-3000:]
    assert result.code == 0, result.stderr[-3000:]
    assert result.stdout == "Dry run: reconcile calls no reporting API and checks nothing.\n"
    refused = invoke({"TARGET_EVERFLOW_RECONCILE_AFTER_MINUTES": "1e400"}, command=":reconcile")
    assert refused.code == 1
    assert (
        "Setting 'reconcile_after_minutes': must be a number >= 0 and <= 129600" in refused.stderr
    )
