"""What every operator command shares: ``--config``, ``--json``, building the target from the
config exactly as a run does, and failing with one line."""

from __future__ import annotations

import sys
import typing as t

import click

from target_everflow.errors import TargetEverflowError

if t.TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from target_everflow.adapter.target import TargetEverflow  # heavy, loaded when a command runs

PROG = "target-everflow"


def config_option(fn: Callable[..., t.Any]) -> Callable[..., t.Any]:
    """``--config``: a JSON file (repeatable, later files win) or ``ENV``, as for the target."""
    return click.option(
        "--config",
        "config",
        multiple=True,
        required=True,
        metavar="FILE|ENV",
        help="Configuration file(s) as for the target, or ENV for TARGET_EVERFLOW_* variables.",
    )(fn)


def json_option(what: str) -> Callable[[Callable[..., t.Any]], Callable[..., t.Any]]:
    """``--json`` (parameter ``as_json``): print ``what`` as JSON instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} instead.")


def load_target(config: Sequence[str]) -> TargetEverflow:
    """The target built from ``--config`` exactly as a run would build it (schema defaults,
    validation, ENV parsing); a bad setting exits 1 with one line."""
    from singer_sdk.exceptions import ConfigValidationError  # heavy, loaded when a command runs

    from target_everflow.adapter.target import TargetEverflow

    parse_env = "ENV" in config
    files = [c for c in config if c != "ENV"]
    try:
        return TargetEverflow(
            config=files or None, parse_env_config=parse_env, validate_config=True
        )
    except ConfigValidationError as exc:
        for error in exc.errors or [str(exc)]:
            click.echo(f"{PROG}: {error}", err=True)
        sys.exit(1)
    except FileNotFoundError as exc:
        click.echo(f"{PROG}: {exc}", err=True)
        sys.exit(1)


def fail(exc: TargetEverflowError) -> t.NoReturn:
    """One line on stderr, the error's exit code."""
    click.echo(f"{PROG}: {exc}", err=True)
    sys.exit(exc.exit_code)
