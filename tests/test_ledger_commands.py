"""``target-everflow ledger status | in-doubt | release | forget`` (issue 14), on SQLite and
PostgreSQL ledgers, and the Meltano commands that run them."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    REPO,
    dead_letter_records,
    run_cli,
    run_target,
    singer_lines,
    track,
)
from tests.ledgers import Backend, backend, cli, put, rows  # noqa: F401 - the fixture
from tests.receiver import Answer, Receiver

DEAD_RUN = "gone-host:4242:0badcafe"


def live(
    base_config: dict, backend: Backend, url: str = "https://www.example-tracking.test/", **changes
) -> dict:
    return {**base_config, "postback_url": url, "ledger_url": backend.url, **changes}


def opened(config: dict, tmp_path: Path) -> None:
    """Creates the ledger's tables as a run does (a run with nothing to send)."""
    assert run_target(config, singer_lines("orders", []), tmp_path).code == 0


def test_release_then_replay_sends_an_in_doubt_dead_letter_exactly_once(
    backend: Backend, base_config, tmp_path
):
    with Receiver(script=Receiver.per_transaction({"tx-1": [Answer.drop()]})) as rx:
        config = live(
            base_config, backend, rx.url, in_doubt="dead_letter", **DEAD_LETTERS_ON_PURPOSE
        )
        first = run_target(config, singer_lines("orders", [track(1), track(2)]), tmp_path)
        assert first.code == 0, first.stderr[-2000:]
        assert rx.count_by_transaction() == {"tx-2": 1}  # tx-1 got no answer: in doubt
        (dead,) = dead_letter_records(Path(config["dead_letter_path"]))
        assert dead["reason"] == "in_doubt"
        replay = tmp_path / "retry.jsonl"
        Path(config["dead_letter_path"]).rename(replay)

        # Today: its key stays held, so the replay only counts it as a duplicate.
        held = run_target(config, [], tmp_path, args=["--input", str(replay)])
        assert held.code == 0
        assert [r.transaction_id for r in rx.requests].count("tx-1") == 1
        assert cli(config, "history", "--json", tmp_path=tmp_path).json()[0]["skipped"] == 1

        listed = cli(config, "ledger", "in-doubt", "--json", tmp_path=tmp_path)
        assert listed.code == 0, listed.stderr
        (key,) = listed.json()
        first_run = cli(config, "history", "--json", tmp_path=tmp_path).json()[-1]["run_id"]
        assert (key["delivery_key"], key["status"], key["run"]) == (
            "m:msg-1",
            "in_doubt",
            first_run,
        )

        released = cli(config, "ledger", "release", "--all-in-doubt", "--yes", tmp_path=tmp_path)
        assert released.code == 0, released.stderr
        assert "Released 1 key(s)" in released.stdout and "m:msg-1" in released.stdout
        assert "m:msg-1" not in rows(backend)

        # After the release the replay sends it, once; a second replay is a duplicate again.
        sent = run_target(config, [], tmp_path, args=["--input", str(replay)])
        assert sent.code == 0, sent.stderr[-2000:]
        again = run_target(config, [], tmp_path, args=["--input", str(replay)])
        assert again.code == 0
        accepted = rx.count_by_transaction()
    assert accepted == {"tx-1": 1, "tx-2": 1}
    assert rows(backend)["m:msg-1"] == "delivered"
    assert cli(config, "ledger", "in-doubt", "--json", tmp_path=tmp_path).json() == []


def test_in_doubt_lists_held_keys_and_dead_runs_sending_ones(
    backend: Backend, base_config, tmp_path
):
    config = live(base_config, backend)
    opened(config, tmp_path)
    put(backend, "m:held", "in_doubt", owner=DEAD_RUN, age_days=1)
    put(backend, "m:orphan", "sending", owner=DEAD_RUN, lease_until=time.time() - 60)
    put(backend, "m:in-flight", "sending", owner=DEAD_RUN, lease_until=time.time() + 600)
    put(backend, "m:done", "delivered")
    put(backend, "m:claimed", "pending", owner=DEAD_RUN, lease_until=time.time() - 60)  # never sent
    table = cli(config, "ledger", "in-doubt", tmp_path=tmp_path)
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("2 in-doubt key(s) in ledger")
    assert lines[1].split() == [
        "Key",
        "State",
        "Stream",
        "Event",
        "Transaction",
        "Held",
        "by",
        "run",
        "Since",
        "(UTC)",
    ]
    assert lines[3].split()[:2] == ["m:held", "held"] and DEAD_RUN in lines[3]
    assert lines[4].split()[:4] == ["m:orphan", "sending,", "run", "gone"]

    # The claim-time columns (filled when a run claims a key) are shown.
    backend.sql(
        "UPDATE {t} SET stream = 'segment_shop-order_completed', event = 'Order Completed',"
        " transaction_id = 'tx\x07bell' WHERE delivery_key = 'm:held'"
    )
    rows = {
        r["delivery_key"]: r
        for r in cli(config, "ledger", "in-doubt", "--json", tmp_path=tmp_path).json()
    }
    assert set(rows) == {"m:held", "m:orphan"}
    assert (
        rows["m:held"]["stream"],
        rows["m:held"]["event"],
        rows["m:held"]["transaction_id"],
    ) == ("segment_shop-order_completed", "Order Completed", "tx\x07bell")
    assert rows["m:orphan"]["event"] is None
    table = cli(config, "ledger", "in-doubt", tmp_path=tmp_path).stdout
    assert "segment_shop-order_completed  Order Completed  tx\\x07bell" in table  # escaped


