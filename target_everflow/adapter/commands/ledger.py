"""``target-everflow ledger ...``: look into the idempotency ledger and act on it.

Each command takes ``--config`` like the target and opens the ledger a run with that config
would use (``ledger_url``, else the SQLite file next to the dead letters), SQLite or PostgreSQL:

* ``status``: keys by status, and the oldest claim not yet delivered;
* ``in-doubt``: the keys held for a person (an in-doubt conversion dead-lettered with
  ``in_doubt: dead_letter``) and claims a run marked *sending* and then died with, each with its
  stream, event, transaction and the run that held it;
* ``release KEY... | --all-in-doubt``: makes keys sendable again (deletes their rows), so that
  replaying their dead letters sends them. Asks first on a terminal; ``--yes`` for scripts;
  refuses without either. A delivered key may be released too: its conversion is then sent
  again when replayed (for a conversion Everflow is known not to have recorded);
* ``forget --older-than DAYS``: prunes delivered and held keys, and runs of the history, older
  than DAYS days.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import typing as t

import click

from target_everflow.adapter.commands.options import (
    PROG,
    config_option,
    fail,
    json_option,
    load_target,
    number_option,
)
from target_everflow.errors import LedgerUnavailable, TargetEverflowError
from target_everflow.ledger import (
    DELIVERED_STATUS,
    HELD_STATUS,
    PENDING_STATUS,
    SENDING_STATUS,
    LedgerError,
    SQLLedger,
    open_ledger,
)
from target_everflow.ledger.admin import (
    MAX_LISTED,
    forget,
    in_doubt_rows,
    key_counts,
    releasable,
    release_unchanged,
)
from target_everflow.text import clip, utc_time

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

STATUSES = (DELIVERED_STATUS, PENDING_STATUS, SENDING_STATUS, HELD_STATUS)
MAX_CELL = 80
SHOWN_KEYS = 20
COMMAND_LEASE_SECONDS = 60.0  # the commands claim nothing; the ledger wants a lease all the same


# --- helpers shared with history.py ---------------------------------------------------------


@contextlib.contextmanager
def configured_ledger(config: Sequence[str]) -> Iterator[SQLLedger]:
    """The ledger of ``--config``, opened without pruning; a failure exits with one line."""

    settings = load_target(config).settings
    if (settings.ledger_url or "").strip().lower() == "none":
        fail(TargetEverflowError("Setting 'ledger_url' is none: there is no ledger to look into."))
    logger = logging.getLogger("target_everflow.commands")
    logger.setLevel(logging.WARNING)
    try:
        ledger = open_ledger(
            settings.ledger_url,
            default_dir=settings.state_dir,
            lease_seconds=COMMAND_LEASE_SECONDS,
            retention_days=0,
            timeout=settings.ledger_timeout,
            logger=logger,
        )
    except LedgerError as exc:
        fail(LedgerUnavailable(str(exc)))
    assert isinstance(ledger, SQLLedger)
    try:
        yield ledger
    except LedgerError as exc:
        fail(LedgerUnavailable(str(exc)))
    finally:
        with contextlib.suppress(LedgerError):
            ledger.close()


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def cell(value: t.Any, limit: int = MAX_CELL) -> str:
    """A value as one table cell: control characters escaped, at most ``limit`` characters."""
    if value is None:
        return ""
    text = str(value)
    if not text.isprintable():
        text = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
        )
    return clip(text, limit)


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()
) -> str:
    """Plain-text columns, two spaces apart (``right``: column indexes aligned right)."""
    rows = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    right = set(right)

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _shown_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(cell(k) for k in keys[:SHOWN_KEYS])
    more = len(keys) - SHOWN_KEYS
    return shown + (f" and {more} more" if more > 0 else "")


# --- the commands ---------------------------------------------------------------------------


@click.group("ledger")
def ledger_command() -> None:
    """Look into the idempotency ledger and act on it (SQLite or PostgreSQL)."""


@ledger_command.command("status")
@config_option
@json_option("the counts as JSON")
def status_command(config: tuple[str, ...], as_json: bool) -> None:
    """Keys by status, and the oldest claim not yet delivered."""
    with configured_ledger(config) as ledger:
        counts, oldest, orphaned, now = key_counts(ledger)
        where = ledger.description
    counts = {s: counts.get(s, 0) for s in STATUSES} | counts
    pending: dict[str, t.Any] | None = None
    if oldest is not None:
        pending = {
            "delivery_key": oldest.delivery_key,
            "status": oldest.status,
            "run": oldest.owner,
            "claimed_at": oldest.created_at,
            "lease_until": oldest.lease_until,
            "lease_expired": oldest.lease_until is None or oldest.lease_until <= now,
        }
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ledger": where,
                    "counts": counts,
                    "total": sum(counts.values()),
                    "in_doubt_orphaned": orphaned,
                    "oldest_pending": pending,
                },
                indent=2,
            )
        )
        return
    notes = {
        DELIVERED_STATUS: "accepted by Everflow (a replay skips them as duplicates)",
        PENDING_STATUS: "claimed by a run, not sent yet",
        SENDING_STATUS: "claimed by a run, postback on its way",
        HELD_STATUS: f"in doubt, held for a person: {PROG} ledger in-doubt",
    }
    click.echo(f"Ledger {where}:")
    rows = [[status, str(n), notes.get(status, "")] for status, n in counts.items()]
    rows.append(["total", str(sum(counts.values())), ""])
    click.echo(format_table(["Status", "Keys", ""], rows, right=[1]))
    if orphaned:
        click.echo(
            f"{orphaned} sending key(s) belong to runs that died: in doubt "
            f"({PROG} ledger in-doubt)."
        )
    if pending is None:
        click.echo("Oldest pending: none.")
    else:
        state = (
            "lease expired: its run is gone, the next run takes it over"
            if pending["lease_expired"]
            else "its run is live"
        )
        click.echo(
            f"Oldest pending: {cell(pending['delivery_key'])} ({pending['status']}), claimed "
            f"{utc_time(pending['claimed_at'])} UTC ({ago(now - pending['claimed_at'])} ago) by run "
            f"{cell(pending['run'])}; {state}."
        )


def _label(row: dict[str, t.Any]) -> str:
    return {
        HELD_STATUS: "held",
        SENDING_STATUS: "sending, run gone",
        PENDING_STATUS: "pending, run gone",
    }.get(row["status"], row["status"])


@ledger_command.command("in-doubt")
@config_option
@json_option("the keys as JSON")
def in_doubt_command(config: tuple[str, ...], as_json: bool) -> None:
    """In-doubt keys: held for a person, or claimed and sent by a run that died."""
    with configured_ledger(config) as ledger:
        rows, _ = in_doubt_rows(ledger)
        where = ledger.description
    more = len(rows) > MAX_LISTED
    rows = rows[:MAX_LISTED]
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "delivery_key": r["delivery_key"],
                        "status": r["status"],
                        "stream": r["stream"],
                        "event": r["event"],
                        "transaction_id": r["transaction_id"],
                        "run": r["owner"],
                        "since": r["updated_at"],
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        click.echo(f"No in-doubt keys in ledger {where}.")
        return
    click.echo(f"{len(rows)}{'+' if more else ''} in-doubt key(s) in ledger {where}:")
    click.echo(
        format_table(
            ["Key", "State", "Stream", "Event", "Transaction", "Held by run", "Since (UTC)"],
            [
                [
                    r["delivery_key"],
                    _label(r),
                    r["stream"],
                    r["event"],
                    r["transaction_id"],
                    r["owner"],
                    utc_time(r["updated_at"]),
                ]
                for r in rows
            ],
        )
    )
    click.echo(
        "Check each in Everflow's conversion report; to send one again: "
        f"{PROG} ledger release KEY (or --all-in-doubt), then replay its dead letter."
    )


@ledger_command.command("release")
@config_option
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@click.option(
    "--all-in-doubt", is_flag=True, help="Release every in-doubt key (see ledger in-doubt)."
)
@click.option(
    "--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal)."
)
def release_command(
    config: tuple[str, ...], keys: tuple[str, ...], all_in_doubt: bool, yes: bool
) -> None:
    """Make keys sendable again: a replay of their records sends them.

    KEY is a delivery key as `ledger in-doubt` shows it (m:<messageId>, ...). A delivered key may
    be released too: its conversion is sent again when replayed.
    """
    if bool(keys) == all_in_doubt:
        fail(
            TargetEverflowError("ledger release: name the keys to release, or give --all-in-doubt")
        )
    if not yes and not sys.stdin.isatty():
        fail(
            TargetEverflowError(
                "ledger release: refusing without confirmation: run it on a terminal, or add --yes"
            )
        )
    wanted = list(dict.fromkeys(keys))
    with configured_ledger(config) as ledger:
        rows, now = in_doubt_rows(ledger, None if all_in_doubt else wanted)
        rows = rows[:MAX_LISTED]
        found = {r["delivery_key"] for r in rows}
        missing = [k for k in wanted if k not in found]
        busy = [r["delivery_key"] for r in rows if not releasable(r, now)]
        plan = [r for r in rows if releasable(r, now)]
        for key in missing:
            click.echo(f"{cell(key)}: not in the ledger (nothing to release)", err=True)
        for key in busy:
            click.echo(f"{cell(key)}: claimed by a live run right now: not released", err=True)
        if not plan:
            if all_in_doubt:
                click.echo(f"No in-doubt keys in ledger {ledger.description}: nothing to release.")
                return
            sys.exit(1)
        delivered = sum(1 for r in plan if r["status"] == DELIVERED_STATUS)
        click.echo(
            f"Releasing {len(plan)} key(s) in ledger {ledger.description}: "
            f"{_shown_keys([r['delivery_key'] for r in plan])}"
        )
        if delivered:
            click.echo(
                f"{delivered} of them were delivered: their conversions are SENT AGAIN "
                "when replayed."
            )
        if not yes and not click.confirm("Release them?", default=False):
            click.echo("Nothing released.", err=True)
            sys.exit(1)
        released = release_unchanged(ledger, plan)
    changed = [r["delivery_key"] for r in plan if r["delivery_key"] not in released]
    for key in changed:
        click.echo(f"{cell(key)}: changed meanwhile (claimed by a run): not released", err=True)
    click.echo(
        f"Released {len(released)} key(s): a replay of their records sends them "
        "(dead letters: see README, 'Dead letters')."
    )
    if missing or busy or changed:
        sys.exit(1)


@ledger_command.command("forget")
@config_option
@number_option(
    "--older-than",
    "days",
    integer=False,
    minimum=0,
    maximum=36500,
    required=True,
    metavar="DAYS",
    help="Forget delivered and held keys, and runs, older than this many days.",
)
def forget_command(config: tuple[str, ...], days: float) -> None:
    """Prune delivered and held keys (and the run history) older than DAYS days.

    A conversion replayed after its key is forgotten is no longer recognised as a duplicate.
    """
    with configured_ledger(config) as ledger:
        keys, runs = forget(ledger, days)
        where = ledger.description
    click.echo(
        f"Forgot {keys} delivered or held key(s) and {runs} run(s) older than {days:g} "
        f"days in ledger {where}."
    )
