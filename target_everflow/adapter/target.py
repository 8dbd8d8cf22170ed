"""target-everflow: the Singer target, its settings and its command line."""

from __future__ import annotations

import copy
import difflib
import gc
import json
import logging
import os
import sys
import time
import typing as t
import weakref
from dataclasses import dataclass

import click
from singer_sdk.exceptions import ConfigValidationError, RecordsWithoutSchemaException
from singer_sdk.mapper import SameRecordTransform, StreamMap
from singer_sdk.plugin_base import JSONSchemaValidator
from singer_sdk.singerlib.exceptions import InvalidInputLine
from singer_sdk.target_base import Target

from target_everflow.accounting.summary import escape_control, escape_log_records
from target_everflow.adapter.metrics import point_writer
from target_everflow.adapter.reader import SegmentReader, broken
from target_everflow.adapter.sinks import EverflowSink
from target_everflow.errors import (
    EXIT_CONFIG,
    EXIT_INPUT,
    EXIT_OK,
    ConfigFileError,
    InputError,
    LedgerUnavailable,
    OutputError,
    TargetEverflowError,
    Terminated,
    precedence,
)
from target_everflow.ledger import LedgerError
from target_everflow.ledger.urls import url_secrets
from target_everflow.masking import (
    MIN_FREE_TEXT_LENGTH,
    install_log_masking,
    mask,
    protect,
    too_short,
)
from target_everflow.run import Run
from target_everflow.settings import (
    CONFIG_SCHEMA,
    SECRET_SETTINGS,
    ConfigError,
    Settings,
    json_types,
    numbers_checked,
)
from target_everflow.text import first_line

if t.TYPE_CHECKING:
    from types import FrameType


def _describe_schema_error(error: t.Any) -> str:
    """A config schema error that names the setting and never echoes a secret value."""
    path = ".".join(str(p) for p in error.absolute_path) or "config"
    setting = str(error.absolute_path[0]) if error.absolute_path else ""
    kind, expected = error.validator, error.validator_value
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        problem = "must be " + " or ".join(
            {
                "integer": "an integer",
                "number": "a number",
                "boolean": "true or false",
                "string": "a string",
                "object": "an object",
                "array": "a list",
                "null": "null",
            }.get(str(n), str(n))
            for n in names
        )
    elif kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        problem = f"must be {sign[kind]} {expected}"
    elif kind == "enum":
        problem = "must be one of " + ", ".join(str(v) for v in expected)
    elif kind == "required":
        problem = error.message
    else:
        problem = "is not valid" if setting in SECRET_SETTINGS else error.message
    return f"Setting '{path}': {escape_control(problem)[:300]}"


def read_config_files(paths: t.Sequence[str]) -> dict[str, t.Any]:
    """The settings of ``--config`` files, later files winning, or ``ConfigFileError`` in one
    line naming the file (and the line and column where its JSON breaks)."""
    config: dict[str, t.Any] = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read(CONFIG_FILE_LIMIT + 1)
        except FileNotFoundError:
            raise ConfigFileError(f"Config file '{path}' was not found.") from None
        except OSError as exc:
            raise ConfigFileError(
                f"Config file '{path}' cannot be read: {exc.strerror or type(exc).__name__}."
            ) from None
        if len(data) > CONFIG_FILE_LIMIT:
            raise ConfigFileError(
                f"Config file '{path}' is larger than {CONFIG_FILE_LIMIT // 1024 // 1024} MiB."
            )
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigFileError(
                f"Config file '{path}' is not UTF-8 text (byte {exc.start})."
            ) from None
        try:
            loaded = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise ConfigFileError(
                f"Config file '{path}' is not valid JSON: {exc.msg} at line {exc.lineno}, "
                f"column {exc.colno}."
            ) from None
        except _NonFinite as exc:
            raise ConfigFileError(
                f"Config file '{path}' is not valid JSON: {exc} is not a JSON number (a "
                "setting's number must be finite)."
            ) from None
        except RecursionError:
            raise ConfigFileError(f"Config file '{path}' is nested too deeply.") from None
        if not isinstance(loaded, dict):
            raise ConfigFileError(
                f"Config file '{path}' must hold a JSON object of settings, not "
                f"{_json_kind(loaded)}."
            )
        config.update(loaded)
    return config