def test_status_counts_keys_by_status_and_names_the_oldest_pending(
    backend: Backend, base_config, tmp_path
):
    config = live(base_config, backend)
    opened(config, tmp_path)
    for i in range(3):
        put(backend, f"m:d{i}", "delivered")
    put(backend, "m:held", "in_doubt")
    put(backend, "m:new", "pending", owner=DEAD_RUN, lease_until=time.time() + 600)
    put(backend, "m:old", "sending", owner=DEAD_RUN, lease_until=time.time() - 60, age_days=2)
    status = cli(config, "ledger", "status", "--json", tmp_path=tmp_path)
    assert status.code == 0, status.stderr
    data = status.json()
    assert data["counts"] == {"delivered": 3, "pending": 1, "sending": 1, "in_doubt": 1}
    assert data["total"] == 6 and data["in_doubt_orphaned"] == 1
    oldest = data["oldest_pending"]
    assert (oldest["delivery_key"], oldest["status"], oldest["run"], oldest["lease_expired"]) == (
        "m:old",
        "sending",
        DEAD_RUN,
        True,
    )
    text = cli(config, "ledger", "status", tmp_path=tmp_path).stdout
    assert "delivered     3" in text and "in_doubt      1" in text and "total         6" in text
    assert (
        "Oldest pending: m:old (sending), claimed" in text
        and "(2.0 d ago) by run " + DEAD_RUN in text
    )
    assert "1 sending key(s) belong to runs that died" in text


def test_forget_prunes_delivered_and_held_keys_and_runs_older_than_days(
    backend: Backend, base_config, tmp_path
):
    config = live(base_config, backend)
    opened(config, tmp_path)
    put(backend, "m:old-delivered", "delivered", age_days=40)
    put(backend, "m:old-held", "in_doubt", age_days=40)
    put(backend, "m:old-claim", "pending", owner=DEAD_RUN, age_days=40)
    put(backend, "m:recent", "delivered", age_days=5)
    backend.sql("UPDATE {t}_runs SET started_at = started_at - 40 * 86400")  # the run of opened()
    opened(config, tmp_path)  # and one from today
    forgot = cli(config, "ledger", "forget", "--older-than", "30", tmp_path=tmp_path)
    assert forgot.code == 0, forgot.stderr
    assert forgot.stdout.startswith(
        "Forgot 2 delivered or held key(s) and 1 run(s) older than 30 days"
    )
    assert rows(backend) == {"m:old-claim": "pending", "m:recent": "delivered"}
    assert len(cli(config, "history", "--json", tmp_path=tmp_path).json()) == 1
    assert cli(config, "ledger", "forget", tmp_path=tmp_path).code == 2  # --older-than is required
    for days in ("nan", "inf"):
        refused = cli(config, "ledger", "forget", "--older-than", days, tmp_path=tmp_path)
        assert (refused.code, refused.stdout) == (1, "")
        assert refused.stderr.splitlines() == [
            "target-everflow: Option --older-than: must be a number >= 0 and <= 36500, "
            f"not the text '{days}'"
        ]
    assert rows(backend) == {"m:old-claim": "pending", "m:recent": "delivered"}


def test_release_refuses_without_a_terminal_or_yes(backend: Backend, base_config, tmp_path):
    config = live(base_config, backend)
    opened(config, tmp_path)
    put(backend, "m:held", "in_doubt")
    for args in (["--all-in-doubt"], ["m:held"]):
        refused = cli(config, "ledger", "release", *args, tmp_path=tmp_path)  # stdin: /dev/null
        assert refused.code == 1 and refused.stdout == ""
        assert refused.stderr.splitlines() == [
            "target-everflow: ledger release: refusing without confirmation: run it on a terminal, or add --yes"
        ]
    assert rows(backend) == {"m:held": "in_doubt"}
    bad = cli(config, "ledger", "release", "--yes", tmp_path=tmp_path)
    assert bad.code == 1 and "name the keys to release, or give --all-in-doubt" in bad.stderr


