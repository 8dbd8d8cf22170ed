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

from target_everflow.adapter.commands.options import PROG, config_option, load_target
from target_everflow.errors import EXIT_OK

if t.TYPE_CHECKING:
    from collections.abc import Sequence


# Operator commands defined in their own modules (adapter/commands/), imported only when named:
# they share adapter/commands/options.py with this module, never import it. One line per command.
LAZY_COMMANDS = {
    "history": "target_everflow.adapter.commands.history:history_command",
    "ledger": "target_everflow.adapter.commands.ledger:ledger_command",
    "reconcile": "target_everflow.adapter.commands.reconcile:reconcile_command",
    "report": "target_everflow.adapter.commands.report:report_command",
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
        from target_everflow.adapter.target import TargetEverflow  # heavy, load on use

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


@cli.command("check")
@config_option
def check_command(config: tuple[str, ...]) -> None:
    """Only check the Everflow API key and event mapping (the same as --check)."""
    target = load_target(config)
    sys.exit(target.main(None, check=True) if target else EXIT_OK)


def main() -> None:
    """The console script."""
    cli.main(prog_name=PROG)