CONFIG_FILE_LIMIT = 16 * 1024 * 1024
"""At most this much of a config file is read."""


class _NonFinite(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity`` in a config file (Python's json reads them)."""


def _refuse_constant(name: str) -> t.NoReturn:
    raise _NonFinite(name)


def _json_kind(value: t.Any) -> str:
    return {list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(
        type(value), "a number"
    )


def env_config(schema: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The settings in ``TARGET_EVERFLOW_<SETTING>`` variables, each read by its schema type, or
    ``ConfigFileError`` in one line naming the variable. Numbers stay text here: the schema
    check reads them (finite, within bounds) like any other number given as text."""
    config: dict[str, t.Any] = {}
    for name, spec in schema.get("properties", {}).items():
        variable = ENV_PREFIX + name.upper().replace("-", "_")
        if variable not in os.environ:
            continue
        text = os.environ[variable]
        types = json_types(spec) if isinstance(spec, dict) else []
        if "boolean" in types and len(types) == 1:
            lowered = text.strip().lower()
            if lowered not in TRUE_WORDS | FALSE_WORDS:
                raise ConfigFileError(
                    f"Environment variable {variable} must be true or false, not "
                    f"{_shown_text(name, text)}."
                )
            config[name] = lowered in TRUE_WORDS
        elif "object" in types or "array" in types:
            try:
                value = json.loads(text, parse_constant=_refuse_constant)
            except (ValueError, RecursionError):
                raise ConfigFileError(
                    f"Environment variable {variable} must be JSON "
                    f"({'an object' if 'object' in types else 'a list'})."
                ) from None
            config[name] = value
        else:
            config[name] = text  # strings, and numbers as text (checked with the schema)
    return config


ENV_PREFIX = "TARGET_EVERFLOW_"
TRUE_WORDS = frozenset({"true", "1", "yes", "y", "on", "t"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "off", "f", ""})


def _shown_text(name: str, text: str) -> str:
    return "its value" if name in SECRET_SETTINGS else repr(text[:40])


def unknown_settings(config: t.Mapping[str, t.Any], known: t.Iterable[str]) -> list[str]:
    """A warning for each key of a config file that is no setting, naming the closest one."""
    names = list(known)
    lowered = {n.lower().replace("-", "_"): n for n in names}
    out = []
    for key in config:
        if key in names:
            continue
        text = str(key)
        guess = lowered.get(text.lower().replace("-", "_").replace(" ", "_"))
        if guess is None:
            close = difflib.get_close_matches(text.lower(), names, n=1, cutoff=0.6)
            guess = close[0] if close else None
        hint = f"; did you mean '{guess}'?" if guess else " (it is ignored)."
        shown = text if len(text) <= 60 else text[:60] + "..."
        out.append(f"Config key {shown!r} is not a setting of target-everflow{hint}")
    return out


@dataclass(frozen=True)
class CliConfig:
    """``--config`` as read: the files' settings, and whether ENV was given."""

    config: dict[str, t.Any]
    parse_env: bool


SDK_NUMBER_BOUNDS: dict[str, dict[str, int]] = {
    "flattening_max_depth": {"minimum": 0, "maximum": 100},
    "flattening_max_key_length": {"minimum": 1, "maximum": 10000},
}
"""The bounds of the SDK's own number settings (the SDK states none)."""


# Settings the SDK adds to every target that mean nothing for this one, so they are not offered
# (--about, Meltano, README): load_method (how a database target writes rows), add_record_metadata
# (_sdc_* columns; the sink ignores it) and faker_config (seeds Faker for stream maps; Faker is
# not installed). The SDK settings that do something here stay: batch_size_rows (our own
# entry in CONFIG_SCHEMA), validate_records (ours too), stream_maps, stream_map_config and
# flattening_*.
HIDDEN_SDK_SETTINGS = ("load_method", "add_record_metadata", "faker_config")


class TargetEverflow(Target):
    """Sends the conversions among Segment track events to Everflow, exactly once."""

    name = "target-everflow"
    # A copy: the SDK adds its built-in settings to this dict in place; CONFIG_SCHEMA stays ours.
    config_jsonschema = copy.deepcopy(CONFIG_SCHEMA)
    default_sink_class = EverflowSink
    message_reader_class = SegmentReader  # msgspec, falling back to json for NaN and the like

    @property
    def reader(self) -> SegmentReader:
        """The message reader, as the class it is (the SDK types it as its base class)."""
        return t.cast(SegmentReader, self.message_reader)

    def __init__(
        self,
        *,
        config: dict | str | list | None = None,
        parse_env_config: bool = False,
        validate_config: bool = True,
        setup_mapper: bool = True,
        message_reader: t.Any = None,
    ) -> None:
        escape_log_records()  # no log line can be forged by a value in the input
        try:
            if isinstance(config, (str, list)):
                config = read_config_files([config] if isinstance(config, str) else config)
            config = dict(config or {})
            for warning in unknown_settings(config, self.known_settings()):
                self.logger.warning("%s", warning)
            if parse_env_config:  # read here, strictly: the SDK's reading raises on bad text
                config.update(env_config(self.settings_schema()))
            # null is "not given" (every setting's default; the SDK's stream maps fail on it)
            config = {key: value for key, value in config.items() if value is not None}
        except ConfigFileError as exc:
            raise ConfigValidationError("Config validation failed", errors=[str(exc)]) from None
        super().__init__(
            config=config,
            parse_env_config=False,
            validate_config=validate_config,
            setup_mapper=setup_mapper,
            message_reader=message_reader,
        )
        # Sinks are drained one at a time: the engine is the concurrency, and one drain at a
        # time means two streams carrying the same event (tracks + order_completed) never
        # claim the same key at once.
        self.max_parallelism = 1
        try:
            self.settings = Settings.from_config(self.config)
        except ConfigError as exc:
            raise ConfigValidationError("Config validation failed", errors=[str(exc)]) from None
        self._protect_secrets()
        self.run = Run(self.settings, self.logger, self._schema_of, point_writer())
        self.sinks: weakref.WeakSet[EverflowSink] = weakref.WeakSet()
        """Every sink that may still hold records (a sink registers itself in ``setup``)."""
        self.latest_state: dict | None = None
        """The value of the latest STATE message read."""
        self._maps_as_is: dict[StreamMap, bool] = {}
        """Stream map -> whether it hands every record on as it is (``hands_on_as_is``)."""
        reader = self.reader
        reader.due = self.drain_by_age  # asked before each wait for input
        reader.before, reader.after = self._before_message, self._after_message
        self._terminating: int | None = None
        self._shielded = 0
        """> 0 while a STATE is written: a signal then must not raise into the main thread."""
        self._finishing = False
        self._state_written: str | None = None

    def _protect_secrets(self) -> None:
        """Every secret setting is masked from here on, in every output of the process (the one
        rule: ``masking.mask``); a secret too short to be masked in free text says so."""
        s = self.settings
        ledger_secrets = sorted(url_secrets(s.ledger_url)) if s.ledger_url else []
        protect([s.api_key, s.verification_token, *ledger_secrets])
        install_log_masking()
        named = [("api_key", s.api_key), ("verification_token", s.verification_token)]
        named += [("ledger_url", secret) for secret in ledger_secrets]
        for name, secret in named:
            if secret and secret.strip() and too_short(secret):
                what = "its password" if name == "ledger_url" else "it"
                self.logger.warning(
                    "Setting '%s': %s is shorter than %d characters, too short to be masked in "
                    "free text without mangling ordinary words: it is masked where it is "
                    "structured (a URL's password, a query or connection parameter) and nowhere "
                    "else, e.g. not in a server's error message.",
                    name,
                    what,
                    MIN_FREE_TEXT_LENGTH,
                )

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict) -> None:
        """The SDK's built-in settings, less those that mean nothing here (HIDDEN_SDK_SETTINGS),
        with the bounds of the numbers they take (SDK_NUMBER_BOUNDS)."""
        super().append_builtin_config(config_jsonschema)
        for name in HIDDEN_SDK_SETTINGS:
            if name not in CONFIG_SCHEMA["properties"]:
                config_jsonschema["properties"].pop(name, None)
        for name, bounds in SDK_NUMBER_BOUNDS.items():
            spec = config_jsonschema["properties"].get(name)
            if isinstance(spec, dict):
                spec.update(bounds)

    @classmethod
    def settings_schema(cls) -> dict:
        """Every setting the target takes (``CONFIG_SCHEMA`` and the SDK settings it keeps)."""
        schema = copy.deepcopy(cls.config_jsonschema)
        cls.append_builtin_config(schema)
        return schema

    @classmethod
    def known_settings(cls) -> set[str]:
        """Every key a config file may hold: the settings, and the SDK's own (even those that
        mean nothing here)."""
        return {*cls.settings_schema()["properties"], *HIDDEN_SDK_SETTINGS}

    @classmethod
    def cb_config(  # type: ignore[override]  # the SDK's callback, reading files in one line
        cls, ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
    ) -> CliConfig:
        """``--config``: the files read (one line naming a broken one, exit 1), and ENV."""
        try:
            return CliConfig(read_config_files([v for v in value if v != "ENV"]), "ENV" in value)
        except ConfigFileError as exc:
            cls.logger.error("%s", exc)
            ctx.exit(EXIT_CONFIG)

    # -- config validation that never prints a secret ---------------------------------------

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        schema = self.config_jsonschema
        self.append_builtin_config(schema)
        checked, wrong = numbers_checked(self._config, schema["properties"])
        self._config.update(checked)
        bad = {e.setting for e in wrong}
        validator = JSONSchemaValidator(schema)  # also fills in defaults
        # One line per setting: the number check's, else the schema's (an enum's list first).
        first: dict[str, t.Any] = {}
        for error in validator.iter_errors(self._config):
            setting = str(error.absolute_path[0]) if error.absolute_path else ""
            if setting in bad:
                continue
            if setting not in first or error.validator == "enum":
                first[setting] = error
        errors = [str(e) for e in wrong] + [_describe_schema_error(e) for e in first.values()]
        if errors and raise_errors:
            raise ConfigValidationError("Config validation failed", errors=errors, schema=schema)
        for error in errors:
            self.logger.warning("%s", error)
        return errors

    # -- the run -----------------------------------------------------------------------------

    def _schema_of(self, stream: str) -> dict | None:
        return self.get_sink(stream).original_schema if self.sink_exists(stream) else None

    def _write_state_message(self, state: dict) -> None:
        written = json.dumps(state, sort_keys=True)
        if written == self._state_written:
            return  # already emitted (the SDK re-emits the latest STATE at every drain)
        self._state_written = written
        self._shielded += 1  # a signal never cuts a STATE line in half
        try:
            super()._write_state_message(state)
        finally:
            self._shielded -= 1

    def _process_record_message(self, message_dict: dict) -> None:
        """A RECORD: the SDK's own steps, less those that do nothing for this target's sinks
        (see ``EverflowSink.take``). The reader has checked the message's ``stream`` and
        ``record``; every stream map still transforms (filter, alias, flattening)."""
        stream_name = message_dict["stream"]
        stream_maps = self.mapper.stream_maps.get(stream_name)
        if stream_maps is None:
            raise RecordsWithoutSchemaException(_before_schema(stream_name))
        single = len(stream_maps) == 1
        for stream_map in stream_maps:
            # The SDK copies the record for each stream map; one map has no other to share it
            # with (the message is not read again).
            record = message_dict["record"]
            as_is = self._maps_as_is.get(stream_map)
            if as_is is None:
                if len(self._maps_as_is) >= 256:  # (a new SCHEMA makes new maps: bounded)
                    self._maps_as_is.clear()
                as_is = self._maps_as_is[stream_map] = hands_on_as_is(stream_map)
            if not as_is:  # (a map that hands every record on as it is need not be asked)
                record = stream_map.transform(record if single else copy.copy(record))
                if record is None:  # filtered out by the stream map
                    continue
            alias = stream_map.stream_alias
            if not self.sink_exists(alias):
                raise RecordsWithoutSchemaException(_before_schema(alias))
            sink = t.cast("EverflowSink", self.get_sink(alias, record=record))
            sink.take(record)
            if sink.is_full:
                self.logger.info(
                    "Target sink for '%s' is full. Current size is '%s'. Draining...",
                    sink.stream_name,
                    sink.current_size,
                )
                self.drain_one(sink)
        self._handle_max_record_age()

    def _before_message(self, kind: str, message: dict) -> bool:
        """The reader's hook before the SDK handles a message; False when handled here."""
        if kind == "RECORD" and not isinstance(message["record"], dict):
            self._dead_letter_unreadable(message)
            return False
        if kind == "ACTIVATE_VERSION" and message["stream"] not in self.mapper.stream_maps:
            raise RecordsWithoutSchemaException(
                f"an ACTIVATE_VERSION message for stream {message['stream']!r} came before "
                "that stream's SCHEMA"
            )
        if kind == "BATCH":
            # The SDK would hand the batch files' records to process_batch directly, past the
            # mapping and the accounting: they would be neither delivered nor counted.
            raise broken(
                self.reader.line_number,
                "BATCH messages are not supported (this target does not declare the batch "
                "capability): run the tap without batch mode, so that records come as RECORD "
                "messages",
            )
        return True

    def _after_message(self, kind: str, message: dict) -> None:
        """The reader's hook after the SDK handled a message."""
        if kind == "STATE":
            self.latest_state = message["value"]
            self.emit_safe_state()  # safe at once when no record read before it is pending

    def batch_settled(self) -> None:
        """A sink's batch has every outcome. The SDK itself writes STATE only when it drains
        every sink (end of input, or every 5 minutes); when no other sink holds records, the
        latest STATE is already safe, so a long backfill checkpoints batch by batch."""
        self.emit_safe_state()

    def drain_by_age(self) -> float | None:
        """Deliver every batch once the oldest record waiting is ``max_batch_age_seconds`` old.

        The reader calls this before it waits for input, so a record is delivered on time (and
        the STATE after it emitted) even while the tap sends nothing more. Every batch, not
        only the old one: STATE needs every record read before it settled. Returns the seconds
        until the oldest record waiting is due (``None`` when none waits).
        """
        since = [s.pending_since for s in self.sinks if s.holding and s.pending_since is not None]
        if not since:
            return None
        wait = min(since) + self.settings.max_batch_age_seconds - time.monotonic()
        if wait > 0:
            return wait
        self.logger.debug(
            "Delivering the records read so far: the oldest has waited %.1f s "
            "(max_batch_age_seconds).",
            self.settings.max_batch_age_seconds - wait,
        )
        self.drain_all()  # then writes the latest STATE: every record read before it settled
        return None

    def _dead_letter_unreadable(self, message_dict: dict) -> None:
        """A RECORD whose ``record`` is not a JSON object: one bad record, dead-lettered."""
        stream = message_dict["stream"]
        if stream not in self.mapper.stream_maps:  # RECORD before SCHEMA: the input is broken
            raise RecordsWithoutSchemaException(_before_schema(stream))
        stream_maps = self.mapper.stream_maps[stream]
        if not stream_maps:  # the stream is filtered out by stream_maps
            return
        sink = t.cast("EverflowSink", self.get_sink(stream_maps[0].stream_alias))
        record = message_dict["record"]
        kind = "null" if record is None else f"a {type(record).__name__}"
        sink.dead_letter_unreadable(
            record,
            f'line {self.reader.line_number}: the RECORD\'s "record" is {kind}, not a JSON object',
        )

    def emit_safe_state(self) -> None:
        """Emit the latest STATE if every record read before it has its outcome."""
        if any(s.holding for s in self.sinks) or not self.latest_state:
            return
        if json.dumps(self.latest_state, sort_keys=True) != self._state_written:
            self._write_state_message(dict(self.latest_state))

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: stop reading; the batch in flight settles within a bounded time.

        ``Terminated`` is raised into the main thread only where that is safe: not while a batch
        settles (the engine stops it), not while a STATE is written or the run finishes, and
        not inside the logging machinery (which would print ``--- Logging error ---`` and go
        on). Where it is not raised, the reader stops before the next line.
        """
        if self._terminating is not None:
            return
        self._terminating = signum
        self.reader.stop_signal = signum
        if self._finishing:
            return  # main() reports it once the summary is out
        self.logger.warning(
            "Received signal %d: no more records are read; settling what is in flight.", signum
        )
        self.run.interrupt(f"stopped by signal {signum}")
        if not self.run.in_batch and not self._shielded and not _in_logging(frame):
            raise Terminated(signum)

    # -- command line ------------------------------------------------------------------------

    @classmethod
    def get_singer_command(cls) -> click.Command:
        command = super().get_singer_command()
        command.params.append(
            click.Option(
                ["--check"],
                is_flag=True,
                expose_value=False,
                callback=cls._check_option,
                help="Only check the Everflow API key and event mapping, then exit.",
            )
        )
        return command

    @classmethod
    def _check_option(
        cls, ctx: click.Context, _param: click.Parameter, value: bool
    ) -> None:  # click's callback signature
        """``--check``: after ``--config`` (an eager option) was read, check and exit."""
        if value:
            cls.print_version(print_fn=cls.logger.info)
            ctx.exit(cls._from_cli_config(ctx.params.get("config")).main(None, check=True))

    @classmethod
    def _from_cli_config(cls, config: t.Any) -> TargetEverflow:
        """The target for the parsed ``--config`` (its config dict and ENV flag); a setting
        that is wrong exits 1 with one line each."""
        try:
            return cls(
                config=getattr(config, "config", None) or {},
                validate_config=True,
                parse_env_config=bool(getattr(config, "parse_env", False)),
            )
        except ConfigValidationError as exc:
            for error in exc.errors or [str(exc)]:
                cls.logger.error("%s", error)
            sys.exit(EXIT_CONFIG)

    @classmethod
    def invoke(  # type: ignore[override]  # the SDK's options, plus --check
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: t.Any = None,
        file_input: t.IO[str] | None = None,
    ) -> None:
        """The Singer target command: ``Target.invoke``, with the run's exit code."""
        if about:
            cls.print_about(about_format)
            sys.exit(0)
        cls.print_version(print_fn=cls.logger.info)
        target = cls._from_cli_config(config)
        tune_garbage_collection()
        sys.exit(target.main(file_input))

    def main(self, file_input: t.IO[str] | None = None, *, check: bool = False) -> int:
        """Run (or only check), always finishing with the summary; return the exit code."""
        if check:
            try:
                lines = self.run.check_api()
            except TargetEverflowError as exc:
                self.logger.error("%s", exc)  # the message is the whole story
                return exc.exit_code
            for line in lines:
                click.echo(mask(line))
            return EXIT_OK
        code = EXIT_OK
        try:
            self.run.open()
            self.listen(file_input)  # the last STATE is out when it returns
            code = self.run.reconcile_after()
        except InputError as exc:
            code = self._input_broken(exc)
        except TargetEverflowError as exc:
            # (a dead-letter file that failed stops the engine too: that is the cause to report)
            code = self._stopped(self.run.output_failure or exc)
        except LedgerError as exc:  # the ledger failed mid-run: nothing more is sent
            code = self._stopped(LedgerUnavailable(str(exc)))
        except (InvalidInputLine, RecordsWithoutSchemaException, json.JSONDecodeError) as exc:
            code = self._input_broken(InputError(f"The Singer input is broken: {first_line(exc)}"))
        except UnicodeDecodeError as exc:  # a text input that was decoded before it reached us
            code = self._input_broken(
                InputError(f"The Singer input is not UTF-8 text (byte {exc.start} of a line)")
            )
        except OSError as exc:  # an output that could not be written mid-run (disk full, ...)
            code = self._stopped(_output_failed(exc))
        except BaseException as exc:  # unexpected: recorded in the run history, then raised
            code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
            raise
        finally:
            self._finishing = True  # a signal from here on is reported, never raised
            # Everything is settled and STATE emitted: the failure thresholds may make it 5.
            code = self.run.finish(code)
        if self._terminating is not None:
            final = precedence(code, Terminated(self._terminating).exit_code)
            if final != code:
                self.logger.warning(
                    "Received signal %d while finishing, after every record read had its outcome "
                    "and the last STATE was emitted.",
                    self._terminating,
                )
            code = final
        return code

    def _input_broken(self, exc: InputError) -> int:
        """A broken line: settle every record read before it, emit the last STATE, exit 2.

        Those records and the STATE messages among them came from the tap intact; delivering
        them (and checkpointing) now means the re-run after the input is fixed starts there.
        """
        if self._terminating is not None or not self.run.opened:
            return self._stopped(exc)
        self.logger.error("%s", exc)  # the message is the whole story
        pending = sum(s.holding for s in self.sinks)
        if pending:
            self.logger.info(
                "Settling the %d records read before the broken line; nothing after it is read.",
                pending,
            )
        try:
            self.drain_all()  # delivers them, then writes the latest STATE read before the line
        except TargetEverflowError as settle_exc:
            code = self._stopped(settle_exc)
            if self._terminating is not None:
                return code
        except LedgerError as settle_exc:
            self._stopped(LedgerUnavailable(str(settle_exc)))
        return exc.exit_code

    def _stopped(self, exc: TargetEverflowError) -> int:
        if self._terminating is not None:
            self.emit_safe_state()
            self.logger.error(
                "Stopped by signal %d. Records without an outcome were not dead-lettered; the "
                "next run resumes from the last STATE.",
                self._terminating,
            )
            return Terminated(self._terminating).exit_code
        self.logger.error("%s", exc)  # the message is the whole story
        return exc.exit_code


def hands_on_as_is(stream_map: StreamMap) -> bool:
    """Whether a stream map hands every record on as it is: the SDK's own map of a stream that
    ``stream_maps`` does not name (``SameRecordTransform``), without flattening. Its
    ``transform`` returns the record it is given; for such a map the target does not call it."""
    return type(stream_map) is SameRecordTransform and not stream_map.flattening_enabled


def _before_schema(stream: str) -> str:
    """The SDK's words for a RECORD of a stream whose SCHEMA has not come."""
    return (
        f"A record for stream '{stream}' was encountered before a corresponding schema. "
        "Check that the Tap correctly implements the Singer spec."
    )


GC_THRESHOLDS = (100_000, 20, 20)
"""The collector's thresholds in a target process (Python's: 700, 10, 10). A collection of the
youngest objects every 100,000 of them: at 10,000, collections took about 5% of a dry run's
CPU (100,000 mixed records: 0.21 s against 0.08 s), the objects being a batch's records and
conversions, which no collection frees."""


def tune_garbage_collection() -> None:
    """A target process's garbage-collection policy, set once its modules and config are loaded.

    Records make no reference cycles, but each batch keeps thousands of them (and their
    conversions) alive until it settles, and Python's default thresholds then walk them over and
    over: about a tenth of a dry run's CPU. What exists at start-up (modules, the schema) is
    frozen out of every collection, and collections run less often. Only the command-line
    process does this: a program that runs the target in its own process keeps its own policy.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def plugin_settings_schema() -> dict:
    """Every setting the target offers, as ``--about`` shows it: ``CONFIG_SCHEMA`` plus the SDK
    settings it keeps. The Meltano files (scripts/update_plugin_files.py) come from this."""
    return TargetEverflow.settings_schema()


def _in_logging(frame: FrameType | None) -> bool:
    """Whether the interrupted main thread is inside the logging module."""
    while frame is not None:
        if frame.f_code.co_filename == logging.__file__:
            return True
        frame = frame.f_back
    return False


def _output_failed(exc: OSError) -> OutputError:
    """An I/O error mid-run, as one line (its type, reason and file; never its text, which
    could hold a URL)."""
    where = f" ({exc.filename})" if exc.filename else ""
    return OutputError(
        f"Stopping: an output could not be written: {type(exc).__name__}: "
        f"{exc.strerror or 'I/O error'}{where}. Records without an outcome were not "
        "dead-lettered; the next run resumes from the last STATE."
    )


__all__ = ["EXIT_INPUT", "HIDDEN_SDK_SETTINGS", "TargetEverflow", "plugin_settings_schema"]
