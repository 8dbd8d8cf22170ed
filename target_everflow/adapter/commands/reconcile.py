"""``target-everflow reconcile --config config.json``: did Everflow count what was delivered?

The work is in ``target_everflow/reconcile/reconciler.py`` (also run after a normal run with
``reconcile: true``); this module is the command line: the summary on stdout, one line on
stderr for an error, exit 0 / 6 (something rejected or not found) / the error's code.
"""

from __future__ import annotations

import signal
import sys
import typing as t

import click

from target_everflow.adapter.commands.options import config_option, fail, load_target
from target_everflow.errors import TargetEverflowError, Terminated
from target_everflow.reconcile.reconciler import reconcile

_SIGNALLED: list[int] = []


def _raise_terminated(signum: int, _frame: t.Any) -> None:
    _SIGNALLED.append(signum)
    raise Terminated(signum)


def _reconcile(config: tuple[str, ...]) -> None:
    target = load_target(config)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _raise_terminated)  # claims are given back, then 128 + signal
    try:
        code = reconcile(target.settings, target.logger, click.echo)
    except TargetEverflowError as exc:
        # A signal may surface as another error (a ledger transaction it interrupted).
        fail(Terminated(_SIGNALLED[0]) if _SIGNALLED else exc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.exit(code)


reconcile_command = click.Command(
    "reconcile",
    callback=_reconcile,
    help=(
        "Check every delivered conversion against Everflow's conversion report (exit 6 when "
        "some were rejected or not found)."
    ),
)

config_option(reconcile_command)
