"""The operator commands as Meltano plugin commands (meltano.yml: history, ledger-*), the way
README documents them: ``meltano invoke target-everflow:<command> [ARGS]``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import singer_lines, track
from tests.e2e.conftest import Meltano, target_env
from tests.e2e.fixtures import scenario
from tests.receiver import Answer, Receiver

pytestmark = pytest.mark.e2e


def run_target(
    e2e_dir: Path, rx: Receiver, *, lines: list[str] | None = None, replay: Path | None = None
) -> int:
    """The installed target on its own, with the settings the e2e environment gives it."""
    config = {
        "postback_url": rx.url, "network_id": scenario.NETWORK_ID, "advertiser_id": scenario.ADVERTISER_ID,
        "verification_token": scenario.VERIFICATION_TOKEN, "event_mapping": {"Order Completed": 0},
        "dead_letter_path": str(e2e_dir / "state" / "dead_letter.jsonl"), "in_doubt": "dead_letter",
        "progress_interval": 0, "request_timeout": 5, "max_dead_letter_ratio": 1,
    }  # fmt: skip
    path = e2e_dir / "target.json"
    path.write_text(json.dumps(config))
    args = ["--input", str(replay)] if replay else []
    proc = subprocess.run(
        [sys.executable, "-m", "target_everflow", "--config", str(path), *args],
        input="\n".join(lines or []) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=e2e_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.returncode


def test_history_and_ledger_commands_through_meltano(meltano: Meltano, e2e_dir: Path) -> None:
    with Receiver(script=Receiver.per_transaction({"tx-1": [Answer.drop()]})) as rx:
        env = target_env(rx.url, e2e_dir)
        run_target(e2e_dir, rx, lines=singer_lines("orders", [track(1), track(2)]))  # tx-1 in doubt

        def invoke(command: str, *args: str) -> str:
            result = meltano(
                "--environment=e2e",
                "invoke",
                f"target-everflow:{command}",
                *args,
                env=env,
                timeout=120,
            )
            assert result.code == 0, result.tail()
            assert scenario.VERIFICATION_TOKEN not in result.stdout + result.stderr
            return result.stdout

        history = invoke("history", "--json")
        assert '"exit_code": 0' in history and '"dead_lettered": 1' in history
        assert "m:msg-1" in invoke("ledger-in-doubt")
        assert "in_doubt" in invoke("ledger-status")
        released = invoke("ledger-release", "m:msg-1", "--yes")
        assert "Released 1 key(s)" in released
        assert "Forgot 0" in invoke("ledger-forget", "--older-than", "30")

        replay = e2e_dir / "retry.jsonl"
        (e2e_dir / "state" / "dead_letter.jsonl").rename(replay)
        run_target(e2e_dir, rx, replay=replay)
        assert rx.count_by_transaction() == {"tx-1": 1, "tx-2": 1}