def _on_a_terminal(config_path: Path, answer: bytes, cwd: Path) -> tuple[int, str]:
    """``ledger release --all-in-doubt`` with a pseudo-terminal as stdin, stdout and stderr,
    answering ``answer`` to its question."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "target_everflow",
            "ledger",
            "release",
            "--all-in-doubt",
            "--config",
            str(config_path),
        ],
        stdin=child,
        stdout=child,
        stderr=child,
        cwd=cwd,
        close_fds=True,
    )
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"Release them? [y/N]" in seen:
            os.write(main, answer)
            answered = True
        if proc.poll() is not None and not ready:
            break
    os.close(main)
    return proc.wait(10), seen.decode(errors="replace")


def test_release_asks_on_a_terminal(backend: Backend, base_config, tmp_path):
    config = live(base_config, backend)
    opened(config, tmp_path)
    put(backend, "m:held", "in_doubt")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, said = _on_a_terminal(path, b"n\n", tmp_path)
    assert code == 1 and "Releasing 1 key(s)" in said and "Nothing released." in said
    assert rows(backend) == {"m:held": "in_doubt"}
    code, said = _on_a_terminal(path, b"y\n", tmp_path)
    assert code == 0 and "Released 1 key(s)" in said, said
    assert rows(backend) == {}


def test_release_named_keys(backend: Backend, base_config, tmp_path):
    """A delivered key may be released (a conversion Everflow is known not to have); a key a
    live run holds is not; an unknown key is reported. Exit 1 when any key was not released."""
    config = live(base_config, backend)
    opened(config, tmp_path)
    put(backend, "m:done", "delivered")
    put(backend, "m:held", "in_doubt")
    put(backend, "m:live", "pending", owner=DEAD_RUN, lease_until=time.time() + 600)
    put(backend, "m:stale", "pending", owner=DEAD_RUN, lease_until=time.time() - 1)
    result = cli(
        config,
        "ledger",
        "release",
        "m:done",
        "m:held",
        "m:live",
        "m:stale",
        "m:nope",
        "--yes",
        tmp_path=tmp_path,
    )
    assert result.code == 1
    assert "Releasing 3 key(s)" in result.stdout and "1 of them were delivered" in result.stdout
    assert "SENT AGAIN" in result.stdout and "Released 3 key(s)" in result.stdout
    assert "m:live: claimed by a live run right now: not released" in result.stderr
    assert "m:nope: not in the ledger (nothing to release)" in result.stderr
    assert rows(backend) == {"m:live": "pending"}
    ok = cli(config, "ledger", "release", "--all-in-doubt", "--yes", tmp_path=tmp_path)
    assert ok.code == 0 and "No in-doubt keys" in ok.stdout


def test_commands_need_a_ledger_they_can_open(base_config, tmp_path):
    config = {**base_config, "postback_url": "https://www.example-tracking.test/"}
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (["ledger", "status"], ["ledger", "in-doubt"], ["history"]):
        result = cli(
            {**config, "ledger_url": f"sqlite:///{blocker}/ledger.db"}, *args, tmp_path=tmp_path
        )
        assert result.code == 4, result.stderr
        assert len(result.stderr.splitlines()) == 1 and "cannot open the ledger" in result.stderr
        result = cli({**config, "ledger_url": "none"}, *args, tmp_path=tmp_path)
        assert result.code == 1 and "there is no ledger" in result.stderr


def test_meltano_commands_run_the_subcommands(backend: Backend, base_config, tmp_path):
    """Each Meltano plugin command of meltano.yml, as Meltano invokes it (settings as
    TARGET_EVERFLOW_* variables, ``--config ENV``), plus the arguments a user adds."""
    (loader,) = [
        p
        for p in yaml.safe_load((REPO / "meltano.yml").read_text())["plugins"]["loaders"]
        if p["name"] == "target-everflow"
    ]
    commands = loader["commands"]
    config = live(base_config, backend, **DEAD_LETTERS_ON_PURPOSE)
    opened(config, tmp_path)
    put(backend, "m:held", "in_doubt")
    env = {
        f"TARGET_EVERFLOW_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
        for k, v in config.items()
    }
    added = {
        "history": ["--json"],
        "ledger-status": [],
        "ledger-in-doubt": [],
        "ledger-release": ["m:held", "--yes"],
        "ledger-forget": ["--older-than", "30"],
    }
    for name, extra in added.items():
        args = commands[name]["args"].split() + extra
        proc = run_cli(args, cwd=tmp_path, env=env)
        assert proc.code == 0, (name, proc.stderr)
    assert rows(backend) == {}


def test_ledger_help_lists_its_commands(tmp_path):
    proc = run_cli(["ledger", "--help"], cwd=tmp_path)
    assert proc.code == 0
    for command in ("status", "in-doubt", "release", "forget"):
        assert f"  {command} " in proc.stdout, proc.stdout
