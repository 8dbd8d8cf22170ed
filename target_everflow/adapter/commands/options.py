"""What every operator command shares: ``--config``, ``--json``, building the target from the
config exactly as a run does, and failing with one line."""

from __future__ import annotations

import sys
import typing as t

import click

from target_everflow.errors import EXIT_CONFIG, TargetEverflowError
from target_everflow.masking import mask

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


def number_option(
    *decls: str, integer: bool, minimum: float, maximum: float, **kwargs: t.Any
) -> Callable[[Callable[..., t.Any]], Callable[..., t.Any]]:
    """A numeric option: finite and from ``minimum`` to ``maximum`` (said in its help), read
    like a number setting; anything else exits 1 with one line naming the option."""
    spec = {"type": "integer" if integer else "number", "minimum": minimum, "maximum": maximum}
    name = max((d for d in decls if d.startswith("--")), key=len)

    def check(ctx: click.Context, _param: click.Parameter, value: t.Any) -> int | float | None:
        from target_everflow.settings import ConfigError, check_number

        if value is None:
            return None
        try:
            return check_number(name, value, spec)
        except ConfigError as exc:
            click.echo(f"{PROG}: Option {name}: {exc.problem}", err=True)
            ctx.exit(EXIT_CONFIG)

    kwargs["help"] = f"{kwargs.get('help', '')} ({minimum} to {maximum})".strip()
    return click.option(*decls, type=click.STRING, callback=check, **kwargs)


def load_target(config: Sequence[str]) -> TargetEverflow:
    """The target built from ``--config`` exactly as a run would build it (schema defaults,
    validation, ENV parsing); a bad setting exits 1 with one line."""
    from singer_sdk.exceptions import ConfigValidationError  # heavy, loaded when a command runs

    from target_everflow.adapter.target import TargetEverflow

    parse_env = "ENV" in config
    files = [c for c in config if c != "ENV"]
    try:
        target = TargetEverflow(config=files, parse_env_config=parse_env, validate_config=True)
    except ConfigValidationError as exc:
        for error in exc.errors or [str(exc)]:
            click.echo(mask(f"{PROG}: {error}"), err=True)
        sys.exit(EXIT_CONFIG)
    # The command's own output (tables, JSON, messages) goes through the masking rule too.
    sys.stdout, sys.stderr = MaskedStream.wrap(sys.stdout), MaskedStream.wrap(sys.stderr)
    return target


class MaskedStream:
    """A text stream whose every write is masked (``masking.mask``): an operator command's
    output after its settings (and so its secrets) are known."""

    def __init__(self, stream: t.TextIO) -> None:
        self._stream = stream

    @classmethod
    def wrap(cls, stream: t.TextIO) -> t.TextIO:
        return stream if isinstance(stream, cls) else t.cast(t.TextIO, cls(stream))

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # a text stream (click tells one from a binary one so)
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._stream.write(mask(text))
        return len(text)

    def __getattr__(self, name: str) -> t.Any:
        if name == "buffer":  # no way around the masking
            raise AttributeError(name)
        return getattr(self._stream, name)


def fail(exc: TargetEverflowError) -> t.NoReturn:
    """One line on stderr (secrets masked), the error's exit code."""
    click.echo(mask(f"{PROG}: {exc}"), err=True)
    sys.exit(exc.exit_code)
