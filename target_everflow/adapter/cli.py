"""The target-everflow command: a Singer target, plus operator subcommands.

Without a COMMAND (target-everflow --config config.json, --about, --check, --input) it is the
Singer target, exactly as singer-sdk builds it. A first argument that names a COMMAND runs that
operator command instead; each takes --config like the target (a JSON file, several, or ENV).
"""

from __future__ import annotations

import importlib
import sys
import typing as t

import click

from target_everflow.errors import EXIT_OK, TargetEverflowError

if t.TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from target_everflow.adapter.target import TargetEverflow

PROG = "target-everflow"


# Operator commands defined in their own modules, imported only when named (no import loop:
# those modules import this one for config_option/json_option/load_target/fail). One line per command.
LAZY_COMMANDS = {
    "history": "target_everflow.history:history_command",
    "ledger": "target_everflow.ledger_commands:ledger_command",
    "reconcile": "target_everflow.reconcile:reconcile_command",
    "report": "target_everflow.report:report_command",
}


class TargetGroup(click.Group):
    """A click group whose plain invocation is the Singer target command itself."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return self.commands.get(cmd_name)

    def _target_command(self) -> click.Command:
        from target_everflow.adapter.target import TargetEverflow  # noqa: PLC0415 - heavy, load on use

        return TargetEverflow.cli

    def main(  # type: ignore[override]  # every argument goes to the target command or a COMMAND
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: t.Any
    ) -> t.Any:
        argv = list(sys.argv[1:] if args is None else args)
        if argv and (argv[0] in self.commands or argv[0] in LAZY_COMMANDS):
            return super().main(argv, prog_name=prog_name or PROG, **extra)
        if argv and argv[0] in ("--help", "-h"):
            return super().main(argv, prog_name=prog_name or PROG, **extra)
        return self._target_command().main(argv, prog_name=prog_name or PROG, **extra)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[TARGET OPTIONS] | COMMAND [ARGS]...")

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        with formatter.section("Target options (no COMMAND: run as a Singer target)"):
            target = self._target_command()
            rows = [p.get_help_record(ctx) for p in target.get_params(ctx)]
            formatter.write_dl([r for r in rows if r is not None])


@click.group(cls=TargetGroup, help=__doc__.split("\n\n")[1] if __doc__ else None)
def cli() -> None:
    """The operator commands (the plain invocation is the Singer target)."""


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
    from singer_sdk.exceptions import ConfigValidationError  # noqa: PLC0415 - heavy, loaded when a command runs

    from target_everflow.adapter.target import TargetEverflow  # noqa: PLC0415 - heavy, loaded when a command runs

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


@cli.command("check")
@config_option
def check_command(config: tuple[str, ...]) -> None:
    """Only check the Everflow API key and event mapping (the same as --check)."""
    target = load_target(config)
    sys.exit(target.main(None, check=True) if target else EXIT_OK)


def main() -> None:
    """The console script."""
    cli.main(prog_name=PROG)
